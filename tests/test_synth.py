"""Synthetic benchmark models: file layout, zero-mean weights, loading in MER, routing spread, safe writing.

The files are written with the "tiny" preset and the real SmolLM2 tokenizer. Their layout is
checked with gguf-py's reader and their routing with the independent NumPy reference forward pass
in reference.py.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
from reference import reference_forward

import mer
from mer import _core, synth

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType

# English prose, written for this test, so the routing is measured on real token sequences.
PROSE = """\
The river town woke slowly on market days. Before the sun had cleared the hills, the baker had
already pulled two trays of bread from the oven, and the smell drifted down the narrow street toward
the water. Fishermen came up from the docks with baskets of silver fish, arguing cheerfully about the
weather and the price of rope. A schoolteacher opened the shutters of her small house and watched the
square fill with carts, dogs and children who should have been asleep.

By noon the crowd was thick enough that nobody could cross the bridge without stopping twice.
Farmers sold apples, cheese and honey from the back of their wagons, while a traveling musician
played an old song on a violin with one loose string. The mayor walked through the stalls shaking
hands, promising to repair the road before winter, as he had promised every year since anyone could
remember. Most people smiled politely and kept their money in their pockets until they found what
they actually needed.
"""


@pytest.fixture(scope="module")
def tokenizer_metadata(smollm2_file: Path) -> dict:
    return _core.read_gguf(smollm2_file)["metadata"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory, tokenizer_metadata: dict) -> Path:
    path = tmp_path_factory.mktemp("synth") / "tiny.gguf"
    return synth.write_synthetic_model(path, "tiny", seed=0, tokenizer_metadata=tokenizer_metadata)


@pytest.fixture(scope="module")
def tiny_reader(tiny_path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(tiny_path)


@pytest.fixture(scope="module")
def tiny_model(tiny_path: Path) -> mer.Model:
    return mer.Model(tiny_path, threads=2)


@pytest.fixture(scope="module")
def prose_ids(tiny_model: mer.Model) -> list[int]:
    ids = tiny_model.tokenize(PROSE, add_special=False)
    assert len(ids) > 150
    return ids


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _field_types(reader: gguf.GGUFReader, key: str) -> list[V]:
    return [V(t) for t in reader.fields[key].types]


def _overlap_with_previous(expert_ids: np.ndarray) -> float:
    """Mean share of each token's experts that the token before it also chose."""
    shared = (expert_ids[1:, :, None] == expert_ids[:-1, None, :]).any(axis=-1)
    return float(shared.mean())


# ---------------------------------------------------------------------------
# File layout.


def test_synth_tensor_shapes_and_types(tiny_reader):
    preset = synth.PRESETS["tiny"]
    n_embd, n_ff, n_expert = preset.n_embd, preset.n_ff, preset.n_expert
    kv_width = preset.n_head_kv * preset.head_dim
    tensors = {t.name: t for t in tiny_reader.tensors}
    expected = {
        "token_embd.weight": ([n_embd, 49152], T.Q4_0),
        "output.weight": ([n_embd, 49152], T.Q4_0),
        "output_norm.weight": ([n_embd], T.F32),
    }
    for layer in range(preset.n_layer):
        p = f"blk.{layer}"
        expected |= {
            f"{p}.attn_norm.weight": ([n_embd], T.F32),
            f"{p}.attn_q.weight": ([n_embd, n_embd], T.Q4_0),
            f"{p}.attn_k.weight": ([n_embd, kv_width], T.Q4_0),
            f"{p}.attn_v.weight": ([n_embd, kv_width], T.Q4_0),
            f"{p}.attn_output.weight": ([n_embd, n_embd], T.Q4_0),
            f"{p}.ffn_norm.weight": ([n_embd], T.F32),
            f"{p}.ffn_gate_inp.weight": ([n_embd, n_expert], T.F32),
            f"{p}.ffn_gate_exps.weight": ([n_embd, n_ff, n_expert], T.Q4_0),
            f"{p}.ffn_up_exps.weight": ([n_embd, n_ff, n_expert], T.Q4_0),
            f"{p}.ffn_down_exps.weight": ([n_ff, n_embd, n_expert], T.Q4_0),
        }
    assert sorted(tensors) == sorted(expected)
    for name, (shape, tensor_type) in expected.items():
        assert list(tensors[name].shape) == shape, name
        assert tensors[name].tensor_type == tensor_type, name


