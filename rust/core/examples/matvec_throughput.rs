//! Measures matrix-vector throughput of the scalar and AVX2 kernels, in GB/s of weight bytes.
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo run --release -p mer-core --example matvec_throughput -- \
//!     [--rows N] [--cols N] [--threads N] [--type q4_0|q4_1|q8_0|f16|f32]
//! ```
//!
//! The defaults are a 4096 x 4096 matrix, one thread and every type. Each type gets a random
//! matrix (random quants, ordinary scales). Each kernel set is timed over repeated products with
//! the same input, so a matrix that fits in the CPU caches is read from there, and the numbers
//! then measure the kernels rather than the RAM. The example also checks that both kernel sets
//! return the same bits.

use std::time::{Duration, Instant};

use mer_core::bench::{random_matrix, Lcg};
use mer_core::quant::{Activation, GgmlType, Kernels, MatRef};

/// Minimum time spent timing one kernel set on one type.
const MEASURE_TIME: Duration = Duration::from_millis(1500);

const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32];

struct Options {
    rows: usize,
    cols: usize,
    threads: usize,
    types: Vec<GgmlType>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options { rows: 4096, cols: 4096, threads: 1, types: TYPES.to_vec() };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--type" {
            let ggml_type = TYPES.into_iter().find(|t| t.name().eq_ignore_ascii_case(&value));
            options.types = vec![ggml_type.ok_or_else(|| format!("--type: unknown type {value:?}"))?];
            continue;
        }
        let number: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a positive integer"))?;
        match flag.as_str() {
            "--rows" => options.rows = number,
            "--cols" => options.cols = number,
            "--threads" => options.threads = number,
            _ => return Err(format!("unknown option {flag}; expected --rows, --cols, --threads or --type")),
        }
    }
    if options.rows == 0 || options.threads == 0 || options.cols == 0 || options.cols % 32 != 0 {
        return Err("rows and threads must be positive, and cols a positive multiple of 32".to_string());
    }
    Ok(options)
}

/// Runs `matrix * x` with `kernels` for at least `MEASURE_TIME`, and returns the median time of
/// one product and the last output.
fn time_matvec(matrix: &MatRef, kernels: Kernels, x: &Activation) -> (Duration, Vec<f32>) {
    let mut out = vec![0.0f32; matrix.rows];
    for _ in 0..3 {
        matrix.matvec_with(kernels, x, &mut out);
    }

    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < MEASURE_TIME || times.len() < 5 {
        let start = Instant::now();
        matrix.matvec_with(kernels, x, &mut out);
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], out)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(options.threads).build().expect("rayon pool");
    let mut kernel_sets = vec![Kernels::scalar()];
    match Kernels::avx2() {
        Some(avx2) => kernel_sets.push(avx2),
        None => eprintln!("this CPU lacks AVX2 or F16C: timing the scalar kernels only"),
    }

    println!("{} x {} matrix, {} thread(s), median of repeated products", options.rows, options.cols, options.threads);
    println!("{:<6} {:<7} {:>10} {:>9} {:>8}  same bits as scalar", "type", "kernels", "time", "GB/s", "speedup");

    let mut rng = Lcg(42);
    let x = Activation::new((0..options.cols).map(|_| rng.unit()).collect());
    for &ggml_type in &options.types {
        let data = match random_matrix(ggml_type, options.rows, options.cols, 42) {
            Ok(data) => data,
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        };
        let matrix = MatRef::new(ggml_type, options.rows, options.cols, &data);

        let mut scalar: Option<(Duration, Vec<f32>)> = None;
        for &kernels in &kernel_sets {
            let (time, out) = pool.install(|| time_matvec(&matrix, kernels, &x));
            let gb_per_s = data.len() as f64 / time.as_secs_f64() / 1e9;
            let (speedup, same) = match &scalar {
                None => (1.0, "-".to_string()),
                Some((scalar_time, scalar_out)) => {
                    let same = out.iter().zip(scalar_out).all(|(a, b)| a.to_bits() == b.to_bits());
                    (scalar_time.as_secs_f64() / time.as_secs_f64(), if same { "yes" } else { "NO" }.to_string())
                }
            };
            println!(
                "{:<6} {:<7} {:>8.3}ms {:>9.2} {:>7.2}x  {same}",
                ggml_type.name(),
                kernels.isa().to_string(),
                time.as_secs_f64() * 1e3,
                gb_per_s,
                speedup
            );
            if scalar.is_none() {
                scalar = Some((time, out));
            }
        }
    }
}
