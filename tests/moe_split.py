"""Rewrite a dense llama GGUF model: split every FFN into experts, or keep only the first layers.

``write_moe_split`` splits each FFN into ``n_expert`` experts of width ``w = n_ff / n_expert``.
Expert e takes the FFN neurons [e*w, (e+1)*w): those rows of ``ffn_gate`` and ``ffn_up``, and
those columns of ``ffn_down``. Weight bytes are copied as stored, never requantized. Each down
slice is scaled by ``n_expert``: a quantized block gets its f16 scale ``d`` (and its minimum
``m`` for q4_1) multiplied, a float tensor its values. The router ``ffn_gate_inp`` is all
zeros, so the softmax gives every expert probability 1 / n_expert.

With every expert used (``n_used == n_expert``) each expert weight is exactly 1 / n_expert, so
the mixture computes the dense FFN: the per-block products are the same, and only the order of
the float sums differs. With fewer experts used, the tied probabilities go to the lowest expert
ids, so experts 0 to n_used - 1 run with weight 1 / n_used each. Their sum is n_expert / n_used
times the FFN of the first n_used * w neurons, a different model from the dense one.

``write_truncated`` keeps the first ``n_layer`` blocks of a model, which makes small, fast test
models from real weights.

Every other tensor and metadata key is copied unchanged, except these. ``<arch>.block_count``
becomes ``n_layer``. A split sets ``<arch>.feed_forward_length`` to the expert width, and adds
``<arch>.expert_count`` and ``<arch>.expert_used_count``. llama.cpp's model loader expects
merged expert tensors of shape {n_embd, n_ff, n_expert} with n_ff from that key, and
``reference.py`` reads the expert width from it too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import gguf
import numpy as np

LAYOUTS = ("merged", "legacy")

# Leading f16 fields of each supported block type that scale the block's values: d for q4_0
# and q8_0, d then m for q4_1. Scaling them by a power of two scales the block exactly.
_BLOCK_SCALE_FIELDS = {
    gguf.GGMLQuantizationType.Q4_0: 1,
    gguf.GGMLQuantizationType.Q4_1: 2,
    gguf.GGMLQuantizationType.Q8_0: 1,
}
_FLOAT_TYPES = {
    gguf.GGMLQuantizationType.F32: np.float32,
    gguf.GGMLQuantizationType.F16: np.float16,
}

_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")
_FFN_TENSOR = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.weight")


def write_moe_split(
    src: str | os.PathLike[str] | gguf.GGUFReader,
    dst: str | os.PathLike[str],
    *,
    n_expert: int = 8,
    n_used: int | None = None,
    layout: str = "merged",
    n_layer: int | None = None,
    router: str = "zero",
) -> Path:
    """Write ``dst``, the dense model ``src`` with each FFN split into ``n_expert`` experts.

    ``src`` is a path or an open ``GGUFReader``. Passing one reader to several calls parses
    the metadata once (1.8 s for SmolLM2's 49k tokens and merges on a 2-core machine).
    ``n_used`` (default ``n_expert``) becomes ``expert_used_count``. ``layout`` "merged"
    writes ``blk.N.ffn_<part>_exps.weight`` with the expert outermost, and "legacy" writes
    one ``blk.N.ffn_<part>.E.weight`` per expert. ``n_layer`` keeps only the first blocks
    (default: all). ``router`` "zero" writes the all-zero router described above, and
    "mean-gate" makes router row e the mean of expert e's gate rows, so that tokens are routed
    by their real hidden states (the mixture is then a different model from the dense one).
    ``n_expert`` must be a power of two, so that the scaled weights and the
    expert weight 1 / n_expert are exact in f16 and f32. FFN tensors must be F32, F16, Q4_0,
    Q4_1 or Q8_0, and each expert's share of a down row must be whole blocks. Raises
    ``ValueError`` for any other input. Returns ``dst``.
    """
    n_used = n_expert if n_used is None else n_used
    if n_expert < 1 or n_expert & (n_expert - 1) != 0:
        raise ValueError(f"n_expert must be a power of two, got {n_expert}")
    if not 0 < n_used <= n_expert:
        raise ValueError(f"n_used must be in [1, {n_expert}], got {n_used}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
    if router not in ("zero", "mean-gate"):
        raise ValueError(f"unknown router {router!r}, expected 'zero' or 'mean-gate'")

    reader, src = _open(src)
    arch = _architecture(reader)
    if f"{arch}.expert_count" in reader.fields:
        raise ValueError(f"{src}: the model already has {arch}.expert_count, expected a dense model")
    n_ff = int(reader.fields[f"{arch}.feed_forward_length"].contents())
    if n_ff % n_expert != 0:
        raise ValueError(f"{src}: feed_forward_length {n_ff} is not a multiple of n_expert {n_expert}")

    writer = _start_copy(reader, src, dst, arch, n_layer, replaced_keys={f"{arch}.feed_forward_length"})
    writer.add_feed_forward_length(n_ff // n_expert)
    writer.add_expert_count(n_expert)
    writer.add_expert_used_count(n_used)

    for tensor in _tensors_to_copy(reader, n_layer):
        match = _FFN_TENSOR.fullmatch(tensor.name)
        if match is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue

        layer, part = int(match.group(1)), match.group(2)
        if part == "gate":
            n_embd = int(tensor.shape[0])
            if router == "mean-gate":
                gate = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(n_ff, n_embd)
                rows = gate.reshape(n_expert, n_ff // n_expert, n_embd).mean(axis=1).astype(np.float32)
            else:
                rows = np.zeros((n_expert, n_embd), dtype=np.float32)
            writer.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", rows)
        if part == "down":
            experts = _split_down(tensor, n_expert)
        else:
            experts = _split_rows(tensor, n_expert)

        if layout == "merged":
            writer.add_tensor(f"blk.{layer}.ffn_{part}_exps.weight", experts, raw_dtype=tensor.tensor_type)
        else:
            for expert, values in enumerate(experts):
                name = f"blk.{layer}.ffn_{part}.{expert}.weight"
                writer.add_tensor(name, np.ascontiguousarray(values), raw_dtype=tensor.tensor_type)

    return _finish(writer, dst)


def write_truncated(
    src: str | os.PathLike[str] | gguf.GGUFReader, dst: str | os.PathLike[str], n_layer: int
) -> Path:
    """Write ``dst``, a copy of ``src`` (a path or an open ``GGUFReader``) with only its first
    ``n_layer`` blocks. Returns ``dst``."""
    reader, src = _open(src)
    writer = _start_copy(reader, src, dst, _architecture(reader), n_layer, replaced_keys=set())
    for tensor in _tensors_to_copy(reader, n_layer):
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    return _finish(writer, dst)


def _open(src: str | os.PathLike[str] | gguf.GGUFReader) -> tuple[gguf.GGUFReader, Path]:
    """Return a reader for ``src`` and the path of its file."""
    if isinstance(src, gguf.GGUFReader):
        return src, Path(src.data.filename)
    return gguf.GGUFReader(src), Path(src)


def _architecture(reader: gguf.GGUFReader) -> str:
    return reader.fields["general.architecture"].contents()


def _start_copy(
    reader: gguf.GGUFReader,
    src: Path,
    dst: str | os.PathLike[str],
    arch: str,
    n_layer: int | None,
    replaced_keys: set[str],
) -> gguf.GGUFWriter:
    """Open a writer for ``dst`` and copy the metadata of ``src``, except ``replaced_keys``."""
    block_count = int(reader.fields[f"{arch}.block_count"].contents())
    if n_layer is not None and not 0 < n_layer <= block_count:
        raise ValueError(f"{src}: n_layer must be in [1, {block_count}], got {n_layer}")

    writer = gguf.GGUFWriter(dst, arch)
    # The writer adds general.architecture itself.
    skipped = replaced_keys | {"general.architecture", f"{arch}.block_count"}
    for key, field in reader.fields.items():
        # GGUF.version, GGUF.tensor_count and GGUF.kv_count describe the header, not metadata.
        if key.startswith("GGUF.") or key in skipped:
            continue
        if key == "general.alignment":
            writer.add_custom_alignment(int(field.contents()))
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type)
    writer.add_block_count(block_count if n_layer is None else n_layer)
    return writer


def _tensors_to_copy(reader: gguf.GGUFReader, n_layer: int | None) -> list[gguf.ReaderTensor]:
    """Return the tensors of ``reader`` outside the blocks dropped by ``n_layer``, in file order."""
    tensors = []
    for tensor in reader.tensors:
        match = _LAYER_TENSOR.match(tensor.name)
        if n_layer is None or match is None or int(match.group(1)) < n_layer:
            tensors.append(tensor)
    return tensors


def _finish(writer: gguf.GGUFWriter, dst: str | os.PathLike[str]) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)


def _check_type(tensor: gguf.ReaderTensor) -> None:
    if tensor.tensor_type not in _BLOCK_SCALE_FIELDS and tensor.tensor_type not in _FLOAT_TYPES:
        raise ValueError(
            f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, expected one of "
            "F32, F16, Q4_0, Q4_1, Q8_0"
        )


def _split_rows(tensor: gguf.ReaderTensor, n_expert: int) -> np.ndarray:
    """Split gate or up (n_ff rows) into (n_expert, n_ff / n_expert, row) in stored form.

    Rows are stored one after another, so consecutive groups of rows are the experts.
    """
    _check_type(tensor)
    data = tensor.data
    return data.reshape(n_expert, data.shape[0] // n_expert, data.shape[1])


def _split_down(tensor: gguf.ReaderTensor, n_expert: int) -> np.ndarray:
    """Split down (n_embd rows of n_ff) into (n_expert, n_embd, n_ff / n_expert) column slices
    in stored form, with each slice scaled by ``n_expert``."""
    _check_type(tensor)
    data = tensor.data
    n_rows = data.shape[0]

    if tensor.tensor_type in _FLOAT_TYPES:
        slices = data.reshape(n_rows, n_expert, -1).transpose(1, 0, 2).astype(np.float64) * n_expert
        dtype = _FLOAT_TYPES[tensor.tensor_type]
        if not np.all(np.abs(slices) <= np.finfo(dtype).max):
            raise ValueError(f"tensor {tensor.name!r}: a value times {n_expert} overflows {dtype.__name__}")
        return slices.astype(dtype)

    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
    n_blocks = data.shape[1] // block_bytes
    if n_blocks % n_expert != 0:
        raise ValueError(
            f"tensor {tensor.name!r}: a row of {n_blocks} blocks of {block_elems} does not split "
            f"into {n_expert} experts of whole blocks"
        )
    blocks = data.reshape(n_rows, n_expert, n_blocks // n_expert, block_bytes).transpose(1, 0, 2, 3).copy()

    n_scale_bytes = 2 * _BLOCK_SCALE_FIELDS[tensor.tensor_type]
    scales = np.ascontiguousarray(blocks[..., :n_scale_bytes]).view(np.float16).astype(np.float32) * n_expert
    if not np.all(np.abs(scales) <= np.finfo(np.float16).max):
        raise ValueError(f"tensor {tensor.name!r}: a block scale times {n_expert} overflows f16")
    blocks[..., :n_scale_bytes] = scales.astype(np.float16).view(np.uint8)
    return blocks.reshape(n_expert, n_rows, -1)
