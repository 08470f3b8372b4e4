//! Decode-step benchmark of float32 vs INT8 vs INT4 GLM models on the CPU backend, printing one
//! JSON line per (config, weights) plus a machine line, and a markdown table on stderr.
//!
//! ```text
//! cargo run --release -p glm-quant --example bench_decode -- [--configs DIR] [--only glm-small]
//!     [--prompt 128] [--steps 32] [--reps 3]
//! ```
//! Models: `<DIR>/<name>/config.json` for glm-small and glm-base (default DIR:
//! `GLM_BENCH_CONFIGS`, else `../shared/bench/configs` from the workspace root), random weights
//! (`GlmModel::random`, seed 7); the quantized models quantize the same weights.
//! One decode step = one token through the KV cache after a `prompt`-token prefill; the figure is
//! the median step time over `steps × reps` steps. Achieved bandwidth = weight bytes / step time
//! (a batch-1 step streams every weight once) against this machine's read bandwidth measured here
//! and the reference figure in `shared/bench/membw.jsonl`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use glm_core::quantized::QuantizeOptions;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_quant::kernels::host::simd_level;
use rayon::prelude::*;

type B = Flex;

struct Args {
    configs: PathBuf,
    only: Option<String>,
    prompt: usize,
    steps: usize,
    reps: usize,
}

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn parse_args() -> Args {
    let default =
        std::env::var("GLM_BENCH_CONFIGS").unwrap_or_else(|_| "../shared/bench/configs".into());
    let mut args = Args {
        configs: workspace().join(default),
        only: None,
        prompt: 128,
        steps: 32,
        reps: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--configs" => args.configs = PathBuf::from(val()),
            "--only" => args.only = Some(val()),
            "--prompt" => args.prompt = val().parse().expect("--prompt N"),
            "--steps" => args.steps = val().parse().expect("--steps N"),
            "--reps" => args.reps = val().parse().expect("--reps N"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Best-of-5 read bandwidth (GB/s) over a 512 MiB f32 array with `threads` threads.
fn read_bandwidth(threads: usize) -> f64 {
    let n = 128 << 20;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = pool.install(|| {
            data.par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0f32; 16];
                    for ch in c.chunks_exact(16) {
                        for k in 0..16 {
                            acc[k] += ch[k];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum()
        });
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn reference_bandwidth() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(workspace().join("../shared/bench/membw.jsonl")).ok()?;
    let last: serde_json::Value =
        serde_json::from_str(text.lines().rev().find(|l| !l.trim().is_empty())?).ok()?;
    Some((
        last["roofline_bandwidth_GBps"].as_f64()?,
        last["gemv_bandwidth_GBps"].as_f64().unwrap_or(f64::NAN),
    ))
}

/// Prompt ids as the reference bench builds them (RNG-free).
fn prompt(config: &GlmConfig, len: usize) -> Vec<i64> {
    let text = config.special_tokens.mask.min(config.special_tokens.gmask) as i64;
    let mut ids: Vec<i64> = (0..len.saturating_sub(2) as i64)
        .map(|i| 10 + ((i * 7919 + 13) % (text - 10)))
        .collect();
    ids.push(config.special_tokens.gmask as i64);
    ids.push(config.special_tokens.sop as i64);
    ids
}

/// Median decode-step time (ms) over `reps` generations of `steps` tokens after a prefill.
fn decode_ms(model: &GlmModel<B>, ids: &[i64], steps: usize, reps: usize) -> (f64, f64) {
    let device = Default::default();
    let p = ids.len();
    let mut times = Vec::new();
    let mut prefill = Vec::new();
    for rep in 0..reps + 1 {
        let mut cache = model.new_cache();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, p]), &device);
        let pos = Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..p as i64).collect::<Vec<_>>(), [1, p]),
            &device,
        );
        // Bidirectional prefix, causal from <sop> (the last prompt token) on.
        let mask: Vec<bool> = (0..p)
            .flat_map(|i| (0..p).map(move |j| j == p - 1 && i < p - 1))
            .collect();
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [1, 1, p, p]), &device);
        let t = Instant::now();
        let logits = model
            .forward_cached(tokens, pos, mask, &mut cache)
            .expect("forward");
        let mut next = logits.narrow(1, p - 1, 1).argmax(2).reshape([1, 1]);
        let _ = next.to_data();
        if rep > 0 {
            prefill.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for s in 0..steps {
            let t = Instant::now();
            let pos = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![(p + s) as i64], [1, 1]),
                &device,
            );
            let mask = Tensor::<B, 4, Bool>::from_data(
                TensorData::new(vec![false; p + s + 1], [1, 1, 1, p + s + 1]),
                &device,
            );
            let logits = model
                .forward_cached(next, pos, mask, &mut cache)
                .expect("forward");
            next = logits.argmax(2).reshape([1, 1]);
            let _ = next.to_data(); // sync: the step is done when the token is known
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (median(&mut times), median(&mut prefill))
}

