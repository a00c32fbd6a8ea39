//! Test support: runs one kernel set on raw weight rows and an explicit activation.
//!
//! The activation is given as int8 quants and scales, so that tests outside this crate can
//! compare the scalar and SIMD kernels on any input. That includes quants of -128, which
//! `quantize_q8` never produces.
//!
//! Every function checks its inputs and returns `Error::InvalidArgument` for a bad one instead
//! of panicking, because its callers are tests that feed edge cases on purpose.

use super::activation::{Activation, BlockQ8Act};
use super::blocks::QK;
use super::dispatch::Kernels;
use super::types::GgmlType;
use crate::{Error, Result};

/// Weight types that have dot-product kernels, by their lower-case ggml names.
const KERNEL_TYPES: [(&str, GgmlType); 5] = [
    ("q4_0", GgmlType::Q4_0),
    ("q4_1", GgmlType::Q4_1),
    ("q8_0", GgmlType::Q8_0),
    ("f16", GgmlType::F16),
    ("f32", GgmlType::F32),
];

/// The kernel of a type's kernel set that [`row_dots`] calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKernel {
    /// The one-row kernel, called once per row.
    One,
    /// The four-row kernel, called once per group of four rows.
    Four,
}

/// Returns the kernel set named `name` ("scalar" or "avx2", in any case), or an error when the
/// name is unknown or this CPU cannot run that set.
pub fn kernels_by_name(name: &str) -> Result<Kernels> {
    if name.eq_ignore_ascii_case("scalar") {
        return Ok(Kernels::scalar());
    }
    if name.eq_ignore_ascii_case("avx2") {
        return Kernels::avx2().ok_or_else(|| {
            Error::InvalidArgument(
                "the AVX2 kernels are not available: this CPU lacks AVX2 or F16C, or is not x86-64; \
                 use isa=\"scalar\""
                    .to_string(),
            )
        });
    }
    Err(Error::InvalidArgument(format!("unknown kernel set {name:?}: expected \"scalar\" or \"avx2\"")))
}

/// Returns the names of the kernel sets this CPU runs, scalar first.
pub fn available_kernel_sets() -> Vec<&'static str> {
    let mut names = vec!["scalar"];
    if Kernels::avx2().is_some() {
        names.push("avx2");
    }
    names
}

/// Returns the weight type named `name` (such as "q4_0" or "F16", in any case), or an error
/// when the type is unknown or has no dot-product kernel.
pub fn kernel_type_by_name(name: &str) -> Result<GgmlType> {
    KERNEL_TYPES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|&(_, ggml_type)| ggml_type)
        .ok_or_else(|| {
            let names: Vec<&str> = KERNEL_TYPES.iter().map(|(known, _)| *known).collect();
            Error::InvalidArgument(format!(
                "no dot-product kernel for weight type {name:?}: expected one of {}",
                names.join(", ")
            ))
        })
}

/// Builds the activation of the quantized kernels from int8 `quants` (a multiple of 32) and one
/// scale per block of 32. Each block's `sum` is computed from its quants, and each scale is used
/// as given: `quantize_q8` would round it to half precision, this function does not.
pub fn quantized_activation(scales: &[f32], quants: &[i8]) -> Result<Activation> {
    if quants.len() % QK != 0 {
        return Err(Error::InvalidArgument(format!(
            "the activation has {} quants, which is not a multiple of the block size {QK}",
            quants.len()
        )));
    }
    let n_blocks = quants.len() / QK;
    if scales.len() != n_blocks {
        return Err(Error::InvalidArgument(format!(
            "the activation has {} scales for {} quants, expected one scale per block of {QK}: {n_blocks}",
            scales.len(),
            quants.len()
        )));
    }

    let blocks = quants
        .chunks_exact(QK)
        .zip(scales)
        .map(|(chunk, &d)| {
            let mut qs = [0i8; QK];
            qs.copy_from_slice(chunk);
            let sum = qs.iter().map(|&q| i32::from(q)).sum();
            BlockQ8Act { d, sum, qs }
        })
        .collect();
    Ok(Activation { values: Vec::new(), blocks })
}

