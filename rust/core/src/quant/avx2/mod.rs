//! AVX2 versions of the dot products in `kernels.rs`, for x86-64 CPUs with AVX2 and F16C.
//!
//! Each kernel returns the same bits as its scalar reference. The integer sum of a block is exact
//! here as there, and the float steps are the same operations in the same order. For quantized
//! types that is one `acc += sum * scale` per block in block order. For float types it is 32
//! partial sums reduced by the tree of `kernels::reduce_partials`. FMA is deliberately not used,
//! because a fused multiply-add rounds once where the scalar reference rounds twice.
//!
//! The quantized types also have four-row kernels. They keep one accumulator per row in the
//! lanes of one vector, so each row still adds its blocks in order, and they load and prepare
//! each activation block once for four weight rows. q4_0 also has a kernel of four rows times
//! two inputs, which unpacks each weight block once for both.
//!
//! The `unsafe fn` kernels require AVX2 and F16C. The only safe way in is [`kernels`], which
//! checks the CPU and hands out the row kernels of this module as a `Kernels` table.

mod float;
mod quantized;

pub(crate) use float::{dot_f16, dot_f32};
pub(crate) use quantized::{dot4_q4_0, dot4_q4_1, dot4x2_q4_0, dot4_q8_0, dot_q4_0, dot_q4_1, dot_q8_0};
#[cfg(test)]
pub(crate) use quantized::{q4_0_block_sum, q4_1_block_sum, q8_0_block_sum};

use super::activation::Activation;
use super::blocks::as_blocks;
use super::dispatch::{Isa, Kernels, TypeKernels};

/// Returns whether this CPU has AVX2 and F16C, which the kernels of this module need.
pub(crate) fn is_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

/// Returns the AVX2 row kernels, or `None` when the CPU lacks AVX2 or F16C.
pub(super) fn kernels() -> Option<Kernels> {
    if !is_available() {
        return None;
    }
    Some(Kernels {
        isa: Isa::Avx2,
        q4_0: TypeKernels { one: row_q4_0, four: Some(rows_q4_0), four_by_two: Some(rows_pair_q4_0) },
        q4_1: TypeKernels { one: row_q4_1, four: Some(rows_q4_1), four_by_two: None },
        q8_0: TypeKernels { one: row_q8_0, four: Some(rows_q8_0), four_by_two: None },
        f16: TypeKernels { one: row_f16, four: None, four_by_two: None },
        f32: TypeKernels { one: row_f32, four: None, four_by_two: None },
    })
}

// The row kernels below are private, and `kernels` returns them only after checking the CPU.
// That check is the invariant each of their `unsafe` blocks relies on.

fn row_q4_0(row: &[u8], x: &Activation) -> f32 {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot_q4_0(as_blocks(row), &x.blocks) }
}

fn row_q4_1(row: &[u8], x: &Activation) -> f32 {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot_q4_1(as_blocks(row), &x.blocks) }
}

fn row_q8_0(row: &[u8], x: &Activation) -> f32 {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot_q8_0(as_blocks(row), &x.blocks) }
}

fn row_f16(row: &[u8], x: &Activation) -> f32 {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot_f16(row, &x.values) }
}

fn row_f32(row: &[u8], x: &Activation) -> f32 {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot_f32(row, &x.values) }
}

fn rows_q4_0(rows: [&[u8]; 4], x: &Activation) -> [f32; 4] {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot4_q4_0(rows.map(as_blocks), &x.blocks) }
}

fn rows_pair_q4_0(rows: [&[u8]; 4], x: [&Activation; 2]) -> [[f32; 4]; 2] {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot4x2_q4_0(rows.map(as_blocks), x.map(|a| &a.blocks[..])) }
}

fn rows_q4_1(rows: [&[u8]; 4], x: &Activation) -> [f32; 4] {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot4_q4_1(rows.map(as_blocks), &x.blocks) }
}

fn rows_q8_0(rows: [&[u8]; 4], x: &Activation) -> [f32; 4] {
    // SAFETY: reachable only through `kernels`, which checked AVX2 and F16C.
    unsafe { dot4_q8_0(rows.map(as_blocks), &x.blocks) }
}
