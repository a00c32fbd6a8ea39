"""Replay of routing traces: hand-written traces with hand-counted hits, malformed traces, and the
`replay` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mer.replay import read_trace, replay_trace

EXPERT_BYTES = 1000


def header(**fields) -> dict:
    """A trace header of 2 layers of 4 experts, 1 used per token, 3 slots."""
    values = {
        "format": "mer-trace", "version": 1, "model": "tiny.gguf", "n_layer": 2, "n_expert": 4,
        "n_expert_used": 1, "expert_bytes": EXPERT_BYTES, "slots": 3, "policy": "per-layer-lru",
        "prefetch": False, "lookahead": 1, "margin": 2,
    }
    values.update(fields)
    return values


def step(batch: int, layer: int, experts: list[int], phase: str = "decode", predicted: dict | None = None) -> dict:
    """One decode step: one token routed to `experts`, requested as one group."""
    return {"batch": batch, "phase": phase, "layer": layer, "routed": [experts], "groups": [experts],
            "predicted": predicted or {}, "prefetched": []}


def write_trace(path: Path, first: dict, steps: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in [first, *steps]))
    return path


def alternating_steps() -> list[dict]:
    """Both layers alternate between experts 0 and 1 over four tokens: four experts that cycle
    through three slots in the same order every token."""
    return [step(token, layer, [token % 2]) for token in range(4) for layer in (0, 1)]


def cycling_steps(guess) -> list[dict]:
    """Layer 0 always uses expert 0, layer 1 uses expert `token % 4`, and layer 0 guesses
    `guess(token)` for layer 1."""
    steps = []
    for token in range(4):
        steps.append(step(token, 0, [0], predicted={"1": [guess(token)]}))
        steps.append(step(token, 1, [token % 4]))
    return steps


@pytest.fixture
def alternating(tmp_path) -> Path:
    return write_trace(tmp_path / "alternating.jsonl", header(), alternating_steps())


def test_global_lru_misses_every_cyclic_request(alternating):
    # LRU with three slots for a cycle of four experts evicts the next expert needed, every time.
    result = replay_trace(alternating, policy="lru")
    assert result["policy"] == "lru"
    assert result["decode"]["hits"] == 0
    assert result["decode"]["misses"] == 8
    assert result["decode"]["bytes_read"] == 8 * EXPERT_BYTES
    assert result["total"]["hit_rate"] == 0.0


def test_per_layer_lru_hits_in_its_share(alternating):
    # Tokens 1 and 2 miss everything (the third slot goes to layer 0). Then layer 0 has both
    # its experts and hits, and layer 1, at its quota of one slot, evicts its own and misses.
    result = replay_trace(alternating, policy="per-layer-lru")
    assert result["decode"]["hits"] == 2
    assert result["decode"]["misses"] == 6
    assert result["decode"]["reads"] == 6
    assert result["total"]["hit_rate"] == 0.25


def test_prompt_and_decode_counted_apart(tmp_path):
    prompt = {"batch": 0, "phase": "prompt", "layer": 0, "routed": [[0, 1], [1, 2]], "groups": [[0, 1], [2]],
              "predicted": {}, "prefetched": []}
    steps = [prompt, step(1, 0, [1, 2]), step(2, 0, [0, 3])]
    path = write_trace(tmp_path / "phases.jsonl", header(n_layer=1, n_expert_used=2), steps)
    result = replay_trace(path)
    assert (result["prompt"]["hits"], result["prompt"]["misses"]) == (0, 3)
    # Expert 3 evicts expert 1, the least recent slot that expert 0 does not pin.
    assert (result["decode"]["hits"], result["decode"]["misses"]) == (3, 1)
    assert (result["total"]["hits"], result["total"]["misses"]) == (3, 4)
    assert result["total"]["bytes_read"] == 4 * EXPERT_BYTES


def test_defaults_come_from_header(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", header(slots=5, policy="lru", prefetch=True), cycling_steps(lambda t: t))
    result = replay_trace(path)
    assert result["slots"] == 5
    assert result["policy"] == "lru"
    assert result["prefetch"] is True
    assert result["prefetch_issued"] > 0
    assert replay_trace(path, prefetch=False)["prefetch_issued"] == 0


def test_perfect_prediction_hits_after_first_request(tmp_path):
    path = write_trace(tmp_path / "perfect.jsonl", header(), cycling_steps(lambda token: token % 4))
    result = replay_trace(path, prefetch=True)
    # Only layer 0 of the first token misses: every layer 1 expert was prefetched in time.
    assert result["decode"]["misses"] == 1
    assert result["decode"]["hits"] == 7
    assert result["prefetch_issued"] == 4
    assert result["prefetch_used"] == 4
    assert result["precision"] == 1.0
    assert result["recall"] == 1.0
    assert result["recall_per_layer"] == [0.0, 1.0]
    assert result["prefetch_wasted_bytes"] == 0
    assert result["decode"]["bytes_read"] == 5 * EXPERT_BYTES


def test_wrong_prediction_keeps_demand_counts(tmp_path):
    path = write_trace(tmp_path / "wrong.jsonl", header(), cycling_steps(lambda token: (token + 2) % 4))
    off = replay_trace(path, prefetch=False)
    on = replay_trace(path, prefetch=True)
    for result in (off, on):
        assert result["decode"]["hits"] == 3
        assert result["decode"]["misses"] == 5
    assert on["prefetch_issued"] == 4
    assert on["prefetch_used"] == 0
    assert on["precision"] == 0.0
    assert on["recall"] == 0.0
    assert on["prefetch_wasted_bytes"] == 3 * EXPERT_BYTES
    # Off, the guesses are still scored.
    assert off["routed"] == [0, 4]
    assert off["predicted_routed"] == [0, 0]


def test_ram_budget_divides_by_slot_bytes(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", header(slot_bytes=4096), alternating_steps())
    assert replay_trace(path, ram_budget="16K")["slots"] == 4
    assert replay_trace(path, ram_budget=4096 * 3 + 4095)["slots"] == 3


def test_ram_budget_without_slot_bytes_uses_expert_bytes(tmp_path, caplog):
    path = write_trace(tmp_path / "t.jsonl", header(), alternating_steps())
    result = replay_trace(path, ram_budget=3500)
    assert result["slots"] == 3
    assert result["slot_bytes"] == EXPERT_BYTES
    assert "no slot_bytes" in caplog.text


def test_too_few_slots_rejected(alternating):
    with pytest.raises(ValueError, match=r"1 slot\(s\) are too few: the streaming store needs at least 2"):
        replay_trace(alternating, slots=1)


def test_slots_and_budget_exclusive(alternating):
    with pytest.raises(ValueError, match="slots and ram_budget are both set"):
        replay_trace(alternating, slots=3, ram_budget="1M")


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        read_trace(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "absent.jsonl")


def _without(values: dict, name: str) -> dict:
    return {key: value for key, value in values.items() if key != name}


# (header, steps, the line named, expected message part)
MALFORMED = {
    "wrong format": (header(format="gguf"), [], 1, 'expected a header object with "format": "mer-trace"'),
    "not an object": ([1, 2], [], 1, "not a routing trace"),
    "wrong version": (header(version=2), [], 1, "unsupported trace version 2"),
    "missing header field": (_without(header(), "n_expert"), [], 1, "missing header field 'n_expert'"),
    "header field of wrong type": (header(prefetch="no"), [], 1, "'prefetch' must be a bool"),
    "negative count": (header(expert_bytes=-1), [], 1, "'expert_bytes' must be an integer from 0"),
    "too many experts": (header(n_layer=65536, n_expert=65536, slots=2**32), [], 1,
                         "4294967296 experts, more than the 1048576"),
    "predicted layer beyond 64 bits": (header(), [{**step(0, 0, [0]), "predicted": {"9" * 19: [1]}}], 2,
                                       "a predicted layer must be an integer from 0"),
    "predicted layer of many digits": (header(), [{**step(0, 0, [0]), "predicted": {"9" * 5000: [1]}}], 2,
                                       "keys must be layer numbers"),
    "missing step field": (header(), [step(0, 0, [0]), _without(step(0, 1, [0]), "groups")], 3,
                           "missing step field 'groups'"),
    "unknown phase": (header(), [step(0, 0, [0], phase="warmup")], 2, 'phase must be "prompt" or "decode"'),
    "expert out of range": (header(), [step(0, 0, [0]), step(0, 1, [4])], 3,
                            "routed names expert 4 of layer 1, out of range"),
    "layer out of range": (header(), [step(0, 2, [0])], 2, "layer 2 is out of range: the trace has 2 layers"),
    "predicted layer out of range": (header(), [step(0, 0, [0], predicted={"7": [0]})], 2,
                                     "a prediction targets layer 7, out of range"),
    "predicted expert out of range": (header(), [step(0, 0, [0], predicted={"1": [0, 9]})], 2,
                                      "a prediction names expert 9 of layer 1"),
    "predicted key not a layer": (header(), [step(0, 0, [0], predicted={"next": [0]})], 2,
                                  "keys must be layer numbers"),
    "prefetched out of range": (header(), [{**step(0, 0, [0]), "prefetched": [[1, 8]]}], 2,
                                "a prefetch names expert 8 of layer 1"),
    "prefetched not pairs": (header(), [{**step(0, 0, [0]), "prefetched": [[1]]}], 2, "[layer, expert] pairs"),
    "expert id not an integer": (header(), [step(0, 0, [1.5])], 2, "an expert id in routed must be an integer"),
    "expert id a bool": (header(), [step(0, 0, [True])], 2, "an expert id in routed must be an integer"),
    "group too large": (header(), [{**step(0, 0, [0]), "groups": [[0, 1]]}], 2, "a group has 2 experts"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_trace_names_line(tmp_path, case):
    first, steps, line, message = MALFORMED[case]
    path = write_trace(tmp_path / "bad.jsonl", first, steps)
    with pytest.raises(ValueError) as raised:
        replay_trace(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: line {line}: "), text
    assert message in text


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(header()) + "\n" + json.dumps(step(0, 0, [0])) + "\n" + '{"batch": 0,\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 3: invalid JSON: .* at column 13"):
        read_trace(path)


def test_deep_nesting_and_huge_numbers_rejected(tmp_path):
    for name, text in [("nested", "[" * 200_000), ("digits", '{"batch": ' + "9" * 5000 + "}")]:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(header()) + "\n" + text + "\n")
        with pytest.raises(ValueError, match=rf"{name}.jsonl: line 2: invalid"):
            read_trace(path)


def test_cut_off_last_line_skipped(tmp_path, caplog):
    path = tmp_path / "cut.jsonl"
    whole = json.dumps(step(0, 0, [0]))
    path.write_text(json.dumps(header()) + "\n" + whole + "\n" + whole[:10])
    trace = read_trace(path)
    assert len(trace.steps) == 1
    assert "line 3 is cut off" in caplog.text


def test_cut_off_line_before_end_rejected(tmp_path):
    path = tmp_path / "cut.jsonl"
    whole = json.dumps(step(0, 0, [0]))
    path.write_text(json.dumps(header()) + "\n" + whole[:10] + "\n" + whole + "\n")
    with pytest.raises(ValueError, match=r"cut.jsonl: line 2: invalid JSON"):
        read_trace(path)


def run_mer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mer", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_counts(tmp_path):
    path = write_trace(tmp_path / "perfect.jsonl", header(), cycling_steps(lambda token: token % 4))
    result = run_mer("replay", str(path), "--prefetch", "on", "-v")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"trace     {path}: tiny.gguf, 2 layers, 4 experts per layer, 1 used per token"
    assert lines[1] == "replay    8 steps, 3 slots of 1,000 bytes, per-layer-lru, prefetch on"
    decode = next(line for line in lines if line.startswith("decode"))
    assert decode.split()[:5] == ["decode", "7", "1", "0.875", "1"]
    prefetch = next(line for line in lines if line.startswith("prefetch"))
    assert "4 issued, 4 used, precision 1.000" in prefetch
    assert "recall    1.000 (4 of 4 routed experts with a guess were guessed)" in lines
    assert "  layer 1   1.000 (4 of 4)" in lines


def test_cli_json_has_every_field(alternating):
    result = run_mer("replay", str(alternating), "--policy", "lru", "--slots", "3", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    expected = {
        "trace", "model", "n_layer", "n_expert", "n_expert_used", "expert_bytes", "slot_bytes", "ram_budget_bytes",
        "slots", "policy", "prefetch", "steps", "prompt", "decode", "total", "prefetch_issued", "prefetch_used",
        "prefetch_hits", "prefetch_wasted_bytes", "precision", "recall", "recall_per_layer", "routed",
        "predicted_routed", "recorded_prefetches",
    }
    assert set(output) == expected
    for phase in ("prompt", "decode", "total"):
        assert set(output[phase]) == {"hits", "misses", "hit_rate", "reads", "bytes_read"}
    assert output["decode"]["misses"] == 8
    assert output["policy"] == "lru"


def test_cli_ram_budget_sets_slots(alternating):
    result = run_mer("replay", str(alternating), "--ram-budget", "4000", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["slots"] == 4


def test_cli_reports_invalid_trace(tmp_path):
    path = write_trace(tmp_path / "bad.jsonl", header(version=3), [])
    result = run_mer("replay", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}: line 1: unsupported trace version 3")


def test_cli_help_explains_replay():
    result = run_mer("replay", "--help")
    assert result.returncode == 0
    for text in ("--slots", "--ram-budget", "--policy", "--prefetch", "--json", "upper bound", "4096"):
        assert text in result.stdout


def test_cli_says_when_prefetch_is_off(alternating):
    result = run_mer("replay", str(alternating))
    assert result.returncode == 0, result.stderr
    assert "prefetch  off (the traced run issued 0)" in result.stdout.splitlines()


# The live run and its replay: SmolLM2 split into 8 experts, top-2.

LIVE_PROMPT = "The capital of France is"


@pytest.fixture(scope="module", params=["zero", "mean-gate"])
def top2_split(request, smollm2_file, tmp_path_factory) -> Path:
    """SmolLM2 split into 8 experts, 2 used. The zero router always picks experts 0 and 1, and
    the mean-gate router routes each token by its hidden state."""
    from moe_split import write_moe_split

    path = tmp_path_factory.mktemp("replay") / f"top2_{request.param}.gguf"
    return write_moe_split(smollm2_file, path, n_expert=8, n_used=2, router=request.param)


@pytest.fixture(scope="module")
def top2_slot_bytes(top2_split) -> int:
    import mer

    return mer.Model(top2_split, threads=2).stats()["slot_bytes"]


def run_traced(path: Path, trace: Path, slots: int, slot_bytes: int, prefetch: bool) -> dict:
    """Generate 8 greedy tokens with a budget of `slots` slots, writing a trace, and return the
    run's stats."""
    import mer

    model = mer.Model(path, threads=2, ram_budget=slots * slot_bytes, prefetch=prefetch, trace=trace)
    list(model.generate(LIVE_PROMPT, max_tokens=8, temperature=0))
    stats = model.stats()
    assert stats["slots"] == slots
    return stats


