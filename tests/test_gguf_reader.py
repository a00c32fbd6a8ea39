"""Tests of MER's GGUF reader (`mer._core.read_gguf`) against gguf-py's `GGUFReader`.

gguf-py is the reference implementation that ships with llama.cpp. Every value MER reports is
compared with what `GGUFReader` reads from the same file: the header, every metadata key and
value with its Python type, and every tensor's name, shape, type, absolute data offset and byte
size. The real SmolLM2 file covers the large arrays (49152 tokens, 48900 merges). Files written
here with gguf-py's `GGUFWriter` cover every metadata value type, big-endian files and version 2.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import mer
from fixtures import write_llama_gguf
from mer import _core
from mer.errors import UnsupportedModelError

# Byte offset of the u32 version field, right after the 4 magic bytes.
VERSION_OFFSET = 4


def reader_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Return the metadata that `reader` parsed, in file order, as plain Python values."""
    metadata = {}
    for key, field in reader.fields.items():
        # GGUF.version, GGUF.tensor_count and GGUF.kv_count are header fields, not metadata.
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    return metadata


def assert_same_value(where: str, actual: Any, expected: Any) -> None:
    """Assert that two metadata values are equal and of the same Python type, element by element.

    The type check keeps a bool from passing as the int 1 and an int from passing as a float.
    """
    assert type(actual) is type(expected), (
        f"{where}: MER returned {type(actual).__name__} {actual!r:.80}, "
        f"expected {type(expected).__name__} {expected!r:.80}"
    )
    if isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: MER returned {len(actual)} elements, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_value(f"{where}[{i}]", a, e)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{where}: MER returned {actual!r}, expected NaN"
    else:
        assert actual == expected, f"{where}: MER returned {actual!r:.200}, expected {expected!r:.200}"


def assert_tensor_index_matches(info: dict[str, Any], reader: gguf.GGUFReader) -> None:
    """Assert that MER's tensor index equals gguf-py's, tensor by tensor and in file order."""
    assert [t["name"] for t in info["tensors"]] == [t.name for t in reader.tensors]
    for mine, theirs in zip(info["tensors"], reader.tensors):
        name = theirs.name
        assert mine["shape"] == [int(d) for d in theirs.shape], f"shape of {name}"
        assert mine["type_id"] == int(theirs.tensor_type), f"type id of {name}"
        assert mine["type"] == theirs.tensor_type.name, f"type name of {name}"
        assert mine["offset"] == int(theirs.data_offset), f"absolute offset of {name}"
        assert mine["n_bytes"] == int(theirs.n_bytes), f"byte size of {name}"


def set_version(path: Path, version: int) -> None:
    """Overwrite the version field of the GGUF file at `path`."""
    with open(path, "r+b") as f:
        f.seek(VERSION_OFFSET)
        f.write(struct.pack("<I", version))


# ---------------------------------------------------------------------------
# The real SmolLM2 file.


@pytest.fixture(scope="module")
def smollm2_header(smollm2_file: Path) -> dict[str, Any]:
    return _core.read_gguf(smollm2_file)


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_file: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm2_file)


def test_smollm2_header_matches_gguf_py(smollm2_file, smollm2_header, smollm2_reader):
    reader = smollm2_reader
    assert smollm2_header["version"] == reader.fields["GGUF.version"].contents()
    assert smollm2_header["alignment"] == reader.alignment
    assert smollm2_header["data_offset"] == reader.data_offset
    assert smollm2_header["file_size"] == smollm2_file.stat().st_size
    assert len(smollm2_header["metadata"]) == reader.fields["GGUF.kv_count"].contents()
    assert len(smollm2_header["tensors"]) == reader.fields["GGUF.tensor_count"].contents()


def test_smollm2_metadata_keys_in_file_order(smollm2_header, smollm2_reader):
    assert list(smollm2_header["metadata"]) == list(reader_metadata(smollm2_reader))


def test_smollm2_metadata_values_match(smollm2_header, smollm2_reader):
    expected = reader_metadata(smollm2_reader)
    for key, value in expected.items():
        assert_same_value(key, smollm2_header["metadata"][key], value)


