"""`python -m mer bench`: the decode bound, the routing overlap, the page cache drop, the disk
bandwidth measurement and the command's output and errors, on tiny models written here.

The real page cache drop evicts every cached page of the machine, so an autouse fixture
replaces it with a fake in every test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import mer
from fixtures import write_llama_gguf
from mer import _core, bench
from mer.bench import decode_bound
from mer.bench_cli import read_llamacpp_json
from mer.cli import main

# Prompt and decode tokens of the fixture model's tokenizer: about one per character, with a
# few merged pairs.
TEXT = "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do."
# Three slots of the MoE fixture, the minimum, for 8 experts: decode tokens miss.
SMALL_BUDGET = "128K"
REAL_DROP_PAGE_CACHE = bench.drop_page_cache

REQUIRED_FIELDS = (
    "decode_tokens_per_s", "prompt_tokens_per_s", "bound_tokens_per_s", "fraction_of_bound", "hit_rate",
    "io_share", "bytes_read", "disk_bytes_per_s", "memory_bytes_per_s", "cold", "io_backend", "threads",
    "ram_budget_bytes", "model", "tokens", "prompt_tokens", "expert_bytes_per_token", "bytes_per_token",
    "disk_bandwidth_measured", "memory_bandwidth_measured", "page_cache_dropped", "page_cache_reason", "date",
    "mer_version", "cpu_model", "routing_overlap", "prefetch_issued", "prefetch_precision", "predictor_recall",
    "peak_rss_bytes",
)


class FakeDrop:
    """A stand-in for drop_page_cache that counts its calls and drops nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return True, "fake drop in a test"


@pytest.fixture(autouse=True)
def fake_drop(monkeypatch) -> FakeDrop:
    fake = FakeDrop()
    monkeypatch.setattr(bench, "drop_page_cache", fake)
    # A small buffer keeps the memory measurement short; its figure only enters the bound.
    monkeypatch.setattr(bench, "MEMORY_PROBE_BYTES", 32 << 20)
    return fake


@pytest.fixture(scope="module")
def moe_file(tmp_path_factory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("bench") / "moe.gguf", kind="moe_merged", dtype="q8_0")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench_text") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_bench_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["bench", "--threads", "1", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------
# The bound.


def test_bound_disk_limited_case():
    # Disk: (1 - 0.5) * 1e9 / 1e9 = 0.5 s. Memory: 2e9 / 1e10 = 0.2 s. Bound: 1 / 0.5 = 2.
    bound = decode_bound(0.5, 1e9, 1e9, 2e9, 1e10)
    assert bound.disk_s_per_token == pytest.approx(0.5)
    assert bound.memory_s_per_token == pytest.approx(0.2)
    assert bound.tokens_per_s == pytest.approx(2.0)
    assert bound.limited_by == "disk"


def test_bound_all_hits_ignores_disk():
    # Mixtral 8x7B at q4_0: E = 6.34 GB, W = 7.2 GB. At h = 1 the disk term is 0, even with no
    # disk bandwidth, so the bound is M / W = 20e9 / 7.2e9 = 2.777... tokens/s.
    bound = decode_bound(1.0, 6.34e9, 0.0, 7.2e9, 20e9)
    assert bound.disk_s_per_token == 0.0
    assert bound.tokens_per_s == pytest.approx(20 / 7.2)
    assert bound.limited_by == "memory"


def test_bound_dense_model_in_ram():
    # SmolLM2-135M Q4_1: 30 layers of one always-used FFN of 1,658,880 bytes (E = 49,766,400)
    # and 46,810,368 resident bytes, so W = 96,576,768. Every FFN is in RAM (h = 1), so at
    # M = 10 GB/s the bound is 1e10 / 96,576,768 = 103.545 tokens/s.
    expert_bytes = 30 * 1_658_880
    bound = decode_bound(1.0, expert_bytes, 1.5e9, 46_810_368 + expert_bytes, 1e10)
    assert bound.tokens_per_s == pytest.approx(103.5446, rel=1e-5)
    assert bound.limited_by == "memory"


def test_bound_zero_hits():
    # No hits: every expert comes from disk. Disk: 6.34e9 / 2e9 = 3.17 s, memory: 7.2e9 / 20e9
    # = 0.36 s, so the bound is 1 / 3.17 = 0.31546 tokens/s.
    bound = decode_bound(0.0, 6.34e9, 2e9, 7.2e9, 20e9)
    assert bound.disk_s_per_token == pytest.approx(3.17)
    assert bound.tokens_per_s == pytest.approx(1 / 3.17)
    assert bound.limited_by == "disk"


def test_bound_without_weights_is_infinite():
    assert decode_bound(1.0, 0, 1e9, 0, 1e9).tokens_per_s == math.inf


