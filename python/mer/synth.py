"""Synthetic Mixture-of-Experts GGUF models for benchmarks: random weights scaled so that routing spreads.

`write_synthetic_model` streams a llama-architecture MoE model of any preset size to disk, one
chunk of rows at a time, so writing the 26 GB Mixtral-shaped file peaked at 96 MB of RSS. It has
its own GGUF v3 writer and needs nothing beyond NumPy. The tokenizer is copied from another GGUF file
(the default model unless the caller passes one), so the file tokenizes and generates like a real
model, but its text is noise.

Random weights route badly unless their scales are chosen with care, and an expert store
benchmarked on badly routed tokens measures the wrong thing. Two choices make the routing realistic:

* Every quantized weight has mean zero. q4_0 stores (q - 8) * d, so the nibbles q are drawn from
  1..15. Drawing 0 as well would add the unpaired value -8 * d and pull the mean below zero.
* The token embedding dominates the residual stream. Embedding elements have RMS 1, every
  projection into a layer keeps the RMS of its input, and the projections back into the residual
  stream (attn_output, ffn_down_exps) are damped to a few percent. Each token's hidden state then
  stays close to its own embedding, so consecutive tokens route to unrelated experts.
  With undamped attention, each position takes in more of the context's average with
  every layer, so neighbouring tokens route more and more alike. In the `small` preset the share
  of experts shared with the previous token then rose from 0.26 to 0.68 over 8 layers, and one
  expert went unused.

`routing_spread` measures this with a NumPy forward pass of its own.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "PRESETS",
    "SynthPreset",
    "add_synth_arguments",
    "routing_spread",
    "run_synth",
    "write_synthetic_model",
]


@dataclass(frozen=True)
class SynthPreset:
    """Shape of a synthetic llama-architecture MoE model. Expert tensors are merged, expert outermost."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    context_length: int
    rope_freq_base: float
    rms_eps: float

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


PRESETS: dict[str, SynthPreset] = {
    # Small enough for a test: about 23 MB at q4_0, most of it the 49152-row embedding and output.
    "tiny": SynthPreset(
        n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_expert=8, n_expert_used=2,
        context_length=4096, rope_freq_base=10000.0, rms_eps=1e-5,
    ),
    # About 0.47 GB at q4_0, of which 0.40 GB are 64 experts of 6.2 MB.
    "small": SynthPreset(
        n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, n_ff=3584, n_expert=8, n_expert_used=2,
        context_length=32768, rope_freq_base=1e6, rms_eps=1e-5,
    ),
    # Mixtral 8x7B's shape: about 26.4 GB at q4_0, of which 25.4 GB are 256 experts of 99.1 MB.
    "mixtral-8x7b": SynthPreset(
        n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_expert=8, n_expert_used=2,
        context_length=32768, rope_freq_base=1e6, rms_eps=1e-5,
    ),
}

# Output RMS of attn_output and ffn_down_exps for an input of RMS 1, against 1 for the embedding.
# See the module docstring for why they are small.
# NOTE: at these gains the hidden state changes little from one layer to the next. Layer L+1's
# router applied to layer L's hidden state finds about 98% of layer L+1's experts (routing_spread,
# 289 tokens of prose). No trained model was measured with this code. If they score lower, prefetch
# guided by that predictor looks better on these files than on a real model. An EXPERT_OUTPUT_GAIN
# of 0.6 lowers the figure to about 85% in the `small` preset and keeps the spread between tokens.
ATTENTION_OUTPUT_GAIN = 0.05
EXPERT_OUTPUT_GAIN = 0.05
# Standard deviation of the router logits for an input of RMS 1. With 8 experts this gives a mean
# top-1 probability near 0.47, so the softmax is neither flat nor one-hot.
ROUTER_LOGIT_STD = 1.5

# ---------------------------------------------------------------------------
# GGUF v3 constants, from ggml's gguf.h and ggml.h.

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# Metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_FORMATS = {
    UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
    BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d",
}

