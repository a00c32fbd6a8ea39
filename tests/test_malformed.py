"""Tests of how MER rejects malformed and unsupported model files, and invalid calls.

Each malformed file must raise the matching `mer.errors` class, never crash, hang or allocate
gigabytes, and its message must name the file, what failed (key, tensor, type or value) and,
for errors inside the header, the byte offset. Malformed headers are built byte by byte with
`struct` (`build_gguf` below) or cut from a small fixture model. Model-level cases rewrite a
fixture model with gguf-py (`rewrite_gguf`). The cases that could allocate without bound run in
a child process with a 1 GiB address-space limit, so a crash or a huge allocation fails the test
instead of the test run.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

import mer
from fixtures import write_llama_gguf
from mer import _core
from mer.errors import ContextFullError, ModelFormatError, UnsupportedModelError

# GGUF metadata value type ids.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

# ggml tensor type ids.
TYPE_F32 = 0
TYPE_Q4_0 = 2

HEADER_SIZE = 24  # magic, u32 version, u64 tensor count, u64 metadata count
VERSION_OFFSET = 4
TENSOR_COUNT_OFFSET = 8
METADATA_COUNT_OFFSET = 16

HUGE = 2**60

# A process that imports MER and opens the SmolLM2 model peaks at about 450 MB of address space
# (VmPeak, measured on Linux x86-64), so 1 GiB leaves room to parse a small file but not to
# allocate gigabytes.
ADDRESS_SPACE_LIMIT = 1 << 30
CHILD_TIMEOUT_S = 60


# ---------------------------------------------------------------------------
# Building GGUF bytes by hand.


def pack_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def pack_kv(key: str, type_id: int, payload: bytes) -> bytes:
    """Pack one metadata entry: key, value type id, and the value bytes as given."""
    return pack_string(key) + struct.pack("<I", type_id) + payload


def kv_string(key: str, value: str) -> bytes:
    return pack_kv(key, STRING, pack_string(value))


def kv_u32(key: str, value: int) -> bytes:
    return pack_kv(key, UINT32, struct.pack("<I", value))


def pack_array_header(element_type: int, count: int) -> bytes:
    return struct.pack("<IQ", element_type, count)


def pack_tensor_info(name: str, dims: Sequence[int], type_id: int, offset: int) -> bytes:
    """Pack one tensor index entry. `dims` is innermost first and `offset` is relative to the data."""
    return pack_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)


def value_offset(entry_offset: int, key: str) -> int:
    """Return the byte offset of the value of the metadata entry at `entry_offset`."""
    return entry_offset + 8 + len(key.encode()) + 4


ARCH_KV = kv_string("general.architecture", "llama")
BASE_TENSOR_NAME = "weights"
BASE_TENSOR = pack_tensor_info(BASE_TENSOR_NAME, [8], TYPE_F32, 0)
BASE_DATA = np.arange(8, dtype="<f4").tobytes()


@dataclass
class Crafted:
    """A hand-built GGUF file and the byte offsets of its parts."""

    data: bytes
    kv_offsets: list[int]
    tensor_offsets: list[int]
    data_offset: int


def build_gguf(
    kvs: Sequence[bytes] | None = None,
    tensors: Sequence[bytes] | None = None,
    data: bytes | None = None,
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
) -> Crafted:
    """Assemble a GGUF file from packed metadata entries, tensor entries and tensor data.

    The defaults make a valid file: the architecture key and one F32 tensor of 8 elements.
    `n_tensors` and `n_kv` override the counts written in the header.
    """
    kvs = [ARCH_KV] if kvs is None else list(kvs)
    tensors = [BASE_TENSOR] if tensors is None else list(tensors)
    data = BASE_DATA if data is None else data
    header = magic + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )

    position = len(header)
    kv_offsets = []
    for kv in kvs:
        kv_offsets.append(position)
        position += len(kv)
    tensor_offsets = []
    for tensor in tensors:
        tensor_offsets.append(position)
        position += len(tensor)
    data_offset = -(-position // alignment) * alignment

    body = header + b"".join(kvs) + b"".join(tensors)
    return Crafted(body + bytes(data_offset - position) + data, kv_offsets, tensor_offsets, data_offset)


def write_file(directory: Path, content: Crafted | bytes, name: str = "crafted.gguf") -> Path:
    path = directory / name
    path.write_bytes(content.data if isinstance(content, Crafted) else content)
    return path


def reported_offset(message: str) -> int | None:
    match = re.search(r"at byte offset (\d+)", message)
    return int(match.group(1)) if match else None


def expect_error(
    path: Path,
    error: type[BaseException],
    fragments: Sequence[str] = (),
    offset: int | None = None,
    opener: Callable[[Path], object] = _core.read_gguf,
) -> str:
    """Open `path` with `opener`, check the error class, file name, fragments and byte offset,
    and return the message."""
    with pytest.raises(error) as excinfo:
        opener(path)
    message = str(excinfo.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    for fragment in fragments:
        assert fragment in message, f"the message does not contain {fragment!r}: {message}"
    if offset is not None:
        assert reported_offset(message) == offset, f"expected byte offset {offset}: {message}"
    return message


CHILD_SCRIPT = """
import json, resource, sys
import mer

