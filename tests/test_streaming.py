"""The expert store under a RAM budget.

Logits must be the same at any budget, backend and thread count. A budget below the minimum and
a file that shrinks must give clear errors, and the stats must add up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mer
from fixtures import write_llama_gguf
from moe_split import write_moe_split

TEXT_IDS = [504, 3575, 282, 4649, 314, 7042, 30, 198, 198, 504, 1797, 1918]
BACKENDS = ["io_uring", "pread", "buffered"]


def minimum_budget(path) -> int:
    """Return the smallest budget the store accepts: one layer's experts plus one slot."""
    probe = mer.Model(path, threads=2)
    stats, config = probe.stats(), probe.config
    used = config["n_expert_used"] or 1
    return stats["slot_bytes"] * (used + 1)


@pytest.fixture(scope="module")
def split_file(smollm2_file, tmp_path_factory):
    """SmolLM2 split into 8 merged experts per layer, top-2."""
    path = tmp_path_factory.mktemp("split") / "split8_top2.gguf"
    return write_moe_split(smollm2_file, path, n_expert=8, n_used=2)


@pytest.fixture(scope="module", params=["dense", "moe"])
def model_file(request, smollm2_file, split_file):
    return smollm2_file if request.param == "dense" else split_file


@pytest.fixture(scope="module")
def baseline(model_file):
    return mer.Model(model_file, threads=2).logits(TEXT_IDS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", ["minimum", "half", "all"])
def test_logits_same_for_budget_and_backend(model_file, baseline, budget, backend):
    full = mer.Model(model_file, threads=2)
    expert_slots = full.stats()["slots"]
    ram_budget = {
        "minimum": minimum_budget(model_file),
        "half": full.stats()["slot_bytes"] * (expert_slots // 2),
        "all": None,
    }[budget]
    model = mer.Model(model_file, threads=2, ram_budget=ram_budget, io_backend=backend)
    assert model.stats()["io_backend"] == backend
    assert np.array_equal(model.logits(TEXT_IDS), baseline)


@pytest.mark.parametrize("threads", [1, 3])
def test_logits_same_for_threads_at_minimum_budget(model_file, baseline, threads):
    model = mer.Model(model_file, threads=threads, ram_budget=minimum_budget(model_file))
    assert np.array_equal(model.logits(TEXT_IDS), baseline)


def test_budget_below_minimum_states_minimum(smollm2_file):
    minimum = minimum_budget(smollm2_file)
    with pytest.raises(mer.BudgetError, match=f"minimum budget is {minimum} bytes"):
        mer.Model(smollm2_file, ram_budget=minimum - 1)


@pytest.mark.parametrize("text, expected", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("4096", 4096)])
def test_ram_budget_strings(text, expected):
    assert mer.model.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "8X", "0", "abc"])
