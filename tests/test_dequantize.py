"""Tests of `mer._core.dequantize_tensor` against gguf-py's `gguf.quants.dequantize`.

Tolerance: none. Every type MER dequantizes computes each element in float32 from an exactly
converted half-float scale: `q * d` for Q4_0 and Q8_0, `q * d + m` for Q4_1, and a plain
conversion for F16 and F32. gguf-py performs the same operations, each rounded once, so the
results must be bit-identical, and -0.0 and +0.0 count as different. The one exception is the
NaN payload: MER quiets signaling NaNs of F16 data while NumPy keeps them signaling. A payload
carries no value, so two NaNs compare equal.

The inputs are the real SmolLM2 tensors (Q4_1, Q8_0 and F32), the fixture models in every type
the fixtures write, and raw random bytes. Random bytes reach scales that quantization never
produces: NaN, infinity, subnormals and negative zero.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from fixtures import DTYPES, build_llama_weights, build_tokenizer, config_for_kind, write_llama_gguf
from mer import _core
from mer.errors import UnsupportedModelError

Q = gguf.GGMLQuantizationType

# The tensor types MER computes with.
SUPPORTED_TYPES = [Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q8_0]

# Types a GGUF file may declare but MER does not dequantize.
UNSUPPORTED_TYPES = [
    Q.BF16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64,
    Q.Q5_0, Q.Q5_1, Q.Q8_1,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_K,
    Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS, Q.TQ2_0,
]


def reference_values(tensor: gguf.ReaderTensor) -> np.ndarray:
    """Dequantize a tensor that gguf-py read, flattened with the innermost dimension fastest."""
    # Random scales overflow and multiply infinity by zero, which is what the test wants.
    with np.errstate(over="ignore", invalid="ignore"):
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)


def assert_bitwise_equal(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    """Assert equal float32 bit patterns, treating any two NaNs as equal."""
    assert actual.dtype == np.float32, f"{name}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    actual_nan = np.isnan(actual)
    expected_nan = np.isnan(expected)
    nan_mismatch = np.flatnonzero(actual_nan != expected_nan)
    assert nan_mismatch.size == 0, (
        f"{name}: NaN at different positions, first at element {nan_mismatch[0]}: "
        f"MER {actual[nan_mismatch[0]]}, gguf-py {expected[nan_mismatch[0]]}"
    )
    differ = np.flatnonzero((actual.view(np.uint32) != expected.view(np.uint32)) & ~expected_nan)
    assert differ.size == 0, (
        f"{name}: {differ.size} elements differ, first at element {differ[0]}: "
        f"MER {actual[differ[0]]!r}, gguf-py {expected[differ[0]]!r}"
    )


def assert_file_matches_gguf_py(path: Path, names: list[str] | None = None, reader: gguf.GGUFReader | None = None) -> int:
    """Compare every tensor of `path` (or those in `names`) and return how many were compared."""
    reader = reader or gguf.GGUFReader(path)
    compared = 0
    for tensor in reader.tensors:
        if names is not None and tensor.name not in names:
            continue
        actual = _core.dequantize_tensor(path, tensor.name)
        assert actual.ndim == 1, f"{tensor.name}: MER returned {actual.ndim} dimensions, expected a flat array"
        assert actual.size == int(tensor.n_elements), f"{tensor.name}: element count"
        assert_bitwise_equal(tensor.name, actual, reference_values(tensor))
        compared += 1
    return compared


def write_raw_tensors(path: Path, tensors: dict[str, tuple[gguf.GGMLQuantizationType, np.ndarray]]) -> Path:
    """Write a GGUF file whose tensors are given as raw bytes, one uint8 row per tensor row."""
    writer = gguf.GGUFWriter(path, "llama")
    for name, (qtype, raw) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_rows(qtype: gguf.GGMLQuantizationType, rows: int, elements_per_row: int, seed: int) -> np.ndarray:
    """Return `rows` rows of random bytes, each holding `elements_per_row` elements of `qtype`."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(rows, elements_per_row // block_elems * block_bytes), dtype=np.uint8)


# ---------------------------------------------------------------------------
# The real SmolLM2 file.

# Every tensor of the first and last layer, and the tensors outside the layers.
SMOLLM2_LAYERS = (0, 29)


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_file: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm2_file)