path, limit, opener = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    if opener == "Model":
        mer.Model(path, threads=1)
    else:
        mer._core.read_gguf(path)
except Exception as error:
    result = {"class": type(error).__name__, "mer_error": isinstance(error, mer.errors.MerError), "message": str(error)}
else:
    result = {"class": None, "mer_error": False, "message": ""}
print(json.dumps(result))
"""


def read_in_child(path: Path, opener: str = "read_gguf") -> dict:
    """Open `path` with `opener` ("read_gguf" or "Model") in a child process with at most 1 GiB
    of address space.

    Returns the error class name, whether it is a MerError, and the message. A crash, a failed
    allocation or a hang fails the calling test.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_SCRIPT, str(path), str(ADDRESS_SPACE_LIMIT), opener],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{opener}({path}) did not finish within {CHILD_TIMEOUT_S} s")
    assert proc.returncode == 0, (
        f"{opener}({path}) killed the process with a 1 GiB address-space limit "
        f"(exit status {proc.returncode}): {proc.stderr[:600]}"
    )
    return json.loads(proc.stdout.splitlines()[-1])


def make_sparse(path: Path, content: bytes, size: int) -> Path:
    """Write `content` and extend the file with a hole to `size` bytes, which reads as zeros."""
    with open(path, "wb") as f:
        f.write(content)
        f.truncate(size)
    if path.stat().st_blocks * 512 > (1 << 20):
        path.unlink()
        pytest.skip("the file system does not store sparse files")
    return path


# ---------------------------------------------------------------------------
# Rewriting fixture models with gguf-py.

Q = gguf.GGMLQuantizationType


