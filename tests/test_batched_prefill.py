"""Batched prefill: a prompt runs as a matrix of tokens, and each expert it uses is read once
per layer for the whole batch.

Each product in a batch is computed as for its token alone and each token sums its experts in
a fixed order, so batched logits must equal token-by-token logits bit for bit, at any RAM
budget and thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

import mer
from moe_split import write_moe_split

BATCH_TOKENS = 64
PROMPT = (
    "The river ran quietly past the old mill, where the miller's children used to play on summer "
    "evenings. Nobody remembered when the wheel had last turned, but every spring the water rose "
    "high enough to touch its lowest paddles, and for a few days the whole village talked of "
    "repairing it. Then the water fell again, the talk moved on to the harvest, and the mill "
    "stood as it always had, grey and patient under the willows."
)


@pytest.fixture(scope="module")
def split_file(smollm2_file, tmp_path_factory):
    """SmolLM2 split into 8 merged experts per layer, top-2."""
    path = tmp_path_factory.mktemp("split") / "split8_top2.gguf"
    return write_moe_split(smollm2_file, path, n_expert=8, n_used=2)


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    ids = smollm2.tokenize(PROMPT)
    # Two batches, the second one partial.
    assert BATCH_TOKENS < len(ids) < 2 * BATCH_TOKENS
    return ids


def token_by_token(model: mer.Model, ids: list[int]) -> np.ndarray:
    core = model._core
    core.reset()
    return np.concatenate([core.eval([token], all_logits=True) for token in ids])


def minimum_budget(path) -> int:
    probe = mer.Model(path, threads=2)
    return probe.stats()["slot_bytes"] * (probe.config["n_expert_used"] + 1)


def test_dense_batched_equals_token_by_token(smollm2, prompt_ids):
    batched = smollm2.logits(prompt_ids)
    assert batched.shape == (len(prompt_ids), smollm2.n_vocab)
    assert np.array_equal(batched, token_by_token(smollm2, prompt_ids))


@pytest.mark.parametrize("threads", [1, 4])
def test_moe_batched_equals_token_by_token(split_file, prompt_ids, threads):
    full = mer.Model(split_file, threads=2)
    expected = token_by_token(full, prompt_ids)
    tight = mer.Model(split_file, threads=threads, ram_budget=minimum_budget(split_file))
    assert np.array_equal(tight.logits(prompt_ids), expected)
    assert np.array_equal(full.logits(prompt_ids), expected)


def test_last_logits_of_batch_equal_last_row(smollm2, prompt_ids):
    core = smollm2._core
    core.reset()
    last = core.eval(prompt_ids)
    assert last.shape == (1, smollm2.n_vocab)
    assert np.array_equal(last[0], smollm2.logits(prompt_ids)[-1])


def test_batch_reads_each_expert_once_per_layer(split_file, prompt_ids):
    """At the minimum budget a batch still reads an expert at most once per layer: misses are
    bounded by the experts a layer has, per batch, not by the tokens."""
    model = mer.Model(split_file, threads=2, ram_budget=minimum_budget(split_file))
    model.reset_stats()
    model._core.eval(prompt_ids, phase="prompt", reset=True)
    stats = model.stats()
    config = model.config
    n_batches = -(-len(prompt_ids) // BATCH_TOKENS)
    reads = stats["prompt_misses"]
    assert 0 < reads <= n_batches * config["n_layer"] * config["n_expert"]
    # Token by token, the same prompt needs far more reads at this budget.
    model.reset_stats()
    model._core.reset()
    for token in prompt_ids:
        model._core.eval([token], phase="prompt")
    assert model.stats()["prompt_misses"] > 2 * reads

