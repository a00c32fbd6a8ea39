//! The streaming expert store: a fixed pool of slots, filled from the model file on demand.
//!
//! The life of an expert read: the forward pass requests a layer's routed experts. A resident
//! expert is pinned at once (a hit). A missing one gets a slot (a free one, or a victim that the
//! eviction policy picks among unpinned, fully read slots), is marked Loading and pinned, and its
//! aligned ranges are submitted to the I/O backend (a demand read). A second request for an
//! expert that is still Loading waits for the same read. When every requested expert is Ready,
//! the forward pass runs on the slot memory, then unpins. A failed read marks the slot Failed;
//! every waiter gets the error, and the slot empties once the last waiter unpins it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::io::{open_backend, BackendChoice, IoOptions, ReadBackend, ReadChunk, ReadJob, DIRECT_ALIGN};
use super::policy::PerLayerLru;
use super::slots::SlotLayout;
use super::stats::StoreStats;
use super::table::{Demand, SlotTable, Status};
use super::{ExpertId, ExpertRanges, ExpertStore, ExpertWeights};
use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::quant::MatRef;
use crate::stats::Phase;

/// Options of the streaming store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes for slots; `None` gives every expert a slot.
    pub ram_budget: Option<u64>,
    pub backend: BackendChoice,
    pub io: IoOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { ram_budget: None, backend: BackendChoice::Auto, io: IoOptions::default() }
    }
}

struct State {
    table: SlotTable,
    /// The read job of each Loading slot, to raise its priority or cancel it.
    jobs: Vec<Option<Arc<ReadJob>>>,
    stats: StoreStats,
}

/// State shared with the read completions, which run on I/O threads.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Experts streamed from the model file into a fixed slot pool.
pub struct StreamingStore {
    // Field order matters: the backend is dropped (and its threads joined) before the slots it
    // writes into are freed.
    backend: Box<dyn ReadBackend>,
    /// The slot pool: slot `i` is bytes `i * slot_bytes..(i + 1) * slot_bytes`. One mapping
    /// lets the kernel back it with huge pages even when a slot is smaller than one.
    pool: AlignedBuf,
    n_slots: usize,
    shared: Arc<Shared>,
    ranges: Vec<Vec<ExpertRanges>>,
    layout: SlotLayout,
    path: PathBuf,
    io: IoOptions,
    backend_reason: String,
    ram_budget: Option<u64>,
    phase: AtomicU8,
}

