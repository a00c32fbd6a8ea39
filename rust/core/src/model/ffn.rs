//! The FFN block of a batch: routing, then each expert's SwiGLU run once for all the tokens
//! routed to it, reading the weights straight from the expert store's slots.
//!
//! A dense layer is the case of one expert that every token uses with weight 1. Each token
//! adds its experts' outputs in ascending expert id order, whatever the batch, the slot count
//! or the thread count, so its result is the same bits in every case.

use rayon::prelude::*;

use super::config::Config;
use super::forward::{route, silu};
use super::trace::TraceStep;
use super::weights::LayerWeights;
use super::Model;
use crate::error::Result;
use crate::quant::{by_input, Activation, Products, ROWS_PER_TASK};
use crate::stats::Phase;
use crate::store::prefetch::StepPlan;
use crate::store::ExpertWeights;

/// One token's experts in ascending id order, with their router weights.
type Route = Vec<(usize, f32)>;

impl Model {
    /// Runs the FFN of `layer` on the normed inputs `xn` and returns its output, token after
    /// token. `x` is the residual stream the inputs were normed from. For a generated token,
    /// the prefetcher guesses the coming layers' experts from it, and the reads it requests
    /// start while this layer computes.
    pub(crate) fn feed_forward(
        &self,
        layer: usize,
        w: &LayerWeights,
        x: &[f32],
        xn: &[Activation],
        batch: u64,
        phase: Phase,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let store = self.store.as_ref();
        let n = xn.len();
        let routes = routes(c, w, xn);
        let routed: Vec<Vec<usize>> = routes.iter().map(|r| r.iter().map(|&(e, _)| e).collect()).collect();

        // Every expert the batch uses, in ascending order, a group at a time. A group is as many
        // experts as one token uses, which the slot pool always has room for, so each expert is
        // read once per batch at any RAM budget.
        let mut used: Vec<usize> = routed.iter().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        let groups: Vec<&[usize]> = used.chunks(c.experts_used()).collect();

        // Guesses and prefetches are made one token at a time, so only while generating.
        let generating = n == 1 && phase == Phase::Decode;
        let plan = if generating { self.prefetcher.step(store, layer, x, &routed[0]) } else { StepPlan::default() };
        if generating && self.prefetcher.options().enabled {
            store.cancel_prefetches(layer..=layer + self.prefetcher.options().lookahead);
        }

        let mut out = vec![0.0f32; c.n_embd * n];
        let mut prefetched = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            // The store starts the prefetches once this layer's first experts are pinned, so
            // that no prefetch can evict them, and before waiting for their reads.
            let prefetch = if g == 0 { &plan.prefetch[..] } else { &[] };
            let started = store.with_experts(layer, group, prefetch, &mut |weights| {
                run_experts(group, weights, &routes, xn, &mut out);
                Ok(())
            })?;
            prefetched.extend(started);
        }

        if let Some(trace) = &self.trace {
            trace.step(&TraceStep {
                batch,
                phase,
                layer,
                routed: &routed,
                groups: &groups,
                predicted: &plan.predicted,
                prefetched: &prefetched,
            })?;
        }
        Ok(by_input(out, n))
    }
}

/// Routes each token: the router's top experts, or expert 0 with weight 1 in a dense layer.
fn routes(c: &Config, w: &LayerWeights, xn: &[Activation]) -> Vec<Route> {
    let Some(router) = &w.router else {
        return vec![vec![(0, 1.0)]; xn.len()];
    };
    let xs: Vec<&Activation> = xn.iter().collect();
    let mut logits = vec![0.0f32; c.n_expert * xs.len()];
    let mut products = Products::new();
    products.add(router.mat(), &xs, &mut logits);
    products.run();
    by_input(logits, xs.len())
        .chunks_exact(c.n_expert)
        .map(|token_logits| {
            let (experts, weights) = route(token_logits, c.n_expert_used);
            let mut pairs: Route = experts.into_iter().zip(weights).collect();
            pairs.sort_unstable_by_key(|&(e, _)| e);
            pairs
        })
        .collect()
}

/// Runs experts `ids`, whose weights are `weights` in the same order, on the tokens routed to
/// them, and adds each token's weighted outputs into `out`, laid out by row
/// (`out[r * n + t]` for token `t` of `n`).
fn run_experts(ids: &[usize], weights: &[ExpertWeights<'_>], routes: &[Route], xn: &[Activation], out: &mut [f32]) {
    let n = xn.len();
    let tokens: Vec<Vec<usize>> =
        ids.iter().map(|&e| (0..n).filter(|&t| routes[t].iter().any(|&(used, _)| used == e)).collect()).collect();
    let hidden = swiglu(weights, &tokens, xn);

    // For each token, the experts of this group it uses: (index in `ids`, index of the token
    // among that expert's tokens, router weight), in ascending expert id order.
    let uses: Vec<Vec<(usize, usize, f32)>> = (0..n)
        .map(|t| {
            routes[t]
                .iter()
                .filter_map(|&(e, weight)| {
                    let j = ids.iter().position(|&id| id == e)?;
                    let k = tokens[j].binary_search(&t).ok()?;
                    Some((j, k, weight))
                })
                .collect()
        })
        .collect();

    // Down projections: each task owns a range of output rows and adds, for each token, its
    // experts' weighted products in order.
    out.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, chunk)| {
        let first = task * ROWS_PER_TASK;
        let mut y = vec![0.0f32; chunk.len() / n];
        for (t, token_uses) in uses.iter().enumerate() {
            for &(j, k, weight) in token_uses {
                weights[j].down.dot_rows(first, &[&hidden[j][k]], &mut y);
                for (i, &value) in y.iter().enumerate() {
                    chunk[i * n + t] += weight * value;
                }
            }
        }
    });
}

/// SiLU(gate · x) * (up · x) of each expert for each of its tokens, in one parallel region, and
/// quantized for the down projection. Gate and up rows are computed together, so the hidden
/// state is written once. Returns, per expert, one activation per token in `tokens`.
fn swiglu(weights: &[ExpertWeights<'_>], tokens: &[Vec<usize>], xn: &[Activation]) -> Vec<Vec<Activation>> {
    let inputs: Vec<Vec<&Activation>> = tokens.iter().map(|ts| ts.iter().map(|&t| &xn[t]).collect()).collect();
    let mut by_row: Vec<Vec<f32>> = weights.iter().zip(&inputs).map(|(w, xs)| vec![0.0f32; w.gate.rows * xs.len()]).collect();

    let mut tasks = Vec::new();
    for (j, buffer) in by_row.iter_mut().enumerate() {
        let n_j = inputs[j].len();
        if n_j == 0 {
            continue;
        }
        for (i, chunk) in buffer.chunks_mut(ROWS_PER_TASK * n_j).enumerate() {
            tasks.push((j, i * ROWS_PER_TASK, chunk));
        }
    }
    tasks.into_par_iter().for_each(|(j, first, chunk)| {
        let (w, xs) = (&weights[j], &inputs[j][..]);
        let mut up = vec![0.0f32; chunk.len()];
        w.gate.dot_rows(first, xs, chunk);
        w.up.dot_rows(first, xs, &mut up);
        for (g, &u) in chunk.iter_mut().zip(&up) {
            *g = silu(*g) * u;
        }
    });

    by_row
        .into_iter()
        .zip(&inputs)
        .map(|(rows, xs)| {
            if xs.is_empty() {
                return Vec::new();
            }
            let n_ff = rows.len() / xs.len();
            by_input(rows, xs.len()).chunks_exact(n_ff).map(|h| Activation::new(h.to_vec())).collect()
        })
        .collect()
}
