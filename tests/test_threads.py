"""Logits are bit-identical whatever the thread count, on the real model and on a MoE fixture."""

from __future__ import annotations

import numpy as np
import pytest

import mer
from fixtures import write_llama_gguf

TEXT_IDS = [504, 3575, 282, 4649, 314, 7042, 30, 198, 198, 504, 1797, 1918]


@pytest.mark.parametrize("threads", [1, 4])
def test_real_model_logits_same_for_threads(smollm2, smollm2_file, threads):
    baseline = smollm2.logits(TEXT_IDS)
    other = mer.Model(smollm2_file, threads=threads).logits(TEXT_IDS)
    assert np.array_equal(baseline, other)


@pytest.mark.parametrize("kind", ["dense", "moe_merged"])
def test_fixture_logits_same_for_threads(tmp_path, kind):
    path = write_llama_gguf(tmp_path / f"{kind}.gguf", kind=kind, dtype="q4_0")
    ids = list(range(1, 40, 3))
    results = [mer.Model(path, threads=n).logits(ids) for n in (1, 2, 3, 4)]
    for other in results[1:]:
        assert np.array_equal(results[0], other)


def test_logits_repeatable_in_one_model(smollm2):
    first = smollm2.logits(TEXT_IDS)
    second = smollm2.logits(TEXT_IDS)
    assert np.array_equal(first, second)


def test_incremental_eval_equals_teacher_forced(smollm2):
    forced = smollm2.logits(TEXT_IDS)
    core = smollm2._core
    core.reset()
    rows = [core.eval(TEXT_IDS[:4], all_logits=True)]
    for token in TEXT_IDS[4:]:
        rows.append(core.eval([token], phase="decode"))
    assert np.array_equal(np.concatenate(rows), forced)
