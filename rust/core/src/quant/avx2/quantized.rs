//! AVX2 dot products of q4_0, q4_1 and q8_0 weights with int8 activation blocks, for one row
//! or for four rows at a time.
//!
//! A block's products end up as 8 i32 lanes whose total is the block's exact integer sum. The
//! one-row kernels add the lanes and then do the scalar float step. The four-row kernels add
//! the lanes of four blocks into one vector of four sums and do the float step for the four
//! rows in the lanes of one vector, which rounds each lane exactly as the scalar step would.

use std::arch::x86_64::*;

/// How far ahead of the current block the four-row kernels prefetch weights. The hardware
/// prefetcher alone left one thread at about 6 GB/s on matrices streamed from RAM on the
/// development machine, and about 8 to 10 GB/s with this hint.
const PREFETCH_DISTANCE: usize = 1024;

use crate::quant::activation::BlockQ8Act;
use crate::quant::blocks::{Block, BlockQ4_0, BlockQ4_1, BlockQ8_0};

/// q4_0 weights times int8 activations, bit-identical to `kernels::dot_q4_0`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let xq = load_i8x32(&xb.qs);
        let sum = sum_i32x8(q4_0_lanes(&wb.qs, xq, _mm256_abs_epi8(xq)));
        let [d, _] = block_halves(wb);
        acc += sum as f32 * (d * xb.d);
    }
    acc
}

/// q4_1 weights times int8 activations, bit-identical to `kernels::dot_q4_1`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let sum = sum_i32x8(q4_1_lanes(&wb.qs, load_i8x32(&xb.qs)));
        let [d, m] = block_halves(wb);
        acc += sum as f32 * (d * xb.d) + m * (xb.d * xb.sum as f32);
    }
    acc
}

/// q8_0 weights times int8 activations, bit-identical to `kernels::dot_q8_0`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let xq = load_i8x32(&xb.qs);
        let sum = sum_i32x8(q8_0_lanes(&wb.qs, xq, has_minimum_quant(xq)));
        let [d, _] = block_halves(wb);
        acc += sum as f32 * (d * xb.d);
    }
    acc
}

/// Four q4_0 rows times the same int8 activations: element k equals `dot_q4_0(w[k], x)`.
///
/// # Panics
/// If the four rows differ in length.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot4_q4_0(w: [&[BlockQ4_0]; 4], x: &[BlockQ8Act]) -> [f32; 4] {
    let n = common_len(&w).min(x.len());
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut acc = _mm_setzero_ps();
    for (b, xb) in x[..n].iter().enumerate() {
        prefetch_ahead([&w0[b], &w1[b], &w2[b], &w3[b]]);
        let xq = load_i8x32(&xb.qs);
        let x_abs = _mm256_abs_epi8(xq);
        let sums = sum_i32x8_four(
            q4_0_lanes(&w0[b].qs, xq, x_abs),
            q4_0_lanes(&w1[b].qs, xq, x_abs),
            q4_0_lanes(&w2[b].qs, xq, x_abs),
            q4_0_lanes(&w3[b].qs, xq, x_abs),
        );
        let d = halves_to_f32x4([w0[b].d, w1[b].d, w2[b].d, w3[b].d]);
        let scale = _mm_mul_ps(d, _mm_set1_ps(xb.d));
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(sums), scale));
    }
    f32x4_to_array(acc)
}

