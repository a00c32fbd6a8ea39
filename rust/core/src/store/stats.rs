//! Counters of the expert store, kept per phase so that decode figures exclude the prompt.

use crate::stats::Phase;

/// Most read latencies kept for percentiles; later reads overwrite the oldest.
const MAX_LATENCIES: usize = 1 << 20;

/// Hits, misses, bytes, waiting time and read latencies of one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseCounters {
    /// Routed experts that were resident when their layer needed them.
    pub hits: u64,
    /// Routed experts that were not resident (being read, or not present).
    pub misses: u64,
    /// Bytes read from the file.
    pub bytes_read: u64,
    /// Expert reads started.
    pub reads: u64,
    /// Seconds the forward pass waited for expert reads.
    pub io_wait_s: f64,
    /// Latency of each expert read (submit to completion), in microseconds.
    latencies_us: Vec<u32>,
    next_latency: usize,
}

impl PhaseCounters {
    /// Returns hits / (hits + misses), or 0 before any access.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// Records the latency of one finished expert read.
    pub fn record_latency(&mut self, micros: u64) {
        let value = micros.min(u64::from(u32::MAX)) as u32;
        if self.latencies_us.len() < MAX_LATENCIES {
            self.latencies_us.push(value);
        } else {
            self.latencies_us[self.next_latency] = value;
            self.next_latency = (self.next_latency + 1) % MAX_LATENCIES;
        }
    }

    /// Returns the p50, p95 and p99 read latencies in microseconds (0 when nothing was read).
    pub fn latency_percentiles(&self) -> [u64; 3] {
        if self.latencies_us.is_empty() {
            return [0; 3];
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        [0.50, 0.95, 0.99].map(|q| u64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]))
    }
}

/// Counters of prefetching and of the predictor behind it.
#[derive(Clone, Debug, Default)]
pub struct PrefetchCounters {
    /// Prefetch reads started.
    pub issued: u64,
    /// Prefetched experts that a demand request then used (ready or still being read).
    pub used: u64,
    /// Prefetched experts that were ready when the demand request came.
    pub hits: u64,
    /// Prefetches cancelled before all their reads started.
    pub cancelled: u64,
    /// Bytes of prefetched experts evicted or cancelled without being used.
    pub wasted_bytes: u64,
    /// Per layer: routed experts the predictor had guessed, and routed experts it had a guess
    /// for (whether or not the guess was prefetched).
    pub predicted_routed: Vec<u64>,
    pub routed: Vec<u64>,
}

impl PrefetchCounters {
    /// Returns used / issued, or 0 before any prefetch.
    pub fn precision(&self) -> f64 {
        ratio(self.used, self.issued)
    }

    /// Returns the share of routed experts that the predictor had guessed, over all layers.
    pub fn recall(&self) -> f64 {
        ratio(self.predicted_routed.iter().sum(), self.routed.iter().sum())
    }

    /// Returns the recall of each layer (0 for a layer the predictor makes no guess for).
    pub fn recall_per_layer(&self) -> Vec<f64> {
        self.predicted_routed.iter().zip(&self.routed).map(|(&p, &r)| ratio(p, r)).collect()
    }

    /// Counts the routed experts of `layer` and how many of them were in `predicted`.
    pub fn record_routing(&mut self, layer: usize, routed: &[usize], predicted: &[usize]) {
        if self.routed.len() <= layer {
            self.routed.resize(layer + 1, 0);
            self.predicted_routed.resize(layer + 1, 0);
        }
        self.routed[layer] += routed.len() as u64;
        self.predicted_routed[layer] += routed.iter().filter(|e| predicted.contains(e)).count() as u64;
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// All store counters.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub prompt: PhaseCounters,
    pub decode: PhaseCounters,
    pub prefetch: PrefetchCounters,
}

impl StoreStats {
    /// Returns the counters of `phase`.
    pub fn phase_mut(&mut self, phase: Phase) -> &mut PhaseCounters {
        match phase {
            Phase::Prompt => &mut self.prompt,
            Phase::Decode => &mut self.decode,
        }
    }
}
