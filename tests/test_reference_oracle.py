"""Checks of the NumPy reference forward pass and the GGUF fixture writers themselves.

Other tests compare the Rust forward pass against ``reference.py`` on files written by
``fixtures.py``, so both must be trusted on their own. The expected values come from
outside the reference. They are llama.cpp's greedy decoding of a real model, gguf-py's
reader, and weights known by construction. Algebraic identities are checked too: GQA
equals repeated KV heads, a mixture of experts equals one wider FFN, and RoPE scores
depend only on relative position.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

# The helpers live next to this file. Adding the folder keeps the imports working under
# any pytest import mode and whether or not tests/ becomes a package.
TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

import fixtures  # noqa: E402
import reference  # noqa: E402

LLAMACPP_SMOLLM2 = json.loads((TESTS_DIR / "data" / "llamacpp_smollm2.json").read_text())

# Steps where llama.cpp's top-1 logit beats its top-2 by less than this may flip between
# llama.cpp, which quantizes activations to 8 bits, and this float64 reference. Their
# argmax is not compared.
MIN_COMPARED_MARGIN = 0.5
# NOTE: the measured mean is 0.23, and the reference is lower than llama.cpp at all 8
# steps. A one-off experiment that rounded the reference's matmul inputs to q8_0 blocks
# brought it to 0.10, so most of the gap is an estimated effect of that quantization.
MAX_MEAN_TOP_LOGIT_DIFF = 0.3

FIXTURE_IDS = [280, 5, 40, 120, 259, 99, 3, 200, 64, 17]


# ---------------------------------------------------------------------------
# Real model against llama.cpp.


@pytest.fixture(scope="module")
def smollm2(smollm2_file: Path) -> reference.ReferenceModel:
    return reference.load_reference_model(smollm2_file)


def _generated_step_logits(model: reference.ReferenceModel, case: dict) -> np.ndarray:
    """Return the logits (n_generated, n_vocab) that predict each of llama.cpp's greedy tokens."""
    prompt = case["prompt_ids"]
    greedy = case["greedy_ids"]
    logits = model.forward(prompt + greedy[:-1]).logits
    return logits[len(prompt) - 1 :]


@pytest.mark.parametrize("case", LLAMACPP_SMOLLM2["cases"], ids=lambda case: case["name"])
def test_smollm2_greedy_matches_llamacpp(smollm2, case):
    logits = _generated_step_logits(smollm2, case)
    assert logits.shape == (len(case["greedy_ids"]), smollm2.config.n_vocab)

    mismatches = []
    for step, (expected, margin) in enumerate(zip(case["greedy_ids"], case["margins"])):
        actual = int(np.argmax(logits[step]))
        if margin >= MIN_COMPARED_MARGIN and actual != expected:
            mismatches.append(f"step {step}: reference {actual}, llama.cpp {expected} (margin {margin})")
    assert not mismatches, "; ".join(mismatches)


def test_smollm2_top_logits_match_llamacpp(smollm2):
    cases = [case for case in LLAMACPP_SMOLLM2["cases"] if case["top_logits"] is not None]
    assert cases, "the llama.cpp data has no case with top logits"

    for case in cases:
        logits = _generated_step_logits(smollm2, case)
        steps = np.arange(len(case["greedy_ids"]))
        # The reference's logit for llama.cpp's chosen token, so a flipped argmax still compares.
        diff = logits[steps, case["greedy_ids"]] - np.asarray(case["top_logits"])
        mean_diff = float(np.mean(np.abs(diff)))
        assert mean_diff < MAX_MEAN_TOP_LOGIT_DIFF, f"{case['name']}: diffs {np.round(diff, 3)}"


def test_smollm2_config_from_metadata(smollm2):
    config = smollm2.config
    assert (config.n_layer, config.n_embd, config.n_ff) == (30, 576, 1536)
    assert (config.n_head, config.n_head_kv, config.head_dim) == (9, 3, 64)
    assert config.rope_freq_base == 100000.0
    assert config.n_vocab == 49152
    assert not config.is_moe
    assert smollm2.tied_output


# ---------------------------------------------------------------------------
# Fixture files read back with gguf-py.


