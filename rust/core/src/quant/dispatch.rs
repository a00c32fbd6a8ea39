//! Run-time choice between the scalar and the SIMD dot-product kernels.
//!
//! The CPU is checked once per process, when [`Kernels::selected`] is first called, and never
//! with compile-time flags such as `-C target-cpu=native`, so one build runs on every x86-64 and
//! uses AVX2 where the CPU has it. Every kernel set returns bit-identical results, so the choice
//! changes speed and nothing else. Setting `MER_FORCE_SCALAR=1` forces the scalar kernels, which
//! lets tests compare both paths end to end.

use std::ffi::OsStr;
use std::fmt;
use std::sync::OnceLock;

use super::activation::Activation;
use super::blocks::as_blocks;
use super::kernels;
use super::types::GgmlType;

/// Environment variable that forces the scalar kernels when set to `1`.
pub const FORCE_SCALAR_VAR: &str = "MER_FORCE_SCALAR";

/// Dot product of one weight row, as raw bytes, with an activation vector.
pub(super) type RowDot = fn(&[u8], &Activation) -> f32;

/// Dot products of four weight rows of equal length with the same activation vector.
pub(super) type FourRowDot = fn([&[u8]; 4], &Activation) -> [f32; 4];

/// Dot products of four weight rows of equal length with each of two activation vectors:
/// element `[i][k]` is row `k` times input `i`.
pub(super) type FourRowPairDot = fn([&[u8]; 4], [&Activation; 2]) -> [[f32; 4]; 2];

/// The kernels of one weight type. `four` computes the same four results as four calls of
/// `one`, and `four_by_two` the same as two calls of `four`, faster. A type without them runs
/// the smaller kernel.
#[derive(Clone, Copy)]
pub(super) struct TypeKernels {
    pub(super) one: RowDot,
    pub(super) four: Option<FourRowDot>,
    pub(super) four_by_two: Option<FourRowPairDot>,
}

/// Instruction set of a kernel set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "AVX2",
        })
    }
}

/// The row kernels of one instruction set, one per supported weight type.
///
/// A SIMD kernel set can only be obtained on a CPU that runs it, so holding a `Kernels` is
/// enough to call any of its kernels.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(super) isa: Isa,
    pub(super) q4_0: TypeKernels,
    pub(super) q4_1: TypeKernels,
    pub(super) q8_0: TypeKernels,
    pub(super) f16: TypeKernels,
    pub(super) f32: TypeKernels,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).finish_non_exhaustive()
    }
}

impl Kernels {
    /// Returns the scalar reference kernels, which run on every CPU.
    pub fn scalar() -> Kernels {
        Kernels {
            isa: Isa::Scalar,
            q4_0: TypeKernels { one: scalar_q4_0, four: None, four_by_two: None },
            q4_1: TypeKernels { one: scalar_q4_1, four: None, four_by_two: None },
            q8_0: TypeKernels { one: scalar_q8_0, four: None, four_by_two: None },
            f16: TypeKernels { one: scalar_f16, four: None, four_by_two: None },
            f32: TypeKernels { one: scalar_f32, four: None, four_by_two: None },
        }
    }

    /// Returns the AVX2 kernels, or `None` when the CPU lacks AVX2 or F16C or is not x86-64.
    pub fn avx2() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        {
            super::avx2::kernels()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Returns the fastest kernels this CPU runs.
    pub fn best_available() -> Kernels {
        Self::avx2().unwrap_or_else(Self::scalar)
    }

    /// Returns the kernels every matrix product uses unless given others: the scalar ones when
    /// `MER_FORCE_SCALAR=1`, the fastest available otherwise. The first call decides, and later
    /// calls return the same kernels.
    pub fn selected() -> Kernels {
        static SELECTED: OnceLock<Kernels> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let forced = force_scalar_requested(std::env::var_os(FORCE_SCALAR_VAR).as_deref());
            let kernels = if forced { Self::scalar() } else { Self::best_available() };
            let reason = if forced { "forced by" } else { "best available, no" };
            log::debug!("dot-product kernels: {} ({reason} {FORCE_SCALAR_VAR}=1)", kernels.isa);
            kernels
        })
    }

    /// Returns the instruction set of these kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Returns the kernels for weights of type `ggml_type`.
    ///
    /// # Panics
    /// If the type has no kernel. `MatRef::new` rejects such types earlier.
    pub(super) fn for_type(&self, ggml_type: GgmlType) -> TypeKernels {
        match ggml_type {
            GgmlType::Q4_0 => self.q4_0,
            GgmlType::Q4_1 => self.q4_1,
            GgmlType::Q8_0 => self.q8_0,
            GgmlType::F16 => self.f16,
            GgmlType::F32 => self.f32,
            other => panic!("no dot-product kernel for type {other}"),
        }
    }
}

/// Returns whether a value of `MER_FORCE_SCALAR` requests the scalar kernels. `1` does, and an
/// unset, empty or `0` value does not. Any other value is logged as a warning and ignored.
fn force_scalar_requested(value: Option<&OsStr>) -> bool {
    let Some(value) = value else {
        return false;
    };
    match value.to_str() {
        Some("1") => true,
        Some("" | "0") => false,
        _ => {
            log::warn!("ignoring {FORCE_SCALAR_VAR}={value:?}: expected 1 (force scalar kernels) or 0");
            false
        }
    }
}

fn scalar_q4_0(row: &[u8], x: &Activation) -> f32 {
    kernels::dot_q4_0(as_blocks(row), &x.blocks)
}

fn scalar_q4_1(row: &[u8], x: &Activation) -> f32 {
    kernels::dot_q4_1(as_blocks(row), &x.blocks)
}

fn scalar_q8_0(row: &[u8], x: &Activation) -> f32 {
    kernels::dot_q8_0(as_blocks(row), &x.blocks)
}

fn scalar_f16(row: &[u8], x: &Activation) -> f32 {
    kernels::dot_f16(row, &x.values)
}

fn scalar_f32(row: &[u8], x: &Activation) -> f32 {
    kernels::dot_f32(row, &x.values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_scalar_accepts_one() {
        assert!(force_scalar_requested(Some(OsStr::new("1"))));
    }

    #[test]
    fn force_scalar_off_when_unset_or_zero() {
        assert!(!force_scalar_requested(None));
        assert!(!force_scalar_requested(Some(OsStr::new(""))));
        assert!(!force_scalar_requested(Some(OsStr::new("0"))));
    }

    #[test]
    fn force_scalar_ignores_other_values() {
        assert!(!force_scalar_requested(Some(OsStr::new("yes"))));
    }

    #[test]
    fn scalar_kernels_report_scalar_isa() {
        assert_eq!(Kernels::scalar().isa(), Isa::Scalar);
    }

    #[test]
    fn avx2_kernels_match_cpu_support() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Kernels::avx2().is_some(), super::super::avx2::is_available());
        #[cfg(not(target_arch = "x86_64"))]
        assert!(Kernels::avx2().is_none());
    }
}
