"""Property tests of the dot-product kernels, run through `mer._core.kernel_dot`.

The strategies deliberately include each format's edge values. Weight blocks have 4-bit quants
that are all 0 or all 15, and half-float scales of +0, -0, +-65504 (the largest finite half
float), subnormals or arbitrary finite bits. Activations and q8_0 weights have int8 quants of
-128 and 127. Activations are given as explicit quants and scales, so they reach -128, which
`quantize_q8` never produces, and their scales include float32 values with full mantissas and
float32 extremes as well as the half floats `quantize_q8` stores.

Properties:

- AVX2 equals scalar bit for bit. The kernels are designed to return identical bits. Each
  block's integer sum is exact, and the float steps are the same operations in the same order,
  with no fused multiply-add (`rust/core/src/quant/kernels.rs`). The four-row kernels equal
  the one-row kernels bit for bit as well. Only NaN payloads may differ, and only when a scale
  is itself NaN, because the AVX2 kernels widen half floats with F16C.
- Integer sums are exact. A row whose weight scales are 1 on one block and zero on the others,
  times activation scales of 1, returns that block's integer sum. It must equal NumPy int64
  arithmetic exactly: every block sum is below 2**24 in magnitude, so float32 holds it exactly.
- The scalar result matches an independent NumPy computation: weights dequantized by gguf-py's
  `gguf.quants.dequantize`, times the activation q * d, summed in float64. The tolerances are
  derived in `quantized_tolerance` and `float_tolerance`.

The AVX2 tests skip on a CPU without AVX2 and F16C.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mer import _core

BLOCK_SIZE = 32

# Unit roundoff of float32.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24

# Smallest positive float32 subnormal.
FLOAT32_MIN_SUBNORMAL = 2.0**-149

QUANTIZED_TYPES = ["q4_0", "q4_1", "q8_0"]
FLOAT_TYPES = ["f16", "f32"]

GGUF_TYPES = {
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "f16": gguf.GGMLQuantizationType.F16,
    "f32": gguf.GGMLQuantizationType.F32,
}

BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}

# Half-float bit patterns at the edges of the format.
HALF_ONE = 0x3C00
HALF_EDGE_BITS = [
    0x0000,  # +0
    0x8000,  # -0
    HALF_ONE,  # 1
    0xBC00,  # -1
    0x7BFF,  # 65504, the largest finite half float
    0xFBFF,  # -65504
    0x0001,  # 2**-24, the smallest subnormal
    0x8001,  # -2**-24
    0x03FF,  # the largest subnormal
    0x0400,  # 2**-14, the smallest normal
]
HALF_NONFINITE_BITS = [
    0x7C00,  # +infinity
    0xFC00,  # -infinity
    0x7E00,  # quiet NaN
    0x7D01,  # signaling NaN with a payload
    0xFE00,  # negative quiet NaN
]

# The largest finite float32, the smallest normal and the smallest subnormal.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_EDGE_VALUES = [0.0, -0.0, 1.0, FLOAT32_MAX, -FLOAT32_MAX, 2.0**-126, 2.0**-149, -(2.0**-149)]

PROPERTY_SETTINGS = settings(
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def half_bytes(bits: int) -> bytes:
    return bits.to_bytes(2, "little")


def halves_to_float32(bits: list[int]) -> np.ndarray:
    return np.array(bits, dtype=np.uint16).view(np.float16).astype(np.float32)


finite_half_bits = st.one_of(
    st.sampled_from(HALF_EDGE_BITS),
    st.integers(0, 0xFFFF).filter(lambda bits: bits & 0x7C00 != 0x7C00),
)
any_half_bits = st.one_of(finite_half_bits, st.sampled_from(HALF_NONFINITE_BITS), st.integers(0, 0xFFFF))

# 16 bytes of packed 4-bit quants: all 0, all 15, only 0 and 15 mixed, or any.
nibble_bytes = st.one_of(
    st.just(bytes(16)),
    st.just(b"\xff" * 16),
    arrays(np.uint8, 16, elements=st.sampled_from([0x00, 0x0F, 0xF0, 0xFF])).map(np.ndarray.tobytes),
    st.binary(min_size=16, max_size=16),
)

# 32 int8 quants: all -128, all 127, only extreme values, or any.
int8_block = st.one_of(
    st.just(np.full(BLOCK_SIZE, -128, dtype=np.int8)),
    st.just(np.full(BLOCK_SIZE, 127, dtype=np.int8)),
    arrays(np.int8, BLOCK_SIZE, elements=st.sampled_from([-128, -127, -1, 0, 1, 127])),
    st.binary(min_size=BLOCK_SIZE, max_size=BLOCK_SIZE).map(lambda raw: np.frombuffer(raw, dtype=np.int8)),
)

# Activation scales. `quantize_q8` stores half floats widened to float32, and their products
# with half-float weight scales are exact in float32. Scales with full 24-bit mantissas make
# the product d_w * d_x round as well, so that a change in the order of the float steps is
# likely to change the last bit. Between 2**-60 and 2**60 no product with a weight scale
# underflows or overflows.
half_activation_scales = finite_half_bits.map(lambda bits: float(halves_to_float32([bits])[0]))
full_mantissa_scales = st.one_of(
    st.floats(min_value=2.0**-60, max_value=2.0**60, width=32),
    st.floats(min_value=-(2.0**60), max_value=-(2.0**-60), width=32),
)
moderate_activation_scales = st.one_of(half_activation_scales, full_mantissa_scales)
finite_activation_scales = st.one_of(
    moderate_activation_scales,
    st.sampled_from(FLOAT32_EDGE_VALUES),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
any_activation_scales = st.one_of(finite_activation_scales, st.floats(width=32))


@st.composite
def weight_block(draw, ggml_type: str, scale_bits=finite_half_bits) -> bytes:
    """Draw one block of `ggml_type` in ggml's byte layout, with scales from `scale_bits`."""
    d = half_bytes(draw(scale_bits))
    if ggml_type == "q4_0":
        return d + draw(nibble_bytes)
    if ggml_type == "q4_1":
        return d + half_bytes(draw(scale_bits)) + draw(nibble_bytes)
    return d + draw(int8_block).tobytes()


