"""Decode speed on real text, next to the bound that disk and memory bandwidth set.

A bench run opens a model and feeds it text: the first P tokens as one prompt eval, then the
next N tokens one at a time. This teacher-forced decode runs the forward passes of generation,
with the text's tokens in place of sampled ones. The bench then reads the run's statistics,
and the routing overlap from a routing trace written to a temporary file. After each run, it
measures the read bandwidth of the model file (through the store's I/O backend, with O_DIRECT
where the store used it). D is the larger of that and the rate the run's reads reached, since
a shared or virtual disk changes speed from minute to minute and evidently delivered at least
what the run read. It measures the memory read bandwidth M once, at the end, and bounds each
run's decode speed:

    tokens/s <= 1 / max((1 - h) * E / D, W / M)

h is the run's decode hit rate, E the expert bytes a token uses (layers x experts used per
token x bytes per expert) and W the bytes of weights a token reads: the resident weights plus
E. W counts the whole resident set, the embedding table included, though a token reads one
row of it. So W is an upper estimate, and a memory-bound figure may understate the bound.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, _core
from .bench_text import BENCH_TEXT
from .errors import MerError
from .model import Model
from .replay import read_trace

log = logging.getLogger("mer")

DEFAULT_TOKENS = 32
DEFAULT_PROMPT_TOKENS = 8
# Bytes of the model file read to measure the disk, and of the memory bandwidth buffer. 512 MiB
# exceeds the last-level cache of common CPUs and takes about a second to measure.
DISK_PROBE_BYTES = 2 << 30
MEMORY_PROBE_BYTES = 512 << 20
# Decode tokens between two progress lines.
PROGRESS_EVERY = 8

BUILT_IN_TEXT = (
    "built-in: the opening of Lewis Carroll's \"Alice's Adventures in Wonderland\" (1865), "
    "public domain"
)
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
CLEAR_REFS = Path("/proc/self/clear_refs")
# Backends that read experts with O_DIRECT, bypassing the page cache.
DIRECT_BACKENDS = ("io_uring", "pread")


@dataclass(frozen=True)
class DecodeBound:
    """The two per-token times that bound decode speed, in seconds."""

    disk_s_per_token: float
    memory_s_per_token: float

    @property
    def tokens_per_s(self) -> float:
        """The bound: 1 / max(disk, memory) seconds per token, infinite when both are 0."""
        seconds = max(self.disk_s_per_token, self.memory_s_per_token)
        return 1.0 / seconds if seconds > 0 else float("inf")

    @property
    def limited_by(self) -> str:
        """"disk" or "memory": the larger of the two per-token times."""
        return "disk" if self.disk_s_per_token > self.memory_s_per_token else "memory"


def decode_bound(
    hit_rate: float,
    expert_bytes_per_token: float,
    disk_bytes_per_s: float,
    weight_bytes_per_token: float,
    memory_bytes_per_s: float,
) -> DecodeBound:
    """Return the decode bound for hit rate h, E expert bytes per token, disk bandwidth D, W bytes
    of weights per token and memory bandwidth M: tokens/s <= 1 / max((1 - h) * E / D, W / M).

    A token reads its missed experts, (1 - h) * E bytes, from disk, and all W bytes of its
    weights from memory, with the two overlapped. At h = 1 the disk term is 0 whatever D is.
    Raises ValueError for a hit rate outside [0, 1], negative byte counts, or a bandwidth that is
    not positive (the disk bandwidth only when the disk term needs it).
    """
    if not 0.0 <= hit_rate <= 1.0:
        raise ValueError(f"hit_rate must be between 0 and 1, not {hit_rate}")
    if expert_bytes_per_token < 0 or weight_bytes_per_token < 0:
        raise ValueError(
            f"byte counts must be >= 0, not E = {expert_bytes_per_token} and W = {weight_bytes_per_token}"
        )
    if memory_bytes_per_s <= 0:
        raise ValueError(f"memory bandwidth must be positive, not {memory_bytes_per_s} bytes/s")

    missed_bytes = (1.0 - hit_rate) * expert_bytes_per_token
    if missed_bytes == 0:
        disk_seconds = 0.0
    elif disk_bytes_per_s <= 0:
        raise ValueError(f"disk bandwidth must be positive, not {disk_bytes_per_s} bytes/s")
    else:
        disk_seconds = missed_bytes / disk_bytes_per_s
    return DecodeBound(disk_seconds, weight_bytes_per_token / memory_bytes_per_s)


@dataclass(frozen=True)
class BenchSettings:
    """Settings of one bench invocation: model, text, token counts and the model's options."""

    model: Path
    text: str = BENCH_TEXT
    text_source: str = BUILT_IN_TEXT
    tokens: int = DEFAULT_TOKENS
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    io_backend: str = "auto"
    prefetch: bool = True
    threads: int | None = None
    cold: bool = False