/// Four q4_0 rows times two int8 activation vectors: element `[i][k]` equals
/// `dot_q4_0(w[k], x[i])`. Each weight block is unpacked once for both inputs, which is what a
/// batch of prompt tokens gains over one token at a time.
///
/// # Panics
/// If the four rows differ in length.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot4x2_q4_0(w: [&[BlockQ4_0]; 4], x: [&[BlockQ8Act]; 2]) -> [[f32; 4]; 2] {
    let n = common_len(&w).min(x[0].len()).min(x[1].len());
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut acc = [_mm_setzero_ps(); 2];
    for b in 0..n {
        prefetch_ahead([&w0[b], &w1[b], &w2[b], &w3[b]]);
        let weights = [&w0[b], &w1[b], &w2[b], &w3[b]].map(|wb| _mm256_sub_epi8(unpack_nibbles(&wb.qs), _mm256_set1_epi8(8)));
        let d = halves_to_f32x4([w0[b].d, w1[b].d, w2[b].d, w3[b].d]);
        for (acc, x) in acc.iter_mut().zip(x) {
            let xb = &x[b];
            let xq = load_i8x32(&xb.qs);
            let x_abs = _mm256_abs_epi8(xq);
            let [l0, l1, l2, l3] = weights.map(|wq| signed_lanes(wq, xq, x_abs));
            let sums = sum_i32x8_four(l0, l1, l2, l3);
            let scale = _mm_mul_ps(d, _mm_set1_ps(xb.d));
            *acc = _mm_add_ps(*acc, _mm_mul_ps(_mm_cvtepi32_ps(sums), scale));
        }
    }
    acc.map(f32x4_to_array)
}

/// Four q4_1 rows times the same int8 activations: element k equals `dot_q4_1(w[k], x)`.
///
/// # Panics
/// If the four rows differ in length.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot4_q4_1(w: [&[BlockQ4_1]; 4], x: &[BlockQ8Act]) -> [f32; 4] {
    let n = common_len(&w).min(x.len());
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut acc = _mm_setzero_ps();
    for (b, xb) in x[..n].iter().enumerate() {
        prefetch_ahead([&w0[b], &w1[b], &w2[b], &w3[b]]);
        let xq = load_i8x32(&xb.qs);
        let sums = sum_i32x8_four(
            q4_1_lanes(&w0[b].qs, xq),
            q4_1_lanes(&w1[b].qs, xq),
            q4_1_lanes(&w2[b].qs, xq),
            q4_1_lanes(&w3[b].qs, xq),
        );
        let d = halves_to_f32x4([w0[b].d, w1[b].d, w2[b].d, w3[b].d]);
        let m = halves_to_f32x4([w0[b].m, w1[b].m, w2[b].m, w3[b].m]);
        let scaled = _mm_mul_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(d, _mm_set1_ps(xb.d)));
        let minimum = _mm_mul_ps(m, _mm_set1_ps(xb.d * xb.sum as f32));
        acc = _mm_add_ps(acc, _mm_add_ps(scaled, minimum));
    }
    f32x4_to_array(acc)
}

/// Four q8_0 rows times the same int8 activations: element k equals `dot_q8_0(w[k], x)`.
///
/// # Panics
/// If the four rows differ in length.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot4_q8_0(w: [&[BlockQ8_0]; 4], x: &[BlockQ8Act]) -> [f32; 4] {
    let n = common_len(&w).min(x.len());
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    let mut acc = _mm_setzero_ps();
    for (b, xb) in x[..n].iter().enumerate() {
        prefetch_ahead([&w0[b], &w1[b], &w2[b], &w3[b]]);
        let xq = load_i8x32(&xb.qs);
        let x_has_min = has_minimum_quant(xq);
        let sums = sum_i32x8_four(
            q8_0_lanes(&w0[b].qs, xq, x_has_min),
            q8_0_lanes(&w1[b].qs, xq, x_has_min),
            q8_0_lanes(&w2[b].qs, xq, x_has_min),
            q8_0_lanes(&w3[b].qs, xq, x_has_min),
        );
        let d = halves_to_f32x4([w0[b].d, w1[b].d, w2[b].d, w3[b].d]);
        let scale = _mm_mul_ps(d, _mm_set1_ps(xb.d));
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(sums), scale));
    }
    f32x4_to_array(acc)
}

/// Integer dot product of one q4_0 block with one activation block.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn q4_0_block_sum(wb: &BlockQ4_0, xb: &BlockQ8Act) -> i32 {
    let xq = load_i8x32(&xb.qs);
    sum_i32x8(q4_0_lanes(&wb.qs, xq, _mm256_abs_epi8(xq)))
}