fn main() {
    let args = parse_args();
    let threads = rayon::current_num_threads();
    let bw1 = read_bandwidth(1);
    let bw = read_bandwidth(threads).max(bw1);
    let reference = reference_bandwidth();
    let machine = serde_json::json!({
        "bench": "glm-quant decode machine",
        "threads": threads,
        "simd": simd_level(),
        "read_bandwidth_GBps_1t": (bw1 * 100.0).round() / 100.0,
        "read_bandwidth_GBps": (bw * 100.0).round() / 100.0,
        "reference_membw_jsonl": reference.map(|(r, g)| serde_json::json!({"roofline_GBps": r, "gemv_GBps": g})),
    });
    println!("{machine}");
    let mut table = vec![
        "| config | weights | weight MB | decode step ms | tok/s | prefill ms | achieved GB/s | % of measured read BW | speed-up vs f32 |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for name in ["glm-small", "glm-base"] {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let path = args.configs.join(name).join("config.json");
        let config =
            GlmConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ids = prompt(&config, args.prompt);
        let device = Default::default();
        let mut f32_ms = f64::NAN;
        for weights in ["f32", "int8", "int4"] {
            let model = GlmModel::<B>::random(&config, &device, ModelOptions::default(), 7)
                .expect("random model");
            let model = match weights {
                "f32" => model,
                w => model
                    .quantize(
                        QuantizeOptions::from_bits(if w == "int8" { 8 } else { 4 }).expect("bits"),
                    )
                    .expect("quantize"),
            };
            let bytes = model.weight_bytes();
            let (step, prefill) = decode_ms(&model, &ids, args.steps, args.reps);
            if weights == "f32" {
                f32_ms = step;
            }
            let gbps = bytes as f64 / (step / 1e3) / 1e9;
            let line = serde_json::json!({
                "bench": "glm-quant decode",
                "config": name,
                "weights": weights,
                "weight_bytes": bytes,
                "prompt": args.prompt,
                "steps": args.steps,
                "reps": args.reps,
                "decode_step_ms_median": (step * 1000.0).round() / 1000.0,
                "decode_tokens_per_s": (1000.0 / step * 100.0).round() / 100.0,
                "prefill_ms_median": (prefill * 100.0).round() / 100.0,
                "achieved_GBps": (gbps * 100.0).round() / 100.0,
                "fraction_of_read_bandwidth": (gbps / bw * 1000.0).round() / 1000.0,
                "speedup_vs_f32": (f32_ms / step * 100.0).round() / 100.0,
            });
            println!("{line}");
            table.push(format!(
                "| {name} | {weights} | {:.1} | {step:.2} | {:.1} | {prefill:.1} | {gbps:.2} | {:.0}% | {:.2}x |",
                bytes as f64 / 1e6,
                1000.0 / step,
                100.0 * gbps / bw,
                f32_ms / step
            ));
        }
    }
    eprintln!(
        "\nthreads {threads}, SIMD {}, measured read bandwidth {bw:.2} GB/s (1 thread {bw1:.2}){}\n{}",
        simd_level(),
        reference.map_or(String::new(), |(r, g)| format!(", membw.jsonl reference: roofline {r} GB/s, fp32 GEMV {g} GB/s")),
        table.join("\n")
    );
}
