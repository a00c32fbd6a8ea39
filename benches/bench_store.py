"""The slot pool's read throughput next to the raw disk, and decode at several RAM budgets.

Run apart from the tests:

    python -m pytest benches/bench_store.py --benchmark-only -s

The model is $MER_BENCH_MODEL, else the default model. Expert reads use O_DIRECT, so they reach
the disk (or whatever the host puts behind it) even when the file is in the page cache.

* Slot pool throughput: with prefetching off and the smallest budget, every expert a token uses
  is a demand read, so the bytes read over the time the forward pass waited for them is the
  rate the slot pool fills at. It is printed next to the rate of large O_DIRECT reads of the
  same file through the same backend, measured in the same run.
* Decode at several budgets: tokens/s, hit rate and I/O share with slots for a quarter, half and
  all of the model's experts, with prefetching on.
"""

from __future__ import annotations

import math

import os

import pytest

import mer
from mer import _core
from mer.bench_text import BENCH_TEXT
from mer.default_model import pull

THREADS = 2
DECODE_TOKENS = 24


@pytest.fixture(scope="module")
def model_path() -> str:
    return os.environ.get("MER_BENCH_MODEL") or str(pull())


def decode(model: mer.Model, ids: list[int]) -> dict:
    core = model._core
    core.eval(ids[:8], phase="prompt", reset=True)
    model.reset_stats()
    for token in ids[8 : 8 + DECODE_TOKENS]:
        core.eval([token], phase="decode")
    return model.stats()


def test_slot_pool_read_throughput(benchmark, model_path):
    probe = mer.Model(model_path, threads=THREADS)
    used = probe.config["n_expert_used"] or 1
    budget = probe.stats()["slot_bytes"] * (used + 1)
    ids = probe.tokenize(BENCH_TEXT)
    del probe

    model = mer.Model(model_path, threads=THREADS, ram_budget=budget, prefetch=False)
    stats = benchmark.pedantic(decode, args=(model, ids), rounds=1, iterations=1)
    pool = stats["bytes_read"] / stats["io_wait_s"] if stats["io_wait_s"] > 0 else 0.0
    disk = _core.disk_read_bandwidth(model_path, bytes=1 << 30, io_backend=stats["io_backend"])
    ratio = pool / disk["bytes_per_s"]
    benchmark.extra_info.update(slot_pool_bytes_per_s=pool, disk_bytes_per_s=disk["bytes_per_s"], ratio=ratio)
    print(
        f"\nslot pool: {pool / 1e9:.2f} GB/s while waiting for demand reads ({stats['expert_reads']} reads of "
        f"{stats['slot_bytes'] / 2**20:.1f} MiB slots, {stats['io_backend']}); large O_DIRECT reads of the same file: "
        f"{disk['bytes_per_s'] / 1e9:.2f} GB/s; ratio {ratio:.2f}"
    )


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_decode_at_budget(benchmark, model_path, share):
    probe = mer.Model(model_path, threads=THREADS)
    config, slot_bytes = probe.config, probe.stats()["slot_bytes"]
    # Slots are rounded out to 4096-byte boundaries, so the budget counts slots, not expert bytes.
    experts = config["n_layer"] * max(config["n_expert"], 1)
    slots = max(math.ceil(experts * share), max(config["n_expert_used"], 1) + 1)
    budget = slots * slot_bytes
    ids = probe.tokenize(BENCH_TEXT)
    del probe

    model = mer.Model(model_path, threads=THREADS, ram_budget=budget)
    stats = benchmark.pedantic(decode, args=(model, ids), rounds=1, iterations=1)
    benchmark.extra_info.update(
        ram_budget_bytes=budget, decode_tokens_per_s=stats["decode_tokens_per_s"], hit_rate=stats["hit_rate"]
    )
    print(
        f"\nbudget {budget / 2**20:.0f} MiB ({slots} slots, {share:.0%} of the experts): "
        f"{stats['decode_tokens_per_s']:.1f} tokens/s, "
        f"hit rate {stats['hit_rate']:.3f}, I/O share {stats['io_share']:.3f}, governor {stats['governor_state']}"
    )