/// Integer dot product of the unsigned quants of one q4_1 block with one activation block.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn q4_1_block_sum(wb: &BlockQ4_1, xb: &BlockQ8Act) -> i32 {
    sum_i32x8(q4_1_lanes(&wb.qs, load_i8x32(&xb.qs)))
}

/// Integer dot product of one q8_0 block with one activation block.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn q8_0_block_sum(wb: &BlockQ8_0, xb: &BlockQ8Act) -> i32 {
    let xq = load_i8x32(&xb.qs);
    sum_i32x8(q8_0_lanes(&wb.qs, xq, has_minimum_quant(xq)))
}

/// Products of a q4_0 block with activation quants `x`, as 8 i32 lanes; `x_abs` is |x|.
///
/// `_mm256_maddubs_epi16` multiplies unsigned by signed bytes, so the sign of each activation
/// moves onto its weight: |x| * (w * sign(x)) = x * w. |x| is 128 for x = -128, which is still
/// right read as unsigned, and w - 8 lies in -8..=7, so negating it cannot overflow. A pair of
/// products is at most 2 * 128 * 8 in magnitude, far from the i16 saturation of maddubs.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_0_lanes(qs: &[u8; 16], x: __m256i, x_abs: __m256i) -> __m256i {
    signed_lanes(_mm256_sub_epi8(unpack_nibbles(qs), _mm256_set1_epi8(8)), x, x_abs)
}

/// Products of 32 signed weights in -8..=7 with activation quants `x`, as 8 i32 lanes; `x_abs`
/// is |x|. The bounds are those of [`q4_0_lanes`].
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn signed_lanes(w: __m256i, x: __m256i, x_abs: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(w, x));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Products of the unsigned quants of a q4_1 block with activation quants `x`, as 8 i32 lanes.
///
/// The quants are 0..=15, so maddubs takes them as its unsigned operand directly. A pair of
/// products is at most 2 * 15 * 128 in magnitude, far from the i16 saturation.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_1_lanes(qs: &[u8; 16], x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(unpack_nibbles(qs), x);
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Products of a q8_0 block with activation quants `x`, as 8 i32 lanes. `x_has_min` is true
/// when some quant of `x` is -128.
///
/// Without -128 in `x`, the sign of each weight moves onto its activation: |w| * (x * sign(w)).
/// |w| is 128 for w = -128, right read as unsigned, and a pair is at most 2 * 128 * 127 =
/// 32512 in magnitude, inside i16. An activation of -128 could not be negated, and two products
/// of 128 * 128 would saturate maddubs, so such blocks sign-extend both operands to i16 and
/// multiply with `_mm256_madd_epi16` instead. `quantize_q8` never produces -128.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_lanes(qs: &[i8; 32], x: __m256i, x_has_min: bool) -> __m256i {
    let w = load_i8x32(qs);
    if x_has_min {
        let (w_lo, w_hi) = widen_i8x32(w);
        let (x_lo, x_hi) = widen_i8x32(x);
        return _mm256_add_epi32(_mm256_madd_epi16(w_lo, x_lo), _mm256_madd_epi16(w_hi, x_hi));
    }
    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Returns whether some byte of `x` is -128.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn has_minimum_quant(x: __m256i) -> bool {
    _mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(i8::MIN))) != 0
}

/// Spreads 16 bytes of packed nibbles over 32 bytes: low nibbles in bytes 0 to 15, high nibbles
/// in bytes 16 to 31, so that byte j holds element j of the block.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes, and the load has no alignment requirement.
    let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast()));
    // Shifting the upper 128 bits by 4 moves the high nibbles down. A variable shift avoids the
    // shuffle port, which the lane sums already keep busy.
    let shifted = _mm256_srlv_epi64(packed, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// Loads 32 int8 quants.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_i8x32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: `qs` is 32 readable bytes, and the load has no alignment requirement.
    _mm256_loadu_si256(qs.as_ptr().cast())
}

/// Sign-extends 32 int8 values to two vectors of 16 i16: bytes 0 to 15, then 16 to 31.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen_i8x32(v: __m256i) -> (__m256i, __m256i) {
    let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1));
    (lo, hi)
}

