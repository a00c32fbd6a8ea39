"""Type stubs of the compiled extension module `mer._core`."""

import os
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def read_gguf(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a GGUF file's header: version, file_size, alignment, data_offset, metadata and
    tensors (name, shape innermost first, type, type_id, absolute offset, n_bytes)."""

def dequantize_tensor(path: str | os.PathLike[str], name: str) -> npt.NDArray[np.float32]:
    """Read one tensor and dequantize it to a flat float32 array, innermost dimension fastest."""

class CoreModel:
    """A loaded model and one context (KV cache) to run it in."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        ram_budget: int | None = None,
        io_backend: str = "auto",
        chunk_bytes: int | None = None,
        queue_depth: int | None = None,
        prefetch: bool = True,
        lookahead: int = 1,
        margin: int = 1,
        trace: str | os.PathLike[str] | None = None,
    ) -> None: ...
    def eval(
        self,
        tokens: list[int],
        all_logits: bool = False,
        phase: str = "prompt",
        reset: bool = False,
        expect_n_past: int | None = None,
        owner: int | None = None,
    ) -> npt.NDArray[np.float32]:
        """Process tokens after those in the context; return logits of shape (rows, n_vocab)."""
    def reset(self) -> None:
        """Empty the context."""
    @property
    def n_past(self) -> int:
        """Tokens in the context."""
    def reset_stats(self) -> None:
        """Zero the run statistics."""
    @property
    def metadata(self) -> dict[str, Any]:
        """GGUF metadata as plain Python values."""
    @property
    def config(self) -> dict[str, Any]:
        """The model's shape."""
    def stats(self) -> dict[str, Any]:
        """Memory, threads, and tokens and time per phase."""

def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a model without reading its weights: config, resident_bytes, expert_bytes,
    bytes_per_expert and tensor_types (count and bytes per type)."""

def kernel_dot(
    isa: str,
    ggml_type: str,
    rows: bytes,
    n_rows: int,
    *,
    values: npt.NDArray[np.float32] | None = None,
    scales: npt.NDArray[np.float32] | None = None,
    quants: npt.NDArray[np.int8] | None = None,
    four_rows: bool = False,
) -> npt.NDArray[np.float32]:
    """Test support: run one dot-product kernel on raw weight rows and return one float32 per row.

    isa is "scalar" or "avx2", ggml_type "q4_0", "q4_1", "q8_0", "f16" or "f32". Quantized types
    take the activation as int8 quants and one float32 scale per block of 32, f16 and f32 as
    float32 values. four_rows runs the four-row kernel (AVX2, quantized types, a multiple of 4
    rows). Invalid inputs raise ValueError."""

def kernel_sets() -> list[str]:
    """Test support: the kernel sets this CPU runs, "scalar" first, then "avx2" if available."""

def replay_trace(
    n_layer: int,
    n_expert: int,
    n_expert_used: int,
    expert_bytes: int,
    steps: list[
        tuple[
            int, int, str, int, list[list[int]], list[list[int]], list[tuple[int, list[int]]], list[tuple[int, int]]
        ]
    ],
    *,
    slots: int,
    policy: str,
    prefetch: bool,
) -> dict[str, Any]:
    """Replay routing-trace steps through a fresh slot table, with every read completing at once.

    Each step is (line, batch, phase, layer, routed, groups, predicted, prefetched): phase is
    "prompt" or "decode", predicted a list of (target layer, experts most likely first) and
    prefetched the (layer, expert) pairs the traced run prefetched. policy is "per-layer-lru"
    or "lru". Returns slots, policy, prefetch, steps, prompt and decode (hits, misses, reads,
    bytes_read), prefetch_issued, prefetch_used, prefetch_hits, prefetch_wasted_bytes,
    precision, recall, recall_per_layer, routed, predicted_routed and recorded_prefetches.
    Raises ValueError naming the line of an invalid step."""

def memory_read_bandwidth(bytes: int = 1 << 30, threads: int = 1) -> float:
    """Measure how fast `threads` threads read a buffer of `bytes` bytes, in bytes/s: the fastest
    of 5 passes after one untimed pass. The default of 1 GiB is meant to exceed the last-level
    cache."""

def disk_read_bandwidth(
    path: str | os.PathLike[str],
    bytes: int = 2 << 30,
    chunk_bytes: int | None = None,
    queue_depth: int | None = None,
    io_backend: str = "auto",
) -> dict[str, Any]:
    """Measure how fast the file at `path` reads, in bytes/s, through the expert store's I/O
    backend `io_backend` ("auto", "io_uring", "pread" or "buffered"), with `chunk_bytes` per read
    request (default 4 MiB) and `queue_depth` reads in flight (default 8). Reads `bytes` bytes
    (default 2 GiB, all of a smaller file) in 32 MiB ranges spread over the file. Returns
    bytes_read, seconds, bytes_per_s, io_backend, io_backend_reason, chunk_bytes and
    queue_depth."""

def matvec_throughput(
    ggml_type: str, rows: int, cols: int, threads: int = 1, min_seconds: float = 1.0
) -> dict[str, Any]:
    """Time the matrix-vector product on a random rows x cols matrix of ggml_type ("q4_0",
    "q4_1", "q8_0", "f16" or "f32") for at least min_seconds. Returns ggml_type, rows, cols,
    threads, matrix_bytes, kernels, products, best_s, median_s, best_bytes_per_s and
    median_bytes_per_s (bytes of weights read per second)."""