# Tensor types (ggml_type) and llama.cpp's general.file_type for a file mostly of that type.
GGML_F32, GGML_Q4_0, GGML_Q8_0 = 0, 2, 8
DTYPES = {"q4_0": GGML_Q4_0, "q8_0": GGML_Q8_0}
_FILE_TYPES = {"q4_0": 2, "q8_0": 7}

# Types of tokenizer arrays whose element type Python values do not show.
_TOKENIZER_ARRAY_TYPES = {
    "tokenizer.ggml.token_type": INT32,
    "tokenizer.ggml.scores": FLOAT32,
    "tokenizer.ggml.precompiled_charsmap": UINT8,
}

# ---------------------------------------------------------------------------
# Block formats. q4_0: fp16 d and 16 bytes of nibbles per 32 weights, value (q - 8) * d. q8_0: fp16 d
# and 32 int8 per 32 weights, value q * d.

QK = 32
_Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
_BLOCK_DTYPES = {GGML_Q4_0: _Q4_0_BLOCK, GGML_Q8_0: _Q8_0_BLOCK}

# Standard deviation of (q - 8) for q uniform on 1..15, and of q uniform on -127..127.
_Q4_0_STD = math.sqrt(56 / 3)
_Q8_0_STD = math.sqrt(127 * 128 / 3)
_QUANT_STD = {GGML_Q4_0: _Q4_0_STD, GGML_Q8_0: _Q8_0_STD}