def drop_page_cache() -> tuple[bool, str]:
    """Write back dirty pages and drop the page cache, so that the next reads come from disk.

    Returns whether the cache was dropped, and how or the reason it was not. Dropping needs root and a writable
    /proc/sys/vm/drop_caches (a container often mounts it read-only). It evicts every
    unused cached page of the machine, not only the model's, so tests replace this function.
    """
    if os.geteuid() != 0:
        return False, "dropping the page cache needs root"
    if not os.access(DROP_CACHES, os.W_OK):
        return False, f"{DROP_CACHES} is not writable"
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
    except OSError as e:
        return False, f"writing {DROP_CACHES} failed: {e}"
    return True, f"wrote 1 to {DROP_CACHES} after sync"


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, so that a run in a sweep reports
    its own peak. Returns False where the kernel does not allow it (before Linux 4.0)."""
    try:
        CLEAR_REFS.write_text("5\n")
    except OSError:
        return False
    return True


def check_settings(settings: BenchSettings) -> None:
    """Raise ValueError for settings that cannot run, before any model is opened."""
    if settings.tokens < 1 or settings.prompt_tokens < 1:
        raise ValueError(
            f"tokens and prompt_tokens must be >= 1, not {settings.tokens} and {settings.prompt_tokens}"
        )
    if settings.cold and settings.io_backend == "buffered":
        raise ValueError(
            "--cold reads experts with O_DIRECT, which the buffered backend does not use: "
            "pass --io-backend auto, io_uring or pread"
        )


def run_decode(settings: BenchSettings, ram_budget: int | None) -> dict[str, Any]:
    """Run one bench: drop the page cache for a cold run, open the model with `ram_budget`, run
    the prompt and then the decode tokens, and return the statistics of the run.

    Raises ValueError when the text or the context is too short for the prompt and decode tokens,
    and MerError when a cold run's store does not read experts with O_DIRECT.
    """
    check_settings(settings)
    if settings.cold:
        dropped, page_cache_reason = drop_page_cache()
        log.info("page cache %s: %s", "dropped" if dropped else "not dropped", page_cache_reason)
    else:
        dropped, page_cache_reason = False, "warm run"
    peak_rss_reset = reset_peak_rss()

    with tempfile.TemporaryDirectory(prefix="mer-bench-") as work_dir:
        trace_path = Path(work_dir) / "routing.jsonl"
        model = Model(
            settings.model, threads=settings.threads, ram_budget=ram_budget, io_backend=settings.io_backend,
            prefetch=settings.prefetch, trace=trace_path,
        )
        opened = model.stats()
        if settings.cold and opened["io_backend"] not in DIRECT_BACKENDS:
            raise MerError(
                f"{model.path}: --cold needs O_DIRECT expert reads, but the store uses the {opened['io_backend']} "
                f"backend ({opened['io_backend_reason']}): put the model on a file system that supports O_DIRECT"
            )
        ids = model.tokenize(settings.text)
        _check_lengths(model, settings, len(ids))
        _feed_tokens(model, ids[: settings.prompt_tokens + settings.tokens], settings.prompt_tokens)
        stats = model.stats()
        config = model.config
        del model
        overlap = routing_overlap(trace_path) if config["n_expert"] else None

    return {
        "config": config,
        "stats": stats,
        "text_tokens": len(ids),
        "routing_overlap": overlap,
        "cold": settings.cold,
        "page_cache_dropped": dropped,
        "page_cache_reason": page_cache_reason,
        "peak_rss_reset": peak_rss_reset,
    }


def _check_lengths(model: Model, settings: BenchSettings, text_tokens: int) -> None:
    """Raise ValueError unless the prompt and decode tokens fit in the text and the context."""
    needed = settings.prompt_tokens + settings.tokens
    if needed > text_tokens:
        allowed = text_tokens - settings.prompt_tokens
        if allowed >= 1:
            remedy = f"Pass --tokens {allowed} or less, fewer --prompt-tokens, or a longer --text"
        else:
            remedy = f"Pass --prompt-tokens {max(text_tokens - 1, 1)} or less, or a longer --text"
        raise ValueError(
            f"--tokens {settings.tokens} is more than the text allows: its {text_tokens} tokens minus "
            f"{settings.prompt_tokens} prompt tokens leave {max(allowed, 0)} decode tokens. {remedy}"
        )
    n_ctx = model.config["n_ctx"]
    if needed > n_ctx:
        raise ValueError(
            f"{settings.prompt_tokens} prompt tokens and {settings.tokens} decode tokens do not fit the model's "
            f"context of {n_ctx} tokens: lower --tokens or --prompt-tokens"
        )


def _feed_tokens(model: Model, ids: list[int], prompt_tokens: int) -> None:
    """Run ids[:prompt_tokens] as one prompt eval on a fresh context, then the rest one token at
    a time as decode, logging progress every PROGRESS_EVERY tokens."""
    core = model._core
    core.reset_stats()
    core.eval(ids[:prompt_tokens], phase="prompt", reset=True)
    decode_ids = ids[prompt_tokens:]
    start = time.perf_counter()
    for done, token in enumerate(decode_ids, start=1):
        core.eval([token], phase="decode")
        if done % PROGRESS_EVERY == 0 and done < len(decode_ids):
            elapsed = time.perf_counter() - start
            log.info("decode: %d of %d tokens, %.2f tokens/s", done, len(decode_ids), done / elapsed)


def routing_overlap(trace_path: str | os.PathLike[str]) -> float | None:
    """Return the share of a decode token's routed experts that the previous token also routed
    to in the same layer, averaged over every layer of every decode token. The first decode
    token is compared with the last prompt token. Returns None for a trace without decode steps.
    """
    previous: dict[int, set[int]] = {}
    shares: list[float] = []
    for _, _, phase, layer, routed, *_ in read_trace(trace_path).steps:
        for experts in routed:
            if phase == "decode" and layer in previous and experts:
                shares.append(len(previous[layer].intersection(experts)) / len(experts))
            previous[layer] = set(experts)
    return sum(shares) / len(shares) if shares else None


def measure_disk(path: Path, io_backend: str) -> dict[str, Any]:
    """Measure the read bandwidth of the model file through `io_backend`, the backend a run used."""
    probe_bytes = min(path.stat().st_size, DISK_PROBE_BYTES)
    log.info("measuring the read bandwidth of %s: %.1f MiB through %s", path, probe_bytes / (1 << 20), io_backend)
    return _core.disk_read_bandwidth(path, bytes=probe_bytes, io_backend=io_backend)


def summarize_run(run: dict[str, Any], memory_bandwidth: float, bytes_per_expert: int) -> dict[str, Any]:
    """Return the reported fields of one run: its speed and counts, the bound and the fraction of
    it reached, and the bandwidths the bound used. `run["disk"]` is the disk probe taken after
    the run."""
    stats, config = run["stats"], run["config"]
    disk = run["disk"]
    decode_s = stats["decode_s"]
    reached = stats["bytes_read"] / decode_s if decode_s > 0 else 0.0
    # The disk evidently delivers at least what the run reached, so the bound uses the larger
    # of that and the probe.
    disk_for_bound = max(disk["bytes_per_s"], reached)
    # A dense layer's FFN is one always-used expert.
    experts_per_token = config["n_layer"] * max(config["n_expert_used"], 1)
    expert_bytes_per_token = experts_per_token * bytes_per_expert
    bytes_per_token = stats["resident_bytes"] + expert_bytes_per_token
    bound = decode_bound(stats["hit_rate"], expert_bytes_per_token, disk_for_bound, bytes_per_token, memory_bandwidth)
    decode_tokens_per_s = stats["decode_tokens_per_s"]
    return {
        "ram_budget_bytes": stats["ram_budget_bytes"],
        "decode_tokens_per_s": decode_tokens_per_s,
        "prompt_tokens_per_s": stats["prompt_tokens_per_s"],
        "bound_tokens_per_s": bound.tokens_per_s,
        "fraction_of_bound": decode_tokens_per_s / bound.tokens_per_s,
        "bound_limited_by": bound.limited_by,
        "hit_rate": stats["hit_rate"],
        "io_share": stats["io_share"],
        "bytes_read": stats["bytes_read"],
        "disk_bytes_per_s": reached,
        "disk_bandwidth_probe": disk["bytes_per_s"],
        "disk_bandwidth_measured": disk_for_bound,
        "memory_bytes_per_s": bytes_per_token * decode_tokens_per_s,

        "expert_bytes_per_token": expert_bytes_per_token,
        "bytes_per_token": bytes_per_token,
        "resident_bytes": stats["resident_bytes"],
        "routing_overlap": run["routing_overlap"],

        "slots": stats["slots"],
        "slot_bytes": stats["slot_bytes"],
        "io_backend": stats["io_backend"],
        "io_backend_reason": stats["io_backend_reason"],
        "expert_reads_bypass_page_cache": stats["io_backend"] in DIRECT_BACKENDS,
        "cold": run["cold"],
        "page_cache_dropped": run["page_cache_dropped"],
        "page_cache_reason": run["page_cache_reason"],

        "prefetch": stats["prefetch"],
        "prefetch_issued": stats["prefetch_issued"],
        "prefetch_used": stats["prefetch_used"],
        "prefetch_hits": stats["prefetch_hits"],
        "prefetch_precision": stats["prefetch_precision"],
        "prefetch_wasted_bytes": stats["prefetch_wasted_bytes"],
        "predictor_recall": stats["predictor_recall"],
        "governor_state": stats["governor_state"],

        "peak_rss_bytes": stats["peak_rss_bytes"],
        "peak_rss_reset": run["peak_rss_reset"],
        "threads": stats["threads"],
        "kernels": stats["kernels"],
    }


def run_bench(settings: BenchSettings, budgets: list[int | None]) -> dict[str, Any]:
    """Run the bench once per RAM budget (None: every expert gets a slot), measuring the disk
    after each run and the memory bandwidth once at the end. Returns the settings, the memory
    bandwidth and one summary per run, with the disk bandwidth its bound used.

    Raises the model's open errors (a missing or malformed file) before a cold run drops the page
    cache."""
    check_settings(settings)
    # Reading the header first means a bad path fails before it costs the machine its page cache.
    bytes_per_expert = _core.describe_model(settings.model)["bytes_per_expert"]
    runs = []
    for i, budget in enumerate(budgets, start=1):
        if len(budgets) > 1:
            log.info("run %d of %d: RAM budget %s", i, len(budgets), "none" if budget is None else f"{budget:,} bytes")
        run = run_decode(settings, budget)
        # The disk's speed can change between runs (a shared or virtual disk), so each run gets
        # its own measurement, taken right after it.
        run["disk"] = measure_disk(settings.model, run["stats"]["io_backend"])
        runs.append(run)

    threads = runs[0]["stats"]["threads"]
    log.info("measuring the memory read bandwidth: %d MiB, threads: %d", MEMORY_PROBE_BYTES >> 20, threads)
    memory_bandwidth = _core.memory_read_bandwidth(MEMORY_PROBE_BYTES, threads)
    disk = runs[0]["disk"]
    config = runs[0]["config"]
    return {
        "model": str(settings.model),
        "architecture": config["architecture"],
        "n_layer": config["n_layer"],
        "n_expert": config["n_expert"],
        "n_expert_used": config["n_expert_used"],
        "text": settings.text_source,
        "text_tokens": runs[0]["text_tokens"],
        "tokens": settings.tokens,
        "prompt_tokens": settings.prompt_tokens,
        "disk_bandwidth_bytes": disk["bytes_read"],
        "disk_bandwidth_backend": disk["io_backend"],
        "memory_bandwidth_measured": memory_bandwidth,
        "memory_bandwidth_bytes": MEMORY_PROBE_BYTES,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mer_version": __version__,
        "cpu_model": cpu_model(),
        "runs": [summarize_run(run, memory_bandwidth, bytes_per_expert) for run in runs],
    }


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, else what the platform module reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
