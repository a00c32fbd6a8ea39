//! Tests that every AVX2 kernel returns the same bits as its scalar reference, on random inputs
//! and on the extreme values of each format. On a CPU without AVX2 or F16C they return early.

use super::activation::BlockQ8Act;
use super::avx2;
use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use super::kernels;
use super::matrix::MatRef;
use super::{Activation, GgmlType, Kernels};

/// A small deterministic generator (64-bit LCG, upper bits), so the tests need no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    fn byte(&mut self) -> u8 {
        self.next_u32() as u8
    }

    fn below(&mut self, n: usize) -> usize {
        self.next_u32() as usize % n
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }

    /// Returns a finite half float from random bits: any sign, mantissa and exponent except the
    /// all-ones exponent of infinity and NaN.
    fn finite_half(&mut self) -> [u8; 2] {
        loop {
            let bits = self.next_u32() as u16;
            if bits & 0x7c00 != 0x7c00 {
                return bits.to_le_bytes();
            }
        }
    }
}

fn half(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Returns whether the AVX2 kernels can run here, and prints why a test is skipped when not.
fn avx2_runs() -> bool {
    let available = avx2::is_available();
    if !available {
        eprintln!("skipped: this CPU lacks AVX2 or F16C");
    }
    available
}

fn activation_block(d: f32, qs: [i8; QK]) -> BlockQ8Act {
    let sum = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8Act { d, sum, qs }
}

/// Activation blocks over the whole int8 range, -128 included, with scales up to 1.
fn random_activations(rng: &mut Lcg, n: usize) -> Vec<BlockQ8Act> {
    (0..n).map(|_| activation_block(rng.unit(), std::array::from_fn(|_| rng.byte() as i8))).collect()
}

fn random_q4_0(rng: &mut Lcg, n: usize) -> Vec<BlockQ4_0> {
    (0..n).map(|_| BlockQ4_0 { d: rng.finite_half(), qs: std::array::from_fn(|_| rng.byte()) }).collect()
}

fn random_q4_1(rng: &mut Lcg, n: usize) -> Vec<BlockQ4_1> {
    (0..n)
        .map(|_| BlockQ4_1 { d: rng.finite_half(), m: rng.finite_half(), qs: std::array::from_fn(|_| rng.byte()) })
        .collect()
}

fn random_q8_0(rng: &mut Lcg, n: usize) -> Vec<BlockQ8_0> {
    (0..n).map(|_| BlockQ8_0 { d: rng.finite_half(), qs: std::array::from_fn(|_| rng.byte() as i8) }).collect()
}

/// Activation quant patterns: the int8 extremes, zero, alternations and a random block.
fn activation_patterns(rng: &mut Lcg) -> Vec<[i8; QK]> {
    vec![
        [-128; QK],
        [-127; QK],
        [127; QK],
        [0; QK],
        std::array::from_fn(|j| if j % 2 == 0 { -128 } else { 127 }),
        std::array::from_fn(|j| if j < QK / 2 { 127 } else { -128 }),
        std::array::from_fn(|_| rng.byte() as i8),
    ]
}

/// Packed nibble patterns: every quant 0, every quant 15, alternations and a random block.
fn nibble_patterns(rng: &mut Lcg) -> Vec<[u8; QK / 2]> {
    vec![
        [0x00; QK / 2],
        [0xff; QK / 2],
        [0x0f; QK / 2],
        [0xf0; QK / 2],
        [0x88; QK / 2],
        std::array::from_fn(|j| if j % 2 == 0 { 0x0f } else { 0xf0 }),
        std::array::from_fn(|_| rng.byte()),
    ]
}

/// Weight scales: zeros of both signs, the smallest subnormal and the largest finite half
/// floats, and ordinary values.
fn weight_scales() -> Vec<[u8; 2]> {
    vec![
        half(0.0),
        half(-0.0),
        0x0001u16.to_le_bytes(),
        half(65504.0),
        half(-65504.0),
        half(1.0),
        half(-0.0123),
    ]
}

/// Activation scales. With the largest, a block's term stays below 4e37 in magnitude for every
/// format, so no term is infinite and no row sum is NaN.
const ACTIVATION_SCALES: [f32; 6] = [0.0, 1e-30, 0.0078125, 1.0, -3.5, 1e27];

fn assert_same_bits(simd: f32, scalar: f32, case: &str) {
    assert!(!scalar.is_nan(), "{case}: the inputs should not produce NaN");
    assert_eq!(simd.to_bits(), scalar.to_bits(), "{case}: AVX2 {simd:e} differs from scalar {scalar:e}");
}

#[test]
fn q4_0_block_sums_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(1);
    let w = random_q4_0(&mut rng, 2000);
    let x = random_activations(&mut rng, 2000);
    for (i, (wb, xb)) in w.iter().zip(&x).enumerate() {
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let simd = unsafe { avx2::q4_0_block_sum(wb, xb) };
        assert_eq!(simd, kernels::q4_0_block_sum(wb, xb), "block {i}");
    }
}

