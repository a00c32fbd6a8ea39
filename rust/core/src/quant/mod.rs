//! Block formats and kernels: the ggml type table, block layouts, activation quantization, the
//! scalar and AVX2 dot products with their run-time dispatch, and the row-parallel
//! matrix-vector product.

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod blocks;
pub mod dispatch;
pub mod kernels;
pub mod matrix;
pub mod probe;
#[cfg(all(test, target_arch = "x86_64"))]
mod simd_tests;
pub mod types;

pub use activation::Activation;
pub use dispatch::{Isa, Kernels};
pub use matrix::{by_input, dequantize, MatRef, Products, ROWS_PER_TASK};
pub use types::GgmlType;