/// Builds the activation of the f16 and f32 kernels, which read only the float values.
pub fn float_activation(values: Vec<f32>) -> Activation {
    Activation { values, blocks: Vec::new() }
}

/// Computes the dot product of each of `n_rows` weight rows of type `ggml_type`, stored one
/// after another in `rows`, with `x`, using `row_kernel` of `kernels`.
///
/// The row length is the activation's length: 32 times its blocks for the quantized types, its
/// values for f16 and f32. `rows` must hold exactly `n_rows` rows of that length. The four-row
/// kernel needs a kernel set that has one for the type and a multiple of four rows.
pub fn row_dots(
    kernels: &Kernels,
    ggml_type: GgmlType,
    rows: &[u8],
    n_rows: usize,
    x: &Activation,
    row_kernel: RowKernel,
) -> Result<Vec<f32>> {
    if !ggml_type.is_supported() {
        return Err(Error::InvalidArgument(format!("no dot-product kernel for weight type {ggml_type}")));
    }
    let row_bytes = checked_row_bytes(ggml_type, rows.len(), n_rows, x)?;
    let type_kernels = kernels.for_type(ggml_type);
    // With zero-length rows every row is the empty slice, which `chunks_exact` cannot produce.
    let row = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];

    match row_kernel {
        RowKernel::One => Ok((0..n_rows).map(|r| (type_kernels.one)(row(r), x)).collect()),
        RowKernel::Four => {
            let Some(four) = type_kernels.four else {
                return Err(Error::InvalidArgument(format!(
                    "the {} kernels have no four-row kernel for {ggml_type}",
                    kernels.isa()
                )));
            };
            if n_rows % 4 != 0 {
                return Err(Error::InvalidArgument(format!(
                    "the four-row kernel needs a multiple of 4 rows, got {n_rows}"
                )));
            }
            let mut out = Vec::with_capacity(n_rows);
            for r in (0..n_rows).step_by(4) {
                out.extend_from_slice(&four([row(r), row(r + 1), row(r + 2), row(r + 3)], x));
            }
            Ok(out)
        }
    }
}

