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