def _read_fixture(path: Path) -> tuple[gguf.GGUFReader, dict]:
    reader = gguf.GGUFReader(path)
    return reader, {tensor.name: tensor for tensor in reader.tensors}


def _expected_tensor_shapes(config: fixtures.FixtureConfig, kind: str, n_vocab: int, tied: bool) -> dict:
    """Return each tensor's expected GGUF shape, innermost dimension first."""
    n_embd, n_ff = config.n_embd, config.n_ff
    kv_width = config.n_head_kv * config.head_dim
    shapes = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    if not tied:
        shapes["output.weight"] = (n_embd, n_vocab)
    for layer in range(config.n_layer):
        prefix = f"blk.{layer}"
        shapes[f"{prefix}.attn_norm.weight"] = (n_embd,)
        shapes[f"{prefix}.attn_q.weight"] = (n_embd, n_embd)
        shapes[f"{prefix}.attn_k.weight"] = (n_embd, kv_width)
        shapes[f"{prefix}.attn_v.weight"] = (n_embd, kv_width)
        shapes[f"{prefix}.attn_output.weight"] = (n_embd, n_embd)
        shapes[f"{prefix}.ffn_norm.weight"] = (n_embd,)
        part_shapes = {"gate": (n_embd, n_ff), "up": (n_embd, n_ff), "down": (n_ff, n_embd)}
        if kind == "dense":
            for part, shape in part_shapes.items():
                shapes[f"{prefix}.ffn_{part}.weight"] = shape
            continue
        shapes[f"{prefix}.ffn_gate_inp.weight"] = (n_embd, config.n_expert)
        for part, shape in part_shapes.items():
            if kind == "moe_merged":
                shapes[f"{prefix}.ffn_{part}_exps.weight"] = (*shape, config.n_expert)
            else:
                for expert in range(config.n_expert):
                    shapes[f"{prefix}.ffn_{part}.{expert}.weight"] = shape
    return shapes


@pytest.mark.parametrize("dtype", sorted(fixtures.DTYPES))
@pytest.mark.parametrize("kind", fixtures.KINDS)
def test_fixture_tensors_read_back(tmp_path, kind, dtype):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind=kind, dtype=dtype)
    _, tensors = _read_fixture(path)
    config = fixtures.config_for_kind(kind)
    n_vocab = len(fixtures.build_tokenizer().tokens)
    expected = _expected_tensor_shapes(config, kind, n_vocab, tied=False)

    assert set(tensors) == set(expected)
    for name, shape in expected.items():
        assert tuple(int(dim) for dim in tensors[name].shape) == shape, name
        if len(shape) == 1 or name.endswith("ffn_gate_inp.weight"):
            assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        else:
            assert tensors[name].tensor_type == fixtures.DTYPES[dtype], name


@pytest.mark.parametrize("kind", fixtures.KINDS)
def test_fixture_metadata(tmp_path, kind):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind=kind, n_layer=3)
    reader, _ = _read_fixture(path)
    config = fixtures.config_for_kind(kind, n_layer=3)

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 3
    assert value("llama.embedding_length") == config.n_embd
    assert value("llama.feed_forward_length") == config.n_ff
    assert value("llama.attention.head_count") == config.n_head
    assert value("llama.attention.head_count_kv") == config.n_head_kv
    assert value("llama.rope.dimension_count") == config.head_dim
    assert value("llama.context_length") == config.context_length
    assert value("llama.rope.freq_base") == pytest.approx(config.rope_freq_base)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_eps)
    if kind == "dense":
        assert "llama.expert_count" not in reader.fields
    else:
        assert value("llama.expert_count") == 4
        assert value("llama.expert_used_count") == 2


