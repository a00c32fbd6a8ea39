"""The command-line interface, run as a user runs it: `python -m mer ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fixtures import write_llama_gguf


def run_mer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mer", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    result = run_mer("--help")
    assert result.returncode == 0
    for command in ("generate", "info", "pull", "synth"):
        assert command in result.stdout


def test_generate_help_explains_options():
    result = run_mer("generate", "--help")
    assert result.returncode == 0
    for option in ("--max-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                   "--seed", "--stop", "--chat", "--threads", "--json", "--model"):
        assert option in result.stdout


def test_generate_streams_text_to_stdout(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "The capital of France is",
                     "-n", "4", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == " Paris.\n\n"
    assert "run summary" in result.stderr


def test_generate_chat_uses_template(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "What is 2+2?", "--chat",
                     "-n", "16", "--temperature", "0", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    # The template adds SmolLM2's default system message, then the user turn.
    assert output["prompt_ids"][0] == 1
    assert output["prompt_ids"][-3:] == [520, 9531, 198]
    assert output["stop_reason"] == "eog"
    assert "<|im_end|>" not in output["text"]


def test_info_reports_model(smollm2_file):
    result = run_mer("info", str(smollm2_file))
    assert result.returncode == 0, result.stderr
    assert "llama" in result.stdout
    assert "30" in result.stdout
    assert "Q4_1" in result.stdout
    assert "Q8_0      1 tensor," in result.stdout
    assert "resident bytes" in result.stdout
    assert "expert bytes" in result.stdout


def test_info_json_counts_experts(tmp_path):
    path = write_llama_gguf(tmp_path / "moe.gguf", kind="moe_merged", dtype="q8_0")
    result = run_mer("info", str(path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["config"]["n_expert"] == 4
    assert info["config"]["n_expert_used"] == 2
    total = sum(entry["bytes"] for entry in info["tensor_types"].values())
    assert info["resident_bytes"] + info["expert_bytes"] == total
    assert info["expert_bytes"] == info["bytes_per_expert"] * 4 * info["config"]["n_layer"]


@pytest.mark.parametrize("command", [["info"], ["generate", "--prompt", "hi", "--model"]])
def test_missing_file_is_clear_error(tmp_path, command):
    missing = str(tmp_path / "nope.gguf")
    result = run_mer(*command, missing)
    assert result.returncode == 1
    assert "nope.gguf" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_file_is_clear_error(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"NOPE" + bytes(60))
    result = run_mer("generate", "--model", str(path), "--prompt", "hi")
    assert result.returncode == 1
    assert "not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_sampling_value_is_clear_error(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "hi", "--top-p", "0")
    assert result.returncode == 2
    assert "--top-p" in result.stderr
    assert "invalid value '0'" in result.stderr


def test_negative_seed_is_usage_error(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "hi", "--seed", "-1")
    assert result.returncode == 2
    assert "--seed" in result.stderr
    assert "invalid value '-1'" in result.stderr


def test_ram_budget_option_accepts_sizes(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "Hello", "-n", "2",
                     "--temperature", "0", "--ram-budget", "8M", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["ram_budget_bytes"] == 8 << 20
    assert stats["slots"] == (8 << 20) // stats["slot_bytes"]


def test_ram_budget_option_rejects_garbage(smollm2_file):
    result = run_mer("generate", "--model", str(smollm2_file), "--prompt", "Hello", "--ram-budget", "lots")
    assert result.returncode == 2
    assert "--ram-budget" in result.stderr
    assert "8G" in result.stderr


def test_threads_above_cpu_count_warns(tmp_path):
    path = write_llama_gguf(tmp_path / "dense.gguf", kind="dense", dtype="q8_0")
    threads = (os.cpu_count() or 1) + 1
    result = run_mer("generate", "--model", str(path), "--prompt", "hi", "-n", "1", "--threads", str(threads))
    assert result.returncode == 0, result.stderr
    assert f"{threads} threads on" in result.stderr


# "caf" and the byte 0xE9, which is not UTF-8. fsdecode() escapes the byte as U+DCE9, and
# subprocess encodes it back, so the child gets the bytes that "$(printf 'caf\xe9')" gives.
NOT_UTF8 = os.fsdecode(b"caf\xe9")


@pytest.mark.parametrize("option, extra", [("--prompt", []), ("--system", ["--chat"]), ("--stop", [])])
def test_invalid_utf8_option_is_clear_error(smollm2_file, option, extra):
    args = ["generate", "--model", str(smollm2_file), "-n", "3", *extra]
    if option != "--prompt":
        args += ["--prompt", "hi"]
    result = run_mer(*args, option, NOT_UTF8)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {option} is not valid UTF-8: ")
    assert "byte 0xE9 at character offset 3" in result.stderr
    assert len(result.stderr.splitlines()) == 1
