//! Hyperparameters of a llama-architecture model, read from GGUF metadata.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Architectures whose tensors and forward pass MER implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The shape of the model: everything the forward pass needs besides the weights.
#[derive(Clone, Debug)]
pub struct Config {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// Maximum tokens in one context (`context_length`).
    pub n_ctx: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// Leading dimensions of each head that RoPE rotates.
    pub rope_dim: usize,
    /// Experts per MoE layer; 0 for a dense model.
    pub n_expert: usize,
    /// Experts each token uses per MoE layer; 0 for a dense model.
    pub n_expert_used: usize,
}

impl Config {
    /// Reads the hyperparameters from metadata, and the vocabulary size from the token
    /// embedding's shape.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let embd = gguf
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::format(&gguf.path, None, "missing tensor token_embd.weight"))?;
        let n_vocab = match embd.dims.as_slice() {
            [_, n] => *n as usize,
            dims => {
                return Err(Error::format(&gguf.path, embd.index_offset, format!("tensor token_embd.weight has shape {dims:?}")))
            }
        };

        let architecture = gguf
            .optional_str("general.architecture")?
            .ok_or_else(|| Error::format(&gguf.path, None, "missing metadata key general.architecture"))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(Error::unsupported(
                &gguf.path,
                format!("architecture {architecture:?} is not supported; supported: {}", SUPPORTED_ARCHITECTURES.join(", ")),
            ));
        }
        let key = |name: &str| format!("{architecture}.{name}");
        let positive = |name: &str| -> Result<usize> {
            let value = gguf.require_u64(&key(name))?;
            if value == 0 || value > (1 << 24) {
                return Err(gguf.key_error(&key(name), format!("metadata key {} has invalid value {value}", key(name))));
            }
            Ok(value as usize)
        };

        let n_layer = positive("block_count")?;
        // Each layer has at least nine tensors, so a larger count cannot match the file.
        if n_layer > gguf.tensors.len() / 9 {
            return Err(gguf.key_error(
                &key("block_count"),
                format!("block_count is {n_layer}, but the file has only {} tensors", gguf.tensors.len()),
            ));
        }
        let n_embd = positive("embedding_length")?;
        let n_head = positive("attention.head_count")?;
        let n_head_kv = match gguf.optional_u64(&key("attention.head_count_kv"))? {
            Some(_) => positive("attention.head_count_kv")?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(gguf.key_error(
                &key("attention.head_count_kv"),
                format!("attention.head_count {n_head} is not a multiple of attention.head_count_kv {n_head_kv}"),
            ));
        }
        let head_dim = match gguf.optional_u64(&key("attention.key_length"))? {
            Some(_) => positive("attention.key_length")?,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(gguf.key_error(
                    &key("embedding_length"),
                    format!("embedding_length {n_embd} is not a multiple of head_count {n_head}"),
                ))
            }
        };
        if let Some(value_length) = gguf.optional_u64(&key("attention.value_length"))? {
            if value_length as usize != head_dim {
                return Err(Error::unsupported(
                    &gguf.path,
                    format!("attention.value_length {value_length} differs from key_length {head_dim}"),
                ));
            }
        }
        let rope_dim = match gguf.optional_u64(&key("rope.dimension_count"))? {
            Some(d) => d as usize,
            None => head_dim,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(gguf.key_error(
                &key("rope.dimension_count"),
                format!("rope.dimension_count {rope_dim} must be even and at most the head size {head_dim}"),
            ));
        }
        if let Some(scaling) = gguf.optional_str(&key("rope.scaling.type"))? {
            if scaling != "none" && scaling != "linear" {
                return Err(Error::unsupported(&gguf.path, format!("rope.scaling.type {scaling:?} is not supported")));
            }
        }
        if let Some(factor) = gguf.optional_f64(&key("rope.scaling.factor"))? {
            if factor != 0.0 && factor != 1.0 {
                return Err(Error::unsupported(&gguf.path, format!("rope.scaling.factor {factor} is not supported")));
            }
        }

        let n_expert = gguf.optional_u64(&key("expert_count"))?.unwrap_or(0) as usize;
        let n_expert_used = gguf.optional_u64(&key("expert_used_count"))?.unwrap_or(0) as usize;
        if n_expert > 0 && (n_expert_used == 0 || n_expert_used > n_expert) {
            return Err(gguf.key_error(
                &key("expert_used_count"),
                format!("expert_used_count {n_expert_used} must be between 1 and expert_count {n_expert}"),
            ));
        }

        // The KV cache grows with use, so a large context length costs nothing up front.
        let n_ctx = gguf.optional_u64(&key("context_length"))?.unwrap_or(4096);
        if n_ctx == 0 {
            return Err(gguf.key_error(&key("context_length"), format!("metadata key {} has invalid value 0", key("context_length"))));
        }
        let n_ctx = usize::try_from(n_ctx).unwrap_or(usize::MAX);
        let rms_eps = gguf.optional_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32;
        let rope_freq_base = gguf.optional_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;

        Ok(Config {
            architecture,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx,
            rms_eps,
            rope_freq_base,
            rope_dim,
            n_expert,
            n_expert_used,
        })
    }

    /// Returns whether the FFN layers are mixtures of experts.
    pub fn is_moe(&self) -> bool {
        self.n_expert > 0
    }

    /// Returns the experts per layer as the expert store counts them: a dense FFN is one expert.
    pub fn experts_per_layer(&self) -> usize {
        self.n_expert.max(1)
    }

    /// Returns the experts each token uses per layer as the expert store counts them.
    pub fn experts_used(&self) -> usize {
        self.n_expert_used.max(1)
    }
}