@dataclass
class QuantizedCase:
    """Weight rows of a quantized type and one activation of explicit quants and scales."""

    ggml_type: str
    n_rows: int
    n_blocks: int
    rows: bytes
    scales: np.ndarray
    quants: np.ndarray


@st.composite
def quantized_cases(
    draw,
    ggml_type: str,
    weight_scale_bits=finite_half_bits,
    activation_scales=finite_activation_scales,
    min_blocks: int = 0,
) -> QuantizedCase:
    """Draw 4 rows of up to 8 blocks, one group of the four-row kernel, and an activation of
    the same length."""
    n_blocks = draw(st.integers(min_blocks, 8))
    n_rows = 4
    blocks = draw(
        st.lists(weight_block(ggml_type, weight_scale_bits), min_size=n_rows * n_blocks, max_size=n_rows * n_blocks)
    )
    scales = draw(arrays(np.float32, n_blocks, elements=activation_scales))
    quant_blocks = draw(st.lists(int8_block, min_size=n_blocks, max_size=n_blocks))
    quants = np.concatenate([np.zeros(0, dtype=np.int8), *quant_blocks])
    return QuantizedCase(ggml_type, n_rows, n_blocks, b"".join(blocks), scales, quants)


def run_quantized(isa: str, case: QuantizedCase, four_rows: bool = False) -> np.ndarray:
    return _core.kernel_dot(
        isa, case.ggml_type, case.rows, case.n_rows, scales=case.scales, quants=case.quants, four_rows=four_rows
    )


def skip_without_avx2() -> None:
    if "avx2" not in _core.kernel_sets():
        pytest.skip("this CPU lacks AVX2 or F16C, so there are no AVX2 kernels to compare")


