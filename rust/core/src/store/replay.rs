//! Replay of a routing trace: the slot table, an eviction policy and the prefetcher driven by
//! recorded routing, with no reads and no compute.
//!
//! A routing trace records each FFN step of a run (one layer of one batch of tokens): the experts
//! each token was routed to, the store requests the step made, and the predictor's guesses for
//! later layers. [`Replay`] feeds the requests to a fresh [`SlotTable`] in the order and grouping
//! of the streaming store: each group is requested expert by expert, then unpinned. With the live
//! run's slot count and policy and prefetch off, the replay makes the same choices as the live
//! store and counts the same hits and misses.
//!
//! The replay has no clock. Every demand read and every prefetch completes the moment it is
//! issued, so a prefetch always arrives before the demand request for its expert. Its prefetch
//! figures are therefore an upper bound on what the live store gets from the same predictions.
//! Reading the trace file is left to the caller: the Python package parses the JSON lines.

use std::collections::HashMap;

use super::policy::{EvictionPolicy, GlobalLru, PerLayerLru};
use super::stats::StoreStats;
use super::table::{Demand, DemandNotes, SlotTable};
use super::ExpertId;
use crate::error::{Error, Result};
use crate::stats::Phase;

/// The model dimensions a trace was recorded with.
#[derive(Clone, Copy, Debug)]
pub struct TraceShape {
    pub n_layer: usize,
    /// Experts per MoE layer, or 0 for a dense model, whose FFN the store counts as one expert.
    pub n_expert: usize,
    /// Experts each token uses per layer, or 0 for a dense model.
    pub n_expert_used: usize,
    /// Bytes one expert read costs, counted for each demand read and each prefetch.
    pub expert_bytes: u64,
}

impl TraceShape {
    fn experts_per_layer(&self) -> usize {
        self.n_expert.max(1)
    }

    fn experts_used(&self) -> usize {
        self.n_expert_used.max(1)
    }
}

/// One FFN step of a trace: one layer of one batch of tokens.
#[derive(Clone, Debug)]
pub struct TraceStep {
    /// Line of the trace file the step came from, named in error messages.
    pub line: usize,
    /// Number of the batch (one forward call) the step belongs to.
    pub batch: u64,
    pub phase: Phase,
    pub layer: usize,
    /// Each token's routed experts.
    pub routed: Vec<Vec<usize>>,
    /// The store requests of the step in order, each the experts pinned together.
    pub groups: Vec<Vec<usize>>,
    /// The predictor's guesses made at this step: (target layer, experts, most likely first).
    pub predicted: Vec<(usize, Vec<usize>)>,
    /// The prefetches the traced run issued at this step. The replay only counts them, to set
    /// beside its own.
    pub prefetched: Vec<ExpertId>,
}

/// Settings of a replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Slots in the pool. More slots than the trace has experts are cut to one per expert, as the
    /// streaming store does.
    pub slots: usize,
    /// Eviction policy name: "per-layer-lru" or "lru".
    pub policy: String,
    /// Whether each step prefetches every expert it predicted.
    pub prefetch: bool,
}

/// The outcome of a replay. The counters mean what they mean in the streaming store's report,
/// except that `io_wait_s` and the read latencies stay zero.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub slots: usize,
    pub policy: &'static str,
    pub prefetch: bool,
    /// Steps replayed.
    pub steps: u64,
    /// Prefetches the traced run issued, over the steps replayed.
    pub recorded_prefetches: u64,
    pub stats: StoreStats,
}

/// The names [`eviction_policy`] accepts.
pub const POLICY_NAMES: [&str; 2] = ["per-layer-lru", "lru"];

/// Builds the eviction policy called `name` for `n_slots` slots over `n_layer` layers.
pub fn eviction_policy(name: &str, n_slots: usize, n_layer: usize) -> Option<Box<dyn EvictionPolicy>> {
    match name {
        "per-layer-lru" => Some(Box::new(PerLayerLru::new(n_slots, n_layer))),
        "lru" => Some(Box::new(GlobalLru)),
        _ => None,
    }
}

