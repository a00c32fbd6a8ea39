//! The `mer._core` extension module: PyO3 classes over `mer-core`.
//!
//! This crate only converts arguments, releases the GIL around long calls, calls the core and
//! maps its errors to the exception classes of `mer.errors`.

mod kernel_probe;
mod replay;
mod bench;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use mer_core::gguf::{GgufFile, MetaValue};
use mer_core::model::KvCache;
use mer_core::quant::dequantize;
use mer_core::store::io::{BackendChoice, IoOptions};
use mer_core::store::prefetch::{PrefetchOptions, Trial};
use mer_core::store::StoreOptions;
use mer_core::{Error, Logits, Model, ModelOptions, Phase};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::{PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Builds an exception of class `name` from `mer.errors`.
fn mer_exception(py: Python<'_>, name: &str, message: String) -> PyErr {
    let class = py.import("mer.errors").and_then(|m| m.getattr(name));
    match class.and_then(|c| c.call1((message.clone(),))) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// Maps a core error to the matching Python exception.
fn to_py_err(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
            std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(message),
            _ => PyOSError::new_err(message),
        },
        Error::Format { .. } => mer_exception(py, "ModelFormatError", message),
        Error::Unsupported { .. } => mer_exception(py, "UnsupportedModelError", message),
        Error::InvalidArgument(_) => PyValueError::new_err(message),
        Error::ContextFull { .. } => mer_exception(py, "ContextFullError", message),
        Error::ExpertRead { .. } => mer_exception(py, "ExpertReadError", message),
        Error::Budget(_) => mer_exception(py, "BudgetError", message),
    }
}

/// Returns the exception that Python code run by a log call left set on this thread, such as a
/// KeyboardInterrupt raised inside `logging`. The log bridge cannot return it, so it restores it,
/// and a call that then returned a value would make Python raise SystemError.
fn raise_pending(py: Python<'_>) -> PyResult<()> {
    match PyErr::take(py) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Runs `f` with the GIL released, turning a core error into its Python exception and a panic
/// into `mer.errors.MerError`, so no panic unwinds into Python. Use it for every call that reads
/// files or computes.
fn run_detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> mer_core::Result<T> + Send) -> PyResult<T> {
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(f)));
    match outcome {
        Ok(Ok(value)) => {
            raise_pending(py)?;
            Ok(value)
        }
        Ok(Err(error)) => Err(to_py_err(py, error)),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(mer_exception(py, "MerError", format!("internal error in the MER core: {detail}")))
        }
    }
}

fn meta_to_py<'py>(py: Python<'py>, value: &MetaValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        MetaValue::U8(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::I8(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::U16(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::I16(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::U32(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::I32(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::U64(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::I64(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::F32(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::F64(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::Bool(v) => v.into_pyobject(py)?.to_owned().into_any(),
        MetaValue::String(v) => v.into_pyobject(py)?.into_any(),
        MetaValue::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(meta_to_py(py, item)?)?;
            }
            list.into_any()
        }
    })
}

fn metadata_dict<'py>(py: Python<'py>, gguf: &GgufFile) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in &gguf.metadata {
        dict.set_item(key, meta_to_py(py, value)?)?;
    }
    Ok(dict)
}

/// Parses a GGUF file's header and returns its version, alignment, data offset, metadata and
/// tensor index (name, shape innermost first, type name, type id, absolute offset, bytes).
#[pyfunction]
fn read_gguf<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let gguf = run_detached(py, || GgufFile::open(&path))?;
    let out = PyDict::new(py);
    out.set_item("path", gguf.path.to_string_lossy().into_owned())?;
    out.set_item("version", gguf.version)?;
    out.set_item("file_size", gguf.file_size)?;
    out.set_item("alignment", gguf.alignment)?;
    out.set_item("data_offset", gguf.data_offset)?;
    out.set_item("metadata", metadata_dict(py, &gguf)?)?;
    let tensors = PyList::empty(py);
    for t in &gguf.tensors {
        let entry = PyDict::new(py);
        entry.set_item("name", &t.name)?;
        entry.set_item("shape", t.dims.clone())?;
        entry.set_item("type", t.ggml_type.name())?;
        entry.set_item("type_id", t.ggml_type.0)?;
        entry.set_item("offset", t.offset)?;
        entry.set_item("n_bytes", t.n_bytes)?;
        tensors.append(entry)?;
    }
    out.set_item("tensors", tensors)?;
    Ok(out)
}

/// Reads one tensor of a GGUF file and dequantizes it to a flat float32 array (innermost
/// dimension fastest, as the file stores it).
#[pyfunction]
fn dequantize_tensor<'py>(py: Python<'py>, path: std::path::PathBuf, name: String) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let values = run_detached(py, || {
        let gguf = GgufFile::open(&path)?;
        let info = gguf
            .tensor(&name)
            .ok_or_else(|| Error::InvalidArgument(format!("{}: no tensor named {name}", path.display())))?;
        if !info.ggml_type.is_supported() {
            return Err(Error::Unsupported {
                path: path.clone(),
                message: format!("tensor {name} has type {}, which MER cannot dequantize", info.ggml_type),
            });
        }
        let mut data = vec![0u8; info.n_bytes as usize];
        let file = std::fs::File::open(&path).map_err(|e| Error::Io {
            path: path.clone(),
            context: "failed to open the model file".into(),
            source: e,
        })?;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, info.offset).map_err(|e| Error::Io {
            path: path.clone(),
            context: format!("failed to read tensor {name} at offset {}", info.offset),
            source: e,
        })?;
        let mut out = vec![0.0f32; info.n_elements() as usize];
        dequantize(info.ggml_type, &data, &mut out);
        Ok(out)
    })?;
    Ok(values.into_pyarray(py))
}

