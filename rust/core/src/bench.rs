//! Throughput measurements for benchmarks: the memory read bandwidth of this machine, the
//! bytes of weights per second that the matrix-vector product reads, and (in [`disk`]) the
//! read bandwidth of the disk under a model file.
//!
//! The memory and matrix-vector measurements each run on a rayon pool of their own with the
//! requested number of threads. So their figures can be compared with each other and with the
//! decode speed of a model opened with the same thread count. Random matrices come from [`random_matrix`], which the `matvec_throughput`
//! example uses too.

mod disk;

use std::time::Instant;

use rayon::prelude::*;

pub use disk::{disk_read_bandwidth, DiskReadBandwidth, DEFAULT_DISK_BYTES, DISK_RANGE_BYTES};

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::quant::{Activation, GgmlType, Isa, Kernels, MatRef};

/// Default buffer size of [`memory_read_bandwidth`]: 1 GiB, above the last-level cache of most
/// CPUs, so most reads come from RAM. A CPU whose cache comes near that needs a larger buffer.
pub const DEFAULT_BANDWIDTH_BYTES: usize = 1 << 30;

/// Timed passes over the buffer in [`memory_read_bandwidth`]. The fastest one is reported.
const BANDWIDTH_PASSES: usize = 5;

/// Products timed at least, however long each takes.
const MIN_PRODUCTS: usize = 3;

/// Alignment of a random matrix, as for tensor data read from a GGUF file.
const MATRIX_ALIGN: usize = 64;

/// Measures how fast `threads` threads read a buffer of `bytes` bytes from memory, in bytes/s.
///
/// The buffer is written once, which maps its pages, and read once untimed. Then each of 5
/// passes splits it into one contiguous part per thread and sums the 64-bit words of each part.
/// The sums are kept alive with [`std::hint::black_box`], so the compiler cannot drop the
/// reads. Returns the fastest pass, the least disturbed by other work on the machine.
///
/// Pass `bytes` well above the last-level cache, such as [`DEFAULT_BANDWIDTH_BYTES`], to measure
/// RAM rather than cache. Returns `Error::InvalidArgument` when `threads` is 0, when `bytes` is
/// below 8 bytes per thread, or when the buffer cannot be allocated.
pub fn memory_read_bandwidth(bytes: usize, threads: usize) -> Result<f64> {
    let pool = thread_pool(threads)?;
    let n_words = bytes / 8;
    if n_words < threads {
        return Err(Error::InvalidArgument(format!(
            "the bandwidth buffer needs at least 8 bytes per thread: {bytes} bytes for {threads} threads"
        )));
    }

    let mut words: Vec<u64> = Vec::new();
    words.try_reserve_exact(n_words).map_err(|e| {
        Error::InvalidArgument(format!("failed to allocate {bytes} bytes for the bandwidth buffer ({e}); pass a smaller size"))
    })?;
    // Writing every word maps every page, so the timed passes take no page faults and read real
    // memory, not the kernel's shared zero page.
    pool.install(|| (0..n_words).into_par_iter().map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect_into_vec(&mut words));

    let part = n_words.div_ceil(threads);
    let read_all = || pool.install(|| words.par_chunks(part).map(sum_words).reduce(|| 0, u64::wrapping_add));
    std::hint::black_box(read_all());

    let mut best = f64::INFINITY;
    for _ in 0..BANDWIDTH_PASSES {
        let start = Instant::now();
        std::hint::black_box(read_all());
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok((n_words * 8) as f64 / best)
}

/// Sums `words` with wrapping adds in 8 independent lanes, which the compiler turns into vector
/// adds even for the x86-64 baseline (SSE2), so the loop is not limited to one add per word.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &word) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(word);
        }
    }
    lanes.iter().chain(rest).fold(0, |sum, &word| sum.wrapping_add(word))
}

/// Timing of repeated matrix-vector products over one matrix.
#[derive(Clone, Debug)]
pub struct MatvecThroughput {
    /// Weight type of the matrix.
    pub ggml_type: GgmlType,
    /// Matrix rows (output length).
    pub rows: usize,
    /// Matrix columns (input length).
    pub cols: usize,
    /// Threads of the pool that ran the products.
    pub threads: usize,
    /// Bytes of weights one product reads.
    pub matrix_bytes: usize,
    /// Instruction set of the kernels that ran.
    pub isa: Isa,
    /// Products timed, after one untimed product.
    pub products: usize,
    /// Time of the fastest product, in seconds.
    pub best_s: f64,
    /// Median time of one product, in seconds.
    pub median_s: f64,
}