def test_smollm2_types_present(smollm2_reader):
    types = {t.tensor_type for t in smollm2_reader.tensors}
    assert types == {Q.Q4_1, Q.Q8_0, Q.F32}


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0, Q.F32], ids=lambda q: q.name)
def test_smollm2_tensors_match(smollm2_file, smollm2_reader, qtype):
    reader = smollm2_reader
    layer_prefixes = tuple(f"blk.{layer}." for layer in SMOLLM2_LAYERS)
    names = [
        t.name for t in reader.tensors
        if t.tensor_type == qtype and (t.name.startswith(layer_prefixes) or not t.name.startswith("blk."))
    ]
    assert names, f"no {qtype.name} tensor selected"
    assert assert_file_matches_gguf_py(smollm2_file, names, reader) == len(names)


# ---------------------------------------------------------------------------
# Fixture models.


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("kind", ["dense", "moe_merged"])
def test_fixture_tensors_match(tmp_path, dtype, kind):
    path = write_llama_gguf(tmp_path / f"{kind}_{dtype}.gguf", kind=kind, dtype=dtype)
    assert assert_file_matches_gguf_py(path) > 0


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_fixture_float_tensors_equal_weights(tmp_path, dtype):
    """F32 and F16 data decode to the weights that were written, flattened in C order.

    This check does not depend on gguf-py's reader: the expected values are the weights.
    """
    kind = "moe_merged"
    config = config_for_kind(kind)
    weights = build_llama_weights(config, len(build_tokenizer().tokens), seed=0)
    path = write_llama_gguf(tmp_path / f"{dtype}.gguf", kind=kind, dtype=dtype, seed=0)
    for name, values in weights.items():
        # The fixtures store norms and routers as F32 whatever the dtype.
        always_f32 = name.endswith(("_norm.weight", "ffn_gate_inp.weight"))
        stored = np.float32 if dtype == "f32" or always_f32 else np.float16
        expected = values.astype(stored).astype(np.float32).reshape(-1)
        assert_bitwise_equal(name, _core.dequantize_tensor(path, name), expected)


# ---------------------------------------------------------------------------
# Raw bytes: every bit pattern of the scales and quants.


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda q: q.name)
def test_random_bytes_match(tmp_path, qtype):
    path = write_raw_tensors(tmp_path / "random.gguf", {"random": (qtype, random_rows(qtype, 16, 256, seed=int(qtype)))})
    assert assert_file_matches_gguf_py(path) == 1


def test_every_f16_bit_pattern_matches(tmp_path):
    every_pattern = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(1, -1)
    path = write_raw_tensors(tmp_path / "f16.gguf", {"every_f16": (Q.F16, every_pattern)})
    assert assert_file_matches_gguf_py(path) == 1


def test_three_dimensional_order(tmp_path):
    """A 3-D tensor comes back with the innermost dimension fastest, as the file stores it."""
    values = np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 64)
    writer = gguf.GGUFWriter(tmp_path / "cube.gguf", "llama")
    writer.add_tensor("cube", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    info = _core.read_gguf(tmp_path / "cube.gguf")
    assert info["tensors"][0]["shape"] == [64, 3, 2]
    np.testing.assert_array_equal(_core.dequantize_tensor(tmp_path / "cube.gguf", "cube"), values.reshape(-1))


# ---------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("qtype", UNSUPPORTED_TYPES, ids=lambda q: q.name)
def test_unsupported_type_rejected(tmp_path, qtype):
    name = f"weights_{qtype.name.lower()}"
    path = write_raw_tensors(tmp_path / "unsupported.gguf", {name: (qtype, random_rows(qtype, 2, 256, seed=0))})
    with pytest.raises(UnsupportedModelError) as excinfo:
        _core.dequantize_tensor(path, name)
    message = str(excinfo.value)
    assert name in message
    assert qtype.name in message


def test_unknown_tensor_name_rejected(tmp_path):
    path = write_raw_tensors(tmp_path / "one.gguf", {"present": (Q.F32, random_rows(Q.F32, 1, 8, seed=0))})
    with pytest.raises(ValueError, match="no_such_tensor"):
        _core.dequantize_tensor(path, "no_such_tensor")


def test_missing_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError):
        _core.dequantize_tensor(tmp_path / "absent.gguf", "token_embd.weight")