#[test]
fn q4_1_block_sums_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(2);
    let w = random_q4_1(&mut rng, 2000);
    let x = random_activations(&mut rng, 2000);
    for (i, (wb, xb)) in w.iter().zip(&x).enumerate() {
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let simd = unsafe { avx2::q4_1_block_sum(wb, xb) };
        assert_eq!(simd, kernels::q4_1_block_sum(wb, xb), "block {i}");
    }
}

#[test]
fn q8_0_block_sums_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(3);
    let w = random_q8_0(&mut rng, 2000);
    let x = random_activations(&mut rng, 2000);
    for (i, (wb, xb)) in w.iter().zip(&x).enumerate() {
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let simd = unsafe { avx2::q8_0_block_sum(wb, xb) };
        assert_eq!(simd, kernels::q8_0_block_sum(wb, xb), "block {i}");
    }
}

/// Checks the one-row and four-row kernels against the scalar kernel on `rows`, all multiplied
/// by `x`. Rows are taken four at a time, the last group padded with the first rows.
fn check_rows<B: Copy>(
    rows: &[Vec<B>],
    x: &[BlockQ8Act],
    scalar: fn(&[B], &[BlockQ8Act]) -> f32,
    one_row: unsafe fn(&[B], &[BlockQ8Act]) -> f32,
    four_rows: unsafe fn([&[B]; 4], &[BlockQ8Act]) -> [f32; 4],
    case: &str,
) {
    let expected: Vec<f32> = rows.iter().map(|w| scalar(w, x)).collect();
    for (r, w) in rows.iter().enumerate() {
        // SAFETY: callers run this only after avx2_runs checked AVX2 and F16C.
        let simd = unsafe { one_row(w, x) };
        assert_same_bits(simd, expected[r], &format!("{case}, row {r}, one-row kernel"));
    }
    for first in (0..rows.len()).step_by(4) {
        let index: [usize; 4] = std::array::from_fn(|k| (first + k) % rows.len());
        // SAFETY: as above.
        let simd = unsafe { four_rows(index.map(|r| rows[r].as_slice()), x) };
        for (k, &r) in index.iter().enumerate() {
            assert_same_bits(simd[k], expected[r], &format!("{case}, row {r}, four-row kernel"));
        }
    }
}

#[test]
fn q4_0_random_rows_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(4);
    for group in 0..100 {
        let n = rng.below(40);
        let rows: Vec<_> = (0..4).map(|_| random_q4_0(&mut rng, n)).collect();
        let x = random_activations(&mut rng, n);
        let case = format!("group {group} of rows of {n} blocks");
        check_rows(&rows, &x, kernels::dot_q4_0, avx2::dot_q4_0, avx2::dot4_q4_0, &case);
    }
}