/// Returns the bytes of one row after checking that `x` has the form `ggml_type` reads and that
/// `n_bytes` is exactly `n_rows` rows as long as `x`.
fn checked_row_bytes(ggml_type: GgmlType, n_bytes: usize, n_rows: usize, x: &Activation) -> Result<usize> {
    let quantized = ggml_type.block_elems() == QK as u64;
    let (cols, missing_form) = if quantized {
        (x.blocks.len() * QK, x.blocks.is_empty() && !x.values.is_empty())
    } else {
        (x.values.len(), x.values.is_empty() && !x.blocks.is_empty())
    };
    if missing_form {
        let expected = if quantized { "int8 quants and scales" } else { "float values" };
        return Err(Error::InvalidArgument(format!("{ggml_type} weights need an activation of {expected}")));
    }

    // `cols` is a whole number of blocks of a supported type, so `row_bytes` returns a size.
    // Only the conversion to usize can fail, on a target narrower than 64 bits.
    let row_bytes = ggml_type
        .row_bytes(cols as u64)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| Error::InvalidArgument(format!("a row of {cols} {ggml_type} elements has no byte size")))?;
    let expected = row_bytes.checked_mul(n_rows).ok_or_else(|| {
        Error::InvalidArgument(format!("{n_rows} rows of {row_bytes} bytes overflow the address space"))
    })?;
    if n_bytes != expected {
        return Err(Error::InvalidArgument(format!(
            "the weight rows have {n_bytes} bytes, expected {n_rows} rows of {cols} {ggml_type} elements \
             ({row_bytes} bytes each) = {expected} bytes"
        )));
    }
    Ok(row_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Isa;

    fn half(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    fn invalid_message<T>(result: Result<T>) -> String {
        match result {
            Err(Error::InvalidArgument(message)) => message,
            Err(other) => panic!("expected InvalidArgument, got {other}"),
            Ok(_) => panic!("expected InvalidArgument, got a result"),
        }
    }

    #[test]
    fn names_resolve_in_any_case() {
        assert_eq!(kernel_type_by_name("Q4_1").unwrap(), GgmlType::Q4_1);
        assert_eq!(kernel_type_by_name("f16").unwrap(), GgmlType::F16);
        assert_eq!(kernels_by_name("SCALAR").unwrap().isa(), Isa::Scalar);
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert!(invalid_message(kernel_type_by_name("q5_0")).contains("q4_0, q4_1, q8_0, f16, f32"));
        assert!(invalid_message(kernels_by_name("neon")).contains("\"scalar\" or \"avx2\""));
    }

    #[test]
    fn avx2_name_matches_cpu_support() {
        assert_eq!(kernels_by_name("avx2").is_ok(), Kernels::avx2().is_some());
        assert_eq!(available_kernel_sets().contains(&"avx2"), Kernels::avx2().is_some());
    }

    #[test]
    fn activation_sums_come_from_quants() {
        let mut quants = [1i8; 64];
        quants[0] = -128;
        let x = quantized_activation(&[0.5, 2.0], &quants).unwrap();
        assert_eq!(x.blocks.len(), 2);
        assert_eq!(x.blocks[0].sum, -128 + 31);
        assert_eq!(x.blocks[1].sum, 32);
        assert_eq!(x.blocks[1].d, 2.0);
    }

    #[test]
    fn activation_lengths_are_checked() {
        assert!(invalid_message(quantized_activation(&[1.0], &[0; 33])).contains("multiple of the block size"));
        assert!(invalid_message(quantized_activation(&[1.0], &[0; 64])).contains("one scale per block"));
    }

    #[test]
    fn row_bytes_are_checked() {
        let x = quantized_activation(&[1.0], &[1; QK]).unwrap();
        let short = vec![0u8; 2 * 18 - 1];
        assert!(invalid_message(row_dots(&Kernels::scalar(), GgmlType::Q4_0, &short, 2, &x, RowKernel::One))
            .contains("expected 2 rows"));
    }

    #[test]
    fn activation_form_is_checked() {
        let floats = float_activation(vec![1.0; QK]);
        let message = invalid_message(row_dots(&Kernels::scalar(), GgmlType::Q8_0, &[], 0, &floats, RowKernel::One));
        assert!(message.contains("int8 quants"));
    }

    #[test]
    fn four_row_needs_a_kernel_and_whole_groups() {
        let x = quantized_activation(&[1.0], &[1; QK]).unwrap();
        let rows = vec![0u8; 3 * 34];
        let scalar = row_dots(&Kernels::scalar(), GgmlType::Q8_0, &rows, 3, &x, RowKernel::Four);
        assert!(invalid_message(scalar).contains("no four-row kernel"));
        if let Some(avx2) = Kernels::avx2() {
            let partial = row_dots(&avx2, GgmlType::Q8_0, &rows, 3, &x, RowKernel::Four);
            assert!(invalid_message(partial).contains("multiple of 4 rows"));
        }
    }

    #[test]
    fn q4_1_row_uses_the_minimum() {
        // d = 0 and m = 1 leave only the minimum term: m * d_x * sum(x).
        let mut rows = Vec::new();
        rows.extend_from_slice(&half(0.0));
        rows.extend_from_slice(&half(1.0));
        rows.extend_from_slice(&[0xff; QK / 2]);
        let x = quantized_activation(&[0.5], &[-128; QK]).unwrap();
        let dots = row_dots(&Kernels::scalar(), GgmlType::Q4_1, &rows, 1, &x, RowKernel::One).unwrap();
        assert_eq!(dots, vec![0.5 * (-128.0 * 32.0)]);
    }

    #[test]
    fn empty_rows_give_zero() {
        let x = float_activation(Vec::new());
        let dots = row_dots(&Kernels::scalar(), GgmlType::F32, &[], 3, &x, RowKernel::One).unwrap();
        assert_eq!(dots, vec![0.0; 3]);
    }
}
