"""The NumPy reference forward pass with matmul inputs rounded to 8-bit blocks, as MER rounds them.

Before multiplying a q4_0, q4_1 or q8_0 matrix, MER rounds the input vector to blocks of 32
(``rust/core/src/quant/activation.rs``): d = max|x| / 127 in f32, q = round(x / d) to the
nearest integer with halves away from zero, and d is stored as f16. The integer dot products
are exact, so the product equals, up to float rounding, the weights times q * d. This module runs
``reference.py`` with its ``matmul`` inputs replaced by q * d, except the router's, because MER
multiplies F32 and F16 matrices with unrounded inputs.

Comparing MER against this variant separates that rounding from the rest of the forward pass.
It can still differ from MER where a value lies within float noise of a rounding tie, because
MER and this module may then round it to neighbouring integers, one quantum apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import gguf
import numpy as np

import reference

BLOCK_SIZE = 32

_QUANTIZED_TYPES = {
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
    gguf.GGMLQuantizationType.Q8_0,
}


def round_to_q8_blocks(x: np.ndarray) -> np.ndarray:
    """Return ``x`` rounded to 8-bit blocks of 32 along its last axis, as float64 q * d.

    The arithmetic follows MER's f32 steps, so that values that are not near a rounding tie
    round to the same integer as in MER.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if x32.shape[-1] % BLOCK_SIZE != 0:
        raise ValueError(f"the last axis has length {x32.shape[-1]}, not a multiple of {BLOCK_SIZE}")
    blocks = x32.reshape(*x32.shape[:-1], -1, BLOCK_SIZE)

    amax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    d = amax / np.float32(127)
    nonzero = d > 0
    inv_d = np.where(nonzero, np.float32(1) / np.where(nonzero, d, np.float32(1)), np.float32(0))
    scaled = (blocks * inv_d).astype(np.float64)
    # Halves round away from zero. The float64 sum is exact for these float32 values.
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)

    d16 = d.astype(np.float16).astype(np.float64)
    return (q * d16).reshape(x32.shape)


def _check_all_matrices_quantized(model: reference.ReferenceModel) -> None:
    """Raise ``ValueError`` unless every matrix other than the routers is q4_0, q4_1 or q8_0.

    The patched ``matmul`` recognizes the routers by identity but does not know the type of
    any other matrix, so it supports only files whose other matrices are all quantized.
    """
    for name, tensor_type in model.tensor_types.items():
        if name.endswith(("_norm.weight", "ffn_gate_inp.weight")):
            continue
        if tensor_type not in _QUANTIZED_TYPES:
            raise ValueError(
                f"{model.path}: tensor {name!r} has type {tensor_type.name}, but the rounded "
                "reference needs every matrix other than the routers to be Q4_0, Q4_1 or Q8_0"
            )


@contextlib.contextmanager
def _rounded_matmul_inputs(model: reference.ReferenceModel) -> Iterator[None]:
    """Replace ``reference.matmul`` while the block runs, so that non-router inputs are rounded."""
    router_ids = {id(layer.ffn_gate_inp) for layer in model.layers if layer.ffn_gate_inp is not None}
    float_matmul = reference.matmul

    def rounded_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        if id(weight) in router_ids:
            return float_matmul(x, weight)
        return float_matmul(round_to_q8_blocks(x), weight)

    reference.matmul = rounded_matmul
    try:
        yield
    finally:
        reference.matmul = float_matmul


def q8_reference_forward(path: str | os.PathLike[str], ids: Sequence[int]) -> reference.ReferenceOutput:
    """Run the reference over ``ids`` with MER's 8-bit rounding of matmul inputs.

    Raises ``ValueError`` if a matrix other than a router is not Q4_0, Q4_1 or Q8_0.
    """
    model = reference.load_reference_model(path)
    _check_all_matrices_quantized(model)
    with _rounded_matmul_inputs(model):
        return model.forward(ids)
