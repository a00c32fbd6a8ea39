//! Dot products of one weight row with one activation vector, for every supported type.
//!
//! These are the scalar reference kernels. The SIMD kernels (`avx2/`) return the same bits, so
//! the order of the float operations here is part of each kernel's contract:
//!
//! - Quantized types: each block's integer sum is exact, and `acc += sum * scale` runs block by
//!   block in order, with a separate multiply and add (no fused multiply-add).
//! - Float types: element i is added to partial sum i % 32, and the 32 partial sums are reduced
//!   by `reduce_partials`. The 32 partial sums are four 8-lane AVX2 accumulators.
//!
//! A row's result therefore depends neither on the thread that computes it nor on the CPU.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::activation::BlockQ8Act;
use super::blocks::{half_to_f32, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// Partial sums of the f16 and f32 dot products.
pub(crate) const FLOAT_LANES: usize = 32;

/// Integer dot product of one q4_0 block with one activation block.
#[inline]
pub(crate) fn q4_0_block_sum(wb: &BlockQ4_0, xb: &BlockQ8Act) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK / 2 {
        let lo = i32::from(wb.qs[j] & 0x0f) - 8;
        let hi = i32::from(wb.qs[j] >> 4) - 8;
        sum += lo * i32::from(xb.qs[j]) + hi * i32::from(xb.qs[j + QK / 2]);
    }
    sum
}

/// Integer dot product of the unsigned quants of one q4_1 block with one activation block.
#[inline]
pub(crate) fn q4_1_block_sum(wb: &BlockQ4_1, xb: &BlockQ8Act) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK / 2 {
        let lo = i32::from(wb.qs[j] & 0x0f);
        let hi = i32::from(wb.qs[j] >> 4);
        sum += lo * i32::from(xb.qs[j]) + hi * i32::from(xb.qs[j + QK / 2]);
    }
    sum
}

/// Integer dot product of one q8_0 block with one activation block.
#[inline]
pub(crate) fn q8_0_block_sum(wb: &BlockQ8_0, xb: &BlockQ8Act) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK {
        sum += i32::from(wb.qs[j]) * i32::from(xb.qs[j]);
    }
    sum
}

/// q4_0 weights times int8 activations.
pub fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let sum = q4_0_block_sum(wb, xb);
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d);
    }
    acc
}

/// q4_1 weights times int8 activations: sum(q * d + m) * a = d * sum(q * a) + m * sum(a).
pub fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let sum = q4_1_block_sum(wb, xb);
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d) + half_to_f32(wb.m) * (xb.d * xb.sum as f32);
    }
    acc
}

/// q8_0 weights times int8 activations.
pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let sum = q8_0_block_sum(wb, xb);
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d);
    }
    acc
}

/// f16 weights (little-endian bytes) times f32 activations, over the shorter of the two.
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let mut partial = [0.0f32; FLOAT_LANES];
    let mut halves = [f16::ZERO; FLOAT_LANES];
    let mut widened = [0.0f32; FLOAT_LANES];
    for (w, x) in w.chunks(2 * FLOAT_LANES).zip(x.chunks(FLOAT_LANES)) {
        // Widening a chunk at once lets `half` use its SIMD conversion where the CPU has one.
        // Every conversion from f16 to f32 is exact, so the result does not depend on it.
        let n = x.len().min(w.len() / 2);
        for (h, b) in halves.iter_mut().zip(w.chunks_exact(2)) {
            *h = f16::from_le_bytes([b[0], b[1]]);
        }
        halves[..n].convert_to_f32_slice(&mut widened[..n]);
        for (p, (&v, &xv)) in partial.iter_mut().zip(widened[..n].iter().zip(x)) {
            *p += v * xv;
        }
    }
    reduce_partials(&partial)
}

/// f32 weights (little-endian bytes) times f32 activations, over the shorter of the two.
pub fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    let mut partial = [0.0f32; FLOAT_LANES];
    for (w, x) in w.chunks(4 * FLOAT_LANES).zip(x.chunks(FLOAT_LANES)) {
        for (p, (b, &v)) in partial.iter_mut().zip(w.chunks_exact(4).zip(x)) {
            *p += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v;
        }
    }
    reduce_partials(&partial)
}