impl StreamingStore {
    /// Allocates the slot pool for `ranges` (indexed by layer, then expert) within the RAM
    /// budget, and opens the I/O backend. `experts_used` is how many experts one layer needs at
    /// once; the pool must hold at least one more than that.
    pub fn open(path: &Path, ranges: Vec<Vec<ExpertRanges>>, experts_used: usize, options: &StoreOptions) -> Result<Self> {
        let layout = SlotLayout::for_experts(ranges.iter().flatten());
        let total_experts: usize = ranges.iter().map(Vec::len).sum();
        let minimum = (experts_used + 1).min(total_experts);
        let n_slots = match options.ram_budget {
            None => total_experts,
            Some(budget) => {
                let fit = (budget / layout.slot_bytes as u64) as usize;
                if fit < minimum {
                    let needed = minimum as u64 * layout.slot_bytes as u64;
                    return Err(Error::Budget(format!(
                        "a RAM budget of {budget} bytes holds {fit} slot(s) of {} bytes, but {minimum} are needed \
                         (the experts one layer uses, {experts_used}, plus one): the minimum budget is {needed} bytes \
                         ({}M)",
                        layout.slot_bytes,
                        needed.div_ceil(1 << 20)
                    )));
                }
                fit.min(total_experts)
            }
        };

        let pool_bytes = n_slots as u64 * layout.slot_bytes as u64;
        if let Some(available) = crate::stats::available_memory_bytes() {
            if pool_bytes > available {
                log::warn!(
                    "{}: the slot pool needs {pool_bytes} bytes but only {available} bytes of memory are available; \
                     set a RAM budget below that",
                    path.display()
                );
            }
        }

        let io_error = |e: std::io::Error| {
            let context = if e.raw_os_error() == Some(libc::EINVAL) && options.backend != BackendChoice::Buffered {
                "failed to open the model file with O_DIRECT for expert reads (the file system may not support \
                 O_DIRECT: use the buffered or auto I/O backend)"
            } else {
                "failed to open the model file for expert reads"
            };
            Error::io(path, context, e)
        };
        let opened = open_backend(path, options.backend, options.io).map_err(io_error)?;

        let pool = AlignedBuf::new(n_slots * layout.slot_bytes, DIRECT_ALIGN)
            .ok_or_else(|| Error::Budget(format!("failed to allocate {n_slots} slots of {} bytes", layout.slot_bytes)))?;
        let slots: Vec<&[u8]> = pool.chunks_exact(layout.slot_bytes).collect();
        opened.backend.register_buffers(&slots);

        let n_layer = ranges.len();
        let state = State {
            table: SlotTable::new(n_slots, Box::new(PerLayerLru::new(n_slots, n_layer))),
            jobs: vec![None; n_slots],
            stats: StoreStats::default(),
        };
        log::debug!(
            "{}: {n_slots} slots of {} bytes, {} backend ({}), eviction {}",
            path.display(),
            layout.slot_bytes,
            opened.backend.name(),
            opened.reason,
            state.table.policy_name()
        );
        Ok(StreamingStore {
            backend: opened.backend,
            pool,
            n_slots,
            shared: Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new() }),
            ranges,
            layout,
            path: path.to_path_buf(),
            io: options.io,
            backend_reason: opened.reason,
            ram_budget: options.ram_budget,
            phase: AtomicU8::new(0),
        })
    }

    /// Returns the bytes of slot `index`.
    fn slot(&self, index: usize) -> &[u8] {
        &self.pool[index * self.layout.slot_bytes..][..self.layout.slot_bytes]
    }

    fn phase(&self) -> Phase {
        if self.phase.load(Ordering::Relaxed) == 0 {
            Phase::Prompt
        } else {
            Phase::Decode
        }
    }

    /// Pins a slot for each of `experts`, starting demand reads for the missing ones, then
    /// starts `prefetch`, and waits until the pinned experts are read. Returns the slot
    /// indices in the order of `experts`, and the experts whose prefetch reads started.
    fn pin(&self, layer: usize, experts: &[usize], prefetch: &[ExpertId]) -> Result<(Vec<usize>, Vec<ExpertId>)> {
        let phase = self.phase();
        let mut pinned = Vec::with_capacity(experts.len());
        let mut reads = Vec::new();
        let mut state = self.shared.state.lock().unwrap();
        for &expert in experts {
            let id = ExpertId { layer, expert };
            let (demand, notes) = loop {
                match state.table.request(id) {
                    // Every slot is pinned by other requests: wait for one to be released.
                    (Demand::Full, _) => state = self.shared.changed.wait(state).unwrap(),
                    outcome => break outcome,
                }
            };
            let counters = state.stats.phase_mut(phase);
            match demand {
                Demand::Hit(index) => {
                    counters.hits += 1;
                    pinned.push(index);
                }
                Demand::Pending(index) => {
                    counters.misses += 1;
                    // A demand read waits for the prefetch already reading its expert, which
                    // now goes ahead of other prefetches.
                    if let Some(job) = &state.jobs[index] {
                        job.make_urgent();
                    }
                    pinned.push(index);
                }
                Demand::Read(index) => {
                    counters.misses += 1;
                    counters.reads += 1;
                    pinned.push(index);
                    reads.push((index, id));
                }
                Demand::Full => unreachable!("the loop above waits until a slot is free"),
            }
            if notes.prefetch_used {
                state.stats.prefetch.used += 1;
                if matches!(demand, Demand::Hit(_)) {
                    state.stats.prefetch.hits += 1;
                }
            }
            if let Some(evicted) = notes.evicted.filter(|e| e.unused_prefetch) {
                state.stats.prefetch.wasted_bytes += self.ranges[evicted.expert.layer][evicted.expert.expert].n_bytes();
            }
        }
        let mut submissions = Vec::with_capacity(reads.len());
        for &(index, id) in &reads {
            let (chunks, job) = self.prepare_read(index, id, phase, true);
            state.jobs[index] = Some(Arc::clone(&job));
            submissions.push((chunks, job));
        }
        drop(state);
        for (chunks, job) in submissions {
            self.backend.submit(chunks, job);
        }
        let prefetched = if prefetch.is_empty() { Vec::new() } else { self.prefetch(prefetch) };

        let wait_start = Instant::now();
        let mut state = self.shared.state.lock().unwrap();
        while pinned.iter().any(|&i| state.table.slots[i].status == Status::Loading) {
            state = self.shared.changed.wait(state).unwrap();
        }
        state.stats.phase_mut(phase).io_wait_s += wait_start.elapsed().as_secs_f64();
        let failure = pinned.iter().find_map(|&i| match &state.table.slots[i].status {
            Status::Failed(message) => Some(message.clone()),
            _ => None,
        });
        if let Some(message) = failure {
            drop(state);
            self.unpin(&pinned);
            return Err(Error::ExpertRead { path: self.path.clone(), message });
        }
        Ok((pinned, prefetched))
    }

    /// Prepares the read of `id` into slot `index`: its chunks, and the job whose completion
    /// marks the slot Ready or Failed. `urgent` is true for demand reads, which go ahead of
    /// prefetches. Submit the chunks with the state unlocked, because a backend that cannot
    /// take them completes the job at once.
    fn prepare_read(&self, index: usize, id: ExpertId, phase: Phase, urgent: bool) -> (Vec<ReadChunk>, Arc<ReadJob>) {
        let ranges = &self.ranges[id.layer][id.expert];
        let slot_ptr = self.slot(index).as_ptr() as *mut u8;
        let chunks = self.layout.chunks(ranges, slot_ptr, self.io.chunk_bytes);
        let shared = Arc::clone(&self.shared);
        let started = Instant::now();
        let parts = [ranges.gate.clone(), ranges.up.clone(), ranges.down.clone()];
        log::trace!(
            "{} read of expert {} of layer {} into slot {index}",
            if urgent { "demand" } else { "prefetch" },
            id.expert,
            id.layer
        );

        let job = ReadJob::new(
            chunks.len(),
            urgent,
            Box::new(move |outcome| {
                let mut state = shared.state.lock().unwrap();
                state.jobs[index] = None;
                let result = match outcome {
                    Ok(bytes) => {
                        let counters = state.stats.phase_mut(phase);
                        counters.record_latency(started.elapsed().as_micros() as u64);
                        counters.bytes_read += bytes;
                        Ok(())
                    }
                    Err(failure) if failure.cancelled => Err("the prefetch was cancelled".to_string()),
                    Err(failure) => {
                        // Name the range whose aligned read contains the failed offset.
                        let align = DIRECT_ALIGN as u64;
                        let part = parts
                            .iter()
                            .find(|r| (r.offset / align * align..(r.offset + r.n_bytes).div_ceil(align) * align).contains(&failure.offset))
                            .unwrap_or(&parts[0]);
                        Err(format!(
                            "failed to read expert {} of layer {} (tensor {}, expert data at offset {}): {failure}",
                            id.expert, id.layer, part.tensor, part.offset
                        ))
                    }
                };
                state.table.finish(index, result);
                drop(state);
                shared.changed.notify_all();
            }),
        );
        (chunks, job)
    }

    fn unpin(&self, pinned: &[usize]) {
        let mut state = self.shared.state.lock().unwrap();
        for &index in pinned {
            state.table.unpin(index);
        }
        drop(state);
        self.shared.changed.notify_all();
    }
}

