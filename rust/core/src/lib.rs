//! MER core: runs llama-architecture GGUF models, dense and Mixture-of-Experts, on the CPU.
//!
//! The crate reads GGUF files in place ([`gguf`]), keeps resident weights in RAM and gets
//! expert weights through the expert store ([`store`]), and runs the forward pass
//! ([`model`]) with quantized kernels ([`quant`]). It has no Python dependency; the `mer-python`
//! crate wraps it.

pub mod aligned;
pub mod bench;
pub mod error;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod stats;
pub mod store;

pub use error::{Error, Result};
pub use model::{Logits, Model, ModelOptions};
pub use stats::{Phase, RunStats};