def test_synth_tensor_offsets_aligned(tiny_reader):
    assert tiny_reader.alignment == 32
    assert tiny_reader.data_offset % 32 == 0
    for tensor in tiny_reader.tensors:
        assert (tensor.data_offset - tiny_reader.data_offset) % 32 == 0, tensor.name


def test_synth_model_metadata_types(tiny_reader):
    preset = synth.PRESETS["tiny"]
    assert _field(tiny_reader, "general.architecture") == "llama"
    assert _field(tiny_reader, "llama.expert_count") == preset.n_expert
    assert _field(tiny_reader, "llama.expert_used_count") == preset.n_expert_used
    assert _field(tiny_reader, "llama.block_count") == preset.n_layer
    assert _field(tiny_reader, "llama.vocab_size") == 49152
    assert _field_types(tiny_reader, "llama.expert_count") == [V.UINT32]
    assert _field_types(tiny_reader, "llama.rope.freq_base") == [V.FLOAT32]
    assert _field_types(tiny_reader, "general.file_type") == [V.UINT32]


def test_synth_tokenizer_copied_with_types(tiny_reader, tokenizer_metadata):
    for key, value in tokenizer_metadata.items():
        if key.startswith("tokenizer."):
            assert _field(tiny_reader, key) == value, key
    assert _field_types(tiny_reader, "tokenizer.ggml.tokens") == [V.ARRAY, V.STRING]
    assert _field_types(tiny_reader, "tokenizer.ggml.token_type") == [V.ARRAY, V.INT32]
    assert _field_types(tiny_reader, "tokenizer.ggml.merges") == [V.ARRAY, V.STRING]
    assert _field_types(tiny_reader, "tokenizer.ggml.bos_token_id") == [V.UINT32]
    assert _field_types(tiny_reader, "tokenizer.ggml.add_bos_token") == [V.BOOL]


def test_synth_header_read_by_mer(tiny_path):
    config = _core.describe_model(tiny_path)["config"]
    preset = synth.PRESETS["tiny"]
    assert config["n_layer"] == preset.n_layer
    assert config["n_expert"] == preset.n_expert
    assert config["n_expert_used"] == preset.n_expert_used
    assert config["n_vocab"] == 49152


# ---------------------------------------------------------------------------
# Weights.


def test_q4_0_nibbles_never_zero(tiny_reader):
    for tensor in tiny_reader.tensors:
        if tensor.tensor_type != T.Q4_0:
            continue
        qs = np.asarray(tensor.data).reshape(-1, 18)[:, 2:]
        assert (qs & 0x0F).min() >= 1, tensor.name
        assert (qs >> 4).min() >= 1, tensor.name


def test_q4_0_nibbles_cover_one_to_fifteen(tiny_reader):
    tensor = next(t for t in tiny_reader.tensors if t.name == "token_embd.weight")
    qs = np.asarray(tensor.data).reshape(-1, 18)[:, 2:]
    counts = np.bincount(np.concatenate([(qs & 0x0F).ravel(), (qs >> 4).ravel()]), minlength=16)
    assert counts[0] == 0
    # Uniform on 1..15: each value has 1/15 of the draws, here about 0.23 M each.
    share = counts[1:] / counts.sum()
    np.testing.assert_allclose(share, 1 / 15, rtol=0.02)


def test_synth_weights_zero_mean_and_scaled(tiny_reader):
    preset = synth.PRESETS["tiny"]
    tensors = {t.name: t for t in tiny_reader.tensors}

    def values(name: str) -> np.ndarray:
        tensor = tensors[name]
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)

    # Expected RMS of the elements: 1 for the embedding, gain / sqrt(n_in) for projections.
    expected_rms = {
        "token_embd.weight": 1.0,
        "blk.0.attn_q.weight": 1 / np.sqrt(preset.n_embd),
        "blk.0.ffn_gate_exps.weight": 1 / np.sqrt(preset.n_embd),
        "blk.0.attn_output.weight": synth.ATTENTION_OUTPUT_GAIN / np.sqrt(preset.n_embd),
        "blk.0.ffn_down_exps.weight": synth.EXPERT_OUTPUT_GAIN / np.sqrt(preset.n_ff),
        "blk.0.ffn_gate_inp.weight": synth.ROUTER_LOGIT_STD / np.sqrt(preset.n_embd),
    }
    for name, rms in expected_rms.items():
        v = values(name)
        assert abs(v.mean()) < 0.02 * rms, name
        assert np.sqrt(np.mean(v * v)) == pytest.approx(rms, rel=0.03), name
    assert np.all(values("blk.0.ffn_norm.weight") == 1.0)


