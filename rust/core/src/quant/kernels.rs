//! Dot products of one weight row with one activation vector, for every supported type.
//!
//! These are the scalar reference kernels. Each block's integer sum is exact, and blocks are
//! accumulated in order, so a row's result does not depend on which thread computes it.

use super::activation::BlockQ8Act;
use super::blocks::{half_to_f32, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// q4_0 weights times int8 activations.
pub fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            let lo = i32::from(wb.qs[j] & 0x0f) - 8;
            let hi = i32::from(wb.qs[j] >> 4) - 8;
            sum += lo * i32::from(xb.qs[j]) + hi * i32::from(xb.qs[j + QK / 2]);
        }
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d);
    }
    acc
}

/// q4_1 weights times int8 activations: sum(q * d + m) * a = d * sum(q * a) + m * sum(a).
pub fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            let lo = i32::from(wb.qs[j] & 0x0f);
            let hi = i32::from(wb.qs[j] >> 4);
            sum += lo * i32::from(xb.qs[j]) + hi * i32::from(xb.qs[j + QK / 2]);
        }
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d) + half_to_f32(wb.m) * (xb.d * xb.sum as f32);
    }
    acc
}

/// q8_0 weights times int8 activations.
pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut sum = 0i32;
        for j in 0..QK {
            sum += i32::from(wb.qs[j]) * i32::from(xb.qs[j]);
        }
        acc += sum as f32 * (half_to_f32(wb.d) * xb.d);
    }
    acc
}

/// f16 weights (little-endian bytes) times f32 activations.
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(b, &v)| half_to_f32([b[0], b[1]]) * v).sum()
}

/// f32 weights (little-endian bytes) times f32 activations.
pub fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(4).zip(x).map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v).sum()
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

    #[test]
    fn quantize_q8_of_zeros_is_zero() {
        let x = quantize_q8(&[0.0; 64]);
        assert!(x.iter().all(|b| b.d == 0.0 && b.sum == 0 && b.qs.iter().all(|&q| q == 0)));
    }
}
