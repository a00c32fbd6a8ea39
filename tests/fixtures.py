"""Writers for tiny synthetic llama-architecture GGUF models, dense and MoE.

The files are built with gguf-py's ``GGUFWriter`` from random weights drawn by a seeded
NumPy ``Generator``, so every test can make the model it needs in a temporary directory
and no binary is committed. Each file carries a small working GPT-2 style byte-level BPE
tokenizer. ``tests/reference.py`` computes the expected logits for these files.

Weights are kept in a dict keyed by GGUF tensor name, in NumPy order (outermost dim
first). Expert matrices are always stored there as 3-D arrays under the merged names
``blk.N.ffn_<part>_exps.weight``. The writer splits them into legacy per-expert tensors
on request, so the merged and legacy files of one seed hold identical weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

KINDS = ("dense", "moe_merged", "moe_legacy")

# Tensor types the fixtures can write for the large matrices.
DTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

EXPERT_PARTS = ("gate", "up", "down")


@dataclass(frozen=True)
class FixtureConfig:
    """Hyperparameters of a synthetic model. ``n_expert == 0`` means a dense model."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_expert: int = 0
    n_expert_used: int = 0
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    context_length: int = 256

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class FixtureTokenizer:
    """Vocabulary and merges written as ``tokenizer.ggml.*`` metadata."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int


# ---------------------------------------------------------------------------
# Tokenizer.

# Each pair merges two tokens that already exist, in priority order. "Ġ" is the
# byte-level character for a space.
_MERGE_PAIRS = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"),
    ("o", "n"), ("r", "e"), ("in", "g"), ("Ġ", "s"), ("a", "t"), ("e", "n"),
    ("o", "r"), ("Ġ", "w"), ("Ġ", "c"), ("i", "s"), ("Ġ", "o"), ("e", "d"),
    ("Ġ", "f"), ("Ġa", "n"), ("Ġan", "d"), ("Ġ", "i"), ("Ġi", "s"), ("l", "l"),
]

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_chars() -> list[str]:
    """Return GPT-2's printable character for each byte value 0 to 255, in byte order.

    Bytes that are printable Latin-1 characters other than space and soft hyphen stand
    for themselves. The other 68 bytes map to U+0100 upward in increasing byte order, so
    the space byte 0x20 becomes "Ġ" (U+0120).
    """
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars = []
    next_code = 0x100
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(next_code))
            next_code += 1
    return chars


def build_tokenizer() -> FixtureTokenizer:
    """Build the fixture vocabulary: 256 byte tokens, the merged tokens, then the control tokens.

    Token id b is byte b. ``<|endoftext|>`` is both BOS and EOS.
    """
    tokens = byte_level_chars()
    known = set(tokens)
    merges = []
    for left, right in _MERGE_PAIRS:
        if left not in known or right not in known:
            raise ValueError(f"merge {left!r} + {right!r} uses a token that is not defined before it")
        merged = left + right
        tokens.append(merged)
        known.add(merged)
        merges.append(f"{left} {right}")

    token_types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    special_start = len(tokens)
    tokens.extend(_SPECIAL_TOKENS)
    token_types.extend([int(gguf.TokenType.CONTROL)] * len(_SPECIAL_TOKENS))

    return FixtureTokenizer(
        tokens=tokens,
        token_types=token_types,
        merges=merges,
        bos_id=special_start,
        eos_id=special_start,
    )


# ---------------------------------------------------------------------------
# Weights.


def config_for_kind(kind: str, **overrides) -> FixtureConfig:
    """Return the default ``FixtureConfig`` for ``kind`` with ``overrides`` applied.

    The MoE kinds default to 4 experts with 2 used per token.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}, expected one of {KINDS}")
    defaults = {} if kind == "dense" else {"n_expert": 4, "n_expert_used": 2}
    defaults.update(overrides)
    return FixtureConfig(**defaults)