fn config_dict<'py>(py: Python<'py>, c: &mer_core::model::Config) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("architecture", &c.architecture)?;
    out.set_item("n_layer", c.n_layer)?;
    out.set_item("n_embd", c.n_embd)?;
    out.set_item("n_head", c.n_head)?;
    out.set_item("n_head_kv", c.n_head_kv)?;
    out.set_item("head_dim", c.head_dim)?;
    out.set_item("n_vocab", c.n_vocab)?;
    out.set_item("n_ctx", c.n_ctx)?;
    out.set_item("n_expert", c.n_expert)?;
    out.set_item("n_expert_used", c.n_expert_used)?;
    out.set_item("rope_freq_base", c.rope_freq_base)?;
    out.set_item("rope_dim", c.rope_dim)?;
    out.set_item("rms_eps", c.rms_eps)?;
    Ok(out)
}

/// Describes a model file without reading its weights: config, resident and expert bytes, bytes
/// per expert, and tensor count and bytes per type.
#[pyfunction]
fn describe_model<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let summary = run_detached(py, || mer_core::model::describe(&path))?;
    let out = PyDict::new(py);
    out.set_item("config", config_dict(py, &summary.config)?)?;
    out.set_item("resident_bytes", summary.resident_bytes)?;
    out.set_item("expert_bytes", summary.expert_bytes)?;
    out.set_item("bytes_per_expert", summary.bytes_per_expert)?;
    let types = PyDict::new(py);
    for (name, (count, bytes)) in &summary.tensor_types {
        let entry = PyDict::new(py);
        entry.set_item("tensors", count)?;
        entry.set_item("bytes", bytes)?;
        types.set_item(name, entry)?;
    }
    out.set_item("tensor_types", types)?;
    Ok(out)
}

/// A loaded model and one context (KV cache) to run it in.
#[pyclass(frozen, module = "mer._core")]
struct CoreModel {
    model: Model,
    kv: Mutex<Context>,
}

/// The KV cache and the caller that filled it.
struct Context {
    cache: KvCache,
    /// The `owner` given to the `eval` that last emptied the cache, if any.
    owner: Option<u64>,
}

impl CoreModel {
    /// Locks the context. It waits without holding the GIL, so that a thread inside `eval`,
    /// which needs the GIL back between batches, can finish. (A guard cannot cross `detach`,
    /// so this polls with short sleeps instead of blocking.)
    fn lock_kv(&self, py: Python<'_>) -> std::sync::MutexGuard<'_, Context> {
        loop {
            match self.kv.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| std::thread::sleep(std::time::Duration::from_millis(1))),
            }
        }
    }
}

