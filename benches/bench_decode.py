"""Decode speed on real text, fed one token at a time (teacher-forced, the same work as
generation). Run apart from the tests:

    python -m pytest benches/bench_decode.py --benchmark-only

Set MER_BENCH_MODEL to a GGUF file to measure another model (default: the default model).
"""

from __future__ import annotations

import os

import pytest

import mer
from mer.default_model import pull

TEXT = (
    "The river ran quietly past the old mill, where the miller's children used to play on summer "
    "evenings. Nobody remembered when the wheel had last turned, but every spring the water rose "
    "high enough to touch its lowest paddles, and for a few days the whole village talked of "
    "repairing it."
)
DECODE_TOKENS = 48


@pytest.fixture(scope="module")
def model() -> mer.Model:
    path = os.environ.get("MER_BENCH_MODEL") or pull()
    return mer.Model(path, threads=int(os.environ.get("MER_BENCH_THREADS", "2")))


def test_decode_tokens_per_s(benchmark, model):
    ids = model.tokenize(TEXT)[: DECODE_TOKENS + 8]
    assert len(ids) == DECODE_TOKENS + 8, "the benchmark text is too short for this tokenizer"
    core = model._core

    def run() -> None:
        core.reset()
        core.eval(ids[:8], phase="prompt")
        for token in ids[8:]:
            core.eval([token], phase="decode")

    model.reset_stats()
    benchmark.pedantic(run, rounds=3, iterations=1)
    stats = model.stats()
    benchmark.extra_info["decode_tokens_per_s"] = stats["decode_tokens_per_s"]
    benchmark.extra_info["threads"] = stats["threads"]
    print(f"\ndecode: {stats['decode_tokens_per_s']:.1f} tokens/s with {stats['threads']} threads (warm cache)")