def rewrite_gguf(
    source: Path,
    target: Path,
    *,
    architecture: str | None = None,
    set_values: dict[str, object] | None = None,
    drop_keys: Sequence[str] = (),
    drop_tensors: Sequence[str] = (),
    replace_tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] | None = None,
    add_tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] | None = None,
) -> Path:
    """Copy the GGUF file `source` to `target` with the given metadata and tensor changes.

    `set_values` gives existing keys new values of their original type. Tensors in `replace_tensors` and `add_tensors` are (data, type) pairs as
    `GGUFWriter.add_tensor` takes them: float arrays, or uint8 arrays of encoded rows.
    """
    reader = gguf.GGUFReader(source)
    architecture = architecture or reader.fields["general.architecture"].contents()
    set_values = set_values or {}
    missing = set(set_values) - set(reader.fields)
    if missing:
        raise ValueError(f"set_values can only change existing keys, and {sorted(missing)} are not in {source}")
    writer = gguf.GGUFWriter(target, architecture)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        value_type = field.types[0]
        element_type = field.types[1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = set_values.get(key, field.contents())
        writer.add_key_value(key, value, value_type, sub_type=element_type)

    replace_tensors = replace_tensors or {}
    for tensor in reader.tensors:
        if tensor.name in drop_tensors:
            continue
        data, qtype = replace_tensors.get(tensor.name, (np.asarray(tensor.data), tensor.tensor_type))
        writer.add_tensor(tensor.name, data, raw_dtype=qtype)
    for name, (data, qtype) in (add_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory) -> Path:
    """A dense fixture model with one layer, Q4_0 matrices and 283 tokens."""
    return write_llama_gguf(tmp_path_factory.mktemp("dense") / "dense.gguf", n_layer=1)


def open_model(path: Path) -> mer.Model:
    return mer.Model(path, threads=1)


# Every way to open a file. Each must report a malformed file the same way.
OPENERS = {
    "read_gguf": _core.read_gguf,
    "describe_model": _core.describe_model,
    "Model": open_model,
    "dequantize_tensor": lambda path: _core.dequantize_tensor(path, BASE_TENSOR_NAME),
}


# ---------------------------------------------------------------------------
# The hand-built base file.


def test_base_file_valid(tmp_path):
    """The unmodified hand-built file opens, so each case below fails only by its change."""
    path = write_file(tmp_path, build_gguf())
    info = _core.read_gguf(path)
    assert info["tensors"][0]["name"] == BASE_TENSOR_NAME
    assert info["tensors"][0]["offset"] == 128
    assert gguf.GGUFReader(path).tensors[0].data_offset == 128
    np.testing.assert_array_equal(_core.dequantize_tensor(path, BASE_TENSOR_NAME), np.arange(8, dtype=np.float32))


# ---------------------------------------------------------------------------
# Header: magic and version.


@pytest.mark.parametrize("opener_name", sorted(OPENERS))
def test_empty_file_rejected(tmp_path, opener_name):
    path = write_file(tmp_path, b"")
    expect_error(path, ModelFormatError, ["truncated", "magic"], offset=0, opener=OPENERS[opener_name])


def test_partial_magic_rejected(tmp_path):
    path = write_file(tmp_path, b"GGU")
    expect_error(path, ModelFormatError, ["truncated", "magic"], offset=0)


@pytest.mark.parametrize("magic", [b"GGML", b"\x00\x00\x00\x00", b"FUGG", b"gguf"])
def test_wrong_magic_rejected(tmp_path, magic):
    path = write_file(tmp_path, build_gguf(magic=magic))
    expect_error(path, ModelFormatError, ["not a GGUF file"], offset=0)


def test_missing_version_rejected(tmp_path):
    path = write_file(tmp_path, b"GGUF\x03\x00")
    expect_error(path, ModelFormatError, ["truncated", "version"], offset=VERSION_OFFSET)


def test_version_1_unsupported(tmp_path):
    path = write_file(tmp_path, build_gguf(version=1))
    expect_error(path, UnsupportedModelError, ["version 1"])


@pytest.mark.parametrize("version", [0, 4, 100, 0xFFFF, 0xFFFFFFFF])
def test_unknown_version_rejected(tmp_path, version):
    path = write_file(tmp_path, build_gguf(version=version))
    expect_error(path, ModelFormatError, [f"version {version}"], offset=VERSION_OFFSET)


@pytest.mark.parametrize("version", [2, 3])
def test_big_endian_version_unsupported(tmp_path, version):
    content = bytearray(build_gguf().data)
    content[VERSION_OFFSET:VERSION_OFFSET + 4] = struct.pack(">I", version)
    path = write_file(tmp_path, bytes(content))
    expect_error(path, UnsupportedModelError, ["big-endian"])


# ---------------------------------------------------------------------------
# Header: counts, and lengths that would allocate without bound.


def test_metadata_count_huge_rejected(tmp_path):
    path = write_file(tmp_path, build_gguf(n_kv=HUGE))
    result = read_in_child(path)
    assert result["class"] == "ModelFormatError", result
    assert str(HUGE) in result["message"]
    assert reported_offset(result["message"]) == METADATA_COUNT_OFFSET


def test_tensor_count_huge_rejected(tmp_path):
    path = write_file(tmp_path, build_gguf(n_tensors=HUGE))
    result = read_in_child(path)
    assert result["class"] == "ModelFormatError", result
    assert str(HUGE) in result["message"]
    assert reported_offset(result["message"]) == TENSOR_COUNT_OFFSET


def test_key_length_huge_rejected(tmp_path):
    bad_key = struct.pack("<Q", HUGE) + b"general.name"
    crafted = build_gguf([ARCH_KV, bad_key])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert str(HUGE) in result["message"]
    assert reported_offset(result["message"]) == crafted.kv_offsets[1]


def test_string_length_huge_rejected(tmp_path):
    bad = pack_kv("general.name", STRING, struct.pack("<Q", HUGE) + b"abc")
    crafted = build_gguf([ARCH_KV, bad])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert "general.name" in result["message"]
    assert str(HUGE) in result["message"]
    assert reported_offset(result["message"]) == value_offset(crafted.kv_offsets[1], "general.name")


@pytest.mark.parametrize("element_type", [UINT8, BOOL, UINT64, STRING, ARRAY], ids=["u8", "bool", "u64", "string", "array"])
def test_array_count_huge_rejected(tmp_path, element_type):
    key = "tokenizer.ggml.tokens"
    bad = pack_kv(key, ARRAY, pack_array_header(element_type, HUGE) + bytes(64))
    crafted = build_gguf([ARCH_KV, bad])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert key in result["message"]
    assert str(HUGE) in result["message"]
    assert reported_offset(result["message"]) == value_offset(crafted.kv_offsets[1], key)


def test_nested_array_count_huge_rejected(tmp_path):
    key = "test.nested"
    inner = pack_array_header(UINT32, HUGE)
    bad = pack_kv(key, ARRAY, pack_array_header(ARRAY, 1) + inner + bytes(16))
    crafted = build_gguf([ARCH_KV, bad])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert key in result["message"]
    assert str(HUGE) in result["message"]


def test_dimension_count_huge_rejected(tmp_path):
    bad = pack_string("weights") + struct.pack("<I", 0xFFFFFFFF) + bytes(64)
    crafted = build_gguf(tensors=[bad])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert "weights" in result["message"]
    assert "4294967295" in result["message"]
    assert reported_offset(result["message"]) == crafted.tensor_offsets[0]


# The three files below declare counts that their apparent size can hold: gigabytes of zero
# bytes in a sparse hole, which takes a few KiB on disk. Zero bytes parse as empty keys and
# names, so a reader that allocates no more than it reads fails at the second entry.


# MER caps declared counts (2^16 metadata keys, 2^20 tensors): past the cap it names the limit,
# and below it the file fails at its second, duplicate entry.
@pytest.mark.parametrize("n_kv, expected", [(1 << 28, "limit"), (1 << 16, "twice")])
def test_sparse_metadata_count_no_huge_allocation(tmp_path, n_kv, expected):
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv)
    path = make_sparse(tmp_path / "sparse_kv.gguf", header, HEADER_SIZE + 13 * n_kv)
    result = read_in_child(path)
    assert result["class"] == "ModelFormatError", result
    assert expected in result["message"]