/// Checks the q4_0 kernel of four rows times two inputs against the scalar kernel, for each
/// group of four rows (the last one padded with the first rows) and each pair of inputs.
fn check_q4_0_row_pairs(rows: &[Vec<BlockQ4_0>], inputs: &[Vec<BlockQ8Act>], case: &str) {
    for first in (0..rows.len()).step_by(4) {
        let index: [usize; 4] = std::array::from_fn(|k| (first + k) % rows.len());
        for (i, pair) in inputs.windows(2).enumerate() {
            // SAFETY: callers run this only after avx2_runs checked AVX2 and F16C.
            let simd = unsafe { avx2::dot4x2_q4_0(index.map(|r| rows[r].as_slice()), [&pair[0], &pair[1]]) };
            for (j, x) in pair.iter().enumerate() {
                for (k, &r) in index.iter().enumerate() {
                    let expected = kernels::dot_q4_0(&rows[r], x);
                    assert_same_bits(simd[j][k], expected, &format!("{case}, row {r}, input {}, pair kernel", i + j));
                }
            }
        }
    }
}

#[test]
fn q4_0_row_pairs_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(12);
    for group in 0..60 {
        let n = rng.below(40);
        let rows: Vec<_> = (0..4).map(|_| random_q4_0(&mut rng, n)).collect();
        let inputs: Vec<_> = (0..3).map(|_| random_activations(&mut rng, n)).collect();
        check_q4_0_row_pairs(&rows, &inputs, &format!("group {group} of rows of {n} blocks"));
    }

    // Extreme nibbles and scales, with activations of -128 and 127.
    let nibbles = nibble_patterns(&mut rng);
    let rows: Vec<_> = nibbles
        .iter()
        .flat_map(|&qs| weight_scales().into_iter().map(move |d| vec![BlockQ4_0 { d, qs }; 3]))
        .collect();
    let inputs: Vec<_> = activation_patterns(&mut rng)
        .into_iter()
        .flat_map(|qs| ACTIVATION_SCALES.map(|d| vec![activation_block(d, qs); 3]))
        .collect();
    check_q4_0_row_pairs(&rows, &inputs, "extremes");
}

#[test]
fn q4_1_random_rows_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(5);
    for group in 0..100 {
        let n = rng.below(40);
        let rows: Vec<_> = (0..4).map(|_| random_q4_1(&mut rng, n)).collect();
        let x = random_activations(&mut rng, n);
        let case = format!("group {group} of rows of {n} blocks");
        check_rows(&rows, &x, kernels::dot_q4_1, avx2::dot_q4_1, avx2::dot4_q4_1, &case);
    }
}

#[test]
fn q8_0_random_rows_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(6);
    for group in 0..100 {
        let n = rng.below(40);
        let rows: Vec<_> = (0..4).map(|_| random_q8_0(&mut rng, n)).collect();
        let x = random_activations(&mut rng, n);
        let case = format!("group {group} of rows of {n} blocks");
        check_rows(&rows, &x, kernels::dot_q8_0, avx2::dot_q8_0, avx2::dot4_q8_0, &case);
    }
}

#[test]
fn q4_0_extremes_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(7);
    let nibbles = nibble_patterns(&mut rng);
    for x_qs in activation_patterns(&mut rng) {
        for x_d in ACTIVATION_SCALES {
            let xb = activation_block(x_d, x_qs);
            let mut rows = Vec::new();
            for &qs in &nibbles {
                for d in weight_scales() {
                    let wb = BlockQ4_0 { d, qs };
                    // SAFETY: avx2_runs checked AVX2 and F16C.
                    let sum = unsafe { avx2::q4_0_block_sum(&wb, &xb) };
                    assert_eq!(sum, kernels::q4_0_block_sum(&wb, &xb), "qs {qs:02x?}, x {x_qs:?}");

                    // Three blocks, so the row sum also adds terms of opposite sign.
                    rows.push(vec![wb, BlockQ4_0 { d: half(0.5), qs: [0x37; QK / 2] }, wb]);
                }
            }
            let x = [xb, activation_block(-x_d, x_qs), xb];
            let case = format!("x {x_qs:?}, x.d {x_d:e}");
            check_rows(&rows, &x, kernels::dot_q4_0, avx2::dot_q4_0, avx2::dot4_q4_0, &case);
        }
    }
}