/// Unpins on drop, so a panic or error in the caller's closure cannot leak pins.
struct PinGuard<'a> {
    store: &'a StreamingStore,
    pinned: Vec<usize>,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        self.store.unpin(&self.pinned);
    }
}

impl ExpertStore for StreamingStore {
    fn with_experts(
        &self,
        layer: usize,
        experts: &[usize],
        prefetch: &[ExpertId],
        f: &mut dyn FnMut(&[ExpertWeights<'_>]) -> Result<()>,
    ) -> Result<Vec<ExpertId>> {
        let in_layer = self.ranges.get(layer).ok_or_else(|| Error::InvalidArgument(format!("layer {layer} does not exist")))?;
        if let Some(&bad) = experts.iter().find(|&&e| e >= in_layer.len()) {
            return Err(Error::InvalidArgument(format!("expert {bad} of layer {layer} does not exist")));
        }
        let (pinned, prefetched) = self.pin(layer, experts, prefetch)?;
        let guard = PinGuard { store: self, pinned };

        let mut weights = Vec::with_capacity(experts.len());
        for (&expert, &index) in experts.iter().zip(&guard.pinned) {
            let ranges = &in_layer[expert];
            let slot = self.slot(index);
            let [gate, up, down] = self.layout.data_positions(ranges);
            let mat = |range: &super::TensorRange, start: usize| {
                MatRef::new(range.ggml_type, range.rows, range.cols, &slot[start..start + range.n_bytes as usize])
            };
            weights.push(ExpertWeights { gate: mat(&ranges.gate, gate), up: mat(&ranges.up, up), down: mat(&ranges.down, down) });
        }
        f(&weights)?;
        Ok(prefetched)
    }

    fn expert_ram_bytes(&self) -> u64 {
        (self.n_slots * self.layout.slot_bytes) as u64
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(u8::from(phase == Phase::Decode), Ordering::Relaxed);
    }

    fn report(&self) -> StoreReport {
        let state = self.shared.state.lock().unwrap();
        StoreReport {
            io_backend: self.backend.name(),
            io_backend_reason: self.backend_reason.clone(),
            eviction_policy: state.table.policy_name(),
            slots: self.n_slots,
            slot_bytes: self.layout.slot_bytes as u64,
            ram_budget_bytes: self.ram_budget,
            stats: state.stats.clone(),
        }
    }

    fn reset_stats(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.stats = StoreStats::default();
        state.table.forget_prefetches();
    }

    fn prefetch(&self, experts: &[ExpertId]) -> Vec<ExpertId> {
        let phase = self.phase();
        let mut issued = Vec::new();
        let mut submissions = Vec::new();
        let mut state = self.shared.state.lock().unwrap();
        for &id in experts {
            if self.ranges.get(id.layer).map_or(true, |layer| id.expert >= layer.len()) {
                continue;
            }
            let Some((index, evicted)) = state.table.prefetch(id) else { continue };
            if let Some(evicted) = evicted.filter(|e| e.unused_prefetch) {
                state.stats.prefetch.wasted_bytes += self.ranges[evicted.expert.layer][evicted.expert.expert].n_bytes();
            }
            state.stats.prefetch.issued += 1;
            let (chunks, job) = self.prepare_read(index, id, phase, false);
            state.jobs[index] = Some(Arc::clone(&job));
            submissions.push((chunks, job));
            issued.push(id);
        }
        drop(state);
        for (chunks, job) in submissions {
            self.backend.submit(chunks, job);
        }
        issued
    }

    fn decode_io_wait_s(&self) -> f64 {
        self.shared.state.lock().unwrap().stats.decode.io_wait_s
    }

    fn cancel_prefetches(&self, keep: std::ops::RangeInclusive<usize>) {
        let mut state = self.shared.state.lock().unwrap();
        for index in 0..self.n_slots {
            let stale = state.table.slots[index].expert.is_some_and(|id| !keep.contains(&id.layer));
            if stale && state.table.cancel(index) {
                if let Some(job) = &state.jobs[index] {
                    job.cancel();
                }
                state.stats.prefetch.cancelled += 1;
            }
        }
    }

    fn record_routing(&self, layer: usize, routed: &[usize], predicted: &[usize]) {
        self.shared.state.lock().unwrap().stats.prefetch.record_routing(layer, routed, predicted);
    }
}

/// A snapshot of the store's configuration and counters.
#[derive(Clone, Debug)]
pub struct StoreReport {
    pub io_backend: &'static str,
    pub io_backend_reason: String,
    pub eviction_policy: &'static str,
    pub slots: usize,
    pub slot_bytes: u64,
    pub ram_budget_bytes: Option<u64>,
    pub stats: StoreStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;
    use crate::store::TensorRange;
    use std::io::Write;

    /// Writes a file of `n_experts` experts of three 1x1024 f32 rows each, filled with the
    /// expert's index, and returns its path and ranges (one layer).
    fn expert_file(name: &str, n_experts: usize) -> (PathBuf, Vec<Vec<ExpertRanges>>) {
        let path = std::env::temp_dir().join(format!("mer-store-{name}-{}.bin", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        let row = 1024 * 4;
        let mut experts = Vec::new();
        for e in 0..n_experts {
            let bytes: Vec<u8> = (0..3 * 1024).flat_map(|_| (e as f32).to_le_bytes()).collect();
            file.write_all(&bytes).unwrap();
            let range = |part: u64| TensorRange {
                tensor: format!("expert{e}"),
                offset: (e * 3 * row) as u64 + part * row as u64,
                n_bytes: row as u64,
                ggml_type: GgmlType::F32,
                rows: 1,
                cols: 1024,
            };
            experts.push(ExpertRanges { gate: range(0), up: range(1), down: range(2) });
        }
        (path, vec![experts])
    }

    fn first_value(w: &ExpertWeights<'_>) -> f32 {
        f32::from_le_bytes(w.down.data[..4].try_into().unwrap())
    }

    #[test]
    fn concurrent_requests_share_one_read() {
        let (path, ranges) = expert_file("shared", 4);
        let options = StoreOptions { backend: BackendChoice::Pread, ..StoreOptions::default() };
        let store = StreamingStore::open(&path, ranges, 1, &options).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    store
                        .with_experts(0, &[2], &[], &mut |w| {
                            assert_eq!(first_value(&w[0]), 2.0);
                            Ok(())
                        })
                        .unwrap();
                });
            }
        });
        let report = store.report();
        assert_eq!(report.stats.prompt.reads, 1);
        assert_eq!(report.stats.prompt.hits + report.stats.prompt.misses, 8);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn small_pool_serves_every_expert() {
        let (path, ranges) = expert_file("small", 6);
        for backend in [BackendChoice::IoUring, BackendChoice::Pread, BackendChoice::Buffered] {
            let options = StoreOptions { backend, ram_budget: Some(2 * 3 * 4096 + 100), ..StoreOptions::default() };
            let store = StreamingStore::open(&path, ranges.clone(), 1, &options).unwrap();
            for round in 0..3 {
                for e in 0..6 {
                    store
                        .with_experts(0, &[e], &[], &mut |w| {
                            assert_eq!(first_value(&w[0]), e as f32, "round {round}");
                            Ok(())
                        })
                        .unwrap();
                }
            }
            assert_eq!(store.report().slots, 2);
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn budget_below_minimum_is_rejected() {
        let (path, ranges) = expert_file("budget", 4);
        let options = StoreOptions { ram_budget: Some(4096), ..StoreOptions::default() };
        let error = StreamingStore::open(&path, ranges, 2, &options).err().expect("budget too small");
        assert!(error.to_string().contains("minimum budget is 36864 bytes"), "{error}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_past_end_of_file_fails() {
        let (path, ranges) = expert_file("shrink", 4);
        let store = StreamingStore::open(&path, ranges, 1, &StoreOptions::default()).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(3 * 3 * 4096).unwrap();
        let error = store.with_experts(0, &[3], &[], &mut |_| Ok(())).expect_err("the read must fail");
        let message = error.to_string();
        assert!(message.contains("expert 3 of layer 0"), "{message}");
        assert!(message.contains("offset 36864"), "{message}");
        // The expert before the cut still reads.
        store.with_experts(0, &[2], &[], &mut |w| {
            assert_eq!(first_value(&w[0]), 2.0);
            Ok(())
        })
        .unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn prefetch_inside_a_layer_keeps_its_experts() {
        let (path, ranges) = expert_file("prefetch-pinned", 8);
        for backend in [BackendChoice::IoUring, BackendChoice::Pread] {
            // Three slots: the two pinned experts, and one free slot that a prefetch must leave.
            let options = StoreOptions { backend, ram_budget: Some(3 * 3 * 4096), ..StoreOptions::default() };
            let store = StreamingStore::open(&path, ranges.clone(), 2, &options).unwrap();
            store
                .with_experts(0, &[0, 1], &[], &mut |w| {
                    let requested: Vec<ExpertId> = (2..8).map(|expert| ExpertId { layer: 0, expert }).collect();
                    assert!(store.prefetch(&requested).is_empty(), "a prefetch took the last free slot");
                    assert_eq!(first_value(&w[0]), 0.0);
                    assert_eq!(first_value(&w[1]), 1.0);
                    Ok(())
                })
                .unwrap();
            // Once unpinned, experts 0 and 1 may give way to prefetches, and every expert reads.
            let issued = store.prefetch(&[ExpertId { layer: 0, expert: 5 }, ExpertId { layer: 0, expert: 6 }]);
            assert!(!issued.is_empty());
            for e in 0..8 {
                store
                    .with_experts(0, &[e, (e + 3) % 8], &[], &mut |w| {
                        assert_eq!(first_value(&w[0]), e as f32);
                        assert_eq!(first_value(&w[1]), ((e + 3) % 8) as f32);
                        Ok(())
                    })
                    .unwrap();
            }
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn demand_reads_proceed_when_prefetches_fill_the_pool() {
        let (path, ranges) = expert_file("prefetch-full", 8);
        let options = StoreOptions { backend: BackendChoice::Pread, ram_budget: Some(4 * 3 * 4096), ..StoreOptions::default() };
        let store = StreamingStore::open(&path, ranges, 1, &options).unwrap();
        for round in 0..20 {
            // Fill every slot it may take with prefetches, some still loading, then demand others.
            let requested: Vec<ExpertId> = (0..8).map(|expert| ExpertId { layer: 0, expert: (expert + round) % 8 }).collect();
            store.prefetch(&requested);
            for e in [(round + 5) % 8, (round + 7) % 8] {
                store
                    .with_experts(0, &[e], &[], &mut |w| {
                        assert_eq!(first_value(&w[0]), e as f32);
                        Ok(())
                    })
                    .unwrap();
            }
            if round % 2 == 0 {
                store.cancel_prefetches(1..=1);
            }
        }
        let stats = store.report().stats;
        assert!(stats.prefetch.issued > 0);
        std::fs::remove_file(path).unwrap();
    }
}