@pytest.mark.parametrize("n_tensors, expected", [(1 << 27, "limit"), (1 << 20, "twice")])
def test_sparse_tensor_count_no_huge_allocation(tmp_path, n_tensors, expected):
    header = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 0)
    path = make_sparse(tmp_path / "sparse_tensors.gguf", header, HEADER_SIZE + 24 * n_tensors)
    result = read_in_child(path)
    assert result["class"] == "ModelFormatError", result
    assert expected in result["message"]


def test_sparse_metadata_array_no_crash(tmp_path):
    """A 4 GiB uint8 array: MER must reject it with an error naming the key, not abort."""
    key = "test.huge_array"
    count = 1 << 32
    content = build_gguf([pack_kv(key, ARRAY, pack_array_header(UINT8, count))], tensors=[]).data
    path = make_sparse(tmp_path / "sparse_array.gguf", content, len(content) + count)
    result = read_in_child(path)
    assert result["mer_error"], result
    assert key in result["message"]


# ---------------------------------------------------------------------------
# Metadata entries.


def test_duplicate_key_rejected(tmp_path):
    name = kv_string("general.name", "first")
    crafted = build_gguf([ARCH_KV, name, kv_string("general.name", "second")])
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, ["general.name", "twice"], offset=crafted.kv_offsets[2])


@pytest.mark.parametrize("type_id", [13, 255, 0xFFFFFFFF])
def test_invalid_value_type_rejected(tmp_path, type_id):
    key = "general.name"
    crafted = build_gguf([ARCH_KV, pack_kv(key, type_id, bytes(16))])
    message = expect_error(write_file(tmp_path, crafted), ModelFormatError, [key, str(type_id)])
    value_start = value_offset(crafted.kv_offsets[1], key)
    assert reported_offset(message) in (value_start - 4, value_start), message


def test_invalid_array_element_type_rejected(tmp_path):
    key = "tokenizer.ggml.scores"
    crafted = build_gguf([ARCH_KV, pack_kv(key, ARRAY, pack_array_header(13, 2) + bytes(16))])
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, [key, "13"], offset=value_offset(crafted.kv_offsets[1], key))


@pytest.mark.parametrize("byte", [2, 7, 255])
def test_bool_byte_invalid_rejected(tmp_path, byte):
    key = "tokenizer.ggml.add_bos_token"
    crafted = build_gguf([ARCH_KV, pack_kv(key, BOOL, bytes([byte]))])
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, [key, str(byte)], offset=value_offset(crafted.kv_offsets[1], key))


def test_bool_array_byte_invalid_rejected(tmp_path):
    key = "test.flags"
    crafted = build_gguf([ARCH_KV, pack_kv(key, ARRAY, pack_array_header(BOOL, 3) + bytes([1, 0, 7]))])
    path = write_file(tmp_path, crafted)
    # The array header is 12 bytes and the invalid byte is the third element.
    offset = value_offset(crafted.kv_offsets[1], key) + 12 + 2
    expect_error(path, ModelFormatError, [key, "7"], offset=offset)


def test_array_nesting_too_deep_rejected(tmp_path):
    key = "test.deep"
    depth = 40
    payload = pack_array_header(ARRAY, 1) * (depth - 1) + pack_array_header(UINT8, 1) + b"\x00"
    crafted = build_gguf([ARCH_KV, pack_kv(key, ARRAY, payload)])
    expect_error(write_file(tmp_path, crafted), ModelFormatError, [key])


# ---------------------------------------------------------------------------
# general.alignment.


@pytest.mark.parametrize("alignment", [0, 3, 48, 0xFFFFFFFF])
def test_alignment_not_power_of_two_rejected(tmp_path, alignment):
    crafted = build_gguf([ARCH_KV, kv_u32("general.alignment", alignment)])
    expect_error(write_file(tmp_path, crafted), ModelFormatError, ["general.alignment", str(alignment)])


ALIGNMENT_WRONG_TYPES = {
    "uint64": pack_kv("general.alignment", UINT64, struct.pack("<Q", 32)),
    "int32": pack_kv("general.alignment", INT32, struct.pack("<i", 32)),
    "uint16": pack_kv("general.alignment", UINT16, struct.pack("<H", 32)),
    "float32": pack_kv("general.alignment", FLOAT32, struct.pack("<f", 32.0)),
    "string": kv_string("general.alignment", "32"),
}