#[pymethods]
impl CoreModel {
    /// Opens the GGUF model at `path`, using `threads` compute threads (default: physical
    /// cores). `ram_budget` is the bytes for expert slots (default: every expert gets a slot),
    /// `io_backend` is "auto", "io_uring", "pread" or "buffered", `chunk_bytes` the size of each
    /// read request (a multiple of 4096) and `queue_depth` the reads kept in flight.
    /// `prefetch` reads the experts that the next `lookahead` layers are predicted to use while
    /// the current layer computes, guessing `margin` experts beyond those a token uses. `trace`
    /// is a file to write the routing trace to.
    #[new]
    #[pyo3(signature = (path, threads=None, ram_budget=None, io_backend="auto", chunk_bytes=None, queue_depth=None, prefetch=true, lookahead=1, margin=1, trace=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        threads: Option<usize>,
        ram_budget: Option<u64>,
        io_backend: &str,
        chunk_bytes: Option<usize>,
        queue_depth: Option<usize>,
        prefetch: bool,
        lookahead: usize,
        margin: usize,
        trace: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        let backend = BackendChoice::parse(io_backend).ok_or_else(|| {
            PyValueError::new_err(format!("io_backend must be auto, io_uring, pread or buffered, not {io_backend:?}"))
        })?;
        let mut io = IoOptions::default();
        if let Some(bytes) = chunk_bytes {
            if bytes == 0 || bytes % 4096 != 0 || bytes > (64 << 20) {
                return Err(PyValueError::new_err(format!("chunk_bytes must be a multiple of 4096 up to 64 MiB, not {bytes}")));
            }
            io.chunk_bytes = bytes;
        }
        if let Some(depth) = queue_depth {
            if depth == 0 || depth > 256 {
                return Err(PyValueError::new_err(format!("queue_depth must be between 1 and 256, not {depth}")));
            }
            io.queue_depth = depth;
        }
        if !(1..=4).contains(&lookahead) {
            return Err(PyValueError::new_err(format!("lookahead must be between 1 and 4 layers, not {lookahead}")));
        }
        if margin > 16 {
            return Err(PyValueError::new_err(format!("margin must be between 0 and 16 experts, not {margin}")));
        }
        let options = ModelOptions {
            threads,
            store: StoreOptions { ram_budget, backend, io },
            prefetch: PrefetchOptions { enabled: prefetch, lookahead, margin },
            trace,
        };
        let model = run_detached(py, || Model::open(&path, options))?;
        let kv = Mutex::new(Context { cache: model.new_cache(), owner: None });
        raise_pending(py)?;
        Ok(CoreModel { model, kv })
    }

    /// Processes `tokens` after those already in the context and returns float32 logits of
    /// shape (len(tokens), n_vocab), or (1, n_vocab) for the last token only when `all_logits`
    /// is false. `phase` is "prompt" or "decode" and selects which statistics the call counts in.
    /// `reset` empties the context first, in the same locked step, and records `owner` as the
    /// context's owner. Without `reset`, a given `owner` must be the recorded one and a given
    /// `expect_n_past` must equal the tokens already in the context. A mismatch means another
    /// caller changed the context, and raises MerError. Prompt tokens run in batches of up to 64,
    /// and Ctrl-C is honoured between batches.
    // Python callers pass these as keywords, so the count of arguments costs no readability there.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (tokens, all_logits=false, phase="prompt", reset=false, expect_n_past=None, owner=None))]
    fn eval<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<Bound<'py, PyAny>>,
        all_logits: bool,
        phase: &str,
        reset: bool,
        expect_n_past: Option<usize>,
        owner: Option<u64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if tokens.is_empty() {
            return Err(PyValueError::new_err("eval needs at least one token"));
        }
        let n_vocab = self.model.config.n_vocab;
        let tokens = tokens
            .iter()
            .map(|t| match t.extract::<u32>() {
                Ok(id) => Ok(id),
                Err(_) => Err(PyValueError::new_err(format!(
                    "token id {t} is out of range: the vocabulary has {n_vocab} tokens (ids 0 to {})",
                    n_vocab - 1
                ))),
            })
            .collect::<PyResult<Vec<u32>>>()?;
        let phase = match phase {
            "prompt" => Phase::Prompt,
            "decode" => Phase::Decode,
            other => return Err(PyValueError::new_err(format!("phase must be \"prompt\" or \"decode\", not {other:?}"))),
        };

        let mut context = self.lock_kv(py);
        if reset {
            context.cache.clear();
            context.owner = owner;
        }
        if !reset && owner.is_some() && owner != context.owner {
            return Err(mer_exception(
                py,
                "MerError",
                "another call reset this model's context meanwhile; one Model runs one generation at a time, \
                 so open a second Model for concurrent use"
                    .to_string(),
            ));
        }
        let kv = &mut context.cache;
        // Check the whole call before running any of it, so that a prompt that cannot fit
        // costs nothing and leaves the context as it was.
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(PyValueError::new_err(format!(
                "token id {token} is out of range: the vocabulary has {n_vocab} tokens (ids 0 to {})",
                n_vocab - 1
            )));
        }
        if kv.len() + tokens.len() > kv.capacity() {
            return Err(to_py_err(py, Error::ContextFull { n_ctx: kv.capacity() }));
        }
        if let Some(expected) = expect_n_past {
            if kv.len() != expected {
                return Err(mer_exception(
                    py,
                    "MerError",
                    format!(
                        "the context holds {} tokens, expected {expected}: another call used this model meanwhile; \
                         one Model runs one generation at a time, so open a second Model for concurrent use",
                        kv.len()
                    ),
                ));
            }
        }

        let rows = if all_logits { tokens.len() } else { 1 };
        let mut logits = Vec::with_capacity(rows * n_vocab);
        let n_batches = tokens.len().div_ceil(Model::BATCH_TOKENS);
        for (i, batch) in tokens.chunks(Model::BATCH_TOKENS).enumerate() {
            let mode = if all_logits {
                Logits::All
            } else if i + 1 == n_batches {
                Logits::Last
            } else {
                Logits::None
            };
            let cache: &mut KvCache = kv;
            let rows = run_detached(py, || self.model.eval(cache, batch, mode, phase))?;
            logits.extend_from_slice(&rows);
            py.check_signals()?;
        }
        let array = Array2::from_shape_vec((rows, n_vocab), logits).map_err(|e| PyValueError::new_err(e.to_string()))?;
        raise_pending(py)?;
        Ok(array.into_pyarray(py))
    }

    /// Empties the context, so the next `eval` starts at position 0.
    fn reset(&self, py: Python<'_>) {
        let mut context = self.lock_kv(py);
        context.cache.clear();
        context.owner = None;
    }

    /// Tokens in the context.
    #[getter]
    fn n_past(&self, py: Python<'_>) -> usize {
        self.lock_kv(py).cache.len()
    }

    /// Resets the run statistics.
    fn reset_stats(&self) {
        self.model.reset_stats();
    }

    /// GGUF metadata as a dict of plain Python values.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_dict(py, &self.model.gguf)
    }

    /// Returns the model's shape: architecture, layers, widths, heads, experts, context and
    /// vocabulary.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, &self.model.config)
    }

    /// Statistics of this model's runs: memory, threads, the expert store, and tokens and time
    /// per phase. Hit rate, I/O share and tokens/s count decode tokens only; the prompt phase has
    /// its own `prompt_` keys.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.model.stats();
        let store = self.model.store_report();
        let kv_bytes = self.lock_kv(py).cache.n_bytes();
        let (prompt, decode) = (&store.stats.prompt, &store.stats.decode);
        let out = PyDict::new(py);
        out.set_item("threads", self.model.threads())?;
        out.set_item("kernels", mer_core::quant::Kernels::selected().isa().to_string())?;
        out.set_item("io_backend", store.io_backend)?;
        out.set_item("io_backend_reason", &store.io_backend_reason)?;
        out.set_item("eviction_policy", store.eviction_policy)?;
        out.set_item("slots", store.slots)?;
        out.set_item("slot_bytes", store.slot_bytes)?;
        out.set_item("ram_budget_bytes", store.ram_budget_bytes)?;
        out.set_item("resident_bytes", self.model.resident_bytes())?;
        out.set_item("expert_bytes", self.model.expert_bytes())?;
        out.set_item("expert_ram_bytes", self.model.expert_ram_bytes())?;
        out.set_item("kv_cache_bytes", kv_bytes)?;

        out.set_item("hits", decode.hits)?;
        out.set_item("misses", decode.misses)?;
        out.set_item("hit_rate", decode.hit_rate())?;
        out.set_item("bytes_read", decode.bytes_read)?;
        out.set_item("expert_reads", decode.reads)?;
        out.set_item("read_latency_us", percentiles(py, decode.latency_percentiles())?)?;
        out.set_item("prompt_read_latency_us", percentiles(py, prompt.latency_percentiles())?)?;
        out.set_item("io_wait_s", decode.io_wait_s)?;
        out.set_item("compute_s", (s.decode_s - decode.io_wait_s).max(0.0))?;
        out.set_item("io_share", if s.decode_s > 0.0 { decode.io_wait_s / s.decode_s } else { 0.0 })?;

        out.set_item("prompt_tokens", s.prompt_tokens)?;
        out.set_item("prompt_s", s.prompt_s)?;
        out.set_item("prompt_tokens_per_s", s.prompt_tokens_per_s())?;
        out.set_item("prompt_hits", prompt.hits)?;
        out.set_item("prompt_misses", prompt.misses)?;
        out.set_item("prompt_bytes_read", prompt.bytes_read)?;
        out.set_item("prompt_io_wait_s", prompt.io_wait_s)?;
        out.set_item("decode_tokens", s.decode_tokens)?;
        out.set_item("decode_s", s.decode_s)?;
        out.set_item("decode_tokens_per_s", s.decode_tokens_per_s())?;
        out.set_item("peak_rss_bytes", mer_core::stats::peak_rss_bytes())?;

        let (options, predictor, (governor, trials)) = self.model.prefetch_report();
        let prefetch = &store.stats.prefetch;
        out.set_item("prefetch", options.enabled)?;
        out.set_item("predictor", predictor)?;
        out.set_item("prefetch_lookahead", options.lookahead)?;
        out.set_item("prefetch_margin", options.margin)?;
        out.set_item("prefetch_issued", prefetch.issued)?;
        out.set_item("prefetch_used", prefetch.used)?;
        out.set_item("prefetch_hits", prefetch.hits)?;
        out.set_item("prefetch_cancelled", prefetch.cancelled)?;
        out.set_item("prefetch_wasted_bytes", prefetch.wasted_bytes)?;
        out.set_item("prefetch_precision", prefetch.precision())?;
        out.set_item("predictor_recall", prefetch.recall())?;
        let mut recall_per_layer = prefetch.recall_per_layer();
        recall_per_layer.resize(self.model.config.n_layer, 0.0);
        out.set_item("predictor_recall_per_layer", recall_per_layer)?;
        let trial = match trials.trial {
            Trial::WarmUp => "warming up",
            Trial::WithPrefetch => "measuring with prefetch",
            Trial::WithoutPrefetch { .. } => "measuring without prefetch",
            Trial::Settled { prefetch: true } => "kept on",
            Trial::Settled { prefetch: false } => "kept off",
        };
        let state = match trials.trial {
            _ if !options.enabled => "disabled".to_string(),
            Trial::Settled { prefetch: true } => governor.state.to_string(),
            Trial::Settled { prefetch: false } => format!("off (measured slower; guesses {})", governor.state),
            _ => format!("{} ({trial})", governor.state),
        };
        out.set_item("governor_state", state)?;
        out.set_item("governor_guesses", governor.state.to_string())?;
        out.set_item("governor_trial", trial)?;
        out.set_item("governor_top_k_precision", governor.top_k_precision)?;
        out.set_item("governor_margin_precision", governor.margin_precision)?;
        let per_token = if s.decode_tokens > 0 { decode.io_wait_s / s.decode_tokens as f64 } else { 0.0 };
        out.set_item("io_wait_s_per_token", per_token)?;
        Ok(out)
    }
}

fn percentiles(py: Python<'_>, values: [u64; 3]) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("p50", values[0])?;
    out.set_item("p95", values[1])?;
    out.set_item("p99", values[2])?;
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    pyo3_log::init();
    // Load NumPy's C API now. Loaded lazily, it would load on the first returned array, and a
    // pending Ctrl-C would make that load fail and panic.
    let _ = PyArray1::<f32>::zeros(m.py(), 0, false);
    m.add_class::<CoreModel>()?;
    m.add_function(wrap_pyfunction!(read_gguf, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(describe_model, m)?)?;
    kernel_probe::register(m)?;
    replay::register(m)?;
    bench::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
