//! Benchmark functions of `mer._core`: memory read bandwidth, disk read bandwidth and
//! matrix-vector throughput.

use mer_core::bench::{self, DEFAULT_BANDWIDTH_BYTES, DEFAULT_DISK_BYTES};
use mer_core::quant::GgmlType;
use mer_core::store::io::{BackendChoice, IoOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::run_detached;

/// Types that `matvec_throughput` accepts, by lower-case name.
const MATVEC_TYPES: [(&str, GgmlType); 5] = [
    ("q4_0", GgmlType::Q4_0),
    ("q4_1", GgmlType::Q4_1),
    ("q8_0", GgmlType::Q8_0),
    ("f16", GgmlType::F16),
    ("f32", GgmlType::F32),
];

/// Measures how fast `threads` threads read a buffer of `bytes` bytes, in bytes/s: the fastest
/// of 5 passes after one untimed pass. The default of 1 GiB is meant to exceed the last-level
/// cache, so the figure is the RAM's read bandwidth.
#[pyfunction]
#[pyo3(signature = (bytes=DEFAULT_BANDWIDTH_BYTES, threads=1))]
fn memory_read_bandwidth(py: Python<'_>, bytes: usize, threads: usize) -> PyResult<f64> {
    run_detached(py, || bench::memory_read_bandwidth(bytes, threads))
}

/// Measures how fast the file at `path` reads, in bytes/s, the way expert reads go. The reads
/// go through the I/O backend `io_backend` ("auto", "io_uring", "pread" or "buffered"), with
/// `chunk_bytes` per read request (default 4 MiB) and `queue_depth` reads in flight (default 8).
/// Reads `bytes` bytes (default 2 GiB, all of a smaller file) in 32 MiB ranges spread over the
/// file. Returns a dict with bytes_read, seconds, bytes_per_s, io_backend and io_backend_reason.
#[pyfunction]
#[pyo3(signature = (path, bytes=DEFAULT_DISK_BYTES, chunk_bytes=None, queue_depth=None, io_backend="auto"))]
fn disk_read_bandwidth<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    bytes: u64,
    chunk_bytes: Option<usize>,
    queue_depth: Option<usize>,
    io_backend: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let choice = BackendChoice::parse(io_backend).ok_or_else(|| {
        PyValueError::new_err(format!("io_backend must be auto, io_uring, pread or buffered, not {io_backend:?}"))
    })?;
    let defaults = IoOptions::default();
    let io = IoOptions {
        chunk_bytes: chunk_bytes.unwrap_or(defaults.chunk_bytes),
        queue_depth: queue_depth.unwrap_or(defaults.queue_depth),
    };
    let result = run_detached(py, || bench::disk_read_bandwidth(&path, bytes, io, choice))?;

    let out = PyDict::new(py);
    out.set_item("bytes_read", result.bytes_read)?;
    out.set_item("seconds", result.seconds)?;
    out.set_item("bytes_per_s", result.bytes_per_s())?;
    out.set_item("io_backend", result.backend)?;
    out.set_item("io_backend_reason", &result.backend_reason)?;
    out.set_item("chunk_bytes", io.chunk_bytes)?;
    out.set_item("queue_depth", io.queue_depth)?;
    Ok(out)
}

/// Times the matrix-vector product of the selected kernels on a random `rows` x `cols` matrix
/// of `ggml_type` ("q4_0", "q4_1", "q8_0", "f16" or "f32") with `threads` threads, for at least
/// `min_seconds`. Returns a dict with the shape, matrix_bytes, kernels, products, best_s,
/// median_s, best_bytes_per_s and median_bytes_per_s (bytes of weights read per second).
#[pyfunction]
#[pyo3(signature = (ggml_type, rows, cols, threads=1, min_seconds=1.0))]
fn matvec_throughput<'py>(
    py: Python<'py>,
    ggml_type: &str,
    rows: usize,
    cols: usize,
    threads: usize,
    min_seconds: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let (name, parsed) = MATVEC_TYPES
        .iter()
        .copied()
        .find(|(name, _)| name.eq_ignore_ascii_case(ggml_type))
        .ok_or_else(|| PyValueError::new_err(format!("ggml_type must be q4_0, q4_1, q8_0, f16 or f32, not {ggml_type:?}")))?;
    let result = run_detached(py, || bench::matvec_throughput(parsed, rows, cols, threads, min_seconds))?;

    let out = PyDict::new(py);
    out.set_item("ggml_type", name)?;
    out.set_item("rows", result.rows)?;
    out.set_item("cols", result.cols)?;
    out.set_item("threads", result.threads)?;
    out.set_item("matrix_bytes", result.matrix_bytes)?;
    out.set_item("kernels", result.isa.to_string())?;
    out.set_item("products", result.products)?;
    out.set_item("best_s", result.best_s)?;
    out.set_item("median_s", result.median_s)?;
    out.set_item("best_bytes_per_s", result.best_bytes_per_s())?;
    out.set_item("median_bytes_per_s", result.median_bytes_per_s())?;
    Ok(out)
}

/// Adds the benchmark functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(memory_read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(disk_read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(matvec_throughput, m)?)?;
    Ok(())
}
