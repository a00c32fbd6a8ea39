//! The expert store: where the forward pass gets expert weights from.
//!
//! The forward pass names the experts a layer's router picked and receives their gate, up and
//! down matrices for the duration of a closure. What sits behind [`ExpertStore`] decides where
//! those bytes live. [`streaming::StreamingStore`] keeps a fixed pool of slots within the RAM
//! budget and reads experts from the model file on demand. A dense model's FFN is one expert per
//! layer that is always selected, so dense and MoE models take the same path.

pub mod io;
pub mod policy;
pub mod predictor;
pub mod prefetch;
pub mod replay;
pub mod slots;
pub mod stats;
pub mod streaming;
pub mod table;

use crate::error::Result;
use crate::quant::{GgmlType, MatRef};
use crate::stats::Phase;
pub use streaming::{StoreOptions, StoreReport, StreamingStore};

/// An expert: (layer, index within the layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpertId {
    pub layer: usize,
    pub expert: usize,
}

/// The location of one expert matrix in the model file.
#[derive(Clone, Debug)]
pub struct TensorRange {
    /// Name of the tensor the range belongs to, for error messages.
    pub tensor: String,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub n_bytes: u64,
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

/// The three byte ranges of one expert in the model file.
#[derive(Clone, Debug)]
pub struct ExpertRanges {
    pub gate: TensorRange,
    pub up: TensorRange,
    pub down: TensorRange,
}

impl ExpertRanges {
    /// Bytes of the three ranges together.
    pub fn n_bytes(&self) -> u64 {
        self.gate.n_bytes + self.up.n_bytes + self.down.n_bytes
    }
}

/// One expert's matrices, borrowed from wherever the store keeps them.
#[derive(Clone, Copy)]
pub struct ExpertWeights<'a> {
    pub gate: MatRef<'a>,
    pub up: MatRef<'a>,
    pub down: MatRef<'a>,
}

/// Access to expert weights for the forward pass.
pub trait ExpertStore: Send + Sync {
    /// Calls `f` with the weights of `experts` of `layer`, in the order given. The experts stay
    /// available until `f` returns. Once `experts` are pinned and their demand reads started,
    /// and before waiting for those reads, starts `prefetch` as [`ExpertStore::prefetch`]
    /// does, so that prefetches use the time the demand reads take and cannot evict the
    /// experts requested here. Returns the experts whose prefetch reads started.
    fn with_experts(
        &self,
        layer: usize,
        experts: &[usize],
        prefetch: &[ExpertId],
        f: &mut dyn FnMut(&[ExpertWeights<'_>]) -> Result<()>,
    ) -> Result<Vec<ExpertId>>;

    /// Bytes of RAM the store holds for expert weights.
    fn expert_ram_bytes(&self) -> u64;

    /// Sets the phase that the following accesses count in.
    fn set_phase(&self, phase: Phase);

    /// Returns the store's configuration and counters.
    fn report(&self) -> StoreReport;

    /// Zeroes the counters.
    fn reset_stats(&self);

    /// Starts reading `experts` ahead of need, most urgent first, without pinning them, and
    /// returns the experts whose reads started. Experts already there are skipped. A prefetch never
    /// takes the last free slot and never evicts a pinned expert, so it cannot delay the
    /// experts in use or starve demand reads of a slot.
    fn prefetch(&self, experts: &[ExpertId]) -> Vec<ExpertId>;

    /// Seconds the forward pass has waited for demand reads while generating.
    fn decode_io_wait_s(&self) -> f64;

    /// Cancels the prefetches of layers outside `keep` whose reads have not all started.
    fn cancel_prefetches(&self, keep: std::ops::RangeInclusive<usize>);

    /// Counts, for the recall stats, the experts `layer` routed to and which of them were in
    /// the predictor's guess.
    fn record_routing(&self, layer: usize, routed: &[usize], predicted: &[usize]);
}
