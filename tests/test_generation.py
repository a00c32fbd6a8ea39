"""Streaming generation: stop strings, end-of-generation, max_tokens and UTF-8 safe pieces."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures
import mer
from mer.model import _stop_scan


def test_stop_scan_emits_all_without_stops():
    assert _stop_scan("hello", [], 0) == (5, False)


def test_stop_scan_finds_stop_and_cuts_before_it():
    assert _stop_scan("Paris.\n\nThe", ["\n\n"], 0) == (6, True)


def test_stop_scan_holds_possible_prefix():
    # "Par" could become "Paris", so it is held back.
    assert _stop_scan("Hello Par", ["Paris"], 0) == (6, False)


def test_stop_scan_uses_earliest_stop():
    assert _stop_scan("a.b,c", [",", "."], 0) == (1, True)


def test_stop_scan_never_retracts_emitted_text():
    assert _stop_scan("abcdef", ["zzz"], 4) == (6, False)


def test_generate_stop_string_excluded(smollm2):
    generation = smollm2.generate("The capital of France is", max_tokens=16, temperature=0, stop=["\n"])
    text = "".join(generation)
    assert text == " Paris."
    assert generation.stop_reason == "stop"


def test_generate_max_tokens(smollm2):
    generation = smollm2.generate("The capital of France is", max_tokens=3, temperature=0)
    pieces = list(generation)
    assert generation.generated_ids == [7042, 30, 198]
    assert "".join(pieces) == generation.text == " Paris.\n"
    assert generation.stop_reason == "length"
    assert smollm2.stats()["decode_tokens"] == 2


def test_generate_zero_tokens(smollm2):
    generation = smollm2.generate("Hello", max_tokens=0)
    assert list(generation) == []
    assert generation.generated_ids == []


def test_generate_accepts_token_ids(smollm2):
    by_text = smollm2.generate("The capital of France is", max_tokens=4, temperature=0)
    by_ids = smollm2.generate([504, 3575, 282, 4649, 314], max_tokens=4, temperature=0)
    assert "".join(by_text) == "".join(by_ids)


def test_generate_pieces_are_whole_characters(smollm2):
    prompt = "<|im_start|>user\nTranslate to Japanese: good morning<|im_end|>\n<|im_start|>assistant\n"
    generation = smollm2.generate(prompt, max_tokens=24, temperature=0)
    pieces = list(generation)
    assert "".join(pieces) == generation.text
    for piece in pieces:
        assert "\ufffd" not in piece
        piece.encode("utf-8")


def test_generate_seeded_sampling_repeatable(smollm2):
    first = smollm2.generate("Once upon a time", max_tokens=12, temperature=1.0, seed=42)
    second = smollm2.generate("Once upon a time", max_tokens=12, temperature=1.0, seed=42)
    assert "".join(first) == "".join(second)
    assert first.generated_ids == second.generated_ids


def test_generate_rejects_empty_prompt(smollm2):
    with pytest.raises(ValueError, match="empty"):
        smollm2.generate("")


def test_generate_stop_as_one_string(smollm2):
    # Greedy text is " Paris.\n\nThe United States has ...". Read as single characters, the stop
    # string would end it at the first space.
    generation = smollm2.generate("The capital of France is", max_tokens=16, temperature=0, stop=" United")
    text = "".join(generation)
    assert generation.stop_reason == "stop"
    assert text == " Paris.\n\nThe"


@pytest.mark.parametrize("arguments", [{"max_tokens": 1.5}, {"max_tokens": True}])
def test_generate_rejects_non_integer_max_tokens(smollm2, arguments):
    with pytest.raises(ValueError, match="max_tokens must be an integer"):
        smollm2.generate("Hello", **arguments)


def test_generate_rejects_non_integer_token_id(smollm2):
    with pytest.raises(ValueError, match="a prompt token id must be an integer, got 1.5"):
        smollm2.generate([1.5])


def test_model_rejects_absurd_thread_count(smollm2_file):
    with pytest.raises(ValueError, match="threads must be an integer from 1 to 1024"):
        mer.Model(smollm2_file, threads=2**64)


def test_generate_skips_padding_rows(tmp_path):
    # The output rows past the tokenizer's tokens are scaled up so that their logits win greedy
    # decoding unless generation leaves them out.
    config = fixtures.config_for_kind("dense")
    tokenizer = fixtures.build_tokenizer()
    n_tokens = len(tokenizer.tokens)
    weights = fixtures.build_llama_weights(config, n_tokens + 8)
    weights["output.weight"][n_tokens:] *= 50
    path = fixtures.write_weights_gguf(tmp_path / "padded.gguf", weights, config, tokenizer=tokenizer, extra_rows=8)
    model = mer.Model(path, threads=1)
    assert model.n_vocab == n_tokens + 8
    assert int(np.argmax(model.logits([1, 2])[-1])) >= n_tokens
    generation = model.generate([1, 2], max_tokens=4, temperature=0)
    list(generation)
    assert generation.generated_ids
    assert all(token < n_tokens for token in generation.generated_ids)
