//! Activations as the kernels consume them: the f32 vector, and the same vector quantized once
//! to 8-bit blocks of 32 for the integer dot products with quantized weights.

use super::blocks::QK;

/// 32 activations quantized to int8 with one f32 scale, plus the sum of the quants, which the
/// q4_1 dot product needs for its minimum term.
///
/// The scale is rounded to half precision, as ggml's q8_0 stores it, so products match ggml's.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8Act {
    pub d: f32,
    pub sum: i32,
    pub qs: [i8; QK],
}

/// An activation vector in both forms. Built once per input and shared by every matrix that
/// multiplies it (q, k and v read the same normed input).
pub struct Activation {
    pub values: Vec<f32>,
    pub blocks: Vec<BlockQ8Act>,
}

impl Activation {
    /// Quantizes `values`. Lengths that are not a multiple of 32 get no blocks, and only f32 and
    /// f16 matrices can multiply them.
    pub fn new(values: Vec<f32>) -> Self {
        let blocks = if values.len() % QK == 0 { quantize_q8(&values) } else { Vec::new() };
        Activation { values, blocks }
    }
}

/// Quantizes `x` (length a multiple of 32) to int8 blocks: d = max|x| / 127, q = round(x / d).
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8Act> {
    x.chunks_exact(QK)
        .map(|chunk| {
            let amax = chunk.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            // f32::max skips NaN, so a NaN or infinite input would quantize to zeros and vanish.
            // A NaN scale makes every product with this block NaN, so the fault reaches the logits.
            let d = if chunk.iter().all(|v| v.is_finite()) { amax / 127.0 } else { f32::NAN };
            let inv_d = if d == 0.0 || d.is_nan() { 0.0 } else { 1.0 / d };
            let mut qs = [0i8; QK];
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(chunk) {
                // |v * inv_d| <= 127 by construction of d, so the cast cannot saturate.
                *q = (v * inv_d).round() as i8;
                sum += i32::from(*q);
            }
            BlockQ8Act { d: half::f16::from_f32(d).to_f32(), sum, qs }
        })
        .collect()
}