@pytest.mark.parametrize(
    "arguments",
    [
        (1.5, 1e9, 1e9, 2e9, 1e10),
        (-0.1, 1e9, 1e9, 2e9, 1e10),
        (0.5, -1, 1e9, 2e9, 1e10),
        (0.5, 1e9, 1e9, 2e9, 0.0),
        (0.5, 1e9, 0.0, 2e9, 1e10),
    ],
)
def test_bound_rejects_invalid_inputs(arguments):
    with pytest.raises(ValueError):
        decode_bound(*arguments)


# ---------------------------------------------------------------------------
# Routing overlap, page cache drop and peak RSS.


def _write_trace(path: Path, steps: list[dict]) -> Path:
    header = {
        "format": "mer-trace", "version": 1, "model": "m.gguf", "n_layer": 2, "n_expert": 4, "n_expert_used": 2,
        "expert_bytes": 100, "slot_bytes": 4096, "slots": 8, "policy": "per-layer-lru", "prefetch": False,
    }
    lines = [header] + [
        {"batch": s["batch"], "phase": s["phase"], "layer": s["layer"], "routed": s["routed"],
         "groups": [], "predicted": {}, "prefetched": []}
        for s in steps
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_routing_overlap_of_hand_trace(tmp_path):
    trace = _write_trace(tmp_path / "trace.jsonl", [
        # A prompt of two tokens: only its last token is compared with the first decode token.
        {"batch": 0, "phase": "prompt", "layer": 0, "routed": [[0, 1], [2, 3]]},
        {"batch": 0, "phase": "prompt", "layer": 1, "routed": [[0, 1], [0, 1]]},
        # Decode token 1: layer 0 shares 1 of 2 with [2, 3], layer 1 shares 2 of 2 with [0, 1].
        {"batch": 1, "phase": "decode", "layer": 0, "routed": [[1, 3]]},
        {"batch": 1, "phase": "decode", "layer": 1, "routed": [[0, 1]]},
        # Decode token 2: layer 0 shares 0 of 2 with [1, 3], layer 1 shares 1 of 2 with [0, 1].
        {"batch": 2, "phase": "decode", "layer": 0, "routed": [[0, 2]]},
        {"batch": 2, "phase": "decode", "layer": 1, "routed": [[1, 2]]},
    ])
    # (0.5 + 1 + 0 + 0.5) / 4
    assert bench.routing_overlap(trace) == pytest.approx(0.5)


def test_routing_overlap_without_decode(tmp_path):
    trace = _write_trace(tmp_path / "trace.jsonl", [{"batch": 0, "phase": "prompt", "layer": 0, "routed": [[0, 1]]}])
    assert bench.routing_overlap(trace) is None


def test_drop_page_cache_writes_injected_file(monkeypatch, tmp_path):
    target = tmp_path / "drop_caches"
    target.write_text("")
    monkeypatch.setattr(bench, "DROP_CACHES", target)
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bench.os, "sync", lambda: None)
    dropped, reason = REAL_DROP_PAGE_CACHE()
    assert dropped
    assert str(target) in reason
    assert target.read_text() == "1\n"


def test_drop_page_cache_needs_root(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "DROP_CACHES", tmp_path / "drop_caches")
    monkeypatch.setattr(bench.os, "geteuid", lambda: 1000)
    assert REAL_DROP_PAGE_CACHE() == (False, "dropping the page cache needs root")


def test_drop_page_cache_needs_writable_file(monkeypatch, tmp_path):
    missing = tmp_path / "missing" / "drop_caches"
    monkeypatch.setattr(bench, "DROP_CACHES", missing)
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    dropped, reason = REAL_DROP_PAGE_CACHE()
    assert not dropped
    assert "is not writable" in reason
    assert not missing.exists()


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/self/status has no VmHWM line")


def test_reset_peak_rss_lowers_peak():
    block = b"\x01" * (64 << 20)
    del block
    before = _peak_rss_bytes()
    if not bench.reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS")
    assert _peak_rss_bytes() <= before - (32 << 20)


# ---------------------------------------------------------------------------
# Disk read bandwidth.


def test_disk_bandwidth_reads_whole_small_file(moe_file):
    measured = _core.disk_read_bandwidth(moe_file, io_backend="buffered")
    assert measured["bytes_read"] == moe_file.stat().st_size
    assert measured["io_backend"] == "buffered"
    assert measured["bytes_per_s"] > 0
    assert measured["chunk_bytes"] == 4 << 20
    assert measured["queue_depth"] == 8


def test_disk_bandwidth_reads_requested_ranges(moe_file):
    # Ranges are 32 MiB, so a request of 1 byte reads one range: the whole small file.
    measured = _core.disk_read_bandwidth(moe_file, bytes=1, chunk_bytes=4096, queue_depth=2)
    assert measured["bytes_read"] >= moe_file.stat().st_size
    assert measured["io_backend"] in ("io_uring", "pread", "buffered")