def test_synth_same_seed_same_file(tmp_path, tokenizer_metadata, tiny_path):
    write = synth.write_synthetic_model
    again = write(tmp_path / "again.gguf", "tiny", seed=0, tokenizer_metadata=tokenizer_metadata)
    other = write(tmp_path / "other.gguf", "tiny", seed=1, tokenizer_metadata=tokenizer_metadata)
    assert again.read_bytes() == tiny_path.read_bytes()
    assert other.read_bytes() != tiny_path.read_bytes()
    assert other.stat().st_size == tiny_path.stat().st_size


def test_synth_q8_0_file(tmp_path, tokenizer_metadata):
    path = synth.write_synthetic_model(
        tmp_path / "q8.gguf", "tiny", dtype="q8_0", tokenizer_metadata=tokenizer_metadata
    )
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_up_exps.weight"] == T.Q8_0
    assert types["token_embd.weight"] == T.Q8_0
    assert types["blk.0.ffn_gate_inp.weight"] == T.F32
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    v = gguf.quants.dequantize(embd.data[:2000], embd.tensor_type).astype(np.float64)
    assert abs(v.mean()) < 0.02
    assert np.sqrt(np.mean(v * v)) == pytest.approx(1.0, rel=0.03)

    generation = mer.Model(path, threads=2).generate("The river town woke", max_tokens=4, temperature=0)
    list(generation)
    assert len(generation.generated_ids) == 4


# ---------------------------------------------------------------------------
# Running the model.


def test_synth_model_generates(tiny_model):
    generation = tiny_model.generate("The river town woke", max_tokens=8, temperature=0)
    list(generation)
    assert len(generation.generated_ids) == 8
    assert all(0 <= t < 49152 for t in generation.generated_ids)


def test_synth_model_logits_finite(tiny_model, prose_ids):
    logits = tiny_model.logits(prose_ids[:32])
    assert logits.shape == (32, 49152)
    assert np.isfinite(logits).all()


def test_routing_spread_near_chance(tiny_path, prose_ids):
    preset = synth.PRESETS["tiny"]
    routing = reference_forward(tiny_path, prose_ids)
    assert len(routing.expert_ids) == preset.n_layer
    for layer, expert_ids in enumerate(routing.expert_ids):
        # Independent top-2 of 8 choices share 0.25 on average, and trained-like routing stays near it.
        overlap = _overlap_with_previous(expert_ids)
        assert 0.1 <= overlap <= 0.45, f"layer {layer}: overlap {overlap:.3f}"
        counts = np.bincount(expert_ids.ravel(), minlength=preset.n_expert)
        assert counts.min() > 0, f"layer {layer}: expert counts {counts.tolist()}"


def test_routing_spread_matches_reference(tiny_path, prose_ids):
    measured = synth.routing_spread(tiny_path, prose_ids)
    reference = reference_forward(tiny_path, prose_ids)
    assert measured["n_tokens"] == len(prose_ids)
    assert measured["chance_overlap"] == 0.25
    for layer, expected in enumerate(reference.expert_ids):
        # float32 against float64 may swap near-tied experts, so a few tokens may differ.
        same = np.mean(np.sort(measured["expert_ids"][layer], axis=1) == np.sort(expected, axis=1))
        assert same > 0.98, f"layer {layer}: {same:.3f} of expert choices agree"
        assert measured["overlap"][layer] == pytest.approx(_overlap_with_previous(expected), abs=0.02)
        assert sum(measured["expert_counts"][layer]) == 2 * len(prose_ids)
        assert 0.2 < measured["mean_top1_prob"][layer] < 0.9
    assert measured["next_layer_recall"][0] is None
    assert all(0 <= r <= 1 for r in measured["next_layer_recall"][1:])


# ---------------------------------------------------------------------------
# Writing safely.


