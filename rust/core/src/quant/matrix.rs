//! A borrowed weight matrix in any supported type, and the row-parallel matrix-vector product.

use rayon::prelude::*;

use super::activation::Activation;
use super::blocks::{as_blocks, dequantize_q4_0, dequantize_q4_1, dequantize_q8_0, QK};
use super::dispatch::{Kernels, TypeKernels};
use super::types::GgmlType;

/// Output rows handed to one rayon task. Each row is still reduced by exactly one thread.
const ROWS_PER_TASK: usize = 16;

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
        assert_eq!(x.values.len(), self.cols, "input length does not match the matrix columns");
        assert_eq!(out.len(), self.rows, "output length does not match the matrix rows");
        if self.ggml_type.block_elems() == QK as u64 {
            assert_eq!(x.blocks.len() * QK, self.cols, "quantized matrix needs a quantized input");
        }
        let kernels = kernels.for_type(self.ggml_type);
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
            self.dot_rows(kernels, task * ROWS_PER_TASK, x, chunk);
        });
    }

    /// Computes rows `first..first + out.len()` of `self * x` into `out`: four rows at a time
    /// where the type has a four-row kernel, then row by row.
    fn dot_rows(&self, kernels: TypeKernels, first: usize, x: &Activation, out: &mut [f32]) {
        let mut done = 0;
        if let Some(four) = kernels.four {
            for (group, o) in out.chunks_exact_mut(4).enumerate() {
                let r = first + 4 * group;
                o.copy_from_slice(&four([self.row(r), self.row(r + 1), self.row(r + 2), self.row(r + 3)], x));
            }
            done = out.len() / 4 * 4;
        }
        for (i, o) in out.iter_mut().enumerate().skip(done) {
            *o = (kernels.one)(self.row(first + i), x);
        }
    }

    /// Dequantizes row `r` into `out`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.ggml_type, self.row(r), out);
    }
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