def build_llama_weights(config: FixtureConfig, n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw float32 weights for every tensor, including ``output.weight``.

    Matrices, the token embedding included, are N(0, 1/n_in), so each projection keeps
    unit-scale inputs at unit scale and tied logits stay O(1) like untied ones. Norm
    weights are 1 + 0.1 * N(0, 1). The router is drawn
    twice as wide so that the router probabilities are more spread out and near-ties
    between the k-th and the next expert are rarer.
    """
    if config.n_embd % config.n_head != 0:
        raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
    if config.n_head % config.n_head_kv != 0:
        raise ValueError(f"n_head {config.n_head} is not a multiple of n_head_kv {config.n_head_kv}")

    rng = np.random.default_rng(seed)

    def matrix(*shape: int, scale: float = 1.0) -> np.ndarray:
        n_in = shape[-1]
        return (rng.standard_normal(shape) * (scale / np.sqrt(n_in))).astype(np.float32)

    def norm(size: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)

    n_embd, n_ff = config.n_embd, config.n_ff
    q_width = config.n_head * config.head_dim
    kv_width = config.n_head_kv * config.head_dim

    weights = {"token_embd.weight": matrix(n_vocab, n_embd)}
    for layer in range(config.n_layer):
        prefix = f"blk.{layer}"
        weights[f"{prefix}.attn_norm.weight"] = norm(n_embd)
        weights[f"{prefix}.attn_q.weight"] = matrix(q_width, n_embd)
        weights[f"{prefix}.attn_k.weight"] = matrix(kv_width, n_embd)
        weights[f"{prefix}.attn_v.weight"] = matrix(kv_width, n_embd)
        weights[f"{prefix}.attn_output.weight"] = matrix(n_embd, q_width)
        weights[f"{prefix}.ffn_norm.weight"] = norm(n_embd)
        if config.n_expert > 0:
            n_expert = config.n_expert
            weights[f"{prefix}.ffn_gate_inp.weight"] = matrix(n_expert, n_embd, scale=2.0)
            weights[f"{prefix}.ffn_gate_exps.weight"] = matrix(n_expert, n_ff, n_embd)
            weights[f"{prefix}.ffn_up_exps.weight"] = matrix(n_expert, n_ff, n_embd)
            weights[f"{prefix}.ffn_down_exps.weight"] = matrix(n_expert, n_embd, n_ff)
        else:
            weights[f"{prefix}.ffn_gate.weight"] = matrix(n_ff, n_embd)
            weights[f"{prefix}.ffn_up.weight"] = matrix(n_ff, n_embd)
            weights[f"{prefix}.ffn_down.weight"] = matrix(n_embd, n_ff)
    weights["output_norm.weight"] = norm(n_embd)
    weights["output.weight"] = matrix(n_vocab, n_embd)
    return weights


# ---------------------------------------------------------------------------
# Writing.


def _fixture_dtype_for(name: str, dtype: str, embedding_dtype: str) -> str:
    """Return the fixture dtype name for the tensor ``name``.

    Norms and routers are always F32, as llama.cpp's llama-quantize also leaves
    ``*_norm.weight`` and ``ffn_gate_inp.weight`` unquantized. ``token_embd`` and
    ``output`` use ``embedding_dtype`` and every other matrix uses ``dtype``.
    """
    if name.endswith("_norm.weight") or name.endswith("ffn_gate_inp.weight"):
        return "f32"
    if name in ("token_embd.weight", "output.weight"):
        return embedding_dtype
    return dtype


def _encode_tensor(name: str, values: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    qtype = DTYPES[dtype]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if values.shape[-1] % block_size != 0:
        raise ValueError(
            f"tensor {name!r}: inner dimension {values.shape[-1]} is not a multiple of "
            f"the {dtype} block size {block_size}. Choose sizes that are multiples of "
            f"{block_size}, or dtype f32 or f16."
        )
    return gguf.quants.quantize(values, qtype), qtype


def _split_experts(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace each merged expert tensor by legacy tensors ``blk.N.ffn_<part>.E.weight``."""
    split = {}
    for name, values in weights.items():
        part = next((p for p in EXPERT_PARTS if name.endswith(f".ffn_{p}_exps.weight")), None)
        if part is None:
            split[name] = values
            continue
        prefix = name.split(".ffn_")[0]
        for expert, expert_values in enumerate(values):
            split[f"{prefix}.ffn_{part}.{expert}.weight"] = np.ascontiguousarray(expert_values)
    return split


def write_weights_gguf(
    path: str | os.PathLike[str],
    weights: dict[str, np.ndarray],
    config: FixtureConfig,
    *,
    dtype: str = "q4_0",
    embedding_dtype: str | None = None,
    tied: bool = False,
    legacy_experts: bool = False,
    tokenizer: FixtureTokenizer | None = None,
    extra_rows: int = 0,
) -> Path:
    """Write ``weights`` and the llama metadata of ``config`` to a GGUF file at ``path``.

    ``dtype`` is the tensor type of the attention and FFN matrices, ``embedding_dtype``
    that of ``token_embd`` and ``output`` (default: ``dtype``). With ``tied`` the file has
    no ``output.weight``. With ``legacy_experts`` each expert gets its own tensors. The
    vocabulary size is the tokenizer's token count, and token_embd has ``extra_rows`` more rows
    than that (padding rows, as some real models have).
    """
    path = Path(path)
    embedding_dtype = embedding_dtype or dtype
    for name in (dtype, embedding_dtype):
        if name not in DTYPES:
            raise ValueError(f"unknown fixture dtype {name!r}, expected one of {sorted(DTYPES)}")
    tokenizer = tokenizer or build_tokenizer()
    n_vocab = len(tokenizer.tokens)
    if weights["token_embd.weight"].shape[0] != n_vocab + extra_rows:
        raise ValueError(
            f"token_embd.weight has {weights['token_embd.weight'].shape[0]} rows "
            f"but the tokenizer has {n_vocab} tokens and extra_rows is {extra_rows}"
        )

    to_write = {name: values for name, values in weights.items() if not (tied and name == "output.weight")}
    if legacy_experts:
        to_write = _split_experts(to_write)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("mer-fixture")
    writer.add_file_type(int(_FILE_TYPES[dtype]))
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head_kv)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    writer.add_rope_freq_base(config.rope_freq_base)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(n_vocab)
    if config.n_expert > 0:
        writer.add_expert_count(config.n_expert)
        writer.add_expert_used_count(config.n_expert_used)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.token_types)
    writer.add_token_merges(tokenizer.merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(False)

    for name, values in to_write.items():
        tensor_dtype = _fixture_dtype_for(name, dtype, embedding_dtype)
        encoded, qtype = _encode_tensor(name, values, tensor_dtype)
        writer.add_tensor(name, encoded, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_llama_gguf(
    path: str | os.PathLike[str],
    *,
    kind: str = "dense",
    dtype: str = "q4_0",
    embedding_dtype: str | None = None,
    tied: bool = False,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Write a synthetic llama model of ``kind`` ("dense", "moe_merged" or "moe_legacy").

    ``config_overrides`` are ``FixtureConfig`` fields such as ``n_layer`` or ``n_expert``.
    "moe_merged" and "moe_legacy" with the same seed and config hold the same weights.
    Returns ``path``.
    """
    config = config_for_kind(kind, **config_overrides)
    tokenizer = build_tokenizer()
    weights = build_llama_weights(config, len(tokenizer.tokens), seed)
    return write_weights_gguf(
        path,
        weights,
        config,
        dtype=dtype,
        embedding_dtype=embedding_dtype,
        tied=tied,
        legacy_experts=kind == "moe_legacy",
        tokenizer=tokenizer,
    )

