//! A borrowed weight matrix in any supported type, and the row-parallel products of matrices
//! with one input or a batch of inputs.

use rayon::prelude::*;

use super::activation::Activation;
use super::blocks::{as_blocks, dequantize_q4_0, dequantize_q4_1, dequantize_q8_0, QK};
use super::dispatch::{Kernels, TypeKernels};
use super::types::GgmlType;

/// Output rows handed to one rayon task. Each product is still reduced by exactly one thread.
pub const ROWS_PER_TASK: usize = 16;

/// A weight matrix of `rows` rows of `cols` elements, stored row after row in ggml's layout.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> MatRef<'a> {
    /// Wraps `data`. Callers check type support and sizes when they load a tensor; this asserts
    /// them again, because a wrong size here would read past the matrix.
    pub fn new(ggml_type: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        assert!(ggml_type.is_supported(), "matrix type {ggml_type} has no kernel");
        let row_bytes = ggml_type.row_bytes(cols as u64).expect("row length is a whole number of blocks") as usize;
        assert_eq!(data.len(), row_bytes * rows, "matrix data has the wrong size");
        MatRef { ggml_type, rows, cols, data }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    /// Returns the bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Dot product of row `r` with `x`, with the kernels of [`Kernels::selected`].
    #[inline]
    pub fn dot_row(&self, r: usize, x: &Activation) -> f32 {
        let dot = Kernels::selected().for_type(self.ggml_type).one;
        dot(self.row(r), x)
    }

    /// Computes `out = self * x` with the kernels of [`Kernels::selected`], splitting rows
    /// across the current rayon pool.
    pub fn matvec(&self, x: &Activation, out: &mut [f32]) {
        self.matvec_with(Kernels::selected(), x, out);
    }

    /// Computes `out = self * x` with `kernels`, splitting rows across the current rayon pool.
    /// Every kernel set gives bit-identical results.
    pub fn matvec_with(&self, kernels: Kernels, x: &Activation, out: &mut [f32]) {
        assert_eq!(out.len(), self.rows, "output length does not match the matrix rows");
        let kernels = kernels.for_type(self.ggml_type);
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
            self.dot_rows_with(kernels, task * ROWS_PER_TASK, &[x], chunk);
        });
    }

    /// Computes the products of rows `first..first + m` with every input of `xs`, where `m` is
    /// `out.len() / xs.len()`, with the kernels of [`Kernels::selected`]. The result is laid out
    /// by row: `out[i * xs.len() + t]` is row `first + i` times `xs[t]`.
    ///
    /// Each product is computed exactly as [`MatRef::matvec`] computes it, so a batch of inputs
    /// gives the same bits as one input at a time.
    pub fn dot_rows(&self, first: usize, xs: &[&Activation], out: &mut [f32]) {
        self.dot_rows_with(Kernels::selected().for_type(self.ggml_type), first, xs, out);
    }

    /// [`MatRef::dot_rows`] with the given kernels: four rows at a time where the type has a
    /// four-row kernel, then row by row. The rows of a group stay in cache while every input
    /// passes over them.
    fn dot_rows_with(&self, kernels: TypeKernels, first: usize, xs: &[&Activation], out: &mut [f32]) {
        let n = xs.len();
        assert!(n > 0 && out.len() % n == 0, "output length is not a whole number of rows per input");
        let m = out.len() / n;
        assert!(first + m <= self.rows, "rows {first}..{} are past the matrix's {} rows", first + m, self.rows);
        for x in xs {
            self.check_input(x);
        }

        let mut done = 0;
        if let Some(four) = kernels.four {
            for group in 0..m / 4 {
                let r = first + 4 * group;
                let rows = [self.row(r), self.row(r + 1), self.row(r + 2), self.row(r + 3)];
                let mut t = 0;
                if let Some(four_by_two) = kernels.four_by_two {
                    while t + 2 <= n {
                        let [first, second] = four_by_two(rows, [xs[t], xs[t + 1]]);
                        for k in 0..4 {
                            out[(4 * group + k) * n + t] = first[k];
                            out[(4 * group + k) * n + t + 1] = second[k];
                        }
                        t += 2;
                    }
                }
                for (t, x) in xs.iter().enumerate().skip(t) {
                    for (k, value) in four(rows, x).into_iter().enumerate() {
                        out[(4 * group + k) * n + t] = value;
                    }
                }
            }
            done = m / 4 * 4;
        }
        for i in done..m {
            for (t, x) in xs.iter().enumerate() {
                out[i * n + t] = (kernels.one)(self.row(first + i), x);
            }
        }
    }

    /// Asserts that `x` fits this matrix: its length is the column count, and a quantized
    /// matrix has its 8-bit blocks.
    fn check_input(&self, x: &Activation) {
        assert_eq!(x.values.len(), self.cols, "input length does not match the matrix columns");
        if self.ggml_type.block_elems() == QK as u64 {
            assert_eq!(x.blocks.len() * QK, self.cols, "quantized matrix needs a quantized input");
        }
    }

    /// Dequantizes row `r` into `out`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.ggml_type, self.row(r), out);
    }
}

/// Matrix products that run together in one parallel region, so that the pool's threads are
/// woken once for all of them. Each product multiplies one matrix with a batch of inputs and
/// writes its result laid out by row, as [`MatRef::dot_rows`] does.
#[derive(Default)]
pub struct Products<'a> {
    tasks: Vec<RowTask<'a>>,
}

/// `ROWS_PER_TASK` rows (fewer at the end) of one product.
struct RowTask<'a> {
    mat: MatRef<'a>,
    first: usize,
    xs: &'a [&'a Activation],
    out: &'a mut [f32],
}

impl<'a> Products<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `mat` times each input of `xs`, into `out` of `mat.rows * xs.len()` floats:
    /// `out[r * xs.len() + t]` is row `r` times `xs[t]`.
    pub fn add(&mut self, mat: MatRef<'a>, xs: &'a [&'a Activation], out: &'a mut [f32]) {
        assert_eq!(out.len(), mat.rows * xs.len(), "output length does not match rows times inputs");
        for (task, chunk) in out.chunks_mut(ROWS_PER_TASK * xs.len()).enumerate() {
            self.tasks.push(RowTask { mat, first: task * ROWS_PER_TASK, xs, out: chunk });
        }
    }

    /// Computes every product added, splitting the rows across the current rayon pool.
    pub fn run(self) {
        self.tasks.into_par_iter().for_each(|task| task.mat.dot_rows(task.first, task.xs, task.out));
    }
}

/// Reorders a result laid out by row (`rows` rows of `n` values, one per input, as
/// [`MatRef::dot_rows`] writes them) into one row of values per input, input after input.
pub fn by_input(by_row: Vec<f32>, n: usize) -> Vec<f32> {
    if n == 1 {
        return by_row;
    }
    let rows = by_row.len() / n;
    let mut out = vec![0.0f32; by_row.len()];
    for (r, values) in by_row.chunks_exact(n).enumerate() {
        for (t, &v) in values.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
    out
}

/// Dequantizes `data` of a supported type into `out`, which has one slot per element.
pub fn dequantize(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) {
    match ggml_type {
        GgmlType::Q4_0 => dequantize_q4_0(as_blocks(data), out),
        GgmlType::Q4_1 => dequantize_q4_1(as_blocks(data), out),
        GgmlType::Q8_0 => dequantize_q8_0(as_blocks(data), out),
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = super::blocks::half_to_f32([b[0], b[1]]);
            }
        }
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        other => panic!("dequantize called with unsupported type {other}"),
    }
}
