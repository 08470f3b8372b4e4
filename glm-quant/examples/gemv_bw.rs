//! Bandwidth of the host skinny kernels on a weight larger than the caches:
//! `cargo run --release -p glm-quant --example gemv_bw -- [MiB] [k] [reps] [chunk MiB]`.
//!
//! Prints GB/s of weight bytes streamed (as stored: 4 bytes per f32 value, 1 per int8, ½ per
//! int4, scales not counted) for the f32 skinny GEMM (`host_f32`, m = 1 to 16 activation rows;
//! with `--features openblas` also OpenBLAS on the same products)
//! and the fused INT8 / INT4 kernels (`host`, m = 1 and 4). `MiB` is the f32 weight's size; the
//! quantized matrices have the same shape. With a chunk size, the weight is run as consecutive
//! matrices of that size (like a decode step's per-layer linears, each coming from DRAM once per
//! step).

use std::time::Instant;

use glm_quant::kernels::host::{host_gemv, simd_level, HostMatrix};
use glm_quant::kernels::host_f32::gemv_f32;
use glm_quant::{QuantLayout, QuantScheme};

/// Median and best GB/s of `reps` runs of `f` over `bytes` bytes.
fn measure(reps: usize, bytes: f64, mut f: impl FnMut()) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (bytes / times[times.len() / 2] / 1e9, bytes / times[0] / 1e9)
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let mib = args.next().flatten().unwrap_or(1024);
    let k = args.next().flatten().unwrap_or(1024);
    let reps = args.next().flatten().unwrap_or(10);
    let chunk = args.next().flatten().unwrap_or(mib);
    let n = mib * 1024 * 1024 / 4 / k;
    let chunk_rows = (chunk * 1024 * 1024 / 4 / k).clamp(1, n);
    println!("kernels: {}", simd_level());
    let w: Vec<f32> = (0..n * k).map(|i| (i % 251) as f32 * 1e-3).collect();
    for m in [1usize, 2, 4, 8, 12, 16] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
        let flop = 2.0 * (m * n * k) as f64;
        let (median, best) = measure(reps, (n * k * 4) as f64, || {
            for part in w.chunks(chunk_rows * k) {
                let y = gemv_f32(&x, part, None, m, part.len() / k, k).expect("shapes");
                std::hint::black_box(y);
            }
        });
        let gflops = median * flop / (n * k * 4) as f64;
        println!(
            "f32  m={m} n={n} k={k}: median {median:.2} GB/s ({gflops:.0} GFLOP/s), best {best:.2} GB/s"
        );
        // The same products through OpenBLAS (the path above F32_GEMV_MAX_ROWS).
        #[cfg(feature = "openblas")]
        {
            let (median, _) = measure(reps, (n * k * 4) as f64, || {
                for part in w.chunks(chunk_rows * k) {
                    let y =
                        glm_quant::kernels::blas::sgemm_nt(&x, part, None, m, part.len() / k, k)
                            .expect("shapes");
                    std::hint::black_box(y);
                }
            });
            let gflops = median * flop / (n * k * 4) as f64;
            println!("blas m={m} n={n} k={k}: median {median:.2} GB/s ({gflops:.0} GFLOP/s)");
        }
    }
    drop(w);
    for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
        let row_bytes = scheme.row_bytes(k);
        let bytes: Vec<u8> = (0..n * row_bytes)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let scales: Vec<f32> = (0..n).map(|i| 1e-3 * (1 + i % 7) as f32).collect();
        for m in [1usize, 4] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
            let (median, best) = measure(reps, (n * row_bytes) as f64, || {
                let mut first = 0;
                while first < n {
                    let rows = chunk_rows.min(n - first);
                    let layout = QuantLayout {
                        scheme,
                        out_features: rows,
                        in_features: k,
                        shards: 1,
                    };
                    let matrix = HostMatrix {
                        layout,
                        bytes: &bytes[first * row_bytes..(first + rows) * row_bytes],
                        row_stride: row_bytes,
                        scales: &scales[first..first + rows],
                    };
                    let mut y = vec![0f32; m * rows];
                    host_gemv(&matrix, &x, m, &mut y).expect("shapes");
                    std::hint::black_box(y);
                    first += rows;
                }
            });
            println!(
                "{:<4} m={m} n={n} k={k}: median {median:.2} GB/s, best {best:.2} GB/s",
                format!("{scheme:?}").to_lowercase()
            );
        }
    }
}
