//! Bandwidth of the f32 skinny GEMM (`host_f32`) on a weight larger than the caches:
//! `cargo run --release -p glm-quant --example gemv_bw -- [MiB] [k] [reps] [chunk MiB]`.
//! Prints GB/s of weight streamed for m = 1, 2, 4, 8 activation rows. With a chunk size, the
//! weight is run as consecutive matrices of that size (like a decode step's per-layer linears,
//! each coming from DRAM once per step).

use std::time::Instant;

use glm_quant::kernels::host_f32::gemv_f32;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let mib = args.next().flatten().unwrap_or(1024);
    let k = args.next().flatten().unwrap_or(1024);
    let reps = args.next().flatten().unwrap_or(10);
    let chunk = args.next().flatten().unwrap_or(mib);
    let n = mib * 1024 * 1024 / 4 / k;
    let chunk_rows = (chunk * 1024 * 1024 / 4 / k).clamp(1, n);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 251) as f32 * 1e-3).collect();
    for m in [1usize, 2, 4, 8] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
        let mut best = f64::INFINITY;
        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            for part in w.chunks(chunk_rows * k) {
                let y = gemv_f32(&x, part, None, m, part.len() / k, k).expect("shapes");
                std::hint::black_box(y);
            }
            let s = t.elapsed().as_secs_f64();
            best = best.min(s);
            times.push(s);
        }
        times.sort_by(f64::total_cmp);
        let bytes = (n * k * 4) as f64;
        println!(
            "m={m} n={n} k={k}: median {:.2} GB/s, best {:.2} GB/s",
            bytes / times[times.len() / 2] / 1e9,
            bytes / best / 1e9
        );
    }
}