# 3 slots is the minimum for top-2, 40 gives each of the 30 layers one slot, and 75 gives each
# two slots, with 15 more to share.
@pytest.mark.parametrize("slots", [3, 40, 75])
def test_replay_matches_live_hits_and_misses(top2_split, top2_slot_bytes, tmp_path, slots):
    trace = tmp_path / "trace.jsonl"
    live = run_traced(top2_split, trace, slots, top2_slot_bytes, prefetch=False)
    # Decoding misses in every case but the zero router's 60 experts in 75 slots.
    assert live["prompt_misses"] > 0

    replayed = replay_trace(trace, slots=slots, policy=live["eviction_policy"], prefetch=False)
    assert replayed["prompt"]["hits"] == live["prompt_hits"]
    assert replayed["prompt"]["misses"] == live["prompt_misses"]
    assert replayed["decode"]["hits"] == live["hits"]
    assert replayed["decode"]["misses"] == live["misses"]
    assert replayed["decode"]["reads"] == live["expert_reads"]
    # The header's settings are the live run's, so the defaults replay the same run.
    defaults = replay_trace(trace)
    assert defaults["slots"] == slots
    assert replay_trace(trace, ram_budget=slots * top2_slot_bytes)["slots"] == slots
    assert defaults["decode"] == replayed["decode"]
    assert defaults["prompt"] == replayed["prompt"]


def test_replay_recall_matches_live_predictor(top2_split, top2_slot_bytes, tmp_path):
    # Recall depends only on the routing and the guesses, not on when reads finish, so the
    # replay of a run with prefetching scores the predictor exactly as the run did.
    trace = tmp_path / "trace.jsonl"
    live = run_traced(top2_split, trace, 40, top2_slot_bytes, prefetch=True)
    replayed = replay_trace(trace, prefetch=True)
    assert replayed["recall"] == live["predictor_recall"]
    assert replayed["recall_per_layer"] == live["predictor_recall_per_layer"]
    assert replayed["recorded_prefetches"] == live["prefetch_issued"]
    assert replayed["prefetch"] is True