#[test]
fn q4_1_extremes_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(8);
    let nibbles = nibble_patterns(&mut rng);
    for x_qs in activation_patterns(&mut rng) {
        for x_d in ACTIVATION_SCALES {
            let xb = activation_block(x_d, x_qs);
            let mut rows = Vec::new();
            for &qs in &nibbles {
                for d in weight_scales() {
                    for m in weight_scales() {
                        let wb = BlockQ4_1 { d, m, qs };
                        // SAFETY: avx2_runs checked AVX2 and F16C.
                        let sum = unsafe { avx2::q4_1_block_sum(&wb, &xb) };
                        assert_eq!(sum, kernels::q4_1_block_sum(&wb, &xb), "qs {qs:02x?}, x {x_qs:?}");

                        rows.push(vec![wb, BlockQ4_1 { d: half(0.5), m: half(-2.0), qs: [0x37; QK / 2] }, wb]);
                    }
                }
            }
            let x = [xb, activation_block(-x_d, x_qs), xb];
            let case = format!("x {x_qs:?}, x.d {x_d:e}");
            check_rows(&rows, &x, kernels::dot_q4_1, avx2::dot_q4_1, avx2::dot4_q4_1, &case);
        }
    }
}

#[test]
fn q8_0_extremes_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(9);
    // The weight patterns are the activation patterns: both are int8 over the whole range.
    let weights = activation_patterns(&mut rng);
    for x_qs in activation_patterns(&mut rng) {
        for x_d in ACTIVATION_SCALES {
            let xb = activation_block(x_d, x_qs);
            let mut rows = Vec::new();
            for &qs in &weights {
                for d in weight_scales() {
                    let wb = BlockQ8_0 { d, qs };
                    // SAFETY: avx2_runs checked AVX2 and F16C.
                    let sum = unsafe { avx2::q8_0_block_sum(&wb, &xb) };
                    assert_eq!(sum, kernels::q8_0_block_sum(&wb, &xb), "qs {qs:?}, x {x_qs:?}");

                    rows.push(vec![wb, BlockQ8_0 { d: half(0.5), qs: [-3; QK] }, wb]);
                }
            }
            let x = [xb, activation_block(-x_d, x_qs), xb];
            let case = format!("x {x_qs:?}, x.d {x_d:e}");
            check_rows(&rows, &x, kernels::dot_q8_0, avx2::dot_q8_0, avx2::dot4_q8_0, &case);
        }
    }
}

#[test]
fn q8_0_sum_of_minus_128_squares() {
    if !avx2_runs() {
        return;
    }
    let wb = BlockQ8_0 { d: half(1.0), qs: [-128; QK] };
    let xb = activation_block(1.0, [-128; QK]);
    // SAFETY: avx2_runs checked AVX2 and F16C.
    let sum = unsafe { avx2::q8_0_block_sum(&wb, &xb) };
    assert_eq!(sum, 32 * 128 * 128);
}

#[test]
fn q4_0_sum_of_extreme_products() {
    if !avx2_runs() {
        return;
    }
    // Quant 0 is the weight -8, and -128 is the activation whose sign the kernel cannot negate.
    let wb = BlockQ4_0 { d: half(1.0), qs: [0x00; QK / 2] };
    let xb = activation_block(1.0, [-128; QK]);
    // SAFETY: avx2_runs checked AVX2 and F16C.
    let sum = unsafe { avx2::q4_0_block_sum(&wb, &xb) };
    assert_eq!(sum, 32 * 8 * 128);
}