/// A replay in progress: a slot table that no read ever waits on, and the counters.
pub struct Replay {
    shape: TraceShape,
    prefetch: bool,
    table: SlotTable,
    stats: StoreStats,
    steps: u64,
    recorded_prefetches: u64,
    /// The batch of the last step, and the latest guess made in that batch for each target layer.
    batch: Option<u64>,
    predictions: HashMap<usize, Vec<usize>>,
}

/// The maximum number of experts in a replayed trace. The replay keeps state per expert, and
/// models with the most experts today have tens of thousands.
const MAX_EXPERTS: usize = 1 << 20;

impl Replay {
    /// Starts a replay of a trace of `shape`. Fails when the slot count is below the streaming
    /// store's minimum (the experts one layer uses, plus one) or the policy is unknown.
    pub fn new(shape: TraceShape, options: &ReplayOptions) -> Result<Self> {
        if shape.n_layer == 0 {
            return Err(Error::InvalidArgument("the trace has 0 layers, but a model has at least one".into()));
        }
        if shape.n_expert > 0 && !(1..=shape.n_expert).contains(&shape.n_expert_used) {
            return Err(Error::InvalidArgument(format!(
                "the trace uses {} experts per token, but that must be between 1 and its {} experts per layer",
                shape.n_expert_used, shape.n_expert
            )));
        }
        let total_experts = shape.n_layer.saturating_mul(shape.experts_per_layer());
        if total_experts > MAX_EXPERTS {
            return Err(Error::InvalidArgument(format!(
                "the trace has {total_experts} experts (layers x experts per layer), more than the {MAX_EXPERTS} \
                 a replay accepts"
            )));
        }
        let minimum = (shape.experts_used() + 1).min(total_experts);
        if options.slots < minimum {
            return Err(Error::InvalidArgument(format!(
                "{} slot(s) are too few: the streaming store needs at least {minimum} (the experts one layer uses, \
                 {}, plus one)",
                options.slots,
                shape.experts_used()
            )));
        }
        let slots = options.slots.min(total_experts);
        let policy = eviction_policy(&options.policy, slots, shape.n_layer).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown eviction policy {:?}: expected one of {}",
                options.policy,
                POLICY_NAMES.join(", ")
            ))
        })?;
        let mut stats = StoreStats::default();
        stats.prefetch.routed = vec![0; shape.n_layer];
        stats.prefetch.predicted_routed = vec![0; shape.n_layer];
        Ok(Replay {
            shape,
            prefetch: options.prefetch,
            table: SlotTable::new(slots, policy),
            stats,
            steps: 0,
            recorded_prefetches: 0,
            batch: None,
            predictions: HashMap::new(),
        })
    }

    /// Replays one step: counts the recall of the guesses made for its layer earlier in its
    /// batch, requests its groups, and prefetches its guesses after the first group, while that
    /// group is still pinned (as the live store issues them). Checks the step first, and changes
    /// nothing when it is invalid.
    pub fn step(&mut self, step: &TraceStep) -> Result<()> {
        self.check(step)?;
        if self.batch != Some(step.batch) {
            self.batch = Some(step.batch);
            self.predictions.clear();
        }

        if let Some(predicted) = self.predictions.get(&step.layer) {
            for experts in &step.routed {
                self.stats.prefetch.record_routing(step.layer, experts, predicted);
            }
        }
        let mut predicted: Vec<&(usize, Vec<usize>)> = step.predicted.iter().collect();
        predicted.sort_by_key(|(target, _)| *target);
        for (target, experts) in &predicted {
            self.predictions.insert(*target, experts.clone());
        }

        for (i, group) in step.groups.iter().enumerate() {
            let pinned = self.request_group(step, group)?;
            if i == 0 && self.prefetch {
                for (target, experts) in &predicted {
                    for &expert in experts {
                        self.prefetch_expert(step.phase, ExpertId { layer: *target, expert });
                    }
                }
            }
            for index in pinned {
                self.table.unpin(index);
            }
        }
        self.steps += 1;
        self.recorded_prefetches += step.prefetched.len() as u64;
        Ok(())
    }

    /// Returns the slot count, the policy and the counters so far.
    pub fn report(&self) -> ReplayReport {
        ReplayReport {
            slots: self.table.slots.len(),
            policy: self.table.policy_name(),
            prefetch: self.prefetch,
            steps: self.steps,
            recorded_prefetches: self.recorded_prefetches,
            stats: self.stats.clone(),
        }
    }

    /// Requests each expert of `group` and returns the pinned slots. A read completes at once.
    fn request_group(&mut self, step: &TraceStep, group: &[usize]) -> Result<Vec<usize>> {
        let mut pinned = Vec::with_capacity(group.len());
        for &expert in group {
            let (demand, notes) = self.table.request(ExpertId { layer: step.layer, expert });
            let counters = self.stats.phase_mut(step.phase);
            match demand {
                Demand::Hit(index) => {
                    counters.hits += 1;
                    if notes.prefetch_used {
                        self.stats.prefetch.hits += 1;
                    }
                    pinned.push(index);
                }
                // Reads finish as they start, so nothing is ever pending here, but the live
                // store counts a pending expert as a miss and so does the replay.
                Demand::Pending(index) => {
                    counters.misses += 1;
                    pinned.push(index);
                }
                Demand::Read(index) => {
                    counters.misses += 1;
                    counters.reads += 1;
                    counters.bytes_read += self.shape.expert_bytes;
                    self.table.finish(index, Ok(()));
                    pinned.push(index);
                }
                Demand::Full => {
                    // Groups are checked to be smaller than the pool, so only a bug gets here.
                    for index in pinned {
                        self.table.unpin(index);
                    }
                    return Err(Error::InvalidArgument(format!(
                        "line {}: every one of the {} slots is pinned, so expert {expert} of layer {} finds no slot",
                        step.line,
                        self.table.slots.len(),
                        step.layer
                    )));
                }
            }
            self.count_notes(notes);
        }
        Ok(pinned)
    }

    /// Prefetches `id` unless it is present or no slot may be taken. The read completes at once.
    fn prefetch_expert(&mut self, phase: Phase, id: ExpertId) {
        let Some((index, evicted)) = self.table.prefetch(id) else {
            return;
        };
        self.stats.prefetch.issued += 1;
        self.stats.phase_mut(phase).bytes_read += self.shape.expert_bytes;
        self.count_notes(DemandNotes { prefetch_used: false, evicted });
        self.table.finish(index, Ok(()));
    }

    fn count_notes(&mut self, notes: DemandNotes) {
        if notes.prefetch_used {
            self.stats.prefetch.used += 1;
        }
        if notes.evicted.is_some_and(|e| e.unused_prefetch) {
            self.stats.prefetch.wasted_bytes += self.shape.expert_bytes;
        }
    }

    /// Checks that every layer and expert id of `step` is in range, that each group fits the
    /// streaming store's requests and that guesses are for later layers.
    fn check(&self, step: &TraceStep) -> Result<()> {
        let line = step.line;
        let invalid = |message: String| Err(Error::InvalidArgument(format!("line {line}: {message}")));
        let n_layer = self.shape.n_layer;
        let per_layer = self.shape.experts_per_layer();
        let used = self.shape.experts_used();
        if step.layer >= n_layer {
            return invalid(format!("layer {} is out of range: the trace has {n_layer} layers", step.layer));
        }
        let check_experts = |what: &str, layer: usize, experts: &[usize]| -> Result<()> {
            if let Some(bad) = experts.iter().find(|&&e| e >= per_layer) {
                return invalid(format!(
                    "{what} names expert {bad} of layer {layer}, out of range: the trace has {per_layer} experts per \
                     layer (ids 0 to {})",
                    per_layer - 1
                ));
            }
            let mut sorted = experts.to_vec();
            sorted.sort_unstable();
            if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
                return invalid(format!("{what} names expert {} of layer {layer} twice", pair[0]));
            }
            Ok(())
        };

        for experts in &step.routed {
            check_experts("routed", step.layer, experts)?;
            if experts.len() > used {
                return invalid(format!("a token is routed to {} experts, more than the {used} a token uses", experts.len()));
            }
        }
        if step.groups.is_empty() {
            return invalid("the step has no groups: every FFN step requests at least one expert".into());
        }
        for group in &step.groups {
            check_experts("a group", step.layer, group)?;
            if group.is_empty() || group.len() > used {
                return invalid(format!("a group has {} experts: expected 1 to {used}, the experts a token uses", group.len()));
            }
        }
        let mut targets: Vec<usize> = Vec::with_capacity(step.predicted.len());
        for (target, experts) in &step.predicted {
            if *target >= n_layer {
                return invalid(format!("a prediction targets layer {target}, out of range: the trace has {n_layer} layers"));
            }
            if *target <= step.layer {
                return invalid(format!(
                    "the step of layer {} predicts layer {target}: a prediction must target a later layer",
                    step.layer
                ));
            }
            if targets.contains(target) {
                return invalid(format!("layer {target} is predicted twice"));
            }
            targets.push(*target);
            check_experts("a prediction", *target, experts)?;
        }
        for id in &step.prefetched {
            if id.layer >= n_layer {
                return invalid(format!("a prefetch names layer {}, out of range: the trace has {n_layer} layers", id.layer));
            }
            check_experts("a prefetch", id.layer, &[id.expert])?;
        }
        Ok(())
    }
}