def test_writer_rejects_existing_file(tmp_path, tokenizer_metadata):
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        synth.write_synthetic_model(out, "tiny", tokenizer_metadata=tokenizer_metadata)
    assert out.read_bytes() == b"keep me"

    synth.write_synthetic_model(out, "tiny", tokenizer_metadata=tokenizer_metadata, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_interrupted_write_leaves_no_file(tmp_path, tokenizer_metadata):
    out = tmp_path / "interrupted.gguf"
    reports = []

    def interrupt_halfway(written: int, total: int) -> None:
        reports.append(written)
        if written > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.write_synthetic_model(
            out, "tiny", tokenizer_metadata=tokenizer_metadata, progress=interrupt_halfway
        )
    assert len(reports) > 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_too_little_disk_space(tmp_path, tokenizer_metadata, monkeypatch):
    usage = SimpleNamespace(total=10**9, used=10**9 - 10**6, free=10**6)
    monkeypatch.setattr(synth.shutil, "disk_usage", lambda path: usage)
    out = tmp_path / "no-space.gguf"
    with pytest.raises(OSError, match="not enough free disk space") as raised:
        synth.write_synthetic_model(out, "tiny", tokenizer_metadata=tokenizer_metadata)
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_unknown_preset_and_dtype(tmp_path, tokenizer_metadata):
    with pytest.raises(ValueError, match="unknown preset"):
        synth.write_synthetic_model(tmp_path / "a.gguf", "huge", tokenizer_metadata=tokenizer_metadata)
    with pytest.raises(ValueError, match="unsupported dtype"):
        synth.write_synthetic_model(tmp_path / "a.gguf", "tiny", dtype="q4_1", tokenizer_metadata=tokenizer_metadata)


def test_preset_sizes():
    # An expert of Mixtral 8x7B at q4_0: 3 matrices of 4096 x 14336 weights, 18 bytes per 32.
    mixtral = synth.PRESETS["mixtral-8x7b"]
    assert 3 * mixtral.n_embd * mixtral.n_ff * 18 // 32 == 99_090_432
    assert (mixtral.n_layer, mixtral.n_embd, mixtral.n_head, mixtral.n_head_kv) == (32, 4096, 32, 8)
    assert (mixtral.n_expert, mixtral.n_expert_used, mixtral.rope_freq_base) == (8, 2, 1e6)


# ---------------------------------------------------------------------------
# Command line.


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth.add_synth_arguments(parser)
    return parser.parse_args(argv)


def test_synth_arguments_defaults():
    args = _parse(["out.gguf"])
    assert (args.out, args.preset, args.dtype, args.seed, args.force) == ("out.gguf", "small", "q4_0", 0, False)


def test_run_synth_writes_and_reports(tmp_path, tokenizer_metadata, monkeypatch, capsys):
    monkeypatch.setattr(synth, "_default_tokenizer_metadata", lambda: tokenizer_metadata)
    out = tmp_path / "cli.gguf"
    assert synth.run_synth(_parse([str(out), "--preset", "tiny", "--seed", "3"])) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "100%" in captured.err
    assert gguf.GGUFReader(out).fields["general.name"].contents() == "mer-synthetic-tiny-q4_0-seed3"

    with pytest.raises(FileExistsError, match="--force"):
        synth.run_synth(_parse([str(out), "--preset", "tiny"]))
    assert synth.run_synth(_parse([str(out), "--preset", "tiny", "--force"])) == 0


def test_run_synth_quiet_prints_only_path(tmp_path, tokenizer_metadata, monkeypatch, capsys):
    monkeypatch.setattr(synth, "_default_tokenizer_metadata", lambda: tokenizer_metadata)
    out = tmp_path / "quiet.gguf"
    args = _parse([str(out), "--preset", "tiny"])
    args.quiet = True
    assert synth.run_synth(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert captured.err == ""


def test_synth_rejects_directory_and_negative_seed(tmp_path, tokenizer_metadata):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        synth.write_synthetic_model(tmp_path, "tiny", tokenizer_metadata=tokenizer_metadata, force=True)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        synth.write_synthetic_model(tmp_path / "x.gguf", "tiny", tokenizer_metadata=tokenizer_metadata, seed=-1)
    assert list(tmp_path.iterdir()) == []


def test_synth_cli_rejects_negative_seed():
    with pytest.raises(SystemExit):
        _parse(["out.gguf", "--seed", "-1"])