def test_smollm2_metadata_covers_every_kind(smollm2_header):
    """The file contains the value kinds the comparison above is meant to cover."""
    metadata = smollm2_header["metadata"]
    assert len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(metadata["tokenizer.ggml.token_type"]) == 49152
    assert len(metadata["tokenizer.ggml.merges"]) == 48900
    assert metadata["tokenizer.ggml.merges"][0] == "Ġ t"
    assert metadata["llama.block_count"] == 30
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert isinstance(metadata["llama.rope.freq_base"], float)
    assert metadata["general.languages"] == ["en"]


def test_smollm2_tensor_index_matches(smollm2_header, smollm2_reader):
    assert_tensor_index_matches(smollm2_header, smollm2_reader)


def test_smollm2_tensor_offsets_aligned(smollm2_header):
    alignment = smollm2_header["alignment"]
    for tensor in smollm2_header["tensors"]:
        assert tensor["offset"] >= smollm2_header["data_offset"], tensor["name"]
        assert tensor["offset"] % alignment == 0, tensor["name"]
        assert tensor["offset"] + tensor["n_bytes"] <= smollm2_header["file_size"], tensor["name"]


# ---------------------------------------------------------------------------
# Every metadata value type, written with gguf-py.

T = gguf.GGUFValueType

# Key, value, value type and element type (for arrays). The values sit at the edges of each
# type's range, and the floats include values that float32 cannot store exactly.
ALL_VALUE_TYPES = [
    ("test.u8", 255, T.UINT8, None),
    ("test.i8", -128, T.INT8, None),
    ("test.u16", 65535, T.UINT16, None),
    ("test.i16", -32768, T.INT16, None),
    ("test.u32", 2**32 - 1, T.UINT32, None),
    ("test.i32", -(2**31), T.INT32, None),
    ("test.u64", 2**64 - 1, T.UINT64, None),
    ("test.i64", -(2**63), T.INT64, None),
    ("test.f32", 0.1, T.FLOAT32, None),
    ("test.f32_inf", float("-inf"), T.FLOAT32, None),
    ("test.f32_nan", float("nan"), T.FLOAT32, None),
    ("test.f64", 0.1, T.FLOAT64, None),
    ("test.f64_tiny", 5e-324, T.FLOAT64, None),
    ("test.true", True, T.BOOL, None),
    ("test.false", False, T.BOOL, None),
    ("test.string", "héllo wörld ✓ 日本語 🚀", T.STRING, None),
    ("test.empty_string", "", T.STRING, None),
    ("test.string_with_nul", "a\x00b", T.STRING, None),
    ("test.u8_array", [0, 1, 255], T.ARRAY, T.UINT8),
    ("test.i16_array", [-32768, 0, 32767], T.ARRAY, T.INT16),
    ("test.i32_array", [-(2**31), 0, 2**31 - 1], T.ARRAY, T.INT32),
    ("test.u64_array", [0, 2**64 - 1], T.ARRAY, T.UINT64),
    ("test.f32_array", [0.5, -1e-5, 3.0e38], T.ARRAY, T.FLOAT32),
    ("test.f64_array", [0.1, -2.5], T.ARRAY, T.FLOAT64),
    ("test.bool_array", [True, False, True], T.ARRAY, T.BOOL),
    ("test.string_array", ["", "a", "Ġthe", "<|im_start|>"], T.ARRAY, T.STRING),
]


def expected_python_value(value: Any, value_type: gguf.GGUFValueType, element_type: gguf.GGUFValueType | None) -> Any:
    """Return the Python value a reader should give for `value`: float32 values rounded to float32."""
    if value_type == T.FLOAT32:
        return float(np.float32(value))
    if value_type == T.ARRAY:
        return [expected_python_value(v, element_type, None) for v in value]
    return value


