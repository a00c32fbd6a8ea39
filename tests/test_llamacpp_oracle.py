"""MER against llama.cpp on the real SmolLM2 model: tokenization, and greedy decoding compared
through teacher-forced logits.

Free-running greedy text diverges between engines at near-ties, so each case feeds the prompt
plus llama.cpp's greedy ids and checks MER's logits step by step. Reference values are in
tests/data/llamacpp_*.json (see tests/oracle_llamacpp.py for how to regenerate them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
# Steps where llama.cpp's top-1 logit beats its top-2 by less than this are near-ties: MER and
# llama.cpp round differently (MER keeps the KV cache in f32, llama.cpp in f16), so either
# token may win there.
MIN_MARGIN = 0.5
# Mean |MER top logit - llama.cpp top logit| allowed over a case. An exact float32 forward pass
# without 8-bit activations measured a mean difference of 0.16 against llama.cpp on 12 prompts.
MAX_MEAN_TOP_LOGIT_DIFF = 0.3


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(DATA.glob("llamacpp_smollm2*.json")):
        cases.extend(json.loads(path.read_text())["cases"])
    return cases


CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_tokenize_matches_llamacpp(smollm2, case):
    assert smollm2.tokenize(case["text"]) == case["prompt_ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_greedy_matches_llamacpp(smollm2, case):
    prompt, greedy = case["prompt_ids"], case["greedy_ids"]
    logits = smollm2.logits(prompt + greedy[:-1])
    steps = logits[len(prompt) - 1 :]
    assert steps.shape == (len(greedy), smollm2.n_vocab)

    for i, (row, expected, margin) in enumerate(zip(steps, greedy, case["margins"])):
        if margin >= MIN_MARGIN:
            assert int(np.argmax(row)) == expected, f"step {i}: margin {margin}"

    if case.get("top_logits"):
        diffs = [abs(float(row.max()) - top) for row, top in zip(steps, case["top_logits"])]
        assert np.mean(diffs) < MAX_MEAN_TOP_LOGIT_DIFF, f"top-logit differences {np.round(diffs, 3)}"


def test_cli_greedy_json_matches_llamacpp(smollm2_file):
    command = [
        sys.executable, "-m", "mer", "generate", "--model", str(smollm2_file),
        "--prompt", "The capital of France is", "-n", "8", "--temperature", "0", "--json", "--threads", "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    output = json.loads(result.stdout)
    assert output["prompt_ids"] == [504, 3575, 282, 4649, 314]
    # Step 5 (index 5) is a near-tie, so only the first five ids are fixed.
    assert output["generated_ids"][:5] == [7042, 30, 198, 198, 504]
    assert len(output["generated_ids"]) == 8
    assert output["text"].startswith(" Paris.")
    assert output["stats"]["decode_tokens"] == 7
    assert output["stats"]["prompt_tokens"] == 5


def test_chat_stops_at_im_end(smollm2):
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    generation = smollm2.generate(prompt, max_tokens=32, temperature=0)
    text = "".join(generation)
    assert generation.stop_reason == "eog"
    assert "<|im_end|>" not in text
    assert 2 not in generation.generated_ids
    assert "4" in text