def _q4_0_byte_pair_table() -> np.ndarray:
    """Map a draw from 0..225**2 - 1 to two bytes of two nibbles each, every nibble uniform on 1..15.

    One bounded 16-bit draw fills four nibbles, so it needs a quarter of the draws of one per nibble.
    """
    draw = np.arange(15 * 15)
    byte = ((draw % 15 + 1) | ((draw // 15 + 1) << 4)).astype(np.uint16)
    pair = np.arange(225 * 225)
    return (byte[pair % 225] | (byte[pair // 225] << 8)).astype("<u2")


_Q4_0_BYTE_PAIRS = _q4_0_byte_pair_table()

# Rows are generated and written in chunks of about this many bytes.
_CHUNK_BYTES = 8 << 20
# Free space required beyond the file size, for file-system metadata.
_DISK_MARGIN = 64 << 20


# ---------------------------------------------------------------------------
# The tensors of a model.


@dataclass(frozen=True)
class _TensorPlan:
    """One tensor to write: GGUF shape (innermost first), type, and how to fill it."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    # "normal" draws random values of standard deviation `std`. "ones" is for norm weights.
    fill: str
    std: float = 0.0

    @property
    def row_length(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def row_bytes(self) -> int:
        if self.ggml_type == GGML_F32:
            return 4 * self.row_length
        return self.row_length // QK * _BLOCK_DTYPES[self.ggml_type].itemsize

    @property
    def n_bytes(self) -> int:
        return self.n_rows * self.row_bytes


def _plan_tensors(preset: SynthPreset, ggml_type: int, n_vocab: int) -> list[_TensorPlan]:
    """List the tensors in file order, with the scales described in the module docstring."""
    n_embd, n_ff, n_expert = preset.n_embd, preset.n_ff, preset.n_expert
    q_width = preset.n_head * preset.head_dim
    kv_width = preset.n_head_kv * preset.head_dim

    def projection(name: str, n_in: int, *outer: int, gain: float = 1.0) -> _TensorPlan:
        # Element RMS gain / sqrt(n_in) maps an input of RMS 1 to an output of RMS `gain`.
        return _TensorPlan(name, (n_in, *outer), ggml_type, "normal", gain / math.sqrt(n_in))

    def norm(name: str) -> _TensorPlan:
        return _TensorPlan(name, (n_embd,), GGML_F32, "ones")

    plans = [_TensorPlan("token_embd.weight", (n_embd, n_vocab), ggml_type, "normal", 1.0)]
    for layer in range(preset.n_layer):
        prefix = f"blk.{layer}"
        plans += [
            norm(f"{prefix}.attn_norm.weight"),
            projection(f"{prefix}.attn_q.weight", n_embd, q_width),
            projection(f"{prefix}.attn_k.weight", n_embd, kv_width),
            projection(f"{prefix}.attn_v.weight", n_embd, kv_width),
            projection(f"{prefix}.attn_output.weight", q_width, n_embd, gain=ATTENTION_OUTPUT_GAIN),
            norm(f"{prefix}.ffn_norm.weight"),
            _TensorPlan(f"{prefix}.ffn_gate_inp.weight", (n_embd, n_expert), GGML_F32, "normal",
                        ROUTER_LOGIT_STD / math.sqrt(n_embd)),
            projection(f"{prefix}.ffn_gate_exps.weight", n_embd, n_ff, n_expert),
            projection(f"{prefix}.ffn_up_exps.weight", n_embd, n_ff, n_expert),
            projection(f"{prefix}.ffn_down_exps.weight", n_ff, n_embd, n_expert, gain=EXPERT_OUTPUT_GAIN),
        ]
    plans += [norm("output_norm.weight"), projection("output.weight", n_embd, n_vocab)]
    return plans


def _generate_rows(plan: _TensorPlan, rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Draw the next `n_rows` rows of a tensor, encoded in its GGUF type."""
    n_values = n_rows * plan.row_length
    if plan.fill == "ones":
        return np.ones(n_values, dtype="<f4")
    if plan.ggml_type == GGML_F32:
        return rng.normal(0.0, plan.std, size=n_values).astype("<f4")

    # Every block of a tensor shares one d, chosen so that the values have RMS `std`.
    blocks = np.empty(n_values // QK, dtype=_BLOCK_DTYPES[plan.ggml_type])
    blocks["d"] = plan.std / _QUANT_STD[plan.ggml_type]
    if plan.ggml_type == GGML_Q4_0:
        pairs = rng.integers(0, 225 * 225, size=blocks.size * 8, dtype=np.uint16)
        blocks["qs"] = _Q4_0_BYTE_PAIRS[pairs].view(np.uint8).reshape(blocks.size, 16)
    else:
        blocks["qs"] = rng.integers(-127, 128, size=(blocks.size, QK), dtype=np.int8)
    return blocks


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    # Each tensor has its own stream, so a tensor's values do not depend on the tensors before it.
    # SFC64 draws these bounded 16-bit integers about 1.8 times as fast as the default PCG64
    # (NumPy 2.4 on an x86-64 Xeon).
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


# ---------------------------------------------------------------------------
# GGUF header.


def _pack_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pack_value(value_type: int, value: Any) -> bytes:
    """Encode a metadata value of `value_type` (an ARRAY is a tuple of element type and values)."""
    if value_type == STRING:
        return _pack_string(value)
    if value_type == ARRAY:
        element_type, values = value
        head = struct.pack("<IQ", element_type, len(values))
        if element_type == STRING:
            return head + b"".join(_pack_string(v) for v in values)
        if element_type == ARRAY:
            raise ValueError("nested GGUF arrays are not supported")
        # "<?" packs bools as one byte each, like GGUF.
        return head + np.asarray(values, dtype=_SCALAR_FORMATS[element_type]).tobytes()
    return struct.pack(_SCALAR_FORMATS[value_type], value)


def _tokenizer_value(key: str, value: Any) -> tuple[int, Any]:
    """Choose the GGUF type of a tokenizer metadata value read back as a plain Python value.

    Token ids are uint32 and token types int32, as llama.cpp's converters write them.
    """
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, float):
        return FLOAT32, value
    if isinstance(value, int):
        return (INT32 if value < 0 else UINT32), value
    if isinstance(value, (list, tuple)):
        if key in _TOKENIZER_ARRAY_TYPES:
            return ARRAY, (_TOKENIZER_ARRAY_TYPES[key], list(value))
        if value and all(isinstance(v, str) for v in value):
            return ARRAY, (STRING, list(value))
        if value and all(isinstance(v, float) for v in value):
            return ARRAY, (FLOAT32, list(value))
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return ARRAY, (INT32, list(value))
    raise ValueError(f"tokenizer metadata {key!r}: no GGUF type fits the value {value!r:.80}")


def _model_metadata(
    preset: SynthPreset, preset_name: str, dtype: str, seed: int, n_vocab: int
) -> list[tuple[str, int, Any]]:
    """Return the general.* and llama.* key/value/type triples, typed as llama.cpp writes them."""
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, f"mer-synthetic-{preset_name}-{dtype}-seed{seed}"),
        ("general.description", STRING,
         "Random weights scaled for realistic expert routing, written by mer.synth for benchmarks. "
         "Not a trained model: its text is noise."),
        ("general.file_type", UINT32, _FILE_TYPES[dtype]),
        ("general.quantization_version", UINT32, 2),
        ("general.alignment", UINT32, ALIGNMENT),
        ("llama.vocab_size", UINT32, n_vocab),
        ("llama.context_length", UINT32, preset.context_length),
        ("llama.embedding_length", UINT32, preset.n_embd),
        ("llama.block_count", UINT32, preset.n_layer),
        ("llama.feed_forward_length", UINT32, preset.n_ff),
        ("llama.attention.head_count", UINT32, preset.n_head),
        ("llama.attention.head_count_kv", UINT32, preset.n_head_kv),
        ("llama.rope.dimension_count", UINT32, preset.head_dim),
        ("llama.rope.freq_base", FLOAT32, preset.rope_freq_base),
        ("llama.attention.layer_norm_rms_epsilon", FLOAT32, preset.rms_eps),
        ("llama.expert_count", UINT32, preset.n_expert),
        ("llama.expert_used_count", UINT32, preset.n_expert_used),
    ]


def _align(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _build_header(metadata: list[tuple[str, int, Any]], plans: list[_TensorPlan]) -> tuple[bytes, list[int]]:
    """Encode the header, metadata and tensor infos, padded to the alignment.

    Returns the header and each tensor's offset relative to the start of the data section.
    """
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(plans), len(metadata))]
    for key, value_type, value in metadata:
        parts += [_pack_string(key), struct.pack("<I", value_type), _pack_value(value_type, value)]

    offsets = []
    data_size = 0
    for plan in plans:
        offsets.append(data_size)
        data_size = _align(data_size + plan.n_bytes)
        parts += [_pack_string(plan.name), struct.pack(f"<I{len(plan.shape)}Q", len(plan.shape), *plan.shape)]
        parts.append(struct.pack("<IQ", plan.ggml_type, offsets[-1]))

    header = b"".join(parts)
    return header + bytes(_align(len(header)) - len(header)), offsets


# ---------------------------------------------------------------------------
# Writing a model.


def _check_preset(preset: SynthPreset) -> None:
    problems = []
    if preset.n_embd % QK or preset.n_ff % QK:
        problems.append(f"n_embd {preset.n_embd} and n_ff {preset.n_ff} must be multiples of {QK}")
    if preset.n_embd % preset.n_head or preset.head_dim % 2:
        problems.append(f"n_embd {preset.n_embd} must split into {preset.n_head} heads of even width")
    if preset.n_head % preset.n_head_kv:
        problems.append(f"n_head {preset.n_head} must be a multiple of n_head_kv {preset.n_head_kv}")
    if not 0 < preset.n_expert_used <= preset.n_expert:
        problems.append(f"n_expert_used {preset.n_expert_used} must be in 1..n_expert ({preset.n_expert})")
    if problems:
        raise ValueError("invalid synthetic model preset: " + ". ".join(problems))


def _default_tokenizer_metadata() -> dict[str, Any]:
    from . import _core
    from .default_model import pull

    return _core.read_gguf(pull())["metadata"]


def _check_free_space(out: Path, partial: Path, n_bytes: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if partial.exists():
        # A leftover partial file from an interrupted run is truncated before writing.
        free += partial.stat().st_size
    if free < n_bytes + _DISK_MARGIN:
        raise OSError(
            errno.ENOSPC,
            f"not enough free disk space for {out}: the file needs {n_bytes / 1e9:.2f} GB "
            f"and {out.parent} has {free / 1e9:.2f} GB free",
        )


def write_synthetic_model(
    out_path: str | os.PathLike[str],
    preset: str | SynthPreset = "small",
    dtype: str = "q4_0",
    seed: int = 0,
    tokenizer_metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write a synthetic MoE model to `out_path` and return its path.

    `preset` is a key of `PRESETS` or a `SynthPreset`. `dtype` ("q4_0" or "q8_0") is the type of
    every matrix, and norms and routers are F32. The same seed always gives the same file. The
    `tokenizer.*` keys of `tokenizer_metadata` (plain Python values, as `mer._core.read_gguf`
    returns them) are copied, by default from the default model's file, and their token list sets
    the vocabulary size. `progress(bytes_written, total_bytes)` is called after the header and
    after every chunk of at most about 8 MiB.

    The file is written as OUT.partial and renamed when complete, so an interrupted run never
    leaves a partial file under the final name, and the partial file is deleted on any exception.
    Raises FileExistsError if the file exists and `force` is false, and OSError (ENOSPC) if the
    disk lacks the space.
    """
    out = Path(out_path)
    preset_name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    _check_preset(preset)
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory: give the path of the file to write")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: pass force=True to overwrite it")

    if tokenizer_metadata is None:
        tokenizer_metadata = _default_tokenizer_metadata()
    tokenizer = [
        (key, *_tokenizer_value(key, value))
        for key, value in tokenizer_metadata.items()
        if key.startswith("tokenizer.")
    ]
    tokens = tokenizer_metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("tokenizer metadata has no tokenizer.ggml.tokens list")
    n_vocab = len(tokens)

    plans = _plan_tensors(preset, DTYPES[dtype], n_vocab)
    header, offsets = _build_header(_model_metadata(preset, preset_name, dtype, seed, n_vocab) + tokenizer, plans)
    total = len(header) + offsets[-1] + _align(plans[-1].n_bytes)

    partial = out.with_name(out.name + ".partial")
    _check_free_space(out, partial, total)
    try:
        with open(partial, "wb") as f:
            _write_body(f, header, plans, seed, total, progress)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


def _write_body(f: BinaryIO, header: bytes, plans: list[_TensorPlan], seed: int, total: int,
                progress: Callable[[int, int], None] | None) -> None:
    """Write the header, then each tensor in chunks of rows, padding each to the alignment."""
    f.write(header)
    written = len(header)
    if progress is not None:
        progress(written, total)

    for plan in plans:
        rng = _tensor_rng(seed, plan.name)
        rows_per_chunk = max(1, _CHUNK_BYTES // plan.row_bytes)
        for start in range(0, plan.n_rows, rows_per_chunk):
            chunk = _generate_rows(plan, rng, min(rows_per_chunk, plan.n_rows - start))
            f.write(chunk.view(np.uint8))
            written += chunk.nbytes
            if progress is not None:
                progress(written, total)
        padding = _align(plan.n_bytes) - plan.n_bytes
        f.write(bytes(padding))
        written += padding

    if written != total:
        raise RuntimeError(f"internal error: wrote {written} bytes but planned {total}")
    if progress is not None:
        progress(written, total)


# ---------------------------------------------------------------------------
# Measuring routing with an independent NumPy forward pass.


class _TensorReader:
    """Tensors of a GGUF file, read with pread and dequantized to float32 on request.

    Reads copy only the requested rows. A memory map would count every page read as the process's
    RSS, which reaches the file size for a full pass over a 26 GB model.
    """

    _ROW_TYPES = ("F32", "F16", "Q4_0", "Q8_0")

    def __init__(self, path: Path) -> None:
        from . import _core

        index = _core.read_gguf(path)
        self.path = path
        self.metadata = index["metadata"]
        self.tensors = {t["name"]: t for t in index["tensors"]}
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> _TensorReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)

    def _read(self, name: str, offset: int, n_bytes: int) -> np.ndarray:
        data = os.pread(self.fd, n_bytes, offset)
        if len(data) != n_bytes:
            raise OSError(
                f"{self.path}: short read of tensor {name}: {len(data)} of {n_bytes} bytes at offset {offset}"
            )
        return np.frombuffer(data, dtype=np.uint8)

    def rows(self, name: str, index: slice | Sequence[int] = slice(None)) -> np.ndarray:
        """Return rows `index` (a slice with step 1, or row numbers) of tensor `name` as float32.

        A tensor's rows run along its innermost dimension, so the result is (rows, shape[0]).
        """
        tensor = self.tensors[name]
        if tensor["type"] not in self._ROW_TYPES:
            raise NotImplementedError(
                f"{self.path}: tensor {name} has type {tensor['type']}, not one of {', '.join(self._ROW_TYPES)}"
            )
        row_length = tensor["shape"][0]
        n_rows = math.prod(tensor["shape"][1:])
        row_bytes = tensor["n_bytes"] // n_rows
        if isinstance(index, slice):
            start, stop, step = index.indices(n_rows)
            if step != 1:
                raise ValueError(f"row slice step must be 1, got {step}")
            raw = self._read(name, tensor["offset"] + start * row_bytes, (stop - start) * row_bytes)
        else:
            rows = [int(row) for row in index]
            if any(not 0 <= row < n_rows for row in rows):
                raise IndexError(
                    f"{self.path}: tensor {name} has {n_rows} rows, requested rows {min(rows)} to {max(rows)}"
                )
            raw = np.concatenate([self._read(name, tensor["offset"] + row * row_bytes, row_bytes) for row in rows])
        raw = raw.reshape(-1, row_bytes)

        if tensor["type"] == "F32":
            return raw.view("<f4").astype(np.float32)
        if tensor["type"] == "F16":
            return raw.view("<f2").astype(np.float32)
        blocks = raw.reshape(raw.shape[0], row_length // QK, -1)
        d = blocks[..., :2].copy().view("<f2").astype(np.float32)
        if tensor["type"] == "Q4_0":
            qs = blocks[..., 2:18]
            q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int8) - 8
        else:
            q = blocks[..., 2:34].view(np.int8)
        return (q * d).reshape(-1, row_length)

    def vector(self, name: str) -> np.ndarray:
        return self.rows(name).reshape(-1)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """Rotate adjacent pairs of each head of `x` (tokens, heads, head_dim) by position, llama.cpp's normal RoPE."""
    n_tokens, _, head_dim = x.shape
    inv_freq = base ** (-np.arange(0, head_dim, 2) / head_dim)
    angle = np.arange(n_tokens)[:, None, None] * inv_freq
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _attention(model: _TensorReader, preset: SynthPreset, layer: int, x: np.ndarray) -> np.ndarray:
    """Return the attention block's update to the residual stream `x` (tokens, n_embd), causal, grouped-query."""
    prefix = f"blk.{layer}"
    n_tokens, head_dim = x.shape[0], preset.head_dim
    group = preset.n_head // preset.n_head_kv
    h = _rms_norm(x, model.vector(f"{prefix}.attn_norm.weight"), preset.rms_eps)

    q = (h @ model.rows(f"{prefix}.attn_q.weight").T).reshape(n_tokens, preset.n_head, head_dim)
    k = (h @ model.rows(f"{prefix}.attn_k.weight").T).reshape(n_tokens, preset.n_head_kv, head_dim)
    v = (h @ model.rows(f"{prefix}.attn_v.weight").T).reshape(n_tokens, preset.n_head_kv, head_dim)
    q = _rope(q, preset.rope_freq_base).reshape(n_tokens, preset.n_head_kv, group, head_dim)
    k = _rope(k, preset.rope_freq_base)

    # Query head h reads key/value head h // group.
    scores = np.einsum("tkgd,skd->kgts", q, k) / math.sqrt(head_dim)
    scores[..., np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)] = -np.inf
    heads = np.einsum("kgts,skd->tkgd", _softmax(scores), v).reshape(n_tokens, -1)
    return heads @ model.rows(f"{prefix}.attn_output.weight").T


def _route(
    model: _TensorReader, preset: SynthPreset, layer: int, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return layer `layer`'s normed FFN input, router probabilities and top-k experts for residual `x`."""
    h = _rms_norm(x, model.vector(f"blk.{layer}.ffn_norm.weight"), preset.rms_eps)
    probs = _softmax(h @ model.rows(f"blk.{layer}.ffn_gate_inp.weight").T)
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :preset.n_expert_used]
    return h, probs, chosen


def _experts(model: _TensorReader, preset: SynthPreset, layer: int, h: np.ndarray,
             probs: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Return the weighted sum of the chosen experts' SwiGLU outputs, reading only experts in use."""
    prefix = f"blk.{layer}"
    weights = np.take_along_axis(probs, chosen, axis=-1)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.zeros_like(h)
    for expert in np.unique(chosen):
        tokens, rank = np.nonzero(chosen == expert)
        ff_rows = slice(expert * preset.n_ff, (expert + 1) * preset.n_ff)
        embd_rows = slice(expert * preset.n_embd, (expert + 1) * preset.n_embd)
        gate = h[tokens] @ model.rows(f"{prefix}.ffn_gate_exps.weight", ff_rows).T
        up = h[tokens] @ model.rows(f"{prefix}.ffn_up_exps.weight", ff_rows).T
        down = (gate / (1 + np.exp(-gate)) * up) @ model.rows(f"{prefix}.ffn_down_exps.weight", embd_rows).T
        out[tokens] += weights[tokens, rank][:, None] * down
    return out


def _preset_from_metadata(path: Path, metadata: Mapping[str, Any]) -> SynthPreset:
    def key(name: str) -> Any:
        if f"llama.{name}" not in metadata:
            raise ValueError(f"{path}: metadata key llama.{name} is missing, so this is not a llama MoE model")
        return metadata[f"llama.{name}"]

    return SynthPreset(
        n_layer=key("block_count"), n_embd=key("embedding_length"), n_head=key("attention.head_count"),
        n_head_kv=key("attention.head_count_kv"), n_ff=key("feed_forward_length"), n_expert=key("expert_count"),
        n_expert_used=key("expert_used_count"), context_length=key("context_length"),
        rope_freq_base=key("rope.freq_base"), rms_eps=key("attention.layer_norm_rms_epsilon"),
    )


def routing_spread(
    model_path: str | os.PathLike[str], token_ids: Sequence[int], n_layers: int | None = None
) -> dict[str, Any]:
    """Measure how a llama MoE model with merged expert tensors routes the tokens `token_ids`.

    Runs a float32 NumPy forward pass through the first `n_layers` layers (default all), reading
    only the experts that tokens route to. Per layer it reports:

    * `overlap`: the mean share of a token's experts that the previous token also used. Routing
      independent of the previous token gives n_expert_used / n_expert (0.25 for top-2 of 8).
    * `expert_counts`: how many tokens chose each expert.
    * `mean_top1_prob`: the mean router probability of each token's first expert.
    * `next_layer_recall`: the share of this layer's experts found by applying this layer's
      router to the previous layer's FFN input (None for the first layer).

    Also returns `expert_ids`, one (tokens, n_expert_used) array per layer, best first. Tensors
    must be F32, F16, Q4_0 or Q8_0. RoPE scaling and llama.attention.scale are not implemented,
    because synthetic models have neither, so other files with them are measured wrongly.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"token_ids must be a sequence of at least 2 ids, got shape {ids.shape}")
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")

    with _TensorReader(Path(model_path)) as model:
        preset = _preset_from_metadata(model.path, model.metadata)
        n_layers = preset.n_layer if n_layers is None else min(n_layers, preset.n_layer)
        layers = _measure_layers(model, preset, ids, n_layers)

    return {
        "n_tokens": int(ids.size),
        "chance_overlap": preset.n_expert_used / preset.n_expert,
        **{key: [entry[key] for entry in layers] for key in layers[0]},
    }


def _measure_layers(
    model: _TensorReader, preset: SynthPreset, ids: np.ndarray, n_layers: int
) -> list[dict[str, Any]]:
    """Run the forward pass through `n_layers` layers and return each layer's routing statistics."""
    x = model.rows("token_embd.weight", ids)
    layers = []
    # The experts of this layer as layer - 1's hidden state predicts them.
    predicted = None
    for layer in range(n_layers):
        x = x + _attention(model, preset, layer, x)
        h, probs, chosen = _route(model, preset, layer, x)

        recall = None
        if predicted is not None:
            recall = float((chosen[:, :, None] == predicted[:, None, :]).any(axis=-1).mean())
        if layer + 1 < n_layers:
            predicted = _route(model, preset, layer + 1, x)[2]

        shared = (chosen[1:, :, None] == chosen[:-1, None, :]).any(axis=-1)
        layers.append({
            "overlap": float(shared.mean()),
            "expert_counts": np.bincount(chosen.ravel(), minlength=preset.n_expert).tolist(),
            "mean_top1_prob": float(probs.max(axis=-1).mean()),
            "next_layer_recall": recall,
            "expert_ids": chosen,
        })
        x = x + _experts(model, preset, layer, h, probs, chosen)
    return layers


# ---------------------------------------------------------------------------
# Command line: `python -m mer synth OUT.gguf --preset mixtral-8x7b --dtype q4_0`.


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `synth` command's arguments to `parser`."""
    parser.add_argument("out", metavar="OUT", help="path of the GGUF file to write")
    parser.add_argument(
        "--preset", choices=list(PRESETS), default="small",
        help="model shape: tiny (23 MB at q4_0), small (0.47 GB) or mixtral-8x7b (26.4 GB) (default: small)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="q4_0",
                        help="tensor type of every matrix. Norms and routers are F32 (default: q4_0)")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed of the weights (default: 0)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


class _StderrProgress:
    """Print bytes written / total, the percentage and the write rate to stderr at every `step` percent."""

    def __init__(self, label: str, step: int = 5) -> None:
        self.label = label
        self.step = step
        self.next_percent = 0
        self.start = time.monotonic()

    def __call__(self, written: int, total: int) -> None:
        percent = written * 100 // total
        if percent < self.next_percent:
            return
        self.next_percent = (percent // self.step + 1) * self.step
        elapsed = time.monotonic() - self.start
        rate = written / elapsed / 1e6 if elapsed > 0 else 0.0
        print(f"{self.label}: {written / 1e9:.2f} / {total / 1e9:.2f} GB ({percent}%), {rate:.0f} MB/s, "
              f"{elapsed:.0f} s", file=sys.stderr, flush=True)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 0")
    return value


def run_synth(args: argparse.Namespace) -> int:
    """Write the model that `args` (from `add_synth_arguments`) describe, print its path, return 0."""
    if Path(args.out).exists() and not Path(args.out).is_dir() and not args.force:
        raise FileExistsError(f"{args.out} already exists: pass --force to overwrite it")
    start = time.monotonic()
    quiet = getattr(args, "quiet", False)
    progress = None if quiet else _StderrProgress(f"writing {args.out}")
    path = write_synthetic_model(
        args.out, preset=args.preset, dtype=args.dtype, seed=args.seed, progress=progress, force=args.force,
    )
    if not quiet:
        size = path.stat().st_size
        print(f"wrote {path}: {size:,} bytes in {time.monotonic() - start:.0f} s", file=sys.stderr)
    print(path)
    return 0