impl MatvecThroughput {
    /// Bytes of weights per second in the fastest product.
    pub fn best_bytes_per_s(&self) -> f64 {
        self.matrix_bytes as f64 / self.best_s
    }

    /// Bytes of weights per second in the median product.
    pub fn median_bytes_per_s(&self) -> f64 {
        self.matrix_bytes as f64 / self.median_s
    }
}

/// Times `MatRef::matvec`, with the kernels of [`Kernels::selected`], on a random `rows` x
/// `cols` matrix of `ggml_type` and `threads` threads, for at least `min_seconds` and at least
/// 3 products.
///
/// Every product reads the same matrix with the same input. So a matrix that fits in the CPU
/// caches measures the kernels, and one several times larger than the last-level cache measures
/// the kernels fed from RAM. Returns `Error::InvalidArgument` for a type without a kernel, a
/// zero size or thread count, `cols` not a multiple of 32, a negative or non-finite
/// `min_seconds`, or a matrix that cannot be allocated.
pub fn matvec_throughput(ggml_type: GgmlType, rows: usize, cols: usize, threads: usize, min_seconds: f64) -> Result<MatvecThroughput> {
    if !ggml_type.is_supported() {
        return Err(Error::InvalidArgument(format!("type {ggml_type} has no kernel; expected Q4_0, Q4_1, Q8_0, F16 or F32")));
    }
    if rows == 0 || cols == 0 || cols % 32 != 0 {
        return Err(Error::InvalidArgument(format!(
            "a {rows} x {cols} matrix is invalid: rows must be positive and cols a positive multiple of 32"
        )));
    }
    if !(min_seconds.is_finite() && min_seconds >= 0.0) {
        return Err(Error::InvalidArgument(format!("min_seconds must be a finite number >= 0, not {min_seconds}")));
    }
    let pool = thread_pool(threads)?;

    // Filled on rayon's global pool, which uses every core, to keep setup short with 1 thread.
    let data = random_matrix(ggml_type, rows, cols, 42)?;
    let matrix = MatRef::new(ggml_type, rows, cols, &data);
    let mut rng = Lcg(7);
    let x = Activation::new((0..cols).map(|_| rng.unit()).collect());
    let mut out = vec![0.0f32; rows];
    pool.install(|| matrix.matvec(&x, &mut out));

    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < MIN_PRODUCTS || started.elapsed().as_secs_f64() < min_seconds {
        let start = Instant::now();
        pool.install(|| matrix.matvec(&x, &mut out));
        times.push(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    times.sort_by(f64::total_cmp);

    Ok(MatvecThroughput {
        ggml_type,
        rows,
        cols,
        threads,
        matrix_bytes: data.len(),
        isa: Kernels::selected().isa(),
        products: times.len(),
        best_s: times[0],
        median_s: times[times.len() / 2],
    })
}

/// Returns random weights for a `rows` x `cols` matrix of a supported `ggml_type`, filled in
/// parallel on the current rayon pool. Quants are uniform random bytes and scales are normal
/// f16 values of magnitude in [2^-12, 2^-5), so every product is finite. Float types get values in
/// [-1, 1). The same arguments always give the same bytes.
///
/// # Panics
/// If the type has no kernel or `cols` is not a whole number of blocks.
pub fn random_matrix(ggml_type: GgmlType, rows: usize, cols: usize, seed: u64) -> Result<AlignedBuf> {
    assert!(ggml_type.is_supported(), "random_matrix: type {ggml_type} has no kernel");
    let row_bytes = ggml_type.row_bytes(cols as u64).expect("cols is a whole number of blocks") as usize;
    let n_bytes = row_bytes.checked_mul(rows).ok_or_else(|| Error::InvalidArgument(format!("a {rows} x {cols} matrix is too large")))?;
    let mut data = AlignedBuf::new(n_bytes, MATRIX_ALIGN)
        .ok_or_else(|| Error::InvalidArgument(format!("failed to allocate {n_bytes} bytes for a {rows} x {cols} {ggml_type} matrix")))?;

    data.par_chunks_mut(row_bytes).enumerate().for_each(|(r, row)| {
        let mut rng = Lcg(seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        fill_row(ggml_type, row, &mut rng);
    });
    Ok(data)
}

fn fill_row(ggml_type: GgmlType, row: &mut [u8], rng: &mut Lcg) {
    if ggml_type == GgmlType::F16 {
        for element in row.chunks_exact_mut(2) {
            element.copy_from_slice(&half(rng.unit()));
        }
        return;
    }
    if ggml_type == GgmlType::F32 {
        for element in row.chunks_exact_mut(4) {
            element.copy_from_slice(&rng.unit().to_le_bytes());
        }
        return;
    }

    let mut words = row.chunks_exact_mut(4);
    for word in &mut words {
        word.copy_from_slice(&rng.next_u32().to_le_bytes());
    }
    for byte in words.into_remainder() {
        *byte = rng.next_u32() as u8;
    }
    // q4_1 blocks start with two f16 fields (d and m), q4_0 and q8_0 blocks with one (d).
    let scale_bytes = if ggml_type == GgmlType::Q4_1 { 4 } else { 2 };
    for block in row.chunks_exact_mut(ggml_type.block_bytes() as usize) {
        for scale in block[..scale_bytes].chunks_exact_mut(2) {
            scale.copy_from_slice(&random_scale(rng));
        }
    }
}

/// Returns the bits of a random normal f16 of either sign and magnitude in [2^-12, 2^-5). The
/// bits are built directly, with no f32 conversion.
fn random_scale(rng: &mut Lcg) -> [u8; 2] {
    let bits = rng.next_u32();
    let sign = (bits >> 31) << 15;
    // Biased exponents 3 to 9 are 2^-12 to 2^-6.
    let exponent = 3 + (bits >> 16) % 7;
    let mantissa = bits & 0x3ff;
    ((sign | exponent << 10 | mantissa) as u16).to_le_bytes()
}

fn half(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// A 64-bit linear congruential generator: deterministic random numbers without an extra crate.
pub struct Lcg(pub u64);

impl Lcg {
    /// Returns the next 32 random bits (the high half of the state).
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    /// Returns a value uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    if threads == 0 {
        return Err(Error::InvalidArgument("threads must be at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("failed to start {threads} threads: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_words_adds_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 231);
        assert_eq!(sum_words(&[u64::MAX, 2]), 1);
        assert_eq!(sum_words(&[]), 0);
    }

    #[test]
    fn bandwidth_of_small_buffer_is_positive() {
        let bytes_per_s = memory_read_bandwidth(1 << 20, 2).unwrap();
        assert!(bytes_per_s.is_finite());
        assert!(bytes_per_s > 0.0);
    }

    #[test]
    fn bandwidth_rejects_bad_arguments() {
        assert!(matches!(memory_read_bandwidth(1 << 20, 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(memory_read_bandwidth(8, 2), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn random_matrix_is_deterministic_with_finite_scales() {
        for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32] {
            let a = random_matrix(ggml_type, 5, 64, 1).unwrap();
            let b = random_matrix(ggml_type, 5, 64, 1).unwrap();
            assert_eq!(a.len(), 5 * ggml_type.row_bytes(64).unwrap() as usize);
            assert_eq!(&a[..], &b[..], "{ggml_type}");

            let mut values = vec![0.0f32; 5 * 64];
            crate::quant::dequantize(ggml_type, &a, &mut values);
            assert!(values.iter().all(|v| v.is_finite()), "{ggml_type}");
            assert!(values.iter().any(|&v| v != 0.0), "{ggml_type}");
        }
    }

    #[test]
    fn matvec_throughput_counts_matrix_bytes() {
        let result = matvec_throughput(GgmlType::Q4_1, 48, 256, 2, 0.0).unwrap();
        assert_eq!(result.matrix_bytes, 48 * GgmlType::Q4_1.row_bytes(256).unwrap() as usize);
        assert_eq!(result.products, MIN_PRODUCTS);
        assert!(result.best_s > 0.0);
        assert!(result.best_s <= result.median_s);
        assert!(result.best_bytes_per_s() >= result.median_bytes_per_s());
    }

    #[test]
    fn matvec_throughput_rejects_bad_arguments() {
        let invalid = |r: Result<MatvecThroughput>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(invalid(matvec_throughput(GgmlType(10), 16, 256, 1, 0.0)));
        assert!(invalid(matvec_throughput(GgmlType::Q4_0, 0, 256, 1, 0.0)));
        assert!(invalid(matvec_throughput(GgmlType::Q4_0, 16, 100, 1, 0.0)));
        assert!(invalid(matvec_throughput(GgmlType::Q4_0, 16, 256, 0, 0.0)));
        assert!(invalid(matvec_throughput(GgmlType::Q4_0, 16, 256, 1, f64::NAN)));
        assert!(invalid(matvec_throughput(GgmlType::Q4_0, 16, 256, 1, -1.0)));
    }
}
