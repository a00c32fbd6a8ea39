//! The forward pass of a batch of tokens through every layer, read top to bottom.
//!
//! A batch is the one token being generated, or a run of prompt tokens. Each product in a batch
//! is computed exactly as it would be for its token alone, and each output element is reduced
//! by one thread in a fixed order, so the result depends neither on the batch size nor on the
//! thread count. Activations of a batch are stored token after token (`n * width` floats).

use rayon::prelude::*;

use std::sync::atomic::Ordering;

use super::config::Config;
use super::kv_cache::KvCache;
use super::weights::LayerWeights;
use super::{Logits, Model};
use crate::error::{Error, Result};
use crate::stats::Phase;
use crate::quant::{by_input, Activation, MatRef, Products};

impl Model {
    /// Runs `tokens` at positions `kv.len()` onwards and appends their keys and values to `kv`.
    /// Returns the logits that `logits` requests, `n_vocab` floats per row. On an error, `kv` may
    /// hold partial rows of these tokens, which [`KvCache::truncate_partial`] removes.
    pub(crate) fn forward_batch(&self, kv: &mut KvCache, tokens: &[u32], logits: Logits, phase: Phase) -> Result<Vec<f32>> {
        let config = &self.config;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= config.n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {token} is out of range: the vocabulary has {} tokens",
                config.n_vocab
            )));
        }
        let pos = kv.len();
        if pos + tokens.len() > kv.capacity() {
            return Err(Error::ContextFull { n_ctx: kv.capacity() });
        }
        let n = tokens.len();
        let batch = self.batches.fetch_add(1, Ordering::Relaxed);

        // Token embeddings.
        let mut x = vec![0.0f32; n * config.n_embd];
        for (row, &token) in x.chunks_exact_mut(config.n_embd).zip(tokens) {
            self.weights.token_embd.mat().dequantize_row(token as usize, row);
        }

        for (layer, weights) in self.weights.layers.iter().enumerate() {
            // Attention block with a residual connection.
            let xn = normed(&x, &weights.attn_norm, config.rms_eps);
            let attn = self.attention(layer, weights, &xn, pos, kv);
            add_into(&mut x, &attn);

            // FFN block (one expert, or a routed mixture) with a residual connection.
            let xn = normed(&x, &weights.ffn_norm, config.rms_eps);
            let ffn = self.feed_forward(layer, weights, &x, &xn, batch, phase)?;
            add_into(&mut x, &ffn);
        }
        kv.advance(n);

        // Output projection of the rows asked for.
        let rows = match logits {
            Logits::All => &x[..],
            Logits::Last => &x[(n - 1) * config.n_embd..],
            Logits::None => return Ok(Vec::new()),
        };
        let xn = normed(rows, &self.weights.output_norm, config.rms_eps);
        Ok(project(self.weights.output_matrix().mat(), &xn))
    }

    /// Grouped-query causal self-attention of a batch whose first token is at `pos`, projected
    /// back to the model width. Each token attends to the cache and to the tokens before it.
    fn attention(&self, layer: usize, w: &LayerWeights, xn: &[Activation], pos: usize, kv: &mut KvCache) -> Vec<f32> {
        let c = &self.config;
        let n = xn.len();
        let q_dim = c.n_head * c.head_dim;
        let kv_dim = c.n_head_kv * c.head_dim;

        // Query, key and value projections, in one parallel region.
        let xs: Vec<&Activation> = xn.iter().collect();
        let mut q = vec![0.0f32; q_dim * n];
        let mut k = vec![0.0f32; kv_dim * n];
        let mut v = vec![0.0f32; kv_dim * n];
        let mut products = Products::new();
        products.add(w.wq.mat(), &xs, &mut q);
        products.add(w.wk.mat(), &xs, &mut k);
        products.add(w.wv.mat(), &xs, &mut v);
        products.run();
        let (mut q, mut k, v) = (by_input(q, n), by_input(k, n), by_input(v, n));

        for (t, (qt, kt)) in q.chunks_exact_mut(q_dim).zip(k.chunks_exact_mut(kv_dim)).enumerate() {
            rope(qt, pos + t, c, &self.rope_inv_freq);
            rope(kt, pos + t, c, &self.rope_inv_freq);
        }
        kv.store(layer, &k, &v);

        let keys = kv.keys(layer, pos + n);
        let values = kv.values(layer, pos + n);
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (c.head_dim as f32).sqrt();

        // One task per head of each token.
        let mut heads = vec![0.0f32; q_dim * n];
        heads.par_chunks_mut(c.head_dim).enumerate().for_each(|(i, out)| {
            let (t, h) = (i / c.n_head, i % c.n_head);
            let kv_offset = (h / group) * c.head_dim;
            let qh = &q[t * q_dim + h * c.head_dim..][..c.head_dim];

            // Scores against every position up to the token's own, then softmax.
            let mut scores: Vec<f32> = (0..=pos + t)
                .map(|p| {
                    let kp = &keys[p * kv_dim + kv_offset..][..c.head_dim];
                    dot(qh, kp) * scale
                })
                .collect();
            softmax(&mut scores);

            // Weighted sum of the values.
            for (p, &prob) in scores.iter().enumerate() {
                let vp = &values[p * kv_dim + kv_offset..][..c.head_dim];
                for (o, &vv) in out.iter_mut().zip(vp) {
                    *o += prob * vv;
                }
            }
        });

        let heads: Vec<Activation> = heads.chunks_exact(q_dim).map(|h| Activation::new(h.to_vec())).collect();
        project(w.wo.mat(), &heads)
    }
}

/// RMSNorm of each row of `x`, quantized for the products that follow.
fn normed(x: &[f32], weight: &[f32], eps: f32) -> Vec<Activation> {
    x.chunks_exact(weight.len()).map(|row| Activation::new(rmsnorm(row, weight, eps))).collect()
}

/// Multiplies `mat` with each input, in one parallel region, and returns the results token after
/// token.
fn project(mat: MatRef<'_>, inputs: &[Activation]) -> Vec<f32> {
    let xs: Vec<&Activation> = inputs.iter().collect();
    let mut out = vec![0.0f32; mat.rows * xs.len()];
    let mut products = Products::new();
    products.add(mat, &xs, &mut out);
    products.run();
    by_input(out, xs.len())
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
