//! GGUF block layouts and their dequantization.
//!
//! Every block is a `#[repr(C)]` struct of byte arrays, so its alignment is 1 and a byte slice
//! of any alignment can be viewed as a slice of blocks. Field names follow ggml: `d` is the
//! scale, `m` the minimum, `qs` the quants. Scales are little-endian IEEE half floats.

use half::f16;

/// Elements per block of every quantized type MER computes with.
pub const QK: usize = 32;

/// q4_0: 32 weights as 4-bit quants; value = (q - 8) * d. Low nibbles are elements 0 to 15,
/// high nibbles 16 to 31.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18 && std::mem::align_of::<BlockQ4_0>() == 1);

/// q4_1: 32 weights as 4-bit quants; value = q * d + m. Nibble order as q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20 && std::mem::align_of::<BlockQ4_1>() == 1);

/// q8_0: 32 weights as signed 8-bit quants; value = q * d.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34 && std::mem::align_of::<BlockQ8_0>() == 1);

/// Converts a little-endian half float to f32.
#[inline]
pub fn half_to_f32(bits: [u8; 2]) -> f32 {
    f16::from_le_bytes(bits).to_f32()
}

/// Marker for block types that may be viewed from raw bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, and be valid for every bit pattern.
pub unsafe trait Block: Copy {}
// SAFETY: each is a repr(C) struct of byte arrays (checked above): alignment 1, no padding, and
// every bit pattern is a valid value.
unsafe impl Block for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {}

/// Views `bytes` as blocks. The caller guarantees the length is a whole number of blocks, which
/// the GGUF reader checked for every tensor row.
#[inline]
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    assert!(bytes.len() % size == 0, "byte length {} is not a multiple of the block size {size}", bytes.len());
    // SAFETY: B has alignment 1 and accepts any bit pattern (the `Block` contract), and the
    // slice covers exactly `len / size` whole blocks inside `bytes`, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Dequantizes q4_0 blocks into `out` (32 values per block).
pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = half_to_f32(block.d);
        for (j, &q) in block.qs.iter().enumerate() {
            out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Dequantizes q4_1 blocks into `out` (32 values per block).
pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = half_to_f32(block.d);
        let m = half_to_f32(block.m);
        for (j, &q) in block.qs.iter().enumerate() {
            out[j] = (q & 0x0f) as f32 * d + m;
            out[j + QK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Dequantizes q8_0 blocks into `out` (32 values per block).
pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = half_to_f32(block.d);
        for (o, &q) in out.iter_mut().zip(block.qs.iter()) {
            *o = q as f32 * d;
        }
    }
}