/// Random little-endian f16 and f32 rows of `n` values in [-scale, scale].
fn random_float_rows(rng: &mut Lcg, n: usize, scale: f32) -> (Vec<u8>, Vec<u8>) {
    let values: Vec<f32> = (0..n).map(|_| rng.unit() * scale).collect();
    let f16_row = values.iter().flat_map(|&v| half(v)).collect();
    let f32_row = values.iter().flat_map(|&v| v.to_le_bytes()).collect();
    (f16_row, f32_row)
}

#[test]
fn float_random_rows_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(10);
    // Lengths below, at and above multiples of 8 and 32, so every tail path runs.
    for n in (0..=100).chain([127, 128, 129, 1000, 4096]) {
        let (f16_row, f32_row) = random_float_rows(&mut rng, n, 4.0);
        let x: Vec<f32> = (0..n).map(|_| rng.unit() * 3.0).collect();
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let (simd_f16, simd_f32) = unsafe { (avx2::dot_f16(&f16_row, &x), avx2::dot_f32(&f32_row, &x)) };
        assert_same_bits(simd_f16, kernels::dot_f16(&f16_row, &x), &format!("f16, length {n}"));
        assert_same_bits(simd_f32, kernels::dot_f32(&f32_row, &x), &format!("f32, length {n}"));
    }
}

#[test]
fn float_unequal_lengths_use_shorter() {
    if !avx2_runs() {
        return;
    }
    let mut rng = Lcg(11);
    for (weights, inputs) in [(40, 37), (37, 40), (64, 0), (0, 64), (33, 70)] {
        let (f16_row, f32_row) = random_float_rows(&mut rng, weights, 1.0);
        let x: Vec<f32> = (0..inputs).map(|_| rng.unit()).collect();
        let case = format!("{weights} weights, {inputs} inputs");
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let (simd_f16, simd_f32) = unsafe { (avx2::dot_f16(&f16_row, &x), avx2::dot_f32(&f32_row, &x)) };
        assert_same_bits(simd_f16, kernels::dot_f16(&f16_row, &x), &case);
        assert_same_bits(simd_f32, kernels::dot_f32(&f32_row, &x), &case);
    }
}

#[test]
fn float_extremes_equal_scalar() {
    if !avx2_runs() {
        return;
    }
    // The largest and smallest half floats, zeros of both signs, and f32 values whose products
    // overflow to infinity or fall into the subnormal range.
    let f16_values = [65504.0f32, -65504.0, 5.96e-8, -5.96e-8, 0.0, -0.0, 6.1e-5, 1.0];
    let f32_values = [3.0e38f32, -3.0e38, 1.0e-45, -1.0e-45, 0.0, -0.0, 1.2e-38, 1.0];
    let inputs = [1.0e34f32, -1.0e34, 1.0e-40, 0.0, -0.0, 2.0, -1.0, 3.0e38];
    for n in [1, 7, 8, 9, 31, 32, 33, 70] {
        for shift in 0..inputs.len() {
            let x: Vec<f32> = (0..n).map(|i| inputs[(i + shift) % inputs.len()]).collect();
            let f16_row: Vec<u8> = (0..n).flat_map(|i| half(f16_values[i % f16_values.len()])).collect();
            let f32_row: Vec<u8> = (0..n).flat_map(|i| f32_values[(i * 3) % f32_values.len()].to_le_bytes()).collect();
            let scalar_f16 = kernels::dot_f16(&f16_row, &x);
            let scalar_f32 = kernels::dot_f32(&f32_row, &x);
            // SAFETY: avx2_runs checked AVX2 and F16C.
            let (simd_f16, simd_f32) = unsafe { (avx2::dot_f16(&f16_row, &x), avx2::dot_f32(&f32_row, &x)) };
            // Infinite products of opposite signs make NaN here, which both paths must agree on.
            assert_eq!(simd_f16.is_nan(), scalar_f16.is_nan(), "f16, length {n}, shift {shift}");
            assert_eq!(simd_f32.is_nan(), scalar_f32.is_nan(), "f32, length {n}, shift {shift}");
            if !scalar_f16.is_nan() {
                assert_same_bits(simd_f16, scalar_f16, &format!("f16, length {n}, shift {shift}"));
            }
            if !scalar_f32.is_nan() {
                assert_same_bits(simd_f32, scalar_f32, &format!("f32, length {n}, shift {shift}"));
            }
        }
    }
}