def test_ram_budget_invalid_strings(text):
    with pytest.raises(ValueError, match="invalid size"):
        mer.model.parse_size(text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shrunk_file_raises_expert_read_error(smollm2_file, tmp_path, backend):
    path = tmp_path / "shrinking.gguf"
    shutil.copyfile(smollm2_file, path)
    model = mer.Model(path, threads=2, ram_budget=minimum_budget(path), io_backend=backend)
    # Cut the file in the middle of the experts: the later layers' FFNs now lie past its end.
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(mer.ExpertReadError) as caught:
        model.logits(TEXT_IDS[:2])
    message = str(caught.value)
    assert "of layer" in message
    assert "offset" in message
    assert "ffn_" in message


def test_forced_io_uring_failure_falls_back_to_pread(smollm2_file):
    env = dict(os.environ, MER_TEST_IO_URING_ERROR="EPERM")
    command = [sys.executable, "-m", "mer", "generate", "--model", str(smollm2_file), "--prompt", "Hello",
               "-n", "2", "--temperature", "0", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["io_backend"] == "pread"
    assert "io_uring was refused" in stats["io_backend_reason"]
    assert "io_uring was refused" in result.stderr


def test_forced_io_uring_failure_is_error_when_requested(smollm2_file, monkeypatch):
    monkeypatch.setenv("MER_TEST_IO_URING_ERROR", "ENOSYS")
    with pytest.raises(OSError, match="expert reads"):
        mer.Model(smollm2_file, io_backend="io_uring")


def test_stats_count_decode_apart_from_prompt(smollm2_file):
    model = mer.Model(smollm2_file, threads=2)
    generation = model.generate("The capital of France is", max_tokens=4, temperature=0)
    list(generation)
    stats = model.stats()
    # Without a budget the prompt reads every layer's FFN once; decoding then only hits.
    assert stats["prompt_misses"] == 30
    assert stats["decode_tokens"] == 3
    assert stats["hits"] == 3 * 30
    assert stats["misses"] == 0
    assert stats["hit_rate"] == 1.0
    assert stats["bytes_read"] == 0
    for key in ("io_backend", "slots", "slot_bytes", "resident_bytes", "ram_budget_bytes", "hits", "misses",
                "hit_rate", "bytes_read", "read_latency_us", "io_wait_s", "compute_s", "io_share",
                "prompt_tokens", "prompt_tokens_per_s", "decode_tokens", "decode_tokens_per_s", "peak_rss_bytes"):
        assert key in stats, key
    assert set(stats["read_latency_us"]) == {"p50", "p95", "p99"}


def test_stats_under_budget_count_misses(smollm2_file):
    model = mer.Model(smollm2_file, threads=2, ram_budget=minimum_budget(smollm2_file), prefetch=False)
    list(model.generate("The capital of France is", max_tokens=3, temperature=0))
    stats = model.stats()
    # Two slots for 30 dense layers: without prefetching, every decode access misses and reads
    # its expert.
    assert stats["hits"] == 0
    assert stats["misses"] == 2 * 30
    assert stats["bytes_read"] >= 2 * 30 * stats["expert_bytes"] // 30
    assert 0.0 < stats["io_share"] < 1.0
    assert stats["read_latency_us"]["p50"] > 0


def test_prefetch_at_minimum_budget_reads_next_dense_layer(smollm2_file):
    """A dense layer's FFN is always used, so the next layer's guess is always right, and the
    second slot can hold it while the current layer computes."""
    model = mer.Model(smollm2_file, threads=2, ram_budget=minimum_budget(smollm2_file))
    list(model.generate("The capital of France is", max_tokens=3, temperature=0))
    stats = model.stats()
    assert stats["hits"] + stats["misses"] == 2 * 30
    assert stats["prefetch_issued"] > 0
    assert stats["prefetch_precision"] == 1.0
    assert stats["predictor_recall"] == 1.0


def test_peak_rss_within_budget(tmp_path):
    """A MoE four times larger than its budget: peak RSS stays within the process's baseline plus
    resident weights, the budget, the KV cache and a stated overhead."""
    path = write_llama_gguf(
        tmp_path / "big_moe.gguf", kind="moe_merged", dtype="q8_0", n_layer=4, n_embd=512, n_head=8, n_head_kv=4,
        n_ff=2048, n_expert=8, n_expert_used=2, seed=3,
    )
    script = (
        "import json, sys, mer\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024\n"
        "before = rss()\n"
        "m = mer.Model(sys.argv[1], threads=2, ram_budget=sys.argv[2])\n"
        "list(m.generate(list(range(1, 40)), max_tokens=24, temperature=0))\n"
        "s = m.stats()\n"
        "print(json.dumps({'before': before, **s}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path), "24M"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["expert_bytes"] >= 4 * stats["ram_budget_bytes"]
    assert stats["misses"] > 0
    # The stated overhead covers the tokenizer, numpy temporaries and per-token buffers. Measured
    # on this model: 2 to 5 MiB above resident + budget + KV cache, at budgets of 12M to 64M.
    overhead = 32 << 20
    bound = stats["before"] + stats["resident_bytes"] + stats["ram_budget_bytes"] + stats["kv_cache_bytes"] + overhead
    assert stats["peak_rss_bytes"] <= bound, (stats["peak_rss_bytes"] - stats["before"]) / 2**20


def test_nan_scale_raises_instead_of_zero_logits(smollm2_file, tmp_path):
    """A NaN scale in one FFN tensor must surface as an error, not vanish into zero logits."""
    import struct

    path = tmp_path / "nan.gguf"
    shutil.copyfile(smollm2_file, path)
    down = next(t for t in mer._core.read_gguf(path)["tensors"] if t["name"] == "blk.5.ffn_down.weight")
    with open(path, "r+b") as f:
        f.seek(down["offset"])
        f.write(struct.pack("<H", 0x7E00))  # an f16 NaN as the first block's scale
    model = mer.Model(path, threads=2)
    with pytest.raises(mer.MerError, match="non-finite logits"):
        model.logits(TEXT_IDS[:3])


def test_interleaved_generations_raise(smollm2):
    first = smollm2.generate("The capital of France is", max_tokens=4, temperature=0)
    next(first)
    second = smollm2.generate("Once upon a time", max_tokens=4, temperature=0)
    next(second)
    with pytest.raises(mer.MerError, match="another call reset this model's context"):
        list(first)


def test_interleaved_equal_lengths_raise(smollm2):
    # Both prompts are 5 tokens, so the context length alone cannot tell the two apart.
    first = smollm2.generate("The capital of France is", max_tokens=4, temperature=0)
    next(first)
    second = smollm2.generate("The capital of Spain is", max_tokens=4, temperature=0)
    next(second)
    assert len(first.prompt_ids) == len(second.prompt_ids)
    with pytest.raises(mer.MerError, match="another call reset this model's context"):
        list(first)


def test_logits_call_ends_open_generation(smollm2):
    generation = smollm2.generate("The capital of France is", max_tokens=4, temperature=0)
    next(generation)
    smollm2.logits(smollm2.tokenize("Hello world and more"))
    with pytest.raises(mer.MerError, match="another call reset this model's context"):
        list(generation)


def test_core_eval_checks_context_length(smollm2):
    smollm2._core.eval([504, 3575], reset=True)
    with pytest.raises(mer.MerError, match="the context holds 2 tokens, expected 5"):
        smollm2._core.eval([282], phase="decode", expect_n_past=5)
    assert smollm2._core.n_past == 2


INTERRUPT_ON_CORE_LOG = """
import logging, sys
import mer

class InterruptOnCoreLog(logging.Handler):
    def emit(self, record):
        if record.name.startswith("mer_core"):
            raise KeyboardInterrupt

logging.getLogger("mer_core").addHandler(InterruptOnCoreLog())
logging.getLogger("mer_core").setLevel(logging.DEBUG)
try:
    mer.Model(sys.argv[1], ram_budget="1M")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_interrupt_during_core_log_propagates(tmp_path):
    # A KeyboardInterrupt raised inside a log call from the core, as Ctrl-C can be, must reach the
    # caller as itself. The core's log levels are cached per process, so this runs in its own.
    path = write_llama_gguf(tmp_path / "moe.gguf", kind="moe_merged", dtype="q8_0")
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_ON_CORE_LOG, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "KeyboardInterrupt"
