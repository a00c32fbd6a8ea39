//! A llama-architecture model, dense or MoE: its config, resident weights, expert store and the
//! forward pass.

pub mod config;
pub mod experts;
mod ffn;
pub mod forward;
pub mod kv_cache;
pub mod tensors;
pub mod trace;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::stats::{Phase, RunStats};
use crate::store::predictor::NextLayerGate;
use crate::store::prefetch::{Governor, PrefetchOptions, Prefetcher, TrialClock};
use crate::store::{ExpertStore, StoreOptions, StoreReport, StreamingStore};
pub use config::Config;
pub use kv_cache::KvCache;
use tensors::TensorLoader;
use trace::{TraceHeader, TraceWriter};
use weights::ResidentWeights;

/// Options for opening a model.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    /// Compute threads; `None` uses the number of physical cores.
    pub threads: Option<usize>,
    /// RAM budget, I/O backend and I/O tuning of the expert store.
    pub store: StoreOptions,
    /// Prefetching of the experts that coming layers are predicted to use.
    pub prefetch: PrefetchOptions,
    /// Where to write a routing trace, if anywhere.
    pub trace: Option<PathBuf>,
}

/// The logits rows that a call to [`Model::eval`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// One row per token.
    All,
    /// Only the row of the last token.
    Last,
    /// No logits: the tokens only fill the KV cache.
    None,
}

/// An open model: resident weights in RAM, experts behind the expert store.
pub struct Model {
    pub gguf: GgufFile,
    pub config: Config,
    weights: ResidentWeights,
    store: Box<dyn ExpertStore>,
    rope_inv_freq: Vec<f32>,
    prefetcher: Prefetcher,
    trace: Option<TraceWriter>,
    /// Batches run so far, numbering the steps of the trace.
    batches: AtomicU64,
    pool: rayon::ThreadPool,
    threads: usize,
    expert_file_bytes: u64,
    stats: Mutex<RunStats>,
}

impl Model {
    /// The maximum number of tokens one forward pass processes together. Larger prompts run in
    /// batches of this size.
    pub const BATCH_TOKENS: usize = 64;

    /// Opens a GGUF model, checks every tensor it needs and reads the weights.
    pub fn open(path: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let start = Instant::now();
        let gguf = GgufFile::open(path)?;
        log::debug!(
            "{}: GGUF v{}, {} metadata keys, {} tensors, data at byte {}",
            gguf.path.display(),
            gguf.version,
            gguf.metadata.len(),
            gguf.tensors.len(),
            gguf.data_offset
        );
        let loader = TensorLoader::new(&gguf)?;

        let config = Config::from_gguf(&gguf)?;

        let weights = ResidentWeights::load(&loader, &config)?;
        let ranges = experts::locate_experts(&loader, &config)?;
        loader.reject_unused()?;
        let expert_file_bytes = ranges.iter().flatten().map(|r| r.n_bytes()).sum();
        let store = StreamingStore::open(&gguf.path, ranges, config.experts_used(), &options.store)?;

        let threads = options.threads.unwrap_or_else(physical_cores).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mer-compute-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("failed to start {threads} compute threads: {e}")))?;

        let rope_inv_freq = forward::rope_inv_freq(&config);
        drop(loader);

        let predictor = next_layer_gate(&weights, &config);
        let prefetcher = Prefetcher::new(Box::new(predictor), options.prefetch, config.n_layer, config.experts_used());
        let trace = match &options.trace {
            Some(path) => {
                if same_file(path, &gguf.path) {
                    return Err(Error::InvalidArgument(format!(
                        "the routing trace {} is the model file itself; writing it would destroy the model",
                        path.display()
                    )));
                }
                let report = store.report();
                let model_name = gguf.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let header = TraceHeader {
                    model: &model_name,
                    n_layer: config.n_layer,
                    n_expert: config.n_expert.max(1),
                    n_expert_used: config.experts_used(),
                    expert_bytes: expert_file_bytes / (config.n_layer * config.n_expert.max(1)).max(1) as u64,
                    slot_bytes: report.slot_bytes,
                    slots: report.slots,
                    policy: report.eviction_policy,
                    predictor: prefetcher.predictor_name(),
                    prefetch: options.prefetch.enabled,
                    lookahead: options.prefetch.lookahead,
                    margin: options.prefetch.margin,
                };
                Some(TraceWriter::create(path, &header)?)
            }
            None => None,
        };
        log::debug!(
            "read {} bytes of resident weights and {} bytes of experts in {:.2} s; {threads} compute threads",
            weights.n_bytes(),
            store.expert_ram_bytes(),
            start.elapsed().as_secs_f64()
        );
        Ok(Model {
            gguf,
            config,
            weights,
            store: Box::new(store),
            rope_inv_freq,
            prefetcher,
            trace,
            batches: AtomicU64::new(0),
            pool,
            threads,
            expert_file_bytes,
            stats: Mutex::new(RunStats::default()),
        })
    }

    /// Creates an empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer, self.config.n_head_kv * self.config.head_dim, self.config.n_ctx)
    }

    /// Processes `tokens` after the ones already in `kv` and returns logits, `n_vocab` floats
    /// per returned row. Time and token counts go to the stats of `phase`.
    ///
    /// Tokens run in batches of up to [`Model::BATCH_TOKENS`], and each batch reads each expert
    /// it uses once per layer. The logits are the same bits whatever the batching. If a batch
    /// fails, the batches before it stay in `kv` and the failed one leaves no trace.
    pub fn eval(&self, kv: &mut KvCache, tokens: &[u32], logits: Logits, phase: Phase) -> Result<Vec<f32>> {
        let start = Instant::now();
        let n = tokens.len();
        self.store.set_phase(phase);
        let result = self.pool.install(|| {
            let mut out = Vec::with_capacity(if logits == Logits::All { n * self.config.n_vocab } else { self.config.n_vocab });
            for (i, batch) in tokens.chunks(Self::BATCH_TOKENS).enumerate() {
                let is_last = (i + 1) * Self::BATCH_TOKENS >= n;
                let rows = match logits {
                    Logits::All => Logits::All,
                    Logits::Last if is_last => Logits::Last,
                    _ => Logits::None,
                };
                match self.forward_batch(kv, batch, rows, phase) {
                    Ok(row) => out.extend_from_slice(&row),
                    Err(e) => {
                        kv.truncate_partial();
                        return Err(e);
                    }
                }
            }
            Ok(out)
        });
        // A failed call counts nothing: its tokens did not all run.
        if result.is_ok() {
            self.stats.lock().unwrap().record(phase, n, start.elapsed());
        }
        if let Some(trace) = &self.trace {
            trace.flush()?;
        }
        result
    }

    /// Returns a copy of the run statistics.
    pub fn stats(&self) -> RunStats {
        self.stats.lock().unwrap().clone()
    }

    /// Resets the run statistics and the expert store's counters.
    pub fn reset_stats(&self) {
        *self.stats.lock().unwrap() = RunStats::default();
        self.store.reset_stats();
    }

    /// Returns the expert store's configuration and counters.
    pub fn store_report(&self) -> StoreReport {
        self.store.report()
    }

    /// Returns the prefetch settings, the predictor's name and the governor's state.
    pub fn prefetch_report(&self) -> (PrefetchOptions, &'static str, (Governor, TrialClock)) {
        (self.prefetcher.options(), self.prefetcher.predictor_name(), self.prefetcher.governor())
    }

    /// Compute threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of resident weights in RAM.
    pub fn resident_bytes(&self) -> u64 {
        self.weights.n_bytes()
    }

    /// Bytes of expert weights in the file (the dense FFNs, for a dense model).
    pub fn expert_bytes(&self) -> u64 {
        self.expert_file_bytes
    }

    /// Bytes of RAM the expert store holds.
    pub fn expert_ram_bytes(&self) -> u64 {
        self.store.expert_ram_bytes()
    }
}

