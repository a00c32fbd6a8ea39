"""NumPy reference forward pass for llama-architecture GGUF models, dense and MoE.

This is the test oracle for the Rust forward pass, so it shares no code with it. Weights
are read with gguf-py's ``GGUFReader`` and dequantized with ``gguf.quants.dequantize``.
Every activation stays in float64 and is never quantized. The graph follows llama.cpp's
``llama`` architecture: RMSNorm, adjacent-pair ("normal", not NeoX) RoPE, grouped-query
causal attention, and a SwiGLU FFN or a softmax-routed top-k mixture of SwiGLU experts.

The reader raises on any tensor or setting it does not implement (biases, RoPE scaling,
``rope_freqs.weight``), so a file it accepts is computed completely.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

ARCH = "llama"


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a llama-architecture model, read from ``llama.*`` metadata."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope_freq_base: float
    rope_dim: int
    attention_scale: float
    n_expert: int
    n_expert_used: int
    n_vocab: int

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0


@dataclass
class LayerWeights:
    """Float32 weights of one block. Matrices are (n_out, n_in), so y = W @ x."""

    attn_norm: np.ndarray
    attn_q: np.ndarray
    attn_k: np.ndarray
    attn_v: np.ndarray
    attn_output: np.ndarray
    ffn_norm: np.ndarray
    # Dense FFN: (n_ff, n_embd), (n_ff, n_embd), (n_embd, n_ff).
    ffn_gate: np.ndarray | None = None
    ffn_up: np.ndarray | None = None
    ffn_down: np.ndarray | None = None
    # MoE: router (n_expert, n_embd) and experts stacked with the expert id outermost,
    # whether the file stores them merged or as one tensor per expert.
    ffn_gate_inp: np.ndarray | None = None
    ffn_gate_exps: np.ndarray | None = None
    ffn_up_exps: np.ndarray | None = None
    ffn_down_exps: np.ndarray | None = None


@dataclass
class ReferenceOutput:
    """Result of one teacher-forced forward pass over a token sequence."""

    # (n_tokens, n_vocab) float32. Row t contains the logits that predict token t + 1.
    logits: np.ndarray
    # Per MoE layer: softmax router probabilities (n_tokens, n_expert) in float64.
    router_probs: list[np.ndarray] = field(default_factory=list)
    # Per MoE layer: the chosen expert indices (n_tokens, n_expert_used), best first.
    expert_ids: list[np.ndarray] = field(default_factory=list)
    # Per MoE layer: the chosen experts' weights after renormalizing to sum 1.
    expert_weights: list[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Math helpers, named after the operations in llama.cpp's graph.


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Normalize each row of ``x`` by its root mean square, then scale by ``weight``."""
    mean_square = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(mean_square + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


def matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Apply ``weight`` (n_out, n_in) to every row of ``x`` (n_tokens, n_in) in float64."""
    return x @ weight.astype(np.float64).T


def rope_angles(positions: np.ndarray, rope_dim: int, freq_base: float) -> np.ndarray:
    """Return the rotation angles (n_tokens, rope_dim // 2).

    Pair i at position p turns by p * freq_base ** (-2 i / rope_dim).
    """
    pair_index = np.arange(rope_dim // 2, dtype=np.float64)
    inv_freq = freq_base ** (-2.0 * pair_index / rope_dim)
    return np.outer(positions.astype(np.float64), inv_freq)


def apply_rope(x: np.ndarray, angles: np.ndarray, rope_dim: int) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of each head, llama.cpp's "normal" RoPE.

    ``x`` is (n_tokens, n_heads, head_dim) and ``angles`` is (n_tokens, rope_dim // 2).
    Elements from ``rope_dim`` on are left unchanged. llama.cpp's converter permutes the
    Q and K rows of Hugging Face llama checkpoints so that this pairing is correct on
    the GGUF weights as stored.
    """
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    even = x[..., 0:rope_dim:2]
    odd = x[..., 1:rope_dim:2]

    rotated = x.copy()
    rotated[..., 0:rope_dim:2] = even * cos - odd * sin
    rotated[..., 1:rope_dim:2] = even * sin + odd * cos
    return rotated


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Grouped-query causal attention over a whole sequence.

    ``q`` is (n_tokens, n_head, head_dim), ``k`` and ``v`` are (n_tokens, n_head_kv,
    head_dim). Query head h reads KV head h // (n_head / n_head_kv). Returns
    (n_tokens, n_head * head_dim), the heads concatenated in order.
    """
    n_tokens, n_head, head_dim = q.shape
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)

    # scores[h, i, j]: query position i against key position j.
    scores = np.einsum("ihd,jhd->hij", q, k) * scale
    future = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    scores[:, future] = -np.inf
    probs = softmax(scores, axis=-1)

    out = np.einsum("hij,jhd->ihd", probs, v)
    return out.reshape(n_tokens, n_head * head_dim)


def swiglu_ffn(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Compute down(silu(gate x) * up x) for every row of ``x``."""
    return matmul(silu(matmul(x, gate)) * matmul(x, up), down)


def select_experts(router_logits: np.ndarray, n_used: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Route each token to its top ``n_used`` experts, as llama.cpp's llama MoE does.

    Softmax runs over all experts first, then the top-k probabilities are renormalized to
    sum 1. Returns (probs, expert_ids, expert_weights). Ties go to the lower expert index.

    NOTE: llama.cpp's order for exactly tied probabilities was not checked, so a fixture
    with exact ties is fit for testing this reference only.
    """
    probs = softmax(router_logits, axis=-1)
    expert_ids = np.argsort(-probs, axis=-1, kind="stable")[:, :n_used]
    chosen = np.take_along_axis(probs, expert_ids, axis=-1)
    expert_weights = chosen / np.sum(chosen, axis=-1, keepdims=True)
    return probs, expert_ids, expert_weights


# ---------------------------------------------------------------------------
# Reading the model file.


def _field_value(reader: gguf.GGUFReader, key: str, default=None):
    field_ = reader.fields.get(key)
    if field_ is None:
        return default
    return field_.contents()


def _required_int(reader: gguf.GGUFReader, path: Path, key: str) -> int:
    value = _field_value(reader, key)
    if value is None:
        raise ValueError(f"{path}: required metadata key {key!r} is missing")
    return int(value)


def read_llama_config(reader: gguf.GGUFReader, path: Path, n_vocab: int) -> LlamaConfig:
    """Build a ``LlamaConfig`` from the metadata and check that this oracle supports it.

    ``n_vocab`` comes from the rows of ``token_embd.weight``. Raises ``ValueError`` for a
    missing or inconsistent key and ``NotImplementedError`` for a setting not implemented.
    """
    arch = _field_value(reader, "general.architecture")
    if arch != ARCH:
        raise NotImplementedError(f"{path}: general.architecture is {arch!r}, expected {ARCH!r}")

    n_embd = _required_int(reader, path, f"{ARCH}.embedding_length")
    n_head = _required_int(reader, path, f"{ARCH}.attention.head_count")
    n_head_kv = int(_field_value(reader, f"{ARCH}.attention.head_count_kv", n_head))
    if n_head % n_head_kv != 0:
        raise ValueError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")

    head_dim = int(_field_value(reader, f"{ARCH}.attention.key_length", n_embd // n_head))
    value_dim = int(_field_value(reader, f"{ARCH}.attention.value_length", head_dim))
    rope_dim = int(_field_value(reader, f"{ARCH}.rope.dimension_count", head_dim))
    # llama.cpp's llama graph asserts that key, value and RoPE widths are all equal.
    if not head_dim == value_dim == rope_dim:
        raise NotImplementedError(
            f"{path}: key_length {head_dim}, value_length {value_dim} and "
            f"rope.dimension_count {rope_dim} differ"
        )

    rms_eps = _field_value(reader, f"{ARCH}.attention.layer_norm_rms_epsilon")
    if rms_eps is None:
        raise ValueError(f"{path}: required metadata key {ARCH}.attention.layer_norm_rms_epsilon is missing")

    scaling_type = _field_value(reader, f"{ARCH}.rope.scaling.type", "none")
    if scaling_type != "none":
        raise NotImplementedError(f"{path}: {ARCH}.rope.scaling.type {scaling_type!r} is not implemented")

    # llama.cpp uses attention.scale in place of 1/sqrt(head_dim) when it is set and non-zero.
    attention_scale = float(_field_value(reader, f"{ARCH}.attention.scale", 0.0))
    if attention_scale == 0.0:
        attention_scale = 1.0 / math.sqrt(head_dim)

    n_expert = int(_field_value(reader, f"{ARCH}.expert_count", 0))
    n_expert_used = int(_field_value(reader, f"{ARCH}.expert_used_count", 0))
    if n_expert > 0 and not 0 < n_expert_used <= n_expert:
        raise ValueError(f"{path}: expert_used_count {n_expert_used} is invalid for expert_count {n_expert}")

    return LlamaConfig(
        n_layer=_required_int(reader, path, f"{ARCH}.block_count"),
        n_embd=n_embd,
        n_ff=_required_int(reader, path, f"{ARCH}.feed_forward_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rms_eps=float(rms_eps),
        rope_freq_base=float(_field_value(reader, f"{ARCH}.rope.freq_base", 10000.0)),
        rope_dim=rope_dim,
        attention_scale=attention_scale,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_vocab=n_vocab,
    )


def read_dequantized_tensors(reader: gguf.GGUFReader, path: Path) -> dict[str, np.ndarray]:
    """Dequantize every tensor of the file to float32 in NumPy order (outermost dim first).

    GGUF lists dimensions innermost first, so a tensor with ne = [n_in, n_out] becomes an
    array of shape (n_out, n_in).
    """
    tensors = {}
    for tensor in reader.tensors:
        expected_shape = tuple(int(dim) for dim in reversed(tensor.shape))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        # Copy so that no array keeps the file's memory map alive (F32 and F16 are views).
        values = np.array(values, dtype=np.float32, copy=True).reshape(expected_shape)
        tensors[tensor.name] = values
    return tensors


class _TensorTable:
    """Take tensors by name, check their shapes, and report any that were never taken."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray]):
        self.path = path
        self.tensors = dict(tensors)
        self.unused = set(tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor {name!r} is missing")
        values = self.tensors[name]
        if values.shape != shape:
            raise ValueError(f"{self.path}: tensor {name!r} has shape {values.shape}, expected {shape}")
        self.unused.discard(name)
        return values

    def check_all_used(self) -> None:
        if self.unused:
            names = ", ".join(sorted(self.unused))
            raise NotImplementedError(f"{self.path}: tensors not implemented by the reference: {names}")


def _take_experts(table: _TensorTable, config: LlamaConfig, layer: int, part: str, shape: tuple[int, int]) -> np.ndarray:
    """Return one expert matrix kind of a layer as (n_expert, n_out, n_in).

    Reads the merged tensor ``blk.N.ffn_<part>_exps.weight`` when present, otherwise the
    legacy per-expert tensors ``blk.N.ffn_<part>.E.weight``.
    """
    merged = f"blk.{layer}.ffn_{part}_exps.weight"
    if merged in table:
        return table.take(merged, (config.n_expert, *shape))
    per_expert = [table.take(f"blk.{layer}.ffn_{part}.{expert}.weight", shape) for expert in range(config.n_expert)]
    return np.stack(per_expert)


def _take_layer(table: _TensorTable, config: LlamaConfig, layer: int) -> LayerWeights:
    n_embd, n_ff, head_dim = config.n_embd, config.n_ff, config.head_dim
    q_width = config.n_head * head_dim
    kv_width = config.n_head_kv * head_dim
    prefix = f"blk.{layer}"

    weights = LayerWeights(
        attn_norm=table.take(f"{prefix}.attn_norm.weight", (n_embd,)),
        attn_q=table.take(f"{prefix}.attn_q.weight", (q_width, n_embd)),
        attn_k=table.take(f"{prefix}.attn_k.weight", (kv_width, n_embd)),
        attn_v=table.take(f"{prefix}.attn_v.weight", (kv_width, n_embd)),
        attn_output=table.take(f"{prefix}.attn_output.weight", (n_embd, q_width)),
        ffn_norm=table.take(f"{prefix}.ffn_norm.weight", (n_embd,)),
    )

    if config.is_moe:
        weights.ffn_gate_inp = table.take(f"{prefix}.ffn_gate_inp.weight", (config.n_expert, n_embd))
        weights.ffn_gate_exps = _take_experts(table, config, layer, "gate", (n_ff, n_embd))
        weights.ffn_up_exps = _take_experts(table, config, layer, "up", (n_ff, n_embd))
        weights.ffn_down_exps = _take_experts(table, config, layer, "down", (n_embd, n_ff))
    else:
        weights.ffn_gate = table.take(f"{prefix}.ffn_gate.weight", (n_ff, n_embd))
        weights.ffn_up = table.take(f"{prefix}.ffn_up.weight", (n_ff, n_embd))
        weights.ffn_down = table.take(f"{prefix}.ffn_down.weight", (n_embd, n_ff))
    return weights


# ---------------------------------------------------------------------------
# The model.


class ReferenceModel:
    """A llama-architecture GGUF model held as dequantized float32 weights."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        reader = gguf.GGUFReader(self.path)
        tensors = read_dequantized_tensors(reader, self.path)
        if "token_embd.weight" not in tensors:
            raise ValueError(f"{self.path}: tensor 'token_embd.weight' is missing")
        n_vocab = tensors["token_embd.weight"].shape[0]
        self.config = read_llama_config(reader, self.path, n_vocab)
        self.tensor_types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}

        table = _TensorTable(self.path, tensors)
        config = self.config
        self.token_embd = table.take("token_embd.weight", (n_vocab, config.n_embd))
        self.layers = [_take_layer(table, config, layer) for layer in range(config.n_layer)]
        self.output_norm = table.take("output_norm.weight", (config.n_embd,))
        # Without output.weight the output projection is tied to the token embedding.
        self.tied_output = "output.weight" not in table
        if self.tied_output:
            self.output = self.token_embd
        else:
            self.output = table.take("output.weight", (n_vocab, config.n_embd))
        table.check_all_used()

    def forward(self, ids: Sequence[int]) -> ReferenceOutput:
        """Run the whole sequence from an empty context with a causal mask.

        Row t of the returned logits is what llama.cpp computes for token t when the
        tokens before it are already in its KV cache.
        """
        config = self.config
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= config.n_vocab:
            raise ValueError(f"token ids must be in [0, {config.n_vocab}), got min {ids.min()} max {ids.max()}")

        n_tokens = ids.size
        result = ReferenceOutput(logits=np.empty(0, dtype=np.float32))
        x = self.token_embd[ids].astype(np.float64)
        angles = rope_angles(np.arange(n_tokens), config.rope_dim, config.rope_freq_base)

        for layer in self.layers:
            # Attention block with its residual.
            h = rms_norm(x, layer.attn_norm, config.rms_eps)
            q = matmul(h, layer.attn_q).reshape(n_tokens, config.n_head, config.head_dim)
            k = matmul(h, layer.attn_k).reshape(n_tokens, config.n_head_kv, config.head_dim)
            v = matmul(h, layer.attn_v).reshape(n_tokens, config.n_head_kv, config.head_dim)
            q = apply_rope(q, angles, config.rope_dim)
            k = apply_rope(k, angles, config.rope_dim)
            attn = causal_attention(q, k, v, config.attention_scale)
            x = x + matmul(attn, layer.attn_output)

            # FFN block with its residual.
            h = rms_norm(x, layer.ffn_norm, config.rms_eps)
            if config.is_moe:
                x = x + self._moe_ffn(h, layer, result)
            else:
                x = x + swiglu_ffn(h, layer.ffn_gate, layer.ffn_up, layer.ffn_down)

        h = rms_norm(x, self.output_norm, config.rms_eps)
        result.logits = matmul(h, self.output).astype(np.float32)
        return result

    def _moe_ffn(self, h: np.ndarray, layer: LayerWeights, result: ReferenceOutput) -> np.ndarray:
        """Mix the routed experts' SwiGLU outputs and record the routing in ``result``."""
        router_logits = matmul(h, layer.ffn_gate_inp)
        probs, expert_ids, expert_weights = select_experts(router_logits, self.config.n_expert_used)
        result.router_probs.append(probs)
        result.expert_ids.append(expert_ids)
        result.expert_weights.append(expert_weights)

        out = np.zeros_like(h)
        for expert in np.unique(expert_ids):
            tokens, rank = np.nonzero(expert_ids == expert)
            expert_out = swiglu_ffn(
                h[tokens],
                layer.ffn_gate_exps[expert],
                layer.ffn_up_exps[expert],
                layer.ffn_down_exps[expert],
            )
            out[tokens] += expert_weights[tokens, rank][:, None] * expert_out
        return out


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> ReferenceModel:
    # The modification time and size are part of the key so that a rewritten file reloads.
    return ReferenceModel(path)


def load_reference_model(path: str | os.PathLike[str]) -> ReferenceModel:
    """Return the ``ReferenceModel`` for ``path``, dequantizing each file only once.

    The cache keeps the four most recently used files. Raises ``FileNotFoundError`` when
    the file does not exist.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _load_cached(str(resolved), stat.st_mtime_ns, stat.st_size)


def reference_forward(path: str | os.PathLike[str], ids: Sequence[int]) -> ReferenceOutput:
    """Run the cached reference model of ``path`` over ``ids`` and return logits and routing."""
    return load_reference_model(path).forward(ids)


def reference_logits(path: str | os.PathLike[str], ids: Sequence[int]) -> np.ndarray:
    """Return the teacher-forced logits (len(ids), n_vocab) float32 of the model at ``path``."""
    return reference_forward(path, ids).logits
