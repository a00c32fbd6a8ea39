"""The sampler against hand-computed distributions and its documented edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from mer.sampling import Sampler, SamplerSettings, apply_repeat_penalty, softmax

LOGITS = np.array([1.0, 3.0, 2.0, 3.0, -1.0, 0.5], dtype=np.float32)


def draw(settings: SamplerSettings, logits=LOGITS, n=4000, history=()) -> np.ndarray:
    sampler = Sampler(settings)
    return np.bincount([sampler.sample(logits, history) for _ in range(n)], minlength=len(logits))


def test_greedy_picks_lowest_id_of_tie():
    assert Sampler(SamplerSettings(temperature=0)).sample(LOGITS) == 1


def test_greedy_applies_repeat_penalty():
    settings = SamplerSettings(temperature=0, repeat_penalty=2.0)
    # 3.0 / 2 = 1.5 for ids 1 and 3, so id 2 (2.0) wins.
    assert Sampler(settings).sample(LOGITS, history=[1, 3]) == 2


def test_repeat_penalty_divides_positive_multiplies_negative():
    scores = np.array([2.0, -2.0, 4.0])
    apply_repeat_penalty(scores, [0, 1], penalty=2.0, last_n=64)
    assert scores.tolist() == [1.0, -4.0, 4.0]


def test_repeat_penalty_window_is_last_n():
    scores = np.array([2.0, 2.0, 2.0])
    apply_repeat_penalty(scores, [0, 1, 2], penalty=2.0, last_n=1)
    assert scores.tolist() == [2.0, 2.0, 1.0]


def test_seed_makes_draws_reproducible():
    settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    assert np.array_equal(draw(settings, n=200), draw(settings, n=200))


def test_temperature_one_follows_softmax():
    settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    counts = draw(settings, n=20000)
    expected = softmax(LOGITS.astype(np.float64))
    # Binomial standard error of a frequency is at most 0.5 / sqrt(20000) = 0.0035; allow 5 of them.
    assert np.max(np.abs(counts / counts.sum() - expected)) < 0.018


def test_temperature_sharpens_distribution():
    settings = SamplerSettings(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    counts = draw(settings, n=20000)
    expected = softmax(LOGITS.astype(np.float64) / 0.5)
    assert np.max(np.abs(counts / counts.sum() - expected)) < 0.018


def test_top_k_keeps_k_best():
    counts = draw(SamplerSettings(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=3))
    assert set(np.flatnonzero(counts)) == {1, 3}


def test_top_p_keeps_smallest_prefix():
    # Probabilities of the sorted candidates 1, 3, 2, 0, ...: 0.384, 0.384, 0.141, 0.052, ...
    counts = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=0.3, min_p=0.0, seed=3))
    assert set(np.flatnonzero(counts)) == {1}
    counts = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=0.7, min_p=0.0, seed=3))
    assert set(np.flatnonzero(counts)) == {1, 3}
    counts = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0, seed=3))
    assert set(np.flatnonzero(counts)) == {1, 2, 3}


def test_min_p_drops_unlikely():
    # p(2) / p(max) = e^-1 = 0.37, p(0) / p(max) = e^-2 = 0.14.
    counts = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3, seed=3))
    assert set(np.flatnonzero(counts)) == {1, 2, 3}


def test_top_k_one_equals_greedy():
    sampler = Sampler(SamplerSettings(temperature=1.5, top_k=1, seed=0))
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert sampler.sample(logits) == int(np.argmax(logits))


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.5),
        ("repeat_penalty", 0.0), ("seed", -1), ("seed", True), ("temperature", float("nan")),
        ("temperature", float("inf")), ("repeat_penalty", float("nan")), ("top_k", 1.5), ("repeat_last_n", 2.5),
    ],
)
def test_invalid_settings_raise(field, value):
    with pytest.raises(ValueError, match=field):
        Sampler(SamplerSettings(**{field: value}))


def test_tiny_temperature_and_penalty_stay_finite():
    logits = np.array([1.0, 3.0, 2.0, 3.0])
    cold = Sampler(SamplerSettings(temperature=1e-320, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    assert cold.sample(logits) in (1, 3)
    harsh = Sampler(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1e-320, seed=0))
    assert harsh.sample(logits, history=[0]) == 0