/// Returns whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Builds the next-layer gate predictor from copies of each layer's router and FFN norm. The
/// predictor is inverted (it guesses wrong on purpose) when `MER_TEST_PREDICTOR=inverted`, which
/// tests use to check that the governor stops prefetching.
fn next_layer_gate(weights: &ResidentWeights, config: &Config) -> NextLayerGate {
    let layers = weights
        .layers
        .iter()
        .map(|l| {
            let router = l.router.as_ref().map(|r| (r.ggml_type, r.rows, r.cols, r.data.to_vec()));
            (router, l.ffn_norm.clone())
        })
        .collect();
    let predictor = NextLayerGate::new(layers, config.rms_eps);
    match std::env::var("MER_TEST_PREDICTOR").as_deref() {
        Ok("inverted") => predictor.inverted(),
        _ => predictor,
    }
}

/// A model file's shape and sizes, as `describe` reports them without reading the weights.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub config: Config,
    /// Bytes of every tensor that is not an expert.
    pub resident_bytes: u64,
    /// Bytes of all experts (the dense FFNs, for a dense model).
    pub expert_bytes: u64,
    /// Bytes of one expert (gate, up and down).
    pub bytes_per_expert: u64,
    /// Tensor count and bytes per tensor type name.
    pub tensor_types: std::collections::BTreeMap<String, (usize, u64)>,
}

/// Reads a model's header and locates its experts, without reading any weights.
pub fn describe(path: impl AsRef<Path>) -> Result<ModelSummary> {
    let gguf = GgufFile::open(path)?;
    let loader = TensorLoader::new(&gguf)?;
    let config = Config::from_gguf(&gguf)?;
    let ranges = experts::locate_experts(&loader, &config)?;
    let expert_bytes: u64 = ranges.iter().flatten().map(|r| r.n_bytes()).sum();
    let bytes_per_expert = ranges.first().and_then(|l| l.first()).map_or(0, |r| r.n_bytes());
    let total: u64 = gguf.tensors.iter().map(|t| t.n_bytes).sum();
    let mut tensor_types = std::collections::BTreeMap::new();
    for t in &gguf.tensors {
        let entry = tensor_types.entry(t.ggml_type.name()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += t.n_bytes;
    }
    Ok(ModelSummary { config, resident_bytes: total - expert_bytes, expert_bytes, bytes_per_expert, tensor_types })
}

/// Counts physical cores from /proc/cpuinfo, falling back to the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut physical_id = "";
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "physical id" => physical_id = value.trim(),
            "core id" => {
                cores.insert((physical_id.to_string(), value.trim().to_string()));
            }
            _ => {}
        }
    }
    // Containers can restrict the CPUs a process may use below what /proc/cpuinfo lists.
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}
