"""Decode and prefill speed of MER on the three benchmark models (see workloads.py).

Decode feeds real text one token at a time (teacher-forced, the same work as generation): 64
tokens after an 8-token prompt. Prefill processes the first 64 tokens of the text in one eval
call, however the core splits that work. Both use 2 threads ($MER_BENCH_THREADS to change),
one warm-up round and 3 timed rounds, and report the best round's tokens/s.

Run apart from the tests, from the repository root (-s shows the figures as they come):

    python -m pytest benches/bench_decode.py --benchmark-only -s

pytest-benchmark's table times whole rounds, the decode prompt included. The tokens/s figures,
printed and stored in extra_info (see --benchmark-json), time only the tokens they count.

Set MER_BENCH_MODEL, MER_BENCH_SPLIT or MER_BENCH_SMALL to a GGUF file to use it in place of
the default model, its generated 8-expert split or the generated `small` synthetic model.
Add `-k smollm2` (or split8, small) to run one model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import workloads

import mer

ROUNDS = 3


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_models")


@pytest.fixture(scope="module", params=workloads.MODEL_NAMES)
def model(request: pytest.FixtureRequest, work_dir: Path) -> mer.Model:
    return mer.Model(workloads.model_path(request.param, work_dir), threads=workloads.THREADS)


def _measure(benchmark, model: mer.Model, kind: str, timed, ids: list[int], tokens: int) -> None:
    """Run `timed(model._core, ids)` once to warm up and then in ROUNDS benchmark rounds, and
    store and print the best round's tokens/s. `timed` returns the seconds of the timed part,
    which for decode leaves out the prompt."""
    timed(model._core, ids)
    seconds: list[float] = []
    benchmark.pedantic(lambda: seconds.append(timed(model._core, ids)), rounds=ROUNDS, iterations=1)

    tokens_per_s = tokens / min(seconds)
    benchmark.extra_info[f"{kind}_tokens_per_s"] = tokens_per_s
    benchmark.extra_info["tokens"] = tokens
    benchmark.extra_info["threads"] = model.stats()["threads"]
    benchmark.extra_info["model"] = model.path.name
    print(f"\n{model.path.name}: {kind} {tokens_per_s:.1f} tokens/s ({tokens} tokens, {workloads.THREADS} threads, best of {ROUNDS})")


def test_decode_tokens_per_s(benchmark, model):
    ids = workloads.text_ids(model, workloads.PROMPT_TOKENS + workloads.DECODE_TOKENS)
    _measure(benchmark, model, "decode", workloads.time_decode, ids, workloads.DECODE_TOKENS)


def test_prefill_tokens_per_s(benchmark, model):
    ids = workloads.text_ids(model, workloads.PREFILL_TOKENS)
    _measure(benchmark, model, "prefill", workloads.time_prefill, ids, workloads.PREFILL_TOKENS)
