//! Block formats and kernels: the ggml type table, block layouts, activation quantization, the
//! scalar dot products and the row-parallel matrix-vector product.

pub mod activation;
pub mod blocks;
pub mod kernels;
pub mod matrix;
pub mod types;

pub use activation::Activation;
pub use matrix::{dequantize, MatRef};
pub use types::GgmlType;