/// Sums the 8 i32 lanes. The lanes of a block are far below i32 overflow, so the order of the
/// additions does not matter.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sum_i32x8(v: __m256i) -> i32 {
    let quarter = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let pair = _mm_add_epi32(quarter, _mm_unpackhi_epi64(quarter, quarter));
    let total = _mm_add_epi32(pair, _mm_shuffle_epi32(pair, 0b01));
    _mm_cvtsi128_si32(total)
}

/// Sums the 8 i32 lanes of each of four vectors: lane k of the result is the total of `vk`.
///
/// Interleaving 32-bit and then 64-bit elements adds lanes of the same vector pairwise within
/// each 128-bit half, and the final step adds the two halves.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sum_i32x8_four(v0: __m256i, v1: __m256i, v2: __m256i, v3: __m256i) -> __m128i {
    // Per 128-bit half: [v0 0+2, v1 0+2, v0 1+3, v1 1+3], and the same for v2 and v3.
    let s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
    let s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v2, v3), _mm256_unpackhi_epi32(v2, v3));
    // Per 128-bit half: the sums of its four lanes of v0, v1, v2 and v3.
    let halves = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
    _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1))
}

/// Converts the first two half floats of a block to f32 with F16C: `d` and, in q4_1, `m`.
///
/// The conversion is exact, so it equals `blocks::half_to_f32` for every value except in the
/// payload bits of a NaN. The block's first 8 bytes are loaded whole: loading only its first
/// two bytes made LLVM merge them into the register that holds the row sum, which chained each
/// block's scale conversion behind the previous block's addition.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn block_halves<B: Block>(block: &B) -> [f32; 2] {
    const { assert!(std::mem::size_of::<B>() >= 8) };
    // SAFETY: every block type is at least 8 bytes long (asserted above), and the load has no
    // alignment requirement.
    let halves = _mm_loadl_epi64((block as *const B).cast());
    let floats = _mm_cvtph_ps(halves);
    [_mm_cvtss_f32(floats), _mm_cvtss_f32(_mm_movehdup_ps(floats))]
}

/// Converts four little-endian half floats to f32 with F16C, exactly.
///
/// # Safety
/// The CPU must support F16C.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn halves_to_f32x4(h: [[u8; 2]; 4]) -> __m128 {
    let [h0, h1, h2, h3] = h.map(i16::from_le_bytes);
    _mm_cvtph_ps(_mm_setr_epi16(h0, h1, h2, h3, 0, 0, 0, 0))
}

/// Asks the CPU to start loading the weights `PREFETCH_DISTANCE` bytes after each of four
/// blocks that a four-row kernel is reading.
#[inline]
fn prefetch_ahead<B>(blocks: [&B; 4]) {
    for block in blocks {
        let ahead = (block as *const B).cast::<i8>().wrapping_add(PREFETCH_DISTANCE);
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address, and SSE is
        // part of every x86-64 CPU.
        unsafe { _mm_prefetch(ahead, _MM_HINT_T0) };
    }
}

/// Returns the length that the four rows share.
///
/// # Panics
/// If the lengths differ, because a four-row kernel would then have to stop each row at its own
/// end.
fn common_len<B>(rows: &[&[B]; 4]) -> usize {
    let n = rows[0].len();
    assert!(rows.iter().all(|row| row.len() == n), "four-row kernel needs rows of equal length");
    n
}

/// Stores four f32 lanes in an array.
#[inline]
fn f32x4_to_array(v: __m128) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: `out` has room for the 4 floats, the store has no alignment requirement, and SSE
    // is part of every x86-64 CPU.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_len_of_equal_rows() {
        let row = [0u8; 3];
        assert_eq!(common_len(&[&row[..], &row[..], &row[..], &row[..]]), 3);
    }

    #[test]
    #[should_panic(expected = "rows of equal length")]
    fn common_len_rejects_unequal_rows() {
        let (long, short) = ([0u8; 3], [0u8; 2]);
        common_len(&[&long[..], &long[..], &short[..], &long[..]]);
    }
}
