"""Prediction and prefetching of experts: logits do not change, the governor stops prefetching
that does not pay, and the routing trace records what happened.

The MoE here is SmolLM2 split into 8 experts per layer, top-2, with router row e the mean of
expert e's gate rows, so routing follows the real hidden states.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import mer
from moe_split import write_moe_split

PROMPT = (
    "The river ran quietly past the old mill, where the miller's children used to play on summer "
    "evenings. Nobody remembered when the wheel had last turned"
)
DECODE_TOKENS = 24


@pytest.fixture(scope="module")
def routed_split(smollm2_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "split8_mean_gate.gguf"
    return write_moe_split(smollm2_file, path, n_expert=8, n_used=2, router="mean-gate")


@pytest.fixture(scope="module")
def text_ids(smollm2):
    return smollm2.tokenize(PROMPT)[: 8 + DECODE_TOKENS]


def slot_budget(path, slots: int) -> int:
    return mer.Model(path, threads=2).stats()["slot_bytes"] * slots


def decode_logits(model: mer.Model | mer._core.CoreModel, ids: list[int]) -> np.ndarray:
    """Feed 8 prompt tokens, then the rest one at a time as generated tokens."""
    core = model if isinstance(model, mer._core.CoreModel) else model._core
    rows = [core.eval(ids[:8], phase="prompt", reset=True)]
    rows += [core.eval([token], phase="decode") for token in ids[8:]]
    return np.concatenate(rows)


@pytest.mark.parametrize("slots", [3, 60])
def test_logits_same_with_prefetch_on_and_off(routed_split, text_ids, slots):
    budget = slot_budget(routed_split, slots)
    off = decode_logits(mer.Model(routed_split, threads=2, ram_budget=budget, prefetch=False), text_ids)
    on_model = mer.Model(routed_split, threads=2, ram_budget=budget, prefetch=True)
    on = decode_logits(on_model, text_ids)
    assert np.array_equal(on, off)
    assert on_model.stats()["prefetch_issued"] > 0


def test_wide_prefetch_at_minimum_budget_completes(routed_split, text_ids):
    """Lookahead 4 with a margin of 6 requests far more experts than 3 slots can contain. Demand
    reads must still get slots, and the logits must not change."""
    budget = slot_budget(routed_split, 3)
    expected = decode_logits(mer.Model(routed_split, threads=2, prefetch=False), text_ids)
    core = mer._core.CoreModel(routed_split, 2, budget, "auto", prefetch=True, lookahead=4, margin=6)
    assert np.array_equal(decode_logits(core, text_ids), expected)
    assert core.stats()["prefetch_issued"] > 0


def test_governor_stops_prefetch_when_guesses_are_wrong(routed_split, text_ids, monkeypatch):
    monkeypatch.setenv("MER_TEST_PREDICTOR", "inverted")
    model = mer.Model(routed_split, threads=2, ram_budget=slot_budget(routed_split, 60))
    decode_logits(model, text_ids)
    stats = model.stats()
    assert stats["predictor"] == "next-layer-gate-inverted"
    assert stats["governor_state"].startswith("off")
    assert stats["governor_guesses"] == "off"
    assert stats["governor_top_k_precision"] < 0.25
    # The governor reacts within the first token: at most its layers' guesses were issued,
    # and nothing after.
    assert stats["prefetch_issued"] <= 3 * model.config["n_layer"]
    for token in text_ids[:8]:
        model._core.eval([token], phase="decode")
    assert model.stats()["prefetch_issued"] == stats["prefetch_issued"]


def test_right_guesses_keep_prefetch_on(routed_split, text_ids):
    model = mer.Model(routed_split, threads=2, ram_budget=slot_budget(routed_split, 60))
    decode_logits(model, text_ids)
    stats = model.stats()
    assert stats["predictor"] == "next-layer-gate"
    # Good guesses keep the precision governor on. (Whether the timed trials keep prefetching
    # depends on the machine's load, so it is not checked here.)
    assert stats["governor_top_k_precision"] >= 0.5
    assert stats["governor_guesses"] in ("wide", "narrow")
    assert stats["governor_trial"] in ("warming up", "measuring with prefetch", "measuring without prefetch", "kept on", "kept off")
    assert stats["predictor_recall"] > 0.5
    assert 0 < stats["prefetch_used"] <= stats["prefetch_issued"]
    assert len(stats["predictor_recall_per_layer"]) == model.config["n_layer"]
    assert stats["predictor_recall_per_layer"][0] == 0.0  # nothing predicts the first layer


def test_stats_when_prefetch_disabled(routed_split, text_ids):
    model = mer.Model(routed_split, threads=2, ram_budget=slot_budget(routed_split, 60), prefetch=False)
    decode_logits(model, text_ids)
    stats = model.stats()
    assert stats["prefetch"] is False
    assert stats["prefetch_issued"] == 0
    assert stats["governor_state"] == "disabled"
    # Recall is measured without prefetching too.
    assert stats["predictor_recall"] > 0.5
    assert stats["io_wait_s_per_token"] >= 0.0


def test_trace_records_every_layer_of_every_batch(routed_split, text_ids, tmp_path):
    trace = tmp_path / "routing.jsonl"
    model = mer.Model(routed_split, threads=2, ram_budget=slot_budget(routed_split, 20), trace=trace)
    decode_logits(model, text_ids)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    header, steps = lines[0], lines[1:]
    n_layer = model.config["n_layer"]
    assert header["format"] == "mer-trace"
    assert header["version"] == 1
    assert header["n_layer"] == n_layer
    assert header["n_expert_used"] == 2
    assert header["slots"] == 20
    # One prompt batch and one batch per decode token, each with every layer.
    assert len(steps) == (1 + len(text_ids) - 8) * n_layer
    prompt, decode = steps[0], steps[n_layer]
    assert prompt["phase"] == "prompt"
    assert len(prompt["routed"]) == 8
    assert prompt["predicted"] == {}
    assert decode["phase"] == "decode"
    assert decode["layer"] == 0
    assert len(decode["routed"]) == 1
    assert decode["groups"] == decode["routed"]
    assert list(decode["predicted"]) == ["1"]
    assert len(decode["predicted"]["1"]) == 3  # top-2 plus a margin of 1
    for step in steps:
        for experts in step["routed"]:
            assert experts == sorted(experts)
            assert len(experts) == 2
        for layer, expert in step["prefetched"]:
            assert layer == step["layer"] + 1
            assert expert in step["predicted"][str(layer)]


def test_trace_to_missing_directory_raises(routed_split, tmp_path):
    with pytest.raises(OSError, match="routing trace"):
        mer.Model(routed_split, threads=2, trace=tmp_path / "missing" / "trace.jsonl")