#[test]
fn float_negative_zero_products_sum_to_positive_zero() {
    if !avx2_runs() {
        return;
    }
    // Every product is -0. Both paths start their partial sums at +0, so the result is +0.
    for n in [1, 5, 32, 40] {
        let f16_row: Vec<u8> = (0..n).flat_map(|_| half(-0.0)).collect();
        let f32_row: Vec<u8> = (0..n).flat_map(|_| (-0.0f32).to_le_bytes()).collect();
        let x = vec![1.0f32; n];
        // SAFETY: avx2_runs checked AVX2 and F16C.
        let (simd_f16, simd_f32) = unsafe { (avx2::dot_f16(&f16_row, &x), avx2::dot_f32(&f32_row, &x)) };
        assert_eq!(simd_f16.to_bits(), 0, "f16, length {n}");
        assert_eq!(simd_f32.to_bits(), 0, "f32, length {n}");
        assert_eq!(kernels::dot_f16(&f16_row, &x).to_bits(), 0, "scalar f16, length {n}");
        assert_eq!(kernels::dot_f32(&f32_row, &x).to_bits(), 0, "scalar f32, length {n}");
    }
}

/// Builds a random matrix of `rows` rows of `cols` elements in `ggml_type`.
fn random_matrix(rng: &mut Lcg, ggml_type: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    match ggml_type {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            let bytes = ggml_type.row_bytes(n as u64).unwrap() as usize;
            let mut data: Vec<u8> = (0..bytes).map(|_| rng.byte()).collect();
            // Replace the random scales with ordinary ones, so that no scale is NaN or infinite.
            let block = ggml_type.block_bytes() as usize;
            let scale_bytes = if ggml_type == GgmlType::Q4_1 { 4 } else { 2 };
            for chunk in data.chunks_exact_mut(block) {
                for scale in chunk[..scale_bytes].chunks_exact_mut(2) {
                    scale.copy_from_slice(&half(rng.unit() * 0.05));
                }
            }
            data
        }
        GgmlType::F16 => random_float_rows(rng, n, 1.0).0,
        GgmlType::F32 => random_float_rows(rng, n, 1.0).1,
        other => panic!("no random matrix for type {other}"),
    }
}

#[test]
fn matvec_avx2_equals_scalar_across_thread_counts() {
    let Some(avx2_kernels) = Kernels::avx2() else {
        eprintln!("skipped: this CPU lacks AVX2 or F16C");
        return;
    };
    let mut rng = Lcg(12);
    let (rows, cols) = (67, 256);
    let x = Activation::new((0..cols).map(|_| rng.unit() * 2.0).collect());
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three_threads = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();

    for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32] {
        let data = random_matrix(&mut rng, ggml_type, rows, cols);
        let matrix = MatRef::new(ggml_type, rows, cols, &data);
        let mut scalar = vec![0.0f32; rows];
        let mut simd = vec![0.0f32; rows];
        one_thread.install(|| matrix.matvec_with(Kernels::scalar(), &x, &mut scalar));
        three_threads.install(|| matrix.matvec_with(avx2_kernels, &x, &mut simd));

        for (r, (&s, &v)) in scalar.iter().zip(&simd).enumerate() {
            assert_same_bits(v, s, &format!("{ggml_type} row {r}"));
        }
    }
}
