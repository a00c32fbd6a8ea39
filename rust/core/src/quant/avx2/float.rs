//! AVX2 dot products of f16 and f32 weights with f32 activations.
//!
//! Element i goes to lane i % 8 of accumulator (i / 8) % 4, which is partial sum i % 32 of the
//! scalar reference, and the accumulators are reduced in the order of
//! `kernels::reduce_partials`.

use std::arch::x86_64::*;

use crate::quant::kernels::FLOAT_LANES;

/// f16 weights (little-endian bytes) times f32 activations, bit-identical to
/// `kernels::dot_f16`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 2).min(x.len());
    let mut acc = [_mm256_setzero_ps(); 4];

    let full = n / FLOAT_LANES * FLOAT_LANES;
    for start in (0..full).step_by(FLOAT_LANES) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let i = start + 8 * k;
            // SAFETY: i + 8 <= full <= n, and `w` has at least 2 * n bytes and `x` at least n
            // values, so both unaligned loads stay inside their slices.
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * i).cast()));
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
        }
    }

    // The last partial chunk goes through zero-padded copies. Adding 0 * 0 leaves a partial sum
    // unchanged, because a partial sum that starts at +0 can never be -0.
    if full < n {
        let mut w_tail = [0u16; FLOAT_LANES];
        let mut x_tail = [0.0f32; FLOAT_LANES];
        for (j, i) in (full..n).enumerate() {
            w_tail[j] = u16::from_le_bytes([w[2 * i], w[2 * i + 1]]);
            x_tail[j] = x[i];
        }
        for (k, acc) in acc.iter_mut().enumerate() {
            // SAFETY: 8 * k + 8 <= FLOAT_LANES, the length of both arrays.
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(w_tail.as_ptr().add(8 * k).cast()));
            let xv = _mm256_loadu_ps(x_tail.as_ptr().add(8 * k));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
        }
    }

    reduce_partials(acc)
}

/// f32 weights (little-endian bytes) times f32 activations, bit-identical to
/// `kernels::dot_f32`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 4).min(x.len());
    let mut acc = [_mm256_setzero_ps(); 4];

    let full = n / FLOAT_LANES * FLOAT_LANES;
    for start in (0..full).step_by(FLOAT_LANES) {
        for (k, acc) in acc.iter_mut().enumerate() {
            let i = start + 8 * k;
            // SAFETY: i + 8 <= full <= n, and `w` has at least 4 * n bytes and `x` at least n
            // values, so both unaligned loads stay inside their slices.
            let wv = _mm256_loadu_ps(w.as_ptr().add(4 * i).cast());
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
        }
    }

    // Zero padding leaves the partial sums unchanged, as in `dot_f16`.
    if full < n {
        let mut w_tail = [0.0f32; FLOAT_LANES];
        let mut x_tail = [0.0f32; FLOAT_LANES];
        for (j, i) in (full..n).enumerate() {
            w_tail[j] = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
            x_tail[j] = x[i];
        }
        for (k, acc) in acc.iter_mut().enumerate() {
            // SAFETY: 8 * k + 8 <= FLOAT_LANES, the length of both arrays.
            let wv = _mm256_loadu_ps(w_tail.as_ptr().add(8 * k));
            let xv = _mm256_loadu_ps(x_tail.as_ptr().add(8 * k));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
        }
    }

    reduce_partials(acc)
}

/// Reduces four accumulators of 8 lanes in the order of `kernels::reduce_partials`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn reduce_partials(acc: [__m256; 4]) -> f32 {
    let lanes = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let quarter = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));
    let pair = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    let total = _mm_add_ss(pair, _mm_movehdup_ps(pair));
    _mm_cvtss_f32(total)
}