def test_disk_bandwidth_rejects_bad_arguments(moe_file, tmp_path):
    with pytest.raises(ValueError, match="io_backend"):
        _core.disk_read_bandwidth(moe_file, io_backend="mmap")
    with pytest.raises(ValueError, match="chunk_bytes"):
        _core.disk_read_bandwidth(moe_file, chunk_bytes=1000)
    with pytest.raises(ValueError, match="queue_depth"):
        _core.disk_read_bandwidth(moe_file, queue_depth=0)
    with pytest.raises(FileNotFoundError):
        _core.disk_read_bandwidth(tmp_path / "missing.gguf")


# ---------------------------------------------------------------------------
# The command.


def test_bench_json_has_every_field(moe_file, text_file):
    # A subprocess, as a user runs it, so that stdout is checked to hold only the JSON object.
    result = subprocess.run(
        [sys.executable, "-m", "mer", "bench", "--model", str(moe_file), "--text", str(text_file),
         "--ram-budget", SMALL_BUDGET, "--tokens", "16", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for field in REQUIRED_FIELDS:
        assert field in report, field
    assert "decode: 8 of 16 tokens" in result.stderr

    summary = _core.describe_model(moe_file)
    expert_bytes = 2 * 2 * summary["bytes_per_expert"]
    assert report["tokens"] == 16
    assert report["prompt_tokens"] == 8
    assert report["ram_budget_bytes"] == 128 << 10
    assert report["cold"] is False
    assert report["page_cache_dropped"] is False
    assert report["threads"] == 1
    assert report["expert_bytes_per_token"] == expert_bytes
    assert report["bytes_per_token"] == summary["resident_bytes"] + expert_bytes
    assert 0 <= report["hit_rate"] < 1
    assert report["bytes_read"] > 0
    assert report["disk_bytes_per_s"] > 0
    assert report["fraction_of_bound"] == pytest.approx(report["decode_tokens_per_s"] / report["bound_tokens_per_s"])
    assert 0 <= report["routing_overlap"] <= 1


def test_bench_text_report(capsys, moe_file, text_file):
    code, out, _ = run_bench_main(capsys, "--model", str(moe_file), "--text", str(text_file), "--tokens", "4")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "tokens/s" in lines["prompt"]
    assert "bound" in lines["decode"]
    assert "of the bound" in lines["decode"]
    assert "hit rate" in lines["experts"]
    assert "upper estimate" in lines["per"]
    assert "warm run" in lines["I/O"]


def test_bench_dense_model_has_no_routing(capsys, tmp_path, text_file):
    dense = write_llama_gguf(tmp_path / "dense.gguf", kind="dense", dtype="q4_0")
    code, out, _ = run_bench_main(capsys, "--model", str(dense), "--text", str(text_file), "--tokens", "4", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["routing_overlap"] is None
    # Without a budget every FFN stays in its slot after the prompt read it.
    assert report["hit_rate"] == 1.0
    assert report["bound_limited_by"] == "memory"


def test_bench_tokens_beyond_text(capsys, moe_file, text_file):
    text_tokens = len(mer.Model(moe_file, threads=1).tokenize(TEXT))
    allowed = text_tokens - 8
    code, out, err = run_bench_main(
        capsys, "--model", str(moe_file), "--text", str(text_file), "--tokens", str(allowed + 1)
    )
    assert code == 1
    assert out == ""
    assert f"--tokens {allowed + 1} is more than the text allows" in err
    assert f"its {text_tokens} tokens" in err
    assert f"leave {allowed} decode tokens" in err


def test_bench_prompt_longer_than_text(capsys, moe_file, text_file):
    text_tokens = len(mer.Model(moe_file, threads=1).tokenize(TEXT))
    code, _, err = run_bench_main(
        capsys, "--model", str(moe_file), "--text", str(text_file), "--prompt-tokens", str(text_tokens + 5)
    )
    assert code == 1
    assert "leave 0 decode tokens" in err
    assert f"Pass --prompt-tokens {text_tokens - 1} or less" in err


def test_bench_binary_text_names_file(capsys, moe_file, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"text \xff\xfe more")
    code, _, err = run_bench_main(capsys, "--model", str(moe_file), "--text", str(binary))
    assert code == 1
    assert f"{binary}: --text must be UTF-8, but byte 5 is not" in err


def test_bench_cold_rejects_buffered(capsys, fake_drop, moe_file):
    code, out, err = run_bench_main(capsys, "--model", str(moe_file), "--cold", "--io-backend", "buffered")
    assert code == 1
    assert out == ""
    assert "--cold" in err
    assert "buffered" in err
    assert fake_drop.calls == 0


class BufferedModel(mer.Model):
    """A model whose statistics report the buffered backend, as when auto finds no O_DIRECT."""

    def stats(self):
        stats = super().stats()
        stats["io_backend"] = "buffered"
        stats["io_backend_reason"] = "O_DIRECT was rejected in a test"
        return stats


def test_bench_cold_requires_o_direct(capsys, monkeypatch, fake_drop, moe_file):
    monkeypatch.setattr(bench, "Model", BufferedModel)
    code, out, err = run_bench_main(capsys, "--model", str(moe_file), "--cold")
    assert code == 1
    assert out == ""
    assert "needs O_DIRECT expert reads" in err
    assert "O_DIRECT was rejected in a test" in err
    assert fake_drop.calls == 1


def test_bench_cold_run_reports_drop(capsys, fake_drop, moe_file, text_file):
    if _core.CoreModel(moe_file, 1).stats()["io_backend"] == "buffered":
        pytest.skip("the temporary directory's file system does not support O_DIRECT")
    code, out, _ = run_bench_main(
        capsys, "--model", str(moe_file), "--text", str(text_file), "--tokens", "4", "--cold", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["cold"] is True
    assert report["page_cache_dropped"] is True
    assert report["page_cache_reason"] == "fake drop in a test"
    assert report["expert_reads_bypass_page_cache"] is True
    assert report["io_backend"] in ("io_uring", "pread")
    assert fake_drop.calls == 1


def test_bench_sweep_table_and_plot(capsys, fake_drop, moe_file, text_file, tmp_path):
    pytest.importorskip("matplotlib")
    llamacpp = tmp_path / "llamacpp.json"
    llamacpp.write_text(json.dumps({"128K": 900.0, "1M": 1000.0}))
    plot = tmp_path / "sweep.png"
    code, out, _ = run_bench_main(
        capsys, "--model", str(moe_file), "--text", str(text_file), "--tokens", "4", "--sweep", "128K,1M",
        "--plot", str(plot), "--llamacpp-json", str(llamacpp),
    )
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip().startswith(("128K", "1M"))]
    assert len(rows) == 2
    assert rows[0].split()[-1] == "900.00"
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert fake_drop.calls == 0


def test_bench_sweep_json_runs(capsys, moe_file, text_file):
    code, out, _ = run_bench_main(
        capsys, "--model", str(moe_file), "--text", str(text_file), "--tokens", "4", "--sweep", "128K,1M", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert [run["ram_budget_bytes"] for run in report["runs"]] == [128 << 10, 1 << 20]
    assert report["runs"][0]["hit_rate"] <= report["runs"][1]["hit_rate"]
    assert "memory_bandwidth_measured" in report
    for run in report["runs"]:
        assert run["disk_bandwidth_measured"] >= run["disk_bandwidth_probe"]
        assert run["disk_bandwidth_measured"] >= run["disk_bytes_per_s"]


def test_bench_plot_without_matplotlib(capsys, monkeypatch, moe_file, tmp_path):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_bench_main(
        capsys, "--model", str(moe_file), "--sweep", "128K,1M", "--plot", str(tmp_path / "out.png")
    )
    assert code == 1
    assert out == ""
    assert 'pip install "mer[plot]"' in err
    assert not (tmp_path / "out.png").exists()


def test_bench_plot_needs_sweep(capsys, moe_file, tmp_path):
    code, _, err = run_bench_main(capsys, "--model", str(moe_file), "--plot", str(tmp_path / "out.png"))
    assert code == 1
    assert "need --sweep" in err


def test_llamacpp_json_rejects_invalid(tmp_path):
    path = tmp_path / "llamacpp.json"
    path.write_text(json.dumps({"8G": 3.5, "512M": 1}))
    assert read_llamacpp_json(str(path)) == {8 << 30: 3.5, 512 << 20: 1.0}
    path.write_text(json.dumps({"8G": "fast"}))
    with pytest.raises(ValueError, match="must be a number"):
        read_llamacpp_json(str(path))
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected an object"):
        read_llamacpp_json(str(path))
    path.write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_llamacpp_json(str(path))


def test_bench_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--text", "--tokens", "--prompt-tokens", "--ram-budget", "--sweep", "--io-backend", "--prefetch",
                   "--threads", "--cold", "--json", "--plot", "--llamacpp-json"):
        assert option in out, option
    assert "1 / max((1 - h) * E / D, W / M)" in out


def test_bench_cold_missing_model_keeps_cache(capsys, fake_drop, tmp_path, text_file):
    code, _, err = run_bench_main(
        capsys, "--model", str(tmp_path / "missing.gguf"), "--text", str(text_file), "--cold"
    )
    assert code != 0
    assert "missing.gguf" in err
    assert fake_drop.calls == 0