/// Replays `steps` in order and returns the report.
pub fn replay<'a>(shape: TraceShape, steps: impl IntoIterator<Item = &'a TraceStep>, options: &ReplayOptions) -> Result<ReplayReport> {
    let mut replay = Replay::new(shape, options)?;
    for step in steps {
        replay.step(step)?;
    }
    Ok(replay.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPERT_BYTES: u64 = 1000;

    fn shape(n_layer: usize, n_expert: usize, n_expert_used: usize) -> TraceShape {
        TraceShape { n_layer, n_expert, n_expert_used, expert_bytes: EXPERT_BYTES }
    }

    fn options(slots: usize, policy: &str, prefetch: bool) -> ReplayOptions {
        ReplayOptions { slots, policy: policy.into(), prefetch }
    }

    /// Builds a decode step: one token routed to `experts`, requested as one group.
    fn decode(batch: u64, layer: usize, experts: &[usize]) -> TraceStep {
        TraceStep {
            line: 0,
            batch,
            phase: Phase::Decode,
            layer,
            routed: vec![experts.to_vec()],
            groups: vec![experts.to_vec()],
            predicted: Vec::new(),
            prefetched: Vec::new(),
        }
    }

    /// Two layers, one expert per token, over four tokens: layer 0 always uses expert 0 and
    /// layer 1 cycles through experts 0 to 3. Layer 0 guesses `guess(token)` for layer 1.
    fn cycling_trace(guess: impl Fn(usize) -> usize) -> Vec<TraceStep> {
        let mut steps = Vec::new();
        for token in 0..4 {
            let mut first = decode(token as u64, 0, &[0]);
            first.predicted = vec![(1, vec![guess(token)])];
            steps.push(first);
            steps.push(decode(token as u64, 1, &[token % 4]));
        }
        steps
    }

    fn with_lines(mut steps: Vec<TraceStep>) -> Vec<TraceStep> {
        for (i, step) in steps.iter_mut().enumerate() {
            step.line = i + 2;
        }
        steps
    }

    /// Both layers alternate between experts 0 and 1, so the four experts cycle through three
    /// slots in the same order every token.
    fn alternating_trace() -> Vec<TraceStep> {
        (0..4).flat_map(|token| [decode(token, 0, &[token as usize % 2]), decode(token, 1, &[token as usize % 2])]).collect()
    }

    #[test]
    fn global_lru_misses_every_cyclic_request() {
        // Three slots for a cycle of four experts: LRU always evicts the next one needed.
        let report = replay(shape(2, 4, 1), &alternating_trace(), &options(3, "lru", false)).unwrap();
        assert_eq!(report.policy, "lru");
        assert_eq!(report.stats.decode.hits, 0);
        assert_eq!(report.stats.decode.misses, 8);
        assert_eq!(report.stats.decode.reads, 8);
        assert_eq!(report.stats.decode.bytes_read, 8 * EXPERT_BYTES);
    }

    #[test]
    fn per_layer_lru_keeps_each_layers_share() {
        // Token 1 misses twice and token 2 misses both (one free slot left, then layer 1 evicts
        // its own expert 0). Layer 0 then has experts 0 and 1 and hits, while layer 1, at its
        // quota of one slot, misses: 6 misses and 2 hits.
        let report = replay(shape(2, 4, 1), &alternating_trace(), &options(3, "per-layer-lru", false)).unwrap();
        assert_eq!(report.policy, "per-layer-lru");
        assert_eq!(report.stats.decode.hits, 2);
        assert_eq!(report.stats.decode.misses, 6);
        assert_eq!(report.stats.prompt.hits + report.stats.prompt.misses, 0);
        assert_eq!(report.steps, 8);
    }

    #[test]
    fn prompt_groups_count_in_prompt_phase() {
        let mut prompt = decode(0, 0, &[0, 1]);
        prompt.phase = Phase::Prompt;
        prompt.routed = vec![vec![0, 1], vec![1, 2]];
        prompt.groups = vec![vec![0, 1], vec![2]];
        let steps = [prompt, decode(1, 0, &[1, 2]), decode(2, 0, &[0, 3])];
        let report = replay(shape(1, 4, 2), &steps, &options(3, "per-layer-lru", false)).unwrap();
        assert_eq!((report.stats.prompt.hits, report.stats.prompt.misses, report.stats.prompt.reads), (0, 3, 3));
        // Expert 3 evicts expert 1, the least recent slot not pinned by expert 0.
        assert_eq!((report.stats.decode.hits, report.stats.decode.misses, report.stats.decode.reads), (3, 1, 1));
    }

    #[test]
    fn perfect_prediction_hits_after_first_request() {
        let steps = cycling_trace(|token| token % 4);
        let report = replay(shape(2, 4, 1), &steps, &options(3, "per-layer-lru", true)).unwrap();
        let stats = &report.stats;
        assert_eq!(stats.decode.misses, 1);
        assert_eq!(stats.decode.hits, 7);
        assert_eq!(stats.prefetch.issued, 4);
        assert_eq!(stats.prefetch.used, 4);
        assert_eq!(stats.prefetch.hits, 4);
        assert_eq!(stats.prefetch.wasted_bytes, 0);
        assert_eq!(stats.prefetch.precision(), 1.0);
        assert_eq!(stats.prefetch.recall(), 1.0);
        assert_eq!(stats.prefetch.recall_per_layer(), vec![0.0, 1.0]);
        // One demand read and four prefetches.
        assert_eq!(stats.decode.reads, 1);
        assert_eq!(stats.decode.bytes_read, 5 * EXPERT_BYTES);
    }

    #[test]
    fn wrong_prediction_keeps_demand_counts() {
        let wrong = cycling_trace(|token| (token + 2) % 4);
        let off = replay(shape(2, 4, 1), &wrong, &options(3, "per-layer-lru", false)).unwrap();
        let on = replay(shape(2, 4, 1), &wrong, &options(3, "per-layer-lru", true)).unwrap();
        for report in [&off, &on] {
            assert_eq!(report.stats.decode.hits, 3);
            assert_eq!(report.stats.decode.misses, 5);
            assert_eq!(report.stats.decode.reads, 5);
        }
        assert_eq!(off.stats.prefetch.issued, 0);
        assert_eq!(on.stats.prefetch.issued, 4);
        assert_eq!(on.stats.prefetch.used, 0);
        assert_eq!(on.stats.prefetch.precision(), 0.0);
        assert_eq!(on.stats.prefetch.recall(), 0.0);
        // Three of the four prefetches are evicted unused. The last is still in its slot.
        assert_eq!(on.stats.prefetch.wasted_bytes, 3 * EXPERT_BYTES);
        assert_eq!(on.stats.decode.bytes_read, 9 * EXPERT_BYTES);
    }

    #[test]
    fn recorded_prefetches_are_counted_not_replayed() {
        let mut steps = cycling_trace(|token| token % 4);
        for step in steps.iter_mut().filter(|s| s.layer == 0) {
            step.prefetched = vec![ExpertId { layer: 1, expert: 0 }];
        }
        let report = replay(shape(2, 4, 1), &steps, &options(3, "per-layer-lru", false)).unwrap();
        assert_eq!(report.recorded_prefetches, 4);
        assert_eq!(report.stats.prefetch.issued, 0);
    }

    #[test]
    fn recall_uses_predictions_of_same_batch_only() {
        // The guess for layer 1 made in batch 0 must not count for layer 1 of batch 1.
        let mut first = decode(0, 0, &[0]);
        first.predicted = vec![(1, vec![1, 2])];
        let mut prompt = decode(0, 1, &[1]);
        prompt.routed = vec![vec![1], vec![3]];
        prompt.groups = vec![vec![1], vec![3]];
        let steps = [first, prompt, decode(1, 0, &[0]), decode(1, 1, &[1])];
        let report = replay(shape(2, 4, 1), &steps, &options(4, "lru", false)).unwrap();
        assert_eq!(report.stats.prefetch.routed, vec![0, 2]);
        assert_eq!(report.stats.prefetch.predicted_routed, vec![0, 1]);
        assert_eq!(report.stats.prefetch.recall(), 0.5);
    }

    #[test]
    fn slots_above_expert_count_are_cut() {
        let report = replay(shape(2, 4, 1), &alternating_trace(), &options(100, "lru", false)).unwrap();
        assert_eq!(report.slots, 8);
        assert_eq!(report.stats.decode.misses, 4);
    }

    #[test]
    fn dense_trace_counts_one_expert_per_layer() {
        let steps: Vec<TraceStep> = (0..3).flat_map(|t| [decode(t, 0, &[0]), decode(t, 1, &[0])]).collect();
        let report = replay(shape(2, 0, 0), &steps, &options(2, "per-layer-lru", false)).unwrap();
        assert_eq!((report.stats.decode.hits, report.stats.decode.misses), (4, 2));
    }

    fn error_of(steps: Vec<TraceStep>, options: &ReplayOptions) -> String {
        replay(shape(2, 4, 1), &with_lines(steps), options).expect_err("the replay must fail").to_string()
    }

    #[test]
    fn invalid_steps_name_their_line() {
        let default = options(3, "lru", false);
        let message = error_of(vec![decode(0, 0, &[1]), decode(0, 2, &[0])], &default);
        assert_eq!(message, "line 3: layer 2 is out of range: the trace has 2 layers");

        let message = error_of(vec![decode(0, 1, &[4])], &default);
        assert!(message.starts_with("line 2: routed names expert 4 of layer 1, out of range"), "{message}");

        let mut step = decode(0, 0, &[0]);
        step.predicted = vec![(1, vec![0, 7])];
        let message = error_of(vec![step], &default);
        assert!(message.starts_with("line 2: a prediction names expert 7 of layer 1"), "{message}");

        let mut step = decode(0, 1, &[0]);
        step.predicted = vec![(1, vec![0])];
        assert!(error_of(vec![step], &default).contains("must target a later layer"));

        let mut step = decode(0, 0, &[0]);
        step.groups = vec![vec![0, 1]];
        assert!(error_of(vec![step], &default).contains("a group has 2 experts: expected 1 to 1"));

        let mut step = decode(0, 0, &[0]);
        step.groups.clear();
        assert!(error_of(vec![step], &default).contains("no groups"));

        let mut step = decode(0, 0, &[0]);
        step.prefetched = vec![ExpertId { layer: 5, expert: 0 }];
        assert!(error_of(vec![step], &default).contains("a prefetch names layer 5, out of range"));
    }

    #[test]
    fn invalid_options_are_rejected() {
        let message = error_of(Vec::new(), &options(1, "lru", false));
        assert!(message.contains("1 slot(s) are too few"), "{message}");
        let message = error_of(Vec::new(), &options(3, "fifo", false));
        assert_eq!(message, "unknown eviction policy \"fifo\": expected one of per-layer-lru, lru");
    }

    #[test]
    fn invalid_step_changes_nothing() {
        let mut replay = Replay::new(shape(2, 4, 1), &options(3, "lru", false)).unwrap();
        replay.step(&decode(0, 0, &[0])).unwrap();
        let mut bad = decode(0, 1, &[1]);
        bad.routed = vec![vec![9]];
        assert!(replay.step(&bad).is_err());
        let report = replay.report();
        assert_eq!(report.steps, 1);
        assert_eq!(report.stats.decode.misses, 1);
    }
}
