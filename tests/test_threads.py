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


SCALAR_SCRIPT = """
import sys, numpy as np, mer
ids = [int(t) for t in sys.argv[2].split(",")]
np.save(sys.argv[3], mer.Model(sys.argv[1], threads=2).logits(ids))
"""


@pytest.mark.parametrize("kind", ["real", "f16", "f32"])
def test_simd_and_scalar_kernels_agree_exactly(smollm2_file, tmp_path, kind):
    """The SIMD kernels (chosen at run time) and the scalar reference give the same bits."""
    import os
    import subprocess
    import sys

    if kind == "real":
        path, token_ids = smollm2_file, TEXT_IDS
    else:
        # The fixture vocabulary has 283 tokens.
        path, token_ids = write_llama_gguf(tmp_path / f"{kind}.gguf", kind="moe_merged", dtype=kind), range(5, 200, 17)
    ids = ",".join(str(t) for t in token_ids)
    outputs = {}
    for mode, extra_env in (("simd", {}), ("scalar", {"MER_FORCE_SCALAR": "1"})):
        out = tmp_path / f"{mode}.npy"
        env = dict(os.environ, **extra_env)
        subprocess.run([sys.executable, "-c", SCALAR_SCRIPT, str(path), ids, str(out)], env=env, check=True, timeout=300)
        outputs[mode] = np.load(out)
    assert np.array_equal(outputs["simd"], outputs["scalar"])


def test_queries_during_eval_return(smollm2):
    """stats(), n_past and reset() wait for an eval in another thread without holding the GIL,
    which that eval needs between batches."""
    import threading

    core = smollm2._core
    ids = (TEXT_IDS * 40)[:400]
    worker = threading.Thread(target=lambda: core.eval(ids, reset=True))
    worker.start()
    results = {}

    def query() -> None:
        results["stats"] = core.stats()
        results["n_past"] = core.n_past

    querier = threading.Thread(target=query, daemon=True)
    querier.start()
    querier.join(timeout=120)
    worker.join(timeout=120)
    assert not querier.is_alive(), "stats() or n_past hung while another thread evaluated"
    assert results["n_past"] in (0, 64, 128, 192, 256, 320, 384, 400)