def assert_same_bits(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    """Assert equal float32 bit patterns row by row."""
    assert actual.dtype == np.float32, f"{name}: dtype {actual.dtype}"
    assert expected.dtype == np.float32, f"{name}: expected dtype {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape}, expected {expected.shape}"
    differ = np.flatnonzero(actual.view(np.uint32) != expected.view(np.uint32))
    assert differ.size == 0, (
        f"{name}: {differ.size} of {actual.size} rows differ, first row {differ[0]}: "
        f"{actual[differ[0]]!r} (bits {actual.view(np.uint32)[differ[0]]:#010x}), expected "
        f"{expected[differ[0]]!r} (bits {expected.view(np.uint32)[differ[0]]:#010x})"
    )


def assert_same_bits_or_both_nan(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    """Assert equal float32 bit patterns, treating any two NaNs as equal."""
    both_nan = np.isnan(actual) & np.isnan(expected)
    quiet_nan = np.float32(np.nan)
    assert_same_bits(name, np.where(both_nan, quiet_nan, actual), np.where(both_nan, quiet_nan, expected))


def assert_within_tolerance(actual: np.ndarray, expected: np.ndarray, tolerance: np.ndarray) -> None:
    """Assert |actual - expected| <= tolerance in every row, naming the row furthest outside."""
    error = np.abs(actual.astype(np.float64) - expected)
    worst = int(np.argmax(error - tolerance))
    assert np.all(error <= tolerance), (
        f"row {worst}: scalar {actual[worst]!r}, NumPy {expected[worst]!r}, "
        f"error {error[worst]:.3e} above the tolerance {tolerance[worst]:.3e}"
    )


# Bit identity of the quantized kernels.


@pytest.mark.parametrize("ggml_type", QUANTIZED_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_quantized_avx2_equals_scalar(ggml_type, data):
    skip_without_avx2()
    case = data.draw(quantized_cases(ggml_type))
    scalar = run_quantized("scalar", case)
    one_row = run_quantized("avx2", case)
    four_rows = run_quantized("avx2", case, four_rows=True)
    assert_same_bits("AVX2 one-row vs scalar", one_row, scalar)
    assert_same_bits("AVX2 four-row vs scalar", four_rows, scalar)
    assert_same_bits("AVX2 four-row vs one-row", four_rows, one_row)


@pytest.mark.parametrize("ggml_type", QUANTIZED_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_quantized_nonfinite_scales_agree(ggml_type, data):
    """Infinite and NaN scales, in weights and activations, give the same results everywhere."""
    skip_without_avx2()
    case = data.draw(quantized_cases(ggml_type, weight_scale_bits=any_half_bits, activation_scales=any_activation_scales))
    scalar = run_quantized("scalar", case)
    assert_same_bits_or_both_nan("AVX2 one-row vs scalar", run_quantized("avx2", case), scalar)
    assert_same_bits_or_both_nan("AVX2 four-row vs scalar", run_quantized("avx2", case, four_rows=True), scalar)


# Exact integer sums.


def unpack_weight_quants(ggml_type: str, blocks: np.ndarray) -> np.ndarray:
    """Return the integer weight quants that each block's sum multiplies, as int64 of shape
    (..., 32): q - 8 for q4_0, the unsigned q for q4_1, the signed q for q8_0.

    `blocks` is uint8 of shape (..., block bytes). Low nibbles are elements 0 to 15 and high
    nibbles elements 16 to 31.
    """
    if ggml_type == "q8_0":
        return blocks[..., 2:].view(np.int8).astype(np.int64)
    packed = blocks[..., -16:].astype(np.int64)
    quants = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return quants - 8 if ggml_type == "q4_0" else quants


@dataclass
class BlockSumCase:
    """Rows that each isolate one block's integer sum, with the sums NumPy expects."""

    case: QuantizedCase
    expected: np.ndarray


@st.composite
def block_sum_cases(draw, ggml_type: str) -> BlockSumCase:
    """Draw blocks and an activation with unit scales, then build one row per block in which only
    that block has the scale 1 and the others have scale +0 or -0.

    For q4_1 a second row per block has d = 0 everywhere and the minimum m = 1 on that block
    only, which isolates the minimum term d_x * sum(x). Rows of all-zero scales pad the count
    to a multiple of 4 and must return 0.
    """
    n_blocks = draw(st.integers(1, 8))
    blocks = np.frombuffer(
        b"".join(draw(st.lists(weight_block(ggml_type), min_size=n_blocks, max_size=n_blocks))), dtype=np.uint8
    ).reshape(n_blocks, BLOCK_BYTES[ggml_type])
    quant_blocks = draw(st.lists(int8_block, min_size=n_blocks, max_size=n_blocks))
    activation = np.array(quant_blocks, dtype=np.int64)

    weight_sums = (unpack_weight_quants(ggml_type, blocks) * activation).sum(axis=-1)
    expected = list(weight_sums)
    # (d, m) half-float bits of the selected block in each row, or None for a padding row.
    selections: list[tuple[int, int] | None] = [(HALF_ONE, 0x0000)] * n_blocks
    selected_blocks = list(range(n_blocks))
    if ggml_type == "q4_1":
        expected += list(activation.sum(axis=-1))
        selections += [(0x0000, HALF_ONE)] * n_blocks
        selected_blocks += list(range(n_blocks))
    padding = -len(expected) % 4
    expected += [0] * padding
    selections += [None] * padding
    selected_blocks += [-1] * padding

    rows = []
    for selection, selected in zip(selections, selected_blocks):
        for b in range(n_blocks):
            block = blocks[b].copy()
            if selection is not None and b == selected:
                d_bits, m_bits = selection
            else:
                d_bits, m_bits = draw(st.sampled_from([0x0000, 0x8000])), 0x0000
            block[0:2] = np.frombuffer(half_bytes(d_bits), dtype=np.uint8)
            if ggml_type == "q4_1":
                block[2:4] = np.frombuffer(half_bytes(m_bits), dtype=np.uint8)
            rows.append(block.tobytes())

    case = QuantizedCase(
        ggml_type,
        len(expected),
        n_blocks,
        b"".join(rows),
        np.ones(n_blocks, dtype=np.float32),
        activation.astype(np.int8).reshape(-1),
    )
    return BlockSumCase(case, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize("ggml_type", QUANTIZED_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_quantized_block_sums_exact(ggml_type, data):
    sums = data.draw(block_sum_cases(ggml_type))
    assert np.all(np.abs(sums.expected) < 2**24), "a block sum this large would not be exact in float32"

    runs = [("scalar", False)]
    if "avx2" in _core.kernel_sets():
        runs += [("avx2", False), ("avx2", True)]
    for isa, four_rows in runs:
        actual = run_quantized(isa, sums.case, four_rows=four_rows)
        wrong = np.flatnonzero(actual.astype(np.float64) != sums.expected)
        assert wrong.size == 0, (
            f"{isa} {'four-row' if four_rows else 'one-row'}: row {wrong[0]} returned {actual[wrong[0]]!r}, "
            f"NumPy int64 sum {sums.expected[wrong[0]]}"
        )


# Agreement of the scalar quantized kernels with NumPy.


def quantized_tolerance(case: QuantizedCase) -> np.ndarray:
    """Return the allowed absolute error of each row's scalar result.

    Per block the kernel rounds d_w * d_x, then sum * that, and for q4_1 d_x * sum(x), m * that
    and the sum of both terms: at most 3 roundings of terms of magnitude |T| = |d_w d_x S| and
    |M| = |m d_x X|. Adding n blocks in order rounds n more times. So the error is at most about
    (n + 3) u (sum |T| + |M|) with u = 2**-24. gguf-py's q4_1 dequantization rounds q d + m
    to float32, which moves the reference by up to u sum |w a|, so that term is added. The
    factor n + 4 covers the second-order terms. No product of a half-float weight scale with
    an activation scale from `moderate_activation_scales` falls below the smallest normal
    float32, so no absolute term is needed.
    """
    blocks = np.frombuffer(case.rows, dtype=np.uint8).reshape(case.n_rows, case.n_blocks, BLOCK_BYTES[case.ggml_type])
    activation = case.quants.astype(np.int64).reshape(case.n_blocks, BLOCK_SIZE)
    x_scale = np.abs(case.scales.astype(np.float64))

    d = np.abs(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64))
    block_sums = (unpack_weight_quants(case.ggml_type, blocks) * activation).sum(axis=-1)
    magnitude = (d * x_scale * np.abs(block_sums)).sum(axis=-1)
    if case.ggml_type == "q4_1":
        m = np.abs(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64))
        magnitude += (m * x_scale * np.abs(activation.sum(axis=-1))).sum(axis=-1)

    weights = dequantized_rows(case.ggml_type, case.rows, case.n_rows)
    values = case.quants.astype(np.float64) * np.repeat(case.scales.astype(np.float64), BLOCK_SIZE)
    magnitude += np.abs(weights * values).sum(axis=-1)
    return (case.n_blocks + 4) * FLOAT32_UNIT_ROUNDOFF * magnitude


def dequantized_rows(ggml_type: str, rows: bytes, n_rows: int) -> np.ndarray:
    """Dequantize weight rows with gguf-py, as float64 of shape (n_rows, columns)."""
    raw = np.frombuffer(rows, dtype=np.uint8).reshape(n_rows, -1)
    return gguf.quants.dequantize(raw, GGUF_TYPES[ggml_type]).astype(np.float64)


@pytest.mark.parametrize("ggml_type", QUANTIZED_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_quantized_scalar_matches_numpy(ggml_type, data):
    case = data.draw(quantized_cases(ggml_type, activation_scales=moderate_activation_scales, min_blocks=1))
    weights = dequantized_rows(case.ggml_type, case.rows, case.n_rows)
    values = case.quants.astype(np.float64) * np.repeat(case.scales.astype(np.float64), BLOCK_SIZE)
    expected = weights @ values
    tolerance = quantized_tolerance(case)

    assert_within_tolerance(run_quantized("scalar", case), expected, tolerance)


# The f16 and f32 kernels, which have one-row kernels only.


@dataclass
class FloatCase:
    """Weight rows of a float type and one float32 activation."""

    ggml_type: str
    n_rows: int
    rows: bytes
    values: np.ndarray


@st.composite
def float32_array(draw, size: int, bound: float | None) -> np.ndarray:
    """Draw `size` float32 values.

    Most are random in [-1, 1) with full 24-bit mantissas, so that sums round in every step. Up
    to 8 positions take edge values or values of any magnitude up to `bound`.
    """
    raw = np.frombuffer(draw(st.binary(min_size=4 * size, max_size=4 * size)), dtype="<u4")
    # 24 random bits over 2**23, minus 1, is exact in float32.
    values = ((raw >> 8).astype(np.float64) / 2.0**23 - 1.0).astype(np.float32)
    if size == 0:
        return values

    limits = {} if bound is None else {"min_value": -bound, "max_value": bound}
    special = st.one_of(
        st.sampled_from([v for v in FLOAT32_EDGE_VALUES if bound is None or abs(v) <= bound]),
        st.floats(width=32, allow_nan=False, allow_infinity=False, **limits),
    )
    for position, value in draw(st.lists(st.tuples(st.integers(0, size - 1), special), max_size=8)):
        values[position] = value
    return values


@st.composite
def half_array(draw, size: int) -> np.ndarray:
    """Draw `size` finite half floats as little-endian bit patterns: random bits, where an
    all-ones exponent (infinity or NaN) loses its top bit, and at up to 8 positions edge values.
    """
    bits = np.frombuffer(draw(st.binary(min_size=2 * size, max_size=2 * size)), dtype="<u2").copy()
    nonfinite = bits & 0x7C00 == 0x7C00
    bits[nonfinite] &= ~np.uint16(0x4000)
    if size == 0:
        return bits

    for position, value in draw(st.lists(st.tuples(st.integers(0, size - 1), st.sampled_from(HALF_EDGE_BITS)), max_size=8)):
        bits[position] = value
    return bits


@st.composite
def float_cases(draw, ggml_type: str, bound: float | None) -> FloatCase:
    """Draw 1 or 2 rows of 0 to 100 elements, which covers whole and partial chunks of 32.

    `bound` limits the magnitude of float32 values, so that no product or sum overflows.
    """
    n = draw(st.integers(0, 100))
    n_rows = draw(st.integers(1, 2))
    values = draw(float32_array(n, bound))
    if ggml_type == "f16":
        rows = draw(half_array(n_rows * n)).tobytes()
    else:
        rows = draw(float32_array(n_rows * n, bound)).astype("<f4").tobytes()
    return FloatCase(ggml_type, n_rows, rows, values)


def run_float(isa: str, case: FloatCase) -> np.ndarray:
    return _core.kernel_dot(isa, case.ggml_type, case.rows, case.n_rows, values=case.values)


@pytest.mark.parametrize("ggml_type", FLOAT_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_float_avx2_equals_scalar(ggml_type, data):
    """Any finite inputs, including products that overflow to infinity and sums of opposite
    infinities, give the same bits."""
    skip_without_avx2()
    case = data.draw(float_cases(ggml_type, bound=None))
    assert_same_bits("AVX2 vs scalar", run_float("avx2", case), run_float("scalar", case))


def float_tolerance(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the allowed absolute error of each row's scalar result.

    Element i goes to partial sum i % 32, so each partial sum rounds one product and at most
    ceil(n / 32) additions, and the reduction tree adds 5 more roundings. The error is at most
    about (ceil(n / 32) + 6) u sum |w x| with u = 2**-24, plus 2**-149 per element for products
    that fall into the subnormal range.
    """
    n = values.size
    rounding_steps = -(-n // BLOCK_SIZE) + 6
    magnitude = np.abs(weights * values).sum(axis=-1)
    return rounding_steps * FLOAT32_UNIT_ROUNDOFF * magnitude + n * FLOAT32_MIN_SUBNORMAL


@pytest.mark.parametrize("ggml_type", FLOAT_TYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_float_scalar_matches_numpy(ggml_type, data):
    # 2**40 keeps every product of two values below 2**80 and every sum far below float32's
    # maximum of about 2**128.
    case = data.draw(float_cases(ggml_type, bound=2.0**40))
    weights = dequantized_rows(case.ggml_type, case.rows, case.n_rows)
    values = case.values.astype(np.float64)
    expected = weights @ values
    tolerance = float_tolerance(weights, values)

    assert_within_tolerance(run_float("scalar", case), expected, tolerance)


# Input checks of the entry point.

ONE_Q8_0_ROW = bytes(BLOCK_BYTES["q8_0"])
ONE_BLOCK_SCALES = np.ones(1, dtype=np.float32)
ONE_BLOCK_QUANTS = np.zeros(BLOCK_SIZE, dtype=np.int8)


@pytest.mark.parametrize(
    ("arguments", "keywords", "message"),
    [
        (("neon", "q8_0", ONE_Q8_0_ROW, 1), {}, "unknown kernel set"),
        (("scalar", "q5_0", ONE_Q8_0_ROW, 1), {}, "no dot-product kernel"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 2), {}, "expected 2 rows"),
        (("scalar", "q8_0", ONE_Q8_0_ROW + b"\0", 1), {}, "expected 1 rows"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 1), {"four_rows": True}, "no four-row kernel"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 1), {"quants": np.zeros(33, dtype=np.int8)}, "multiple of the block size"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 1), {"scales": np.ones(2, dtype=np.float32)}, "one scale per block"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 1), {"values": np.ones(32, dtype=np.float32)}, "not values"),
        (("scalar", "f32", bytes(4), 1), {"values": np.ones(1, dtype=np.float32)}, "not quants and scales"),
        (("scalar", "q8_0", ONE_Q8_0_ROW, 1), {"quants": None}, "missing quants or scales"),
        (("scalar", "f32", bytes(4), 1), {"scales": None, "quants": None}, "missing values"),
    ],
)
def test_kernel_dot_rejects_invalid_input(arguments, keywords, message):
    activation = {"scales": ONE_BLOCK_SCALES, "quants": ONE_BLOCK_QUANTS}
    with pytest.raises(ValueError, match=message):
        _core.kernel_dot(*arguments, **{**activation, **keywords})


def test_kernel_dot_four_rows_need_whole_groups():
    skip_without_avx2()
    with pytest.raises(ValueError, match="multiple of 4 rows"):
        _core.kernel_dot("avx2", "q8_0", ONE_Q8_0_ROW, 1, scales=ONE_BLOCK_SCALES, quants=ONE_BLOCK_QUANTS, four_rows=True)


def test_kernel_sets_start_with_scalar():
    assert _core.kernel_sets()[0] == "scalar"
