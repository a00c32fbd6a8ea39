"""Matrix-vector throughput of each kernel, in GB/s of weights read, next to the memory read
bandwidth measured in the same run.

Each type (q4_0, q4_1, q8_0, f16, f32) runs with 1 and 2 threads on two random matrices of 4096
columns. The first, of about 1 GiB, is larger than the last-level cache of most CPUs, so its
weights come from RAM. The second, of about 1 MiB, stays in the L2 or L3 cache, so its figure is
the kernel's own speed. The ratio divides a kernel's GB/s by the memory bandwidth with the same
threads. Near 1 for a from-RAM matrix, the kernel keeps up with RAM. For a cache-resident one,
it shows how far the kernel could outrun RAM. GB is 10^9 bytes.

NOTE: a cache-resident product takes tens of microseconds, so its figure includes handing the
work to the rayon pool, as every matrix of a forward pass does. On a 2-core VM the 1-thread
median came out at a fifth of the best while the 2-thread one stayed close. Waking pool threads
that went to sleep between products is the likely cause, but it was not traced.

Run apart from the tests, from the repository root (-s shows the figures as they come):

    python -m pytest benches/bench_kernels.py --benchmark-only -s

The measurements run in Rust (mer._core.memory_read_bandwidth and matvec_throughput), and their
figures are printed and stored in extra_info (see --benchmark-json). pytest-benchmark's table
times each whole call, building the random matrix included, so it measures nothing useful here.
Set MER_BENCH_RAM_BYTES or MER_BENCH_CACHE_BYTES to change the two matrix sizes and the bandwidth
buffer (which uses the from-RAM size), and MER_BENCH_MIN_SECONDS (default 1) for the time spent
on each matrix.
"""

from __future__ import annotations

import os

import pytest

from mer import _core

COLS = 4096
RAM_BYTES = int(os.environ.get("MER_BENCH_RAM_BYTES", str(1 << 30)))
CACHE_BYTES = int(os.environ.get("MER_BENCH_CACHE_BYTES", str(1 << 20)))
MIN_SECONDS = float(os.environ.get("MER_BENCH_MIN_SECONDS", "1"))
THREAD_COUNTS = (1, 2)

# Bytes per 32 weights of each type: ggml's block sizes.
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34, "f16": 64, "f32": 128}
# Output rows per rayon task in MatRef::matvec. Row counts are a multiple of it, so every task
# has the same work.
ROWS_PER_TASK = 16


@pytest.fixture(scope="module")
def memory_bandwidth() -> dict[int, float]:
    """Memory read bandwidth in bytes/s by thread count, measured once per run."""
    return {threads: _core.memory_read_bandwidth(RAM_BYTES, threads) for threads in THREAD_COUNTS}


def _rows(ggml_type: str, target_bytes: int) -> int:
    """Return the row count that gives a matrix of about `target_bytes`, a multiple of 16."""
    row_bytes = COLS // 32 * BLOCK_BYTES[ggml_type]
    return max(ROWS_PER_TASK, target_bytes // row_bytes // ROWS_PER_TASK * ROWS_PER_TASK)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_memory_read_bandwidth(benchmark, memory_bandwidth, threads):
    bytes_per_s = benchmark.pedantic(lambda: memory_bandwidth[threads], rounds=1, iterations=1)
    benchmark.extra_info["bytes"] = RAM_BYTES
    benchmark.extra_info["threads"] = threads
    benchmark.extra_info["gb_per_s"] = bytes_per_s / 1e9
    print(f"\nmemory read bandwidth, {threads} thread(s): {bytes_per_s / 1e9:.2f} GB/s ({RAM_BYTES} bytes)")
    assert bytes_per_s > 0


@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("placement", ["ram", "cache"])
@pytest.mark.parametrize("ggml_type", list(BLOCK_BYTES))
def test_matvec_gb_per_s(benchmark, memory_bandwidth, ggml_type, placement, threads):
    rows = _rows(ggml_type, RAM_BYTES if placement == "ram" else CACHE_BYTES)
    result = benchmark.pedantic(
        _core.matvec_throughput, args=(ggml_type, rows, COLS, threads, MIN_SECONDS), rounds=1, iterations=1
    )

    gb_per_s = result["best_bytes_per_s"] / 1e9
    memory_gb_per_s = memory_bandwidth[threads] / 1e9
    ratio = gb_per_s / memory_gb_per_s
    benchmark.extra_info.update(result)
    benchmark.extra_info["gb_per_s"] = gb_per_s
    benchmark.extra_info["median_gb_per_s"] = result["median_bytes_per_s"] / 1e9
    benchmark.extra_info["memory_gb_per_s"] = memory_gb_per_s
    benchmark.extra_info["ratio_to_memory"] = ratio
    print(
        f"\n{ggml_type:<4} {placement:<5} {threads} thread(s): {gb_per_s:6.2f} GB/s best, "
        f"{result['median_bytes_per_s'] / 1e9:6.2f} median ({result['matrix_bytes']} bytes, "
        f"{result['kernels']}); memory {memory_gb_per_s:.2f} GB/s, ratio {ratio:.2f}"
    )
    assert result["products"] >= 3