@pytest.mark.parametrize("type_name", sorted(ALIGNMENT_WRONG_TYPES))
def test_alignment_wrong_type_rejected(tmp_path, type_name):
    crafted = build_gguf([ARCH_KV, ALIGNMENT_WRONG_TYPES[type_name]])
    expect_error(write_file(tmp_path, crafted), ModelFormatError, ["general.alignment"])


def test_alignment_error_names_entry_offset(tmp_path):
    """The message points at the general.alignment entry, not at the start of the file."""
    crafted = build_gguf([ARCH_KV, kv_u32("general.alignment", 3)])
    message = expect_error(write_file(tmp_path, crafted), ModelFormatError, ["general.alignment"])
    offset = reported_offset(message)
    entry = crafted.kv_offsets[1]
    assert offset is not None and entry <= offset < entry + len(kv_u32("general.alignment", 3)), message


# ---------------------------------------------------------------------------
# Tensor index entries.


def expect_tensor_error(tmp_path: Path, tensor: bytes, fragments: Sequence[str], data: bytes | None = None, **kwargs) -> str:
    """Build a file with `tensor` as its only tensor entry and expect a ModelFormatError at it."""
    crafted = build_gguf(tensors=[tensor], data=data, **kwargs)
    return expect_error(write_file(tmp_path, crafted), ModelFormatError, fragments, offset=crafted.tensor_offsets[0])


def test_five_dimensions_rejected(tmp_path):
    expect_tensor_error(tmp_path, pack_tensor_info("weights", [8, 1, 1, 1, 1], TYPE_F32, 0), ["weights", "5 dimensions"])


@pytest.mark.parametrize("dims", [[8, 0], [0], [8, 1, 0, 2]], ids=str)
def test_zero_dimension_rejected(tmp_path, dims):
    expect_tensor_error(tmp_path, pack_tensor_info("weights", dims, TYPE_F32, 0), ["weights", "zero dimension"])


def test_dimension_product_overflow_rejected(tmp_path):
    tensor = pack_tensor_info("weights", [2**32, 2**32, 2], TYPE_F32, 0)
    crafted = build_gguf(tensors=[tensor])
    result = read_in_child(write_file(tmp_path, crafted))
    assert result["class"] == "ModelFormatError", result
    assert "weights" in result["message"]
    assert "overflow" in result["message"]
    assert reported_offset(result["message"]) == crafted.tensor_offsets[0]


@pytest.mark.parametrize(
    "dims", [[2**62], [2**61, 4], [2**63, 1]], ids=["row_bytes", "tensor_bytes", "row_of_2^63"]
)
def test_byte_size_overflow_rejected(tmp_path, dims):
    """The element count fits in u64 but the byte size does not."""
    tensor = pack_tensor_info("weights", dims, TYPE_F32, 0)
    message = expect_tensor_error(tmp_path, tensor, ["weights"])
    assert "not a multiple" not in message, f"the message blames the block size for an overflow: {message}"


@pytest.mark.parametrize("type_id", [4, 5, 31, 42, 1000, 0xFFFFFFFF])
def test_unknown_tensor_type_rejected(tmp_path, type_id):
    expect_tensor_error(tmp_path, pack_tensor_info("weights", [8], type_id, 0), ["weights", str(type_id)])


def test_row_not_whole_blocks_rejected(tmp_path):
    tensor = pack_tensor_info("weights", [48, 2], TYPE_Q4_0, 0)
    expect_tensor_error(tmp_path, tensor, ["weights", "Q4_0", "48", "32"], data=bytes(256))


def test_offset_not_aligned_rejected(tmp_path):
    tensor = pack_tensor_info("weights", [8], TYPE_F32, 16)
    expect_tensor_error(tmp_path, tensor, ["weights", "16", "32"], data=bytes(64))


def test_offset_not_custom_aligned_rejected(tmp_path):
    tensor = pack_tensor_info("weights", [8], TYPE_F32, 32)
    crafted = build_gguf([ARCH_KV, kv_u32("general.alignment", 64)], tensors=[tensor], data=bytes(128), alignment=64)
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, ["weights", "32", "64"], offset=crafted.tensor_offsets[0])


@pytest.mark.parametrize("offset", [32, 2**40, 2**64 - 32], ids=["just_past", "2^40", "2^64-32"])
def test_range_past_end_rejected(tmp_path, offset):
    crafted = build_gguf(tensors=[pack_tensor_info("weights", [8], TYPE_F32, offset)])
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, ["weights", f"{len(crafted.data)} bytes"], offset=crafted.tensor_offsets[0])


def test_duplicate_tensor_rejected(tmp_path):
    crafted = build_gguf(tensors=[BASE_TENSOR, BASE_TENSOR], data=BASE_DATA * 2)
    path = write_file(tmp_path, crafted)
    expect_error(path, ModelFormatError, ["weights", "twice"], offset=crafted.tensor_offsets[1])


