"""Workloads of the speed benchmarks: the three model files, the token ids of the text, and MER's
decode and prefill timing loops.

The models, by name:

* ``smollm2``: the default model (SmolLM2-135M-Instruct Q4_1), or ``$MER_BENCH_MODEL``.
* ``split8``: that model with every FFN split into 8 experts, all 8 used per token (see
  ``tests/moe_split.py``), or ``$MER_BENCH_SPLIT``. Written on first use (99 MB).
* ``small``: ``mer synth --preset small`` with seed 0 (8 experts, top-2), or
  ``$MER_BENCH_SMALL``. Written on first use (0.47 GB). MER opens it without a RAM budget, so
  every expert stays in RAM.

A model written here goes into the caller's work directory and is reused from there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import mer
from mer import synth
from mer.bench_text import BENCH_TEXT
from mer.default_model import pull

MODEL_NAMES = ("smollm2", "split8", "small")
MODEL_ENV_VARS = {"smollm2": "MER_BENCH_MODEL", "split8": "MER_BENCH_SPLIT", "small": "MER_BENCH_SMALL"}

THREADS = int(os.environ.get("MER_BENCH_THREADS", "2"))
PROMPT_TOKENS = 8
DECODE_TOKENS = 64
PREFILL_TOKENS = 64

# moe_split.py lives with the tests, which pytest puts on the path but a plain script does not.
_TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


def model_path(name: str, work_dir: Path) -> Path:
    """Return the file of model `name`: its environment variable's path, else the default model
    or a file written into `work_dir` on first use."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown benchmark model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    from_env = os.environ.get(MODEL_ENV_VARS[name])
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found (the path comes from ${MODEL_ENV_VARS[name]})")
        return path
    if name == "smollm2":
        return pull()

    path = work_dir / f"{name}.gguf"
    if path.is_file():
        return path
    print(f"writing the {name} benchmark model to {path}", file=sys.stderr)
    if name == "split8":
        return _write_split8(model_path("smollm2", work_dir), path)
    tokenizer_metadata = mer._core.read_gguf(model_path("smollm2", work_dir))["metadata"]
    return synth.write_synthetic_model(path, "small", seed=0, tokenizer_metadata=tokenizer_metadata)


def _write_split8(source: Path, path: Path) -> Path:
    if str(_TESTS_DIR) not in sys.path:
        sys.path.append(str(_TESTS_DIR))
    import moe_split

    return moe_split.write_moe_split(source, path, n_expert=8)


def text_ids(model: mer.Model, n_tokens: int) -> list[int]:
    """Return the first `n_tokens` token ids of the benchmark text. Raises ValueError when the
    text is shorter than that for this tokenizer."""
    ids = model.tokenize(BENCH_TEXT)
    if len(ids) < n_tokens:
        raise ValueError(f"the benchmark text has {len(ids)} tokens for this tokenizer, fewer than the {n_tokens} requested")
    return ids[:n_tokens]


def time_decode(core: Any, ids: list[int], prompt_tokens: int = PROMPT_TOKENS) -> float:
    """Return the seconds MER takes to feed ids[prompt_tokens:] one token at a time, after a
    fresh context has taken the first `prompt_tokens` in one call. `core` is a Model's `_core`."""
    core.eval(ids[:prompt_tokens], phase="prompt", reset=True)
    start = time.perf_counter()
    for token in ids[prompt_tokens:]:
        core.eval([token], phase="decode")
    return time.perf_counter() - start


def time_prefill(core: Any, ids: list[int]) -> float:
    """Return the seconds MER takes to process `ids` in one eval call on a fresh context."""
    core.reset()
    start = time.perf_counter()
    core.eval(ids, phase="prompt")
    return time.perf_counter() - start
