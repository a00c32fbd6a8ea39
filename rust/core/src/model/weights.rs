//! Resident weights: every tensor that is not an expert, read into RAM once.

use super::config::Config;
use super::tensors::{Tensor, TensorLoader};
use crate::error::Result;

/// The non-expert weights of one transformer block.
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub ffn_norm: Vec<f32>,
    /// The MoE router (`ffn_gate_inp`): one row per expert. `None` in a dense model.
    pub router: Option<Tensor>,
}

/// All resident weights of the model.
pub struct ResidentWeights {
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// The output projection, or `None` when the model ties it to the token embedding.
    pub output: Option<Tensor>,
}

impl ResidentWeights {
    /// Reads the resident weights that `config` describes.
    pub fn load(loader: &TensorLoader<'_>, config: &Config) -> Result<Self> {
        let n_embd = config.n_embd;
        let q_dim = config.n_head * config.head_dim;
        let kv_dim = config.n_head_kv * config.head_dim;

        let token_embd = loader.matrix("token_embd.weight", config.n_vocab, n_embd)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let name = |suffix: &str| format!("blk.{layer}.{suffix}");
            let router = if config.is_moe() {
                Some(loader.matrix(&name("ffn_gate_inp.weight"), config.n_expert, n_embd)?)
            } else {
                None
            };
            layers.push(LayerWeights {
                attn_norm: loader.vector(&name("attn_norm.weight"), n_embd)?,
                wq: loader.matrix(&name("attn_q.weight"), q_dim, n_embd)?,
                wk: loader.matrix(&name("attn_k.weight"), kv_dim, n_embd)?,
                wv: loader.matrix(&name("attn_v.weight"), kv_dim, n_embd)?,
                wo: loader.matrix(&name("attn_output.weight"), n_embd, q_dim)?,
                ffn_norm: loader.vector(&name("ffn_norm.weight"), n_embd)?,
                router,
            });
        }
        let output_norm = loader.vector("output_norm.weight", n_embd)?;
        let output = if loader.has("output.weight") {
            Some(loader.matrix("output.weight", config.n_vocab, n_embd)?)
        } else {
            None
        };
        Ok(ResidentWeights { token_embd, layers, output_norm, output })
    }

    /// Bytes of RAM the resident weights take.
    pub fn n_bytes(&self) -> u64 {
        let norms = self.output_norm.len() * 4;
        let tensor_bytes = |t: &Tensor| t.data.len() as u64;
        let mut total = tensor_bytes(&self.token_embd) + norms as u64 + self.output.as_ref().map_or(0, tensor_bytes);
        for l in &self.layers {
            total += tensor_bytes(&l.wq) + tensor_bytes(&l.wk) + tensor_bytes(&l.wv) + tensor_bytes(&l.wo);
            total += ((l.attn_norm.len() + l.ffn_norm.len()) * 4) as u64;
            total += l.router.as_ref().map_or(0, tensor_bytes);
        }
        total
    }

    /// Returns the output projection: `output.weight`, or the token embedding when they are tied.
    pub fn output_matrix(&self) -> &Tensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}
