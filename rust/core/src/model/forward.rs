//! The forward pass of one token through every layer, read top to bottom.
//!
//! Each step is a function named after its math. Every output element is computed by one
//! thread in a fixed order, so the result does not depend on the thread count.

use rayon::prelude::*;

use super::config::Config;
use super::kv_cache::KvCache;
use super::weights::LayerWeights;
use super::Model;
use crate::error::{Error, Result};
use crate::quant::Activation;

impl Model {
    /// Runs one token at position `kv.len()` and appends its keys and values to `kv`. Returns the
    /// logits when `want_logits` is set.
    pub(crate) fn forward_token(&self, kv: &mut KvCache, token: u32, want_logits: bool) -> Result<Option<Vec<f32>>> {
        let config = &self.config;
        if token as usize >= config.n_vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {token} is out of range: the vocabulary has {} tokens",
                config.n_vocab
            )));
        }
        let pos = kv.len();
        if pos >= kv.capacity() {
            return Err(Error::ContextFull { n_ctx: kv.capacity() });
        }

        // Token embedding.
        let mut x = vec![0.0f32; config.n_embd];
        self.weights.token_embd.mat().dequantize_row(token as usize, &mut x);

        for (layer, weights) in self.weights.layers.iter().enumerate() {
            // Attention block with a residual connection.
            let xn = Activation::new(rmsnorm(&x, &weights.attn_norm, config.rms_eps));
            let attn = self.attention(layer, weights, &xn, pos, kv);
            add_into(&mut x, &attn);

            // FFN block (one expert, or a routed mixture) with a residual connection.
            let xn = Activation::new(rmsnorm(&x, &weights.ffn_norm, config.rms_eps));
            let ffn = self.feed_forward(layer, weights, &xn)?;
            add_into(&mut x, &ffn);
        }
        kv.advance();

        if !want_logits {
            return Ok(None);
        }
        let xn = Activation::new(rmsnorm(&x, &self.weights.output_norm, config.rms_eps));
        let output = self.weights.output_matrix().mat();
        let mut logits = vec![0.0f32; config.n_vocab];
        output.matvec(&xn, &mut logits);
        Ok(Some(logits))
    }

    /// Grouped-query causal self-attention of the token at `pos`, projected back to the model
    /// width.
    fn attention(&self, layer: usize, w: &LayerWeights, xn: &Activation, pos: usize, kv: &mut KvCache) -> Vec<f32> {
        let c = &self.config;
        let mut q = vec![0.0f32; c.n_head * c.head_dim];
        let mut k = vec![0.0f32; c.n_head_kv * c.head_dim];
        let mut v = vec![0.0f32; c.n_head_kv * c.head_dim];
        w.wq.mat().matvec(xn, &mut q);
        w.wk.mat().matvec(xn, &mut k);
        w.wv.mat().matvec(xn, &mut v);

        rope(&mut q, pos, c, &self.rope_inv_freq);
        rope(&mut k, pos, c, &self.rope_inv_freq);
        kv.store(layer, &k, &v);

        let keys = kv.keys(layer, pos + 1);
        let values = kv.values(layer, pos + 1);
        let kv_dim = c.n_head_kv * c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (c.head_dim as f32).sqrt();

        let mut heads = vec![0.0f32; c.n_head * c.head_dim];
        heads.par_chunks_mut(c.head_dim).enumerate().for_each(|(h, out)| {
            let kv_offset = (h / group) * c.head_dim;
            let qh = &q[h * c.head_dim..(h + 1) * c.head_dim];

            // Scores against every cached key, then softmax.
            let mut scores: Vec<f32> = (0..=pos)
                .map(|t| {
                    let kt = &keys[t * kv_dim + kv_offset..][..c.head_dim];
                    dot(qh, kt) * scale
                })
                .collect();
            softmax(&mut scores);

            // Weighted sum of the cached values.
            for (t, &p) in scores.iter().enumerate() {
                let vt = &values[t * kv_dim + kv_offset..][..c.head_dim];
                for (o, &vv) in out.iter_mut().zip(vt) {
                    *o += p * vv;
                }
            }
        });

        let mut out = vec![0.0f32; c.n_embd];
        w.wo.mat().matvec(&Activation::new(heads), &mut out);
        out
    }

    /// Runs the FFN: the router picks experts (a dense layer has one), and their SwiGLU outputs
    /// are summed with the router weights.
    fn feed_forward(&self, layer: usize, w: &LayerWeights, xn: &Activation) -> Result<Vec<f32>> {
        let c = &self.config;
        let (experts, expert_weights) = match &w.router {
            Some(router) => {
                let mut logits = vec![0.0f32; c.n_expert];
                router.mat().matvec(xn, &mut logits);
                route(&logits, c.n_expert_used)
            }
            None => (vec![0], vec![1.0]),
        };

        let mut out = vec![0.0f32; c.n_embd];
        self.store.with_experts(layer, &experts, &mut |weights| {
            for (expert, &scale) in weights.iter().zip(&expert_weights) {
                let n_ff = expert.gate.rows;
                let mut gate = vec![0.0f32; n_ff];
                let mut up = vec![0.0f32; n_ff];
                expert.gate.matvec(xn, &mut gate);
                expert.up.matvec(xn, &mut up);
                let hidden: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();

                let mut y = vec![0.0f32; c.n_embd];
                expert.down.matvec(&Activation::new(hidden), &mut y);
                for (o, &yy) in out.iter_mut().zip(&y) {
                    *o += scale * yy;
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Picks the top `k` experts: softmax over all router logits, the `k` largest probabilities
/// (ties go to the lower index), renormalized to sum to one.
pub fn route(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let mut probs = logits.to_vec();
    softmax(&mut probs);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // A stable sort keeps equal probabilities in index order.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.truncate(k);
    let total: f32 = order.iter().map(|&e| probs[e]).sum();
    let weights = order.iter().map(|&e| probs[e] / total).collect();
    (order, weights)
}

/// RMSNorm: x / sqrt(mean(x^2) + eps), scaled element-wise by `weight`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let sum_sq: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let scale = 1.0 / ((sum_sq / x.len() as f64) as f32 + eps).sqrt();
    x.iter().zip(weight).map(|(&v, &w)| v * scale * w).collect()
}

/// Rotary position embedding, llama style: consecutive pairs (x[2i], x[2i+1]) of the first
/// `rope_dim` dimensions of each head rotate by pos * inv_freq[i].
pub fn rope(x: &mut [f32], pos: usize, c: &Config, inv_freq: &[f32]) {
    for head in x.chunks_exact_mut(c.head_dim) {
        for (i, &freq) in inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

/// Computes the RoPE frequencies base^(-2i / rope_dim) for i < rope_dim / 2.
pub fn rope_inv_freq(c: &Config) -> Vec<f32> {
    (0..c.rope_dim / 2)
        .map(|i| (f64::from(c.rope_freq_base)).powf(-2.0 * i as f64 / c.rope_dim as f64) as f32)
        .collect()
}

/// In-place softmax, with the maximum subtracted for stability.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// SiLU: x * sigmoid(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_renormalizes_top_k() {
        let (experts, weights) = route(&[0.0, 2.0, 1.0, 2.0], 2);
        assert_eq!(experts, vec![1, 3]);
        assert!((weights[0] - 0.5).abs() < 1e-6);
        assert!((weights[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn route_breaks_ties_by_lower_index() {
        let (experts, weights) = route(&[0.0; 8], 3);
        assert_eq!(experts, vec![0, 1, 2]);
        assert!(weights.iter().all(|&w| (w - 1.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn softmax_sums_to_one_for_large_values() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0]);
        assert!(x[0] > x[2]);
    }

    #[test]
    fn rmsnorm_of_constant_is_weight() {
        let out = rmsnorm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0);
        for (o, w) in out.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((o - w).abs() < 1e-6);
        }
    }
}