# ---------------------------------------------------------------------------
# A fixture model cut at every length.


@dataclass
class SweepSource:
    data: bytes
    metadata: list[tuple[int, str]]  # (entry offset, key) in file order
    tensors: list[tuple[int, str, int, int]]  # (entry offset, name, data offset, byte size)
    index_end: int
    data_offset: int


@pytest.fixture(scope="module")
def sweep_source(dense_model) -> SweepSource:
    reader = gguf.GGUFReader(dense_model)
    metadata = [(field.offset, key) for key, field in reader.fields.items() if not key.startswith("GGUF.")]
    tensors = [(t.field.offset, t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    last = reader.tensors[-1].field
    index_end = last.offset + sum(int(part.nbytes) for part in last.parts)
    return SweepSource(dense_model.read_bytes(), metadata, tensors, index_end, int(reader.data_offset))


def check_header_cut(source: SweepSource, cut: int, message: str) -> str | None:
    """Return what is wrong with the error message for a file cut to `cut` bytes, or None."""
    offset = reported_offset(message)
    if offset is None or offset > cut:
        return f"byte offset {offset} is missing or past the end of the file"
    if cut < HEADER_SIZE:
        return None if "truncated" in message else "does not say the file is truncated"

    # Before any entry is read, MER checks that the counts fit in the bytes left.
    n_kv, n_tensors = len(source.metadata), len(source.tensors)
    if cut - HEADER_SIZE < max(13 * n_kv, 24 * n_tensors):
        return None if "count" in message else "does not name the count that cannot fit"

    entries = [(start, key, "metadata") for start, key in source.metadata]
    entries += [(start, name, "tensor") for start, name, _, _ in source.tensors]
    start, name, kind = max((e for e in entries if e[0] <= cut), key=lambda e: e[0])
    if offset < start:
        return f"byte offset {offset} is before the {kind} entry {name!r} at {start}"
    name_end = start + 8 + len(name.encode())
    if cut >= name_end and name not in message:
        return f"does not name the {kind} {name!r}"
    if cut < name_end and kind not in message:
        return f"does not say that a {kind} entry is cut"
    return None


def test_header_cut_at_every_length(tmp_path, sweep_source):
    path = tmp_path / "cut.gguf"
    problems = []
    for cut in range(sweep_source.index_end):
        path.write_bytes(sweep_source.data[:cut])
        try:
            _core.read_gguf(path)
        except ModelFormatError as error:
            problem = check_header_cut(sweep_source, cut, str(error))
        except Exception as error:  # noqa: BLE001 - any other class is the failure being reported
            problem = f"raised {type(error).__name__}"
        else:
            problem = "opened without an error"
        if problem:
            problems.append(f"cut at {cut} bytes: {problem}")
    assert not problems, f"{len(problems)} bad cuts, first ones:\n" + "\n".join(problems[:10])


def data_cut_points(source: SweepSource) -> list[int]:
    """Return cut lengths from the end of the tensor index to the end of the last tensor: every
    7th byte, and the first, second and last byte of each tensor.

    The writer pads the file after the last tensor, and cuts in that padding leave every tensor
    whole, so they are not included.
    """
    data_end = max(start + size for _, _, start, size in source.tensors)
    points = set(range(source.index_end, data_end, 7))
    for _, _, start, size in source.tensors:
        points.update((start, start + 1, start + size - 1))
    return sorted(points)


def test_data_cut_names_tensor(tmp_path, sweep_source):
    path = tmp_path / "cut.gguf"
    problems = []
    for cut in data_cut_points(sweep_source):
        first_past_end = next(name for _, name, start, size in sweep_source.tensors if start + size > cut)
        path.write_bytes(sweep_source.data[:cut])
        try:
            _core.read_gguf(path)
        except ModelFormatError as error:
            message = str(error)
            problem = None
            if first_past_end not in message:
                problem = f"does not name {first_past_end}: {message}"
            elif f"{cut} bytes" not in message:
                problem = f"does not give the file size: {message}"
        except Exception as error:  # noqa: BLE001 - any other class is the failure being reported
            problem = f"raised {type(error).__name__}: {error}"
        else:
            problem = "opened without an error"
        if problem:
            problems.append(f"cut at {cut} bytes: {problem}")
    assert not problems, f"{len(problems)} bad cuts, first ones:\n" + "\n".join(problems[:10])


def test_cut_after_last_tensor_opens(tmp_path, sweep_source):
    """A file cut right after its last tensor, dropping only the final padding, is whole."""
    data_end = max(start + size for _, _, start, size in sweep_source.tensors)
    assert data_end < len(sweep_source.data)
    path = tmp_path / "whole.gguf"
    path.write_bytes(sweep_source.data[:data_end])
    assert len(_core.read_gguf(path)["tensors"]) == len(sweep_source.tensors)


@pytest.mark.parametrize("opener_name", ["describe_model", "Model"])
@pytest.mark.parametrize("region", ["metadata", "tensor_index", "padding", "data"])
def test_cut_file_rejected_on_open(tmp_path, sweep_source, opener_name, region):
    """Every entry point rejects a cut file when it opens it, before reading any weights."""
    cuts = {
        "metadata": sweep_source.metadata[5][0] + 3,
        "tensor_index": sweep_source.tensors[3][0] + 20,
        "padding": sweep_source.index_end + 1,
        "data": sweep_source.tensors[-1][2] + 100,
    }
    path = write_file(tmp_path, sweep_source.data[: cuts[region]])
    expect_error(path, ModelFormatError, opener=OPENERS[opener_name])


# ---------------------------------------------------------------------------
# Valid GGUF files that are not a model MER runs.


def test_rewrite_without_changes_runs(tmp_path, dense_model):
    """`rewrite_gguf` itself keeps a model intact, so the cases below differ only by their change."""
    copy = rewrite_gguf(dense_model, tmp_path / "copy.gguf")
    ids = [256, 40, 120, 5]
    np.testing.assert_array_equal(open_model(copy).logits(ids), open_model(dense_model).logits(ids))


MATRIX_SUFFIXES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                   "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def test_q5_0_matrices_unsupported(tmp_path, dense_model):
    reader = gguf.GGUFReader(dense_model)
    rng = np.random.default_rng(0)
    replacements = {}
    for tensor in reader.tensors:
        if tensor.name.endswith(MATRIX_SUFFIXES):
            rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
            values = rng.standard_normal((rows, cols)).astype(np.float32)
            replacements[tensor.name] = (gguf.quants.quantize(values, Q.Q5_0), Q.Q5_0)
    path = rewrite_gguf(dense_model, tmp_path / "q5_0.gguf", replace_tensors=replacements)
    message = expect_error(path, UnsupportedModelError, ["Q5_0"], opener=open_model)
    assert any(name in message for name in replacements), message


def test_q4_k_matrix_unsupported(tmp_path):
    # Q4_K blocks contain 256 elements, so the model is 256 wide. gguf-py cannot quantize to
    # Q4_K, so the tensor is random bytes of the right size.
    source = write_llama_gguf(tmp_path / "wide.gguf", n_layer=1, n_embd=256, n_head=4, n_head_kv=2, n_ff=256)
    name = "blk.0.attn_q.weight"
    rows, cols = 256, 256
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[Q.Q4_K]
    raw = np.random.default_rng(0).integers(0, 256, (rows, cols // block_elems * block_bytes), dtype=np.uint8)
    path = rewrite_gguf(source, tmp_path / "q4_k.gguf", replace_tensors={name: (raw, Q.Q4_K)})
    expect_error(path, UnsupportedModelError, [name, "Q4_K"], opener=open_model)


def test_gpt2_architecture_unsupported(tmp_path, dense_model):
    path = rewrite_gguf(dense_model, tmp_path / "gpt2.gguf", architecture="gpt2")
    expect_error(path, UnsupportedModelError, ["gpt2"], opener=open_model)
    expect_error(path, UnsupportedModelError, ["gpt2"], opener=_core.describe_model)


def test_unsupported_tokenizer_rejected(tmp_path, dense_model):
    path = rewrite_gguf(dense_model, tmp_path / "bert.gguf", set_values={"tokenizer.ggml.model": "bert"})
    expect_error(path, UnsupportedModelError, ["bert", "tokenizer.ggml.model"], opener=open_model)


def test_context_length_zero_rejected(tmp_path, dense_model):
    path = rewrite_gguf(dense_model, tmp_path / "context_0.gguf", set_values={"llama.context_length": 0})
    expect_error(path, ModelFormatError, ["llama.context_length"], opener=open_model)


def test_block_count_huge_no_huge_allocation(tmp_path, dense_model):
    """A block count of 2^24 in a one-layer file: opening must fail with an error naming the key,
    without reserving memory for 2^24 layers first."""
    path = rewrite_gguf(dense_model, tmp_path / "blocks.gguf", set_values={"llama.block_count": 1 << 24})
    result = read_in_child(path, opener="Model")
    assert result["class"] == "ModelFormatError", result
    assert "block_count" in result["message"]
    assert "16777216" in result["message"]


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length", "llama.attention.head_count"])
def test_missing_key_rejected(tmp_path, dense_model, key):
    path = rewrite_gguf(dense_model, tmp_path / "missing_key.gguf", drop_keys=[key])
    expect_error(path, ModelFormatError, [key], opener=open_model)
    expect_error(path, ModelFormatError, [key], opener=_core.describe_model)


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight", "output_norm.weight"])
def test_missing_tensor_rejected(tmp_path, dense_model, name):
    path = rewrite_gguf(dense_model, tmp_path / "missing_tensor.gguf", drop_tensors=[name])
    expect_error(path, ModelFormatError, [name], opener=open_model)


def test_missing_key_claims_no_offset(tmp_path, dense_model):
    """A missing key has no position in the file, so the message must not point at byte 0."""
    path = rewrite_gguf(dense_model, tmp_path / "missing_key.gguf", drop_keys=["llama.block_count"])
    message = expect_error(path, ModelFormatError, ["llama.block_count"], opener=open_model)
    assert reported_offset(message) != 0, message


def test_missing_tensor_claims_no_offset(tmp_path, dense_model):
    path = rewrite_gguf(dense_model, tmp_path / "missing_tensor.gguf", drop_tensors=["blk.0.attn_k.weight"])
    message = expect_error(path, ModelFormatError, ["blk.0.attn_k.weight"], opener=open_model)
    assert reported_offset(message) != 0, message


@pytest.mark.parametrize(
    ("name", "shape"),
    [("blk.0.attn_k.weight", (64, 64)), ("blk.0.attn_norm.weight", (32,)), ("blk.0.ffn_up.weight", (64, 96))],
)
def test_wrong_shape_rejected(tmp_path, dense_model, name, shape):
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    path = rewrite_gguf(dense_model, tmp_path / "wrong_shape.gguf", replace_tensors={name: (values, Q.F32)})
    expected_ggml_shape = str(list(reversed(shape)))
    expect_error(path, ModelFormatError, [name, expected_ggml_shape], opener=open_model)


@pytest.mark.parametrize("name", ["blk.0.attn_q.bias", "rope_freqs.weight", "blk.1.attn_norm.weight"])
def test_extra_tensor_unsupported(tmp_path, dense_model, name):
    extra = np.ones(64, dtype=np.float32)
    path = rewrite_gguf(dense_model, tmp_path / "extra.gguf", add_tensors={name: (extra, Q.F32)})
    expect_error(path, UnsupportedModelError, [name], opener=open_model)


# ---------------------------------------------------------------------------
# Paths.


@pytest.mark.parametrize("opener_name", sorted(OPENERS))
def test_missing_path_not_found(tmp_path, opener_name):
    path = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError) as excinfo:
        OPENERS[opener_name](path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("opener_name", sorted(OPENERS))
def test_directory_path_rejected(tmp_path, opener_name):
    with pytest.raises(IsADirectoryError) as excinfo:
        OPENERS[opener_name](tmp_path)
    assert str(tmp_path) in str(excinfo.value)


# ---------------------------------------------------------------------------
# Invalid calls on a working model.

IDS = [256, 40, 120, 5, 99, 3, 200, 64]


@pytest.fixture(scope="module")
def small_context_model(tmp_path_factory) -> mer.Model:
    """A dense fixture model with a context of 8 tokens."""
    path = write_llama_gguf(tmp_path_factory.mktemp("ctx") / "ctx8.gguf", n_layer=1, context_length=8)
    return open_model(path)


@pytest.mark.parametrize("bad_id", ["n_vocab", "n_vocab+1000", -1, 2**32, 2**64])
def test_token_out_of_range_rejected(small_context_model, bad_id):
    model = small_context_model
    token = {"n_vocab": model.n_vocab, "n_vocab+1000": model.n_vocab + 1000}.get(bad_id, bad_id)
    before = model.logits(IDS[:4])
    with pytest.raises(ValueError) as excinfo:
        model.logits([IDS[0], IDS[1], token])
    assert str(token) in str(excinfo.value)
    np.testing.assert_array_equal(model.logits(IDS[:4]), before)


def test_context_full_then_fresh_call(small_context_model):
    model = small_context_model
    first = model.logits(IDS)
    with pytest.raises(ContextFullError, match="8"):
        model.logits(IDS + [17])
    np.testing.assert_array_equal(model.logits(IDS), first)


def test_context_full_runs_nothing(small_context_model):
    """A call whose tokens cannot all fit is rejected before any of them runs."""
    core = small_context_model._core
    core.eval(IDS[:5], reset=True)
    with pytest.raises(ContextFullError):
        core.eval(IDS[:5])
    assert core.n_past == 5


def test_generate_prompt_over_context(small_context_model):
    model = small_context_model
    first = model.logits(IDS)
    with pytest.raises(ContextFullError, match="9 tokens"):
        list(model.generate(IDS + [17], max_tokens=4, temperature=0))
    np.testing.assert_array_equal(model.logits(IDS), first)


def test_generate_stops_at_full_context(small_context_model):
    model = small_context_model
    first = model.logits(IDS)
    # Greedy decoding of this fixture generates no end-of-text token within 20 tokens.
    generation = model.generate(IDS[:5], max_tokens=20, temperature=0)
    list(generation)
    assert generation.stop_reason == "context"
    # The last generated token was sampled but did not fit in the context.
    assert len(generation.prompt_ids) + len(generation.generated_ids) == 9
    np.testing.assert_array_equal(model.logits(IDS), first)