def test_fixture_tokenizer_metadata(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf")
    reader, tensors = _read_fixture(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    token_types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    bos_id = reader.fields["tokenizer.ggml.bos_token_id"].contents()
    eos_id = reader.fields["tokenizer.ggml.eos_token_id"].contents()

    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert len(tokens) == int(tensors["token_embd.weight"].shape[1])
    assert len(token_types) == len(tokens)
    assert len(set(tokens)) == len(tokens)
    assert tokens[:256] == fixtures.byte_level_chars()
    assert tokens[ord("A")] == "A"
    assert tokens[0x20] == "Ġ"
    assert tokens[bos_id] == "<|endoftext|>"
    assert eos_id == bos_id
    assert token_types[bos_id] == gguf.TokenType.CONTROL
    assert token_types[ord("a")] == gguf.TokenType.NORMAL

    vocabulary = set(tokens)
    for merge in merges:
        left, right = merge.split(" ")
        assert left in vocabulary, merge
        assert right in vocabulary, merge
        assert left + right in vocabulary, merge


def test_byte_level_chars_are_distinct_printable():
    chars = fixtures.byte_level_chars()
    assert len(set(chars)) == 256
    assert all(char.isprintable() and not char.isspace() for char in chars)


def test_fixture_tied_omits_output_weight(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", tied=True)
    _, tensors = _read_fixture(path)
    assert "output.weight" not in tensors
    assert reference.ReferenceModel(path).tied_output


def test_fixture_embedding_dtype_applies_to_embeddings(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", dtype="q4_1", embedding_dtype="q8_0")
    _, tensors = _read_fixture(path)
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1


def test_fixture_rejects_inner_dim_not_multiple_of_block(tmp_path):
    with pytest.raises(ValueError, match="block size"):
        fixtures.write_llama_gguf(tmp_path / "model.gguf", dtype="q4_0", n_ff=80)


@pytest.mark.parametrize("kind", ["dense", "moe_legacy"])
def test_reference_loads_f32_weights_exactly(tmp_path, kind):
    config = fixtures.config_for_kind(kind)
    tokenizer = fixtures.build_tokenizer()
    weights = fixtures.build_llama_weights(config, len(tokenizer.tokens), seed=3)
    path = fixtures.write_weights_gguf(
        tmp_path / "model.gguf", weights, config, dtype="f32", legacy_experts=kind == "moe_legacy"
    )
    model = reference.ReferenceModel(path)

    np.testing.assert_array_equal(model.token_embd, weights["token_embd.weight"])
    np.testing.assert_array_equal(model.output, weights["output.weight"])
    layer = model.layers[1]
    np.testing.assert_array_equal(layer.attn_k, weights["blk.1.attn_k.weight"])
    np.testing.assert_array_equal(layer.attn_output, weights["blk.1.attn_output.weight"])
    if kind == "dense":
        np.testing.assert_array_equal(layer.ffn_down, weights["blk.1.ffn_down.weight"])
    else:
        np.testing.assert_array_equal(layer.ffn_gate_inp, weights["blk.1.ffn_gate_inp.weight"])
        np.testing.assert_array_equal(layer.ffn_down_exps, weights["blk.1.ffn_down_exps.weight"])
        np.testing.assert_array_equal(layer.ffn_up_exps, weights["blk.1.ffn_up_exps.weight"])


@pytest.mark.parametrize("dtype, max_relative_error", [("f16", 1e-3), ("q8_0", 0.02), ("q4_0", 0.2), ("q4_1", 0.2)])
def test_reference_dequantizes_close_to_weights(tmp_path, dtype, max_relative_error):
    config = fixtures.config_for_kind("dense")
    tokenizer = fixtures.build_tokenizer()
    weights = fixtures.build_llama_weights(config, len(tokenizer.tokens), seed=4)
    path = fixtures.write_weights_gguf(tmp_path / "model.gguf", weights, config, dtype=dtype)
    model = reference.ReferenceModel(path)

    original = weights["blk.0.ffn_gate.weight"]
    error = np.linalg.norm(model.layers[0].ffn_gate - original) / np.linalg.norm(original)
    assert error < max_relative_error


# ---------------------------------------------------------------------------
# Reference forward pass on fixtures.


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", sorted(fixtures.DTYPES))
@pytest.mark.parametrize("kind", fixtures.KINDS)
def test_reference_logits_finite_on_fixture(tmp_path, kind, dtype, tied):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind=kind, dtype=dtype, tied=tied)
    logits = reference.reference_logits(path, FIXTURE_IDS)
    n_vocab = len(fixtures.build_tokenizer().tokens)

    assert logits.shape == (len(FIXTURE_IDS), n_vocab)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    # Unit-scale weights should give logits of order 1, not saturated ones.
    assert 0.1 < float(np.std(logits)) < 10.0


@pytest.mark.parametrize("dtype", sorted(fixtures.DTYPES))
def test_moe_merged_and_legacy_logits_equal(tmp_path, dtype):
    merged = fixtures.write_llama_gguf(tmp_path / "merged.gguf", kind="moe_merged", dtype=dtype, seed=7)
    legacy = fixtures.write_llama_gguf(tmp_path / "legacy.gguf", kind="moe_legacy", dtype=dtype, seed=7)
    np.testing.assert_array_equal(
        reference.reference_logits(merged, FIXTURE_IDS),
        reference.reference_logits(legacy, FIXTURE_IDS),
    )


def test_moe_routing_invariants(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind="moe_merged", n_layer=3)
    output = reference.reference_forward(path, FIXTURE_IDS)
    n_tokens = len(FIXTURE_IDS)

    assert len(output.expert_ids) == 3
    for probs, expert_ids, expert_weights in zip(output.router_probs, output.expert_ids, output.expert_weights):
        assert probs.shape == (n_tokens, 4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert expert_ids.shape == (n_tokens, 2)
        assert all(len(set(row)) == 2 for row in expert_ids)
        np.testing.assert_allclose(expert_weights.sum(axis=1), 1.0)
        assert np.all(expert_weights[:, 0] >= expert_weights[:, 1])
        # No unchosen expert has a higher probability than a chosen one.
        chosen = np.take_along_axis(probs, expert_ids, axis=1)
        assert np.all(chosen.min(axis=1) >= np.sort(probs, axis=1)[:, -2])


def test_dense_fixture_has_no_routing(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind="dense")
    output = reference.reference_forward(path, FIXTURE_IDS)
    assert output.expert_ids == []
    assert output.router_probs == []


def test_moe_equals_dense_ffn_of_concatenated_experts(tmp_path):
    # A zero router gives every expert probability 1/n_expert. The tie goes to the lower
    # indices, so experts 0 and 1 are used with weight 1/2 each. Their weighted sum is one
    # SwiGLU with the two hidden layers stacked and the down matrices halved.
    moe_config = fixtures.config_for_kind("moe_merged")
    tokenizer = fixtures.build_tokenizer()
    moe_weights = fixtures.build_llama_weights(moe_config, len(tokenizer.tokens), seed=11)
    dense_config = fixtures.config_for_kind("dense", n_ff=2 * moe_config.n_ff)
    dense_weights = {}
    for name, values in moe_weights.items():
        if name.endswith("ffn_gate_inp.weight"):
            moe_weights[name] = np.zeros_like(values)
            continue
        prefix = name.split(".ffn_")[0]
        if name.endswith(("ffn_gate_exps.weight", "ffn_up_exps.weight")):
            part = "gate" if "ffn_gate_exps" in name else "up"
            dense_weights[f"{prefix}.ffn_{part}.weight"] = np.concatenate([values[0], values[1]], axis=0)
        elif name.endswith("ffn_down_exps.weight"):
            dense_weights[f"{prefix}.ffn_down.weight"] = np.concatenate([values[0], values[1]], axis=1) * 0.5
        else:
            dense_weights[name] = values

    moe_path = fixtures.write_weights_gguf(tmp_path / "moe.gguf", moe_weights, moe_config, dtype="f32")
    dense_path = fixtures.write_weights_gguf(tmp_path / "dense.gguf", dense_weights, dense_config, dtype="f32")
    moe_output = reference.reference_forward(moe_path, FIXTURE_IDS)

    assert all(np.array_equal(ids, np.tile([0, 1], (len(FIXTURE_IDS), 1))) for ids in moe_output.expert_ids)
    np.testing.assert_allclose(
        moe_output.logits, reference.reference_logits(dense_path, FIXTURE_IDS), rtol=1e-5, atol=1e-5
    )


def test_gqa_equals_attention_with_repeated_kv_heads(tmp_path):
    gqa_config = fixtures.config_for_kind("dense")
    tokenizer = fixtures.build_tokenizer()
    gqa_weights = fixtures.build_llama_weights(gqa_config, len(tokenizer.tokens), seed=5)
    mha_config = fixtures.config_for_kind("dense", n_head_kv=gqa_config.n_head)
    group = gqa_config.n_head // gqa_config.n_head_kv
    head_dim = gqa_config.head_dim

    # Query head h reads KV head h // group, so KV head j's rows go to heads j*group .. j*group+group-1.
    mha_weights = dict(gqa_weights)
    for name, values in gqa_weights.items():
        if name.endswith(("attn_k.weight", "attn_v.weight")):
            per_head = values.reshape(gqa_config.n_head_kv, head_dim, -1)
            mha_weights[name] = np.repeat(per_head, group, axis=0).reshape(gqa_config.n_head * head_dim, -1)

    gqa_path = fixtures.write_weights_gguf(tmp_path / "gqa.gguf", gqa_weights, gqa_config, dtype="f32")
    mha_path = fixtures.write_weights_gguf(tmp_path / "mha.gguf", mha_weights, mha_config, dtype="f32")
    np.testing.assert_allclose(
        reference.reference_logits(gqa_path, FIXTURE_IDS),
        reference.reference_logits(mha_path, FIXTURE_IDS),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("kind", ["dense", "moe_merged"])
def test_reference_logits_are_causal(tmp_path, kind):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf", kind=kind, dtype="q8_0")
    full = reference.reference_logits(path, FIXTURE_IDS)
    for length in (1, 4, 7):
        prefix = reference.reference_logits(path, FIXTURE_IDS[:length])
        np.testing.assert_allclose(prefix, full[:length], rtol=1e-6, atol=1e-6)


def test_reference_rejects_unknown_tensor(tmp_path):
    config = fixtures.config_for_kind("dense")
    tokenizer = fixtures.build_tokenizer()
    weights = fixtures.build_llama_weights(config, len(tokenizer.tokens))
    weights["blk.0.attn_q.bias"] = np.zeros(config.n_embd, dtype=np.float32)
    path = fixtures.write_weights_gguf(tmp_path / "model.gguf", weights, config, dtype="f32")
    with pytest.raises(NotImplementedError, match="blk.0.attn_q.bias"):
        reference.ReferenceModel(path)


def test_reference_rejects_out_of_range_token(tmp_path):
    path = fixtures.write_llama_gguf(tmp_path / "model.gguf")
    n_vocab = len(fixtures.build_tokenizer().tokens)
    with pytest.raises(ValueError, match="token ids"):
        reference.reference_logits(path, [0, n_vocab])


# ---------------------------------------------------------------------------
# RoPE.


def test_rope_rotates_adjacent_pairs():
    rope_dim, freq_base, position = 4, 10000.0, 3
    angles = reference.rope_angles(np.array([position]), rope_dim, freq_base)
    # Unit vectors in elements 0 and 2 start pairs 0 and 1. NeoX style would pair 0 with 2.
    x = np.array([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    rotated = reference.apply_rope(x, angles, rope_dim)

    slow_angle = position * freq_base ** (-2.0 / rope_dim)
    np.testing.assert_allclose(rotated[0, 0], [np.cos(position), np.sin(position), 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotated[0, 1], [0.0, 0.0, np.cos(slow_angle), np.sin(slow_angle)], atol=1e-12)


def test_rope_scores_depend_on_relative_position():
    rng = np.random.default_rng(0)
    head_dim = 16
    q = rng.standard_normal((1, 1, head_dim))
    k = rng.standard_normal((1, 1, head_dim))

    def score(query_pos: int, key_pos: int) -> float:
        q_rot = reference.apply_rope(q, reference.rope_angles(np.array([query_pos]), head_dim, 10000.0), head_dim)
        k_rot = reference.apply_rope(k, reference.rope_angles(np.array([key_pos]), head_dim, 10000.0), head_dim)
        return float(np.sum(q_rot * k_rot))

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-9)
    assert score(5, 5) == pytest.approx(float(np.sum(q * k)), rel=1e-9)