@pytest.fixture(scope="module")
def all_types_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("all_types") / "all_types.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, value, value_type, element_type in ALL_VALUE_TYPES:
        writer.add_key_value(key, value, value_type, sub_type=element_type)
    writer.add_key_value("test.nested_array", [[1, 2], [3]], T.ARRAY, sub_type=T.ARRAY)
    writer.add_tensor("tensor", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("key", "value", "value_type", "element_type"), ALL_VALUE_TYPES, ids=[case[0] for case in ALL_VALUE_TYPES]
)
def test_value_type_read_as_written(all_types_file, key, value, value_type, element_type):
    metadata = _core.read_gguf(all_types_file)["metadata"]
    assert_same_value(key, metadata[key], expected_python_value(value, value_type, element_type))


def test_value_types_match_gguf_py(all_types_file):
    metadata = _core.read_gguf(all_types_file)["metadata"]
    expected = reader_metadata(gguf.GGUFReader(all_types_file))
    # gguf-py flattens arrays of arrays, so the nested array is checked by the next test.
    del expected["test.nested_array"]
    for key, value in expected.items():
        assert_same_value(key, metadata[key], value)


def test_nested_array_read_as_written(all_types_file):
    metadata = _core.read_gguf(all_types_file)["metadata"]
    assert_same_value("test.nested_array", metadata["test.nested_array"], [[1, 2], [3]])


def test_all_types_tensor_index_matches(all_types_file):
    assert_tensor_index_matches(_core.read_gguf(all_types_file), gguf.GGUFReader(all_types_file))


@pytest.mark.parametrize("alignment", [1, 8, 64, 256])
def test_custom_alignment_matches(tmp_path, alignment):
    path = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(alignment)
    writer.add_tensor("a", np.arange(3, dtype=np.float32))
    writer.add_tensor("b", np.arange(5, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    info = _core.read_gguf(path)
    reader = gguf.GGUFReader(path)
    assert info["alignment"] == alignment
    assert info["data_offset"] == reader.data_offset
    assert_tensor_index_matches(info, reader)


# ---------------------------------------------------------------------------
# Fixture models, version 2 and big-endian files.


@pytest.mark.parametrize("kind", ["dense", "moe_merged", "moe_legacy"])
def test_fixture_model_matches_gguf_py(tmp_path, kind):
    path = write_llama_gguf(tmp_path / f"{kind}.gguf", kind=kind)
    info = _core.read_gguf(path)
    reader = gguf.GGUFReader(path)
    assert info["data_offset"] == reader.data_offset
    for key, value in reader_metadata(reader).items():
        assert_same_value(key, info["metadata"][key], value)
    assert_tensor_index_matches(info, reader)


def test_version_2_reads_like_version_3(tmp_path):
    # Versions 2 and 3 share one layout, with 64-bit counts and lengths.
    v3 = write_llama_gguf(tmp_path / "v3.gguf")
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(v3.read_bytes())
    set_version(v2, 2)

    info_v2 = _core.read_gguf(v2)
    info_v3 = _core.read_gguf(v3)
    assert info_v2["version"] == 2
    assert info_v3["version"] == 3
    for field in ("file_size", "alignment", "data_offset", "metadata", "tensors"):
        assert info_v2[field] == info_v3[field], field

    reader = gguf.GGUFReader(v2)
    assert reader.fields["GGUF.version"].contents() == 2
    assert_tensor_index_matches(info_v2, reader)


def test_version_2_model_runs_like_version_3(tmp_path):
    v3 = write_llama_gguf(tmp_path / "v3.gguf")
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(v3.read_bytes())
    set_version(v2, 2)

    ids = [256, 40, 120, 5, 99]
    logits_v2 = mer.Model(v2, threads=1).logits(ids)
    logits_v3 = mer.Model(v3, threads=1).logits(ids)
    np.testing.assert_array_equal(logits_v2, logits_v3)


def test_big_endian_file_unsupported(tmp_path):
    path = tmp_path / "big_endian.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_tensor("tensor", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with pytest.raises(UnsupportedModelError, match="big-endian") as excinfo:
        _core.read_gguf(path)
    assert str(path) in str(excinfo.value)
