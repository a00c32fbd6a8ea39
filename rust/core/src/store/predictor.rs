//! Predictors: guesses of the experts that a coming layer's router will pick, made early enough
//! to read those experts before the layer requests them.

use crate::model::forward::rmsnorm;
use crate::quant::{Activation, GgmlType, MatRef};

/// Ranks the experts of a coming layer for one token.
pub trait Predictor: Send + Sync {
    /// Returns the predictor's name, for stats and traces.
    fn name(&self) -> &'static str;

    /// Returns the experts of layer `target`, most likely first, for the token whose residual
    /// stream at the FFN of an earlier layer is `x`. Returns `None` when it has no guess.
    fn rank(&self, target: usize, x: &[f32]) -> Option<Vec<usize>>;
}

/// A router matrix copied out of the resident weights: type, rows, columns and bytes.
pub type RouterMatrix = (GgmlType, usize, usize, Vec<u8>);

/// One layer's router and FFN norm, copied out of the resident weights.
struct LayerRouter {
    /// The router matrix (`ffn_gate_inp`), or `None` in a dense layer.
    router: Option<RouterMatrix>,
    ffn_norm: Vec<f32>,
}

/// Next-layer gate speculation: applies the routers of coming layers to the current residual
/// stream, normed with the coming layer's FFN norm. The residual stream changes little from one
/// layer to the next, so the coming router mostly picks what it would pick there. A dense layer
/// always uses its one FFN, which this predictor ranks first.
pub struct NextLayerGate {
    layers: Vec<LayerRouter>,
    eps: f32,
    /// Ranks the least likely experts first, to test what happens when every guess is wrong.
    inverted: bool,
}

impl NextLayerGate {
    /// Creates the predictor from each layer's router (`None` in a dense layer) and FFN norm
    /// weights.
    pub fn new(layers: Vec<(Option<RouterMatrix>, Vec<f32>)>, eps: f32) -> Self {
        let layers = layers.into_iter().map(|(router, ffn_norm)| LayerRouter { router, ffn_norm }).collect();
        NextLayerGate { layers, eps, inverted: false }
    }

    /// Turns the ranking upside down, so the predictor guesses wrong on purpose.
    pub fn inverted(mut self) -> Self {
        self.inverted = true;
        self
    }
}

impl Predictor for NextLayerGate {
    fn name(&self) -> &'static str {
        if self.inverted {
            "next-layer-gate-inverted"
        } else {
            "next-layer-gate"
        }
    }

    fn rank(&self, target: usize, x: &[f32]) -> Option<Vec<usize>> {
        let layer = self.layers.get(target)?;
        let Some((ggml_type, rows, cols, data)) = &layer.router else {
            return Some(vec![0]);
        };
        let router = MatRef::new(*ggml_type, *rows, *cols, data);
        let xn = Activation::new(rmsnorm(x, &layer.ffn_norm, self.eps));
        let scores: Vec<f32> = (0..router.rows).map(|e| router.dot_row(e, &xn)).collect();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // Highest score first, ties to the lower index, as the router's own top-k.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        if self.inverted {
            order.reverse();
        }
        Some(order)
    }
}