/// Sums the partial sums of a float dot product in the order the AVX2 kernels use.
///
/// Partial sum `8 * k + l` is lane `l` of accumulator `k`. The four accumulators are added as
/// (0 + 1) + (2 + 3). Then three halvings reduce the 8 lanes: lane l + lane (l + 4), then
/// lane l + lane (l + 2), then lane 0 + lane 1.
pub(crate) fn reduce_partials(partial: &[f32; FLOAT_LANES]) -> f32 {
    let lanes: [f32; 8] =
        std::array::from_fn(|l| (partial[l] + partial[8 + l]) + (partial[16 + l] + partial[24 + l]));
    let quarter: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
    let pair = [quarter[0] + quarter[2], quarter[1] + quarter[3]];
    pair[0] + pair[1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::activation::quantize_q8;
    use crate::quant::blocks::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0};

    /// A small deterministic generator, so the tests need no extra crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn half(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    /// Dequantized activations: the values the integer kernels multiply.
    fn activation_values(x: &[BlockQ8Act]) -> Vec<f32> {
        x.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d)).collect()
    }

    fn plain_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn inputs(seed: &mut u64, n: usize) -> Vec<BlockQ8Act> {
        let values: Vec<f32> = (0..n).map(|_| (lcg(seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        quantize_q8(&values)
    }

    #[test]
    fn q4_0_dot_equals_dequantized_dot() {
        let mut seed = 1;
        let blocks: Vec<BlockQ4_0> = (0..8)
            .map(|i| BlockQ4_0 { d: half(0.01 * (i + 1) as f32), qs: std::array::from_fn(|_| lcg(&mut seed) as u8) })
            .collect();
        let x = inputs(&mut seed, 256);
        let mut w = vec![0.0; 256];
        dequantize_q4_0(&blocks, &mut w);
        let expected = plain_dot(&w, &activation_values(&x));
        assert!((dot_q4_0(&blocks, &x) - expected).abs() <= 1e-4 * expected.abs().max(1.0));
    }

    #[test]
    fn q4_1_dot_equals_dequantized_dot() {
        let mut seed = 2;
        let blocks: Vec<BlockQ4_1> = (0..8)
            .map(|i| BlockQ4_1 {
                d: half(0.02 * (i + 1) as f32),
                m: half(-0.1 * i as f32),
                qs: std::array::from_fn(|_| lcg(&mut seed) as u8),
            })
            .collect();
        let x = inputs(&mut seed, 256);
        let mut w = vec![0.0; 256];
        dequantize_q4_1(&blocks, &mut w);
        let expected = plain_dot(&w, &activation_values(&x));
        assert!((dot_q4_1(&blocks, &x) - expected).abs() <= 1e-4 * expected.abs().max(1.0));
    }

    #[test]
    fn q8_0_dot_handles_extreme_quants() {
        // Quants of -128 and 127 against activations of -127 and 127: the integer sum must not
        // overflow or saturate.
        let blocks = [BlockQ8_0 { d: half(1.0), qs: std::array::from_fn(|j| if j % 2 == 0 { -128 } else { 127 }) }];
        let x = [BlockQ8Act { d: 1.0, sum: 0, qs: std::array::from_fn(|j| if j % 2 == 0 { -127 } else { 127 }) }];
        let mut w = vec![0.0; 32];
        dequantize_q8_0(&blocks, &mut w);
        assert_eq!(dot_q8_0(&blocks, &x), 16.0 * (128.0 * 127.0 + 127.0 * 127.0));
    }

    /// Exact f64 dot product of f32 values, rounded once at the end.
    fn f64_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>() as f32
    }

    #[test]
    fn f32_dot_equals_f64_dot() {
        let mut seed = 3;
        for n in [0, 1, 31, 32, 33, 100, 4096] {
            let w: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let x: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let expected = f64_dot(&w, &x);
            let tolerance = 1e-5 * (n as f32).max(1.0);
            assert!((dot_f32(&bytes, &x) - expected).abs() <= tolerance, "length {n}");
        }
    }

    #[test]
    fn f16_dot_equals_f64_dot() {
        let mut seed = 4;
        for n in [0, 1, 31, 32, 33, 100, 4096] {
            let w: Vec<half::f16> =
            (0..n).map(|_| half::f16::from_f32((lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)).collect();
            let x: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let widened: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let expected = f64_dot(&widened, &x);
            let tolerance = 1e-5 * (n as f32).max(1.0);
            assert!((dot_f16(&bytes, &x) - expected).abs() <= tolerance, "length {n}");
        }
    }

    #[test]
    fn float_dots_use_shorter_length() {
        let w: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dot_f32(&w, &[1.0, 1.0]), 3.0);
        assert_eq!(dot_f32(&w[..8], &[1.0, 1.0, 1.0]), 3.0);
        let h: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|&v| half(v)).collect();
        assert_eq!(dot_f16(&h, &[1.0, 1.0]), 3.0);
    }

    #[test]
    fn quantize_q8_of_zeros_is_zero() {
        let x = quantize_q8(&[0.0; 64]);
        assert!(x.iter().all(|b| b.d == 0.0 && b.sum == 0 && b.qs.iter().all(|&q| q == 0)));
    }
}
