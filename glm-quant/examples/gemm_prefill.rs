//! GFLOP/s of the prefill GEMM (`host_gemm`) on a model's linear shapes, against OpenBLAS with
//! `--features openblas`:
//! `cargo run --release -p glm-quant --features openblas --example gemm_prefill -- [hidden] [inner] [vocab] [rows…]`
//! (defaults: glm-small, 128 and 512 rows). One "pass" runs the four linears of a layer and the
//! LM head once, as a prefill does per layer.

use std::time::Instant;

use glm_quant::kernels::host::simd_level;
use glm_quant::kernels::host_gemm::gemm_f32;

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (h, inner, vocab) = match args.as_slice() {
        [h, i, v, ..] => (*h, *i, *v),
        _ => (512, 1365, 8192),
    };
    let rows: Vec<usize> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        vec![128, 512]
    };
    println!(
        "kernels: {}, threads {}",
        simd_level(),
        rayon::current_num_threads()
    );
    // (n, k) of qkv, dense, h→4h, 4h→h, LM head.
    let shapes = [(3 * h, h), (h, h), (2 * inner, h), (h, inner), (vocab, h)];
    let weights: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(n, k)| {
            (0..n * k)
                .map(|i| ((i % 251) as f32 - 125.0) * 1e-3)
                .collect()
        })
        .collect();
    for &m in &rows {
        for (s, &(n, k)) in shapes.iter().enumerate() {
            let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
            let flop = 2.0 * (m * n * k) as f64;
            let w = &weights[s];
            let ours = median_secs(15, || {
                std::hint::black_box(gemm_f32(&x, w, None, m, n, k).expect("shapes"));
            });
            print!(
                "m={m:4} n={n:5} k={k:5}: ours {:6.1} GFLOP/s",
                flop / ours / 1e9
            );
            // The decode kernel on the same product, for the row counts it takes.
            if m <= glm_quant::kernels::host_f32::F32_GEMV_MAX_ROWS {
                let skinny = median_secs(15, || {
                    std::hint::black_box(
                        glm_quant::kernels::host_f32::gemv_f32(&x, w, None, m, n, k)
                            .expect("shapes"),
                    );
                });
                print!("   skinny {:6.1} GFLOP/s", flop / skinny / 1e9);
            }
            #[cfg(feature = "openblas")]
            {
                let blas = median_secs(15, || {
                    std::hint::black_box(
                        glm_quant::kernels::blas::sgemm_nt(&x, w, None, m, n, k).expect("shapes"),
                    );
                });
                print!(
                    "   openblas {:6.1} GFLOP/s   ours/openblas {:.2}",
                    flop / blas / 1e9,
                    blas / ours
                );
            }
            println!();
        }
    }
}
