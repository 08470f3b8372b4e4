//! Generation benchmark on the protocol of `shared/bench` (the original SAT GLM130B CPU reference),
//! so that the two can run back to back and be compared as ratios.
//!
//! ```text
//! cargo bench -p glm-infer --bench generation -- --config ../shared/bench/configs/glm-small/config.json \
//!     --weights ../shared/bench/weights/glm-small/model.safetensors \
//!     [--reference results.jsonl] [--membw membw.jsonl] [--out ours.jsonl] [--last-row-only]
//!     [--prompt-len P] [--new-tokens N] [--warmup W] [--reps R] [--no-batch4]
//!     [--format f32|int8|int4] [--tensor-parallel N]
//! cargo bench -p glm-infer --features openblas --bench generation -- …   # large prefill products through OpenBLAS
//! ```
//! One generation = the forward calls of GLM-130B's `batch_filling_sequence`: a prefill over the P
//! prompt tokens (LM head on all P rows like the original, unless `--last-row-only`) whose last
//! row gives token 1, then N−1 single-token KV-cache steps, greedy, no early stop. The prompt is
//! the reference's: `P−2` text ids `10 + ((i + 1000·b)·7919 + 13) mod (num_text_tokens − 10)`,
//! `[gMASK]`, `<sop>`; positions `0..`; bidirectional before `<sop>`, causal from it. P, N, warm-up,
//! reps and batch 4 default to the config's `bench` block. Prints one JSON line (fields named as
//! the reference's); with `--reference`, also the ratios against the reference line of the same
//! config and the first greedy-token mismatch (`[row, index]`, `null` when every row is identical).
//!
//! `--format int8|int4` quantizes the same float weights on load exactly as the original
//! (`--quantization-bit-width`). Every line also carries `bytes_per_decode_step` (what a batch-1
//! step must read: every linear weight as stored — integers + fp16 scales for int8/int4 — their
//! biases, the LayerNorms and the float LM head; the embedding lookup reads one row), the
//! achieved `b1_weight_GBps` and, with `--membw`, `b1_fraction_of_roofline`; and prefill
//! GFLOP/s (matmul FLOPs of the prefill: every linear, QKᵀ and PV, the LM head on the rows it
//! computes) beside `peak_gflops`, an FMA-throughput loop measured in the same run on all
//! threads (AVX-512 or AVX2 as the CPU has it).
//!
//! `--tensor-parallel N` splits the model over N ranks (threads on the one CPU, burn-collective
//! all-reduces, the vocabulary-parallel embedding): every rank runs the same generation, rank 0's
//! times are reported, and `allreduce_us` is the median time of one `[1, hidden]` all-reduce (two
//! per layer per decode step, plus the embedding's and the `[1, vocab]` logits gather).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use glm_core::parallel::{TensorParallel, TpLayout};
use glm_core::quantized::QuantizeOptions;
use glm_core::weights::SafetensorsFile;
use glm_core::{ForwardOptions, GlmConfig, GlmModel, ModelOptions};
use serde_json::{json, Value};

type B = Flex;

struct Args {
    config: PathBuf,
    weights: PathBuf,
    reference: Option<PathBuf>,
    membw: Option<PathBuf>,
    out: Option<PathBuf>,
    last_row_only: bool,
    prompt_len: Option<usize>,
    new_tokens: Option<usize>,
    warmup: Option<usize>,
    reps: Option<usize>,
    batch4: Option<bool>,
    format: String,
    tensor_parallel: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("generation bench: {msg}\n(see the header of glm-infer/benches/generation.rs)");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        config: PathBuf::new(),
        weights: PathBuf::new(),
        reference: None,
        membw: None,
        out: None,
        last_row_only: false,
        prompt_len: None,
        new_tokens: None,
        warmup: None,
        reps: None,
        batch4: None,
        format: "f32".into(),
        tensor_parallel: 1,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, flag: &str| -> usize {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--config" => a.config = it.next().map(PathBuf::from).unwrap_or_default(),
            "--weights" => a.weights = it.next().map(PathBuf::from).unwrap_or_default(),
            "--reference" => a.reference = it.next().map(PathBuf::from),
            "--membw" => a.membw = it.next().map(PathBuf::from),
            "--out" => a.out = it.next().map(PathBuf::from),
            "--last-row-only" => a.last_row_only = true,
            "--prompt-len" => a.prompt_len = Some(num(it.next(), "--prompt-len")),
            "--new-tokens" => a.new_tokens = Some(num(it.next(), "--new-tokens")),
            "--warmup" => a.warmup = Some(num(it.next(), "--warmup")),
            "--reps" => a.reps = Some(num(it.next(), "--reps")),
            "--no-batch4" => a.batch4 = Some(false),
            "--batch4" => a.batch4 = Some(true),
            "--format" => a.format = it.next().unwrap_or_default(),
            "--tensor-parallel" => a.tensor_parallel = num(it.next(), "--tensor-parallel"),
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.config.as_os_str().is_empty() || a.weights.as_os_str().is_empty() {
        usage("--config and --weights are required");
    }
    a
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Bytes a batch-1 decode step reads: every linear weight as stored (+ scales) and its bias, the
/// LayerNorms, the final LayerNorm and the float LM head (the tied embedding, all of it); the
/// embedding lookup reads one row.
fn decode_step_bytes(model: &GlmModel<B>) -> usize {
    let size = |t: &Tensor<B, 1>| t.shape().num_elements() * t.dtype().size();
    let embedding = model.word_embeddings.val();
    let [vocab, hidden] = embedding.dims();
    let mut bytes = (vocab + 1) * hidden * embedding.dtype().size();
    bytes += size(&model.final_layernorm.weight.val()) + size(&model.final_layernorm.bias.val());
    for layer in &model.layers {
        for (_, linear) in layer.linears() {
            bytes += linear.weight_bytes() + size(&linear.bias.val());
        }
        for ln in [&layer.input_layernorm, &layer.post_attention_layernorm] {
            bytes += size(&ln.weight.val()) + size(&ln.bias.val());
        }
    }
    bytes
}

/// Matmul FLOPs of a prefill of `batch × p` tokens: the four linears of every layer, QKᵀ and PV
/// over the full `p × p` score matrix (as the original computes it), and the LM head on all rows
/// (or the last one).
fn prefill_flops(config: &GlmConfig, batch: usize, p: usize, last_row_only: bool) -> f64 {
    let (h, f, v) = (
        config.hidden_size as f64,
        config.inner_size() as f64,
        config.vocab_size as f64,
    );
    let tokens = (batch * p) as f64;
    let linears = 2.0 * tokens * (h * 3.0 * h + h * h + h * 2.0 * f + f * h);
    let attention = 2.0 * 2.0 * batch as f64 * (p * p) as f64 * h;
    let head_rows = if last_row_only { batch as f64 } else { tokens };
    config.num_layers as f64 * (linears + attention) + 2.0 * head_rows * h * v
}

/// GFLOP/s of an FMA loop with independent accumulators on every thread of rayon's pool: the
/// machine's f32 arithmetic peak as far as this build can reach it (AVX-512, else AVX2+FMA, else
/// scalar `mul_add`).
fn peak_gflops() -> f64 {
    use rayon::prelude::*;
    const ITERS: usize = 20_000_000;
    let threads = rayon::current_num_threads().max(1);
    let t = Instant::now();
    let (sink, flops_per_iter): (f32, usize) = (0..threads)
        .into_par_iter()
        .map(|i| fma_loop(ITERS, i as f32))
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1.max(b.1)));
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (threads * ITERS * flops_per_iter) as f64 / s / 1e9
}

/// Runs `iters` rounds of independent FMAs; returns a value to keep and the FLOPs per round.
fn fma_loop(iters: usize, seed: f32) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return (unsafe { fma512(iters, seed) }, 12 * 16 * 2);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return (unsafe { fma256(iters, seed) }, 12 * 8 * 2);
        }
    }
    let mut acc = [seed; 12];
    for _ in 0..iters {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    (acc.iter().sum(), 12 * 2)
}

macro_rules! fma_kernel {
    ($name:ident, $feat:literal, $set1:ident, $fma:ident, $add:ident, $reduce:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        fn $name(iters: usize, seed: f32) -> f32 {
            use std::arch::x86_64::*;
            let (m, c) = ($set1(0.999_999), $set1(1e-7));
            let mut acc = [$set1(seed); 12];
            for _ in 0..iters {
                for a in &mut acc {
                    *a = $fma(*a, m, c);
                }
            }
            let mut s = acc[0];
            for a in &acc[1..] {
                s = $add(s, *a);
            }
            $reduce(s)
        }
    };
}
fma_kernel!(
    fma512,
    "avx512f,fma",
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    |s| { _mm512_reduce_add_ps(s) }
);
fma_kernel!(
    fma256,
    "avx2,fma",
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    |s| {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum::<f32>()
    }
);

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Row `b` of the reference prompt: P−2 text ids, `[gMASK]`, `<sop>`.
fn prompt_row(config: &GlmConfig, num_text_tokens: usize, p: usize, b: usize) -> Vec<i64> {
    let mut ids: Vec<i64> = (0..p - 2)
        .map(|i| (10 + ((i + 1000 * b) * 7919 + 13) % (num_text_tokens - 10)) as i64)
        .collect();
    ids.push(config.special_tokens.gmask as i64);
    ids.push(config.special_tokens.sop as i64);
    ids
}

struct Run {
    prefill_ms: f64,
    decode_tok_s: f64,
    step_ms: Vec<f64>,
    tokens: Vec<Vec<i64>>,
}

fn argmax_last(logits: Tensor<B, 3>, batch: usize) -> Vec<i64> {
    let [_, s, _] = logits.dims();
    let ids = logits.narrow(1, s - 1, 1).argmax(2).reshape([batch]);
    ids.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap_or_else(|e| usage(&format!("reading tokens: {e:?}")))
}

/// One timed generation of `n` tokens for the `rows` prompts.
fn generate(model: &GlmModel<B>, rows: &[Vec<i64>], n: usize, last_row_only: bool) -> Run {
    let device = Default::default();
    let batch = rows.len();
    let p = rows[0].len();
    let options = ForwardOptions {
        hidden_states: false,
        last_only: last_row_only,
    };
    let mut cache = model.new_cache();
    // As glm-infer's generation loop: room for the whole budget, no step copies the cache.
    cache.reserve(p + n);
    let t0 = Instant::now();
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(rows.concat(), [batch, p]), &device);
    let positions = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..batch).flat_map(|_| 0..p as i64).collect(), [batch, p]),
        &device,
    );
    let mask: Vec<bool> = (0..p)
        .flat_map(|q| (0..p).map(move |k| k == p - 1 && q < p - 1))
        .collect();
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [1, 1, p, p]), &device);
    let out = model
        .forward_with(tokens, positions, mask, Some(&mut cache), options)
        .expect("forward");
    let mut next = argmax_last(out.logits, batch);
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut generated: Vec<Vec<i64>> = next.iter().map(|&t| vec![t]).collect();
    let mut step_ms = Vec::with_capacity(n.saturating_sub(1));
    let t1 = Instant::now();
    for step in 1..n {
        let ts = Instant::now();
        let len = p + step;
        let tok =
            Tensor::<B, 2, Int>::from_data(TensorData::new(next.clone(), [batch, 1]), &device);
        let pos = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![(len - 1) as i64; batch], [batch, 1]),
            &device,
        );
        let mask = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(vec![false; len], [1, 1, 1, len]),
            &device,
        );
        let out = model
            .forward_with(tok, pos, mask, Some(&mut cache), options)
            .expect("forward");
        next = argmax_last(out.logits, batch);
        for (g, &t) in generated.iter_mut().zip(&next) {
            g.push(t);
        }
        step_ms.push(ts.elapsed().as_secs_f64() * 1e3);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    Run {
        prefill_ms,
        decode_tok_s: (batch * n.saturating_sub(1)) as f64 / decode_s,
        step_ms,
        tokens: generated,
    }
}

fn load_avg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .map_or(Value::Null, |v| json!(v))
}

fn read_jsonl(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// First `[row, index]` where two `[rows][tokens]` lists differ (`None` when identical).
fn first_mismatch(ours: &Value, theirs: &Value) -> Option<[usize; 2]> {
    let rows = |v: &Value| -> Vec<Vec<i64>> {
        v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|t| t.iter().filter_map(Value::as_i64).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (rows(ours), rows(theirs));
    if a.len() != b.len() {
        return Some([a.len().min(b.len()), 0]);
    }
    a.iter().zip(&b).enumerate().find_map(|(r, (x, y))| {
        if x == y {
            return None;
        }
        let at = x.iter().zip(y).position(|(p, q)| p != q);
        Some([r, at.unwrap_or(x.len().min(y.len()))])
    })
}

/// glibc's heap grows and shrinks by `M_TOP_PAD` (128 KiB by default): every large tensor the
/// forward pass frees and allocates again then costs fresh zeroed pages (page faults were 5–10 %
/// of a prefill). The bench keeps 256 MiB of slack at the top of the heap, as `MALLOC_TOP_PAD_`
/// would; the JSON line records it. Returns the pad set (`None` off glibc).
fn pad_heap() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const PAD: usize = 256 << 20;
        // SAFETY: mallopt only changes allocator parameters; no allocation is in flight here.
        let ok = unsafe { libc::mallopt(libc::M_TOP_PAD, PAD as libc::c_int) } == 1;
        return ok.then_some(PAD);
    }
    #[allow(unreachable_code)]
    None
}

/// The model the bench runs: on one device, or split over tensor-parallel ranks.
enum Engine {
    Single(Box<GlmModel<B>>),
    Split(TensorParallel<B>),
}

impl Engine {
    /// One timed generation: on the model, or on every rank in lock step (rank 0's times).
    fn generate(&self, rows: &[Vec<i64>], n: usize, last_row_only: bool) -> Run {
        match self {
            Engine::Single(model) => generate(model, rows, n, last_row_only),
            Engine::Split(group) => group
                .run::<Run, glm_core::Error>(
                    |lead| Ok(generate(lead, rows, n, last_row_only)),
                    |rank| {
                        generate(rank, rows, n, last_row_only);
                        Ok(())
                    },
                )
                .unwrap_or_else(|e| usage(&e.to_string())),
        }
    }

    /// What a batch-1 step reads, over all ranks.
    fn decode_step_bytes(&self) -> usize {
        match self {
            Engine::Single(model) => decode_step_bytes(model),
            Engine::Split(group) => group.ranks().iter().map(decode_step_bytes).sum(),
        }
    }

    /// Median microseconds of one all-reduce of `[1, hidden]` f32 over the ranks.
    fn allreduce_us(&self, hidden: usize) -> Option<f64> {
        let Engine::Split(group) = self else {
            return None;
        };
        let time = |model: &GlmModel<B>| -> glm_core::Result<f64> {
            let tp = model
                .tensor_parallel_rank()
                .ok_or_else(|| glm_core::Error::InvalidInput("not a rank".into()))?;
            let x = Tensor::<B, 2>::ones([1, hidden], &Default::default());
            let mut times = Vec::with_capacity(200);
            for _ in 0..200 {
                let t = Instant::now();
                let y = tp.all_reduce(x.clone());
                std::hint::black_box(y);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            tp.check()?;
            Ok(median(&times))
        };
        group.run(time, |rank| time(rank).map(drop)).ok()
    }
}

fn main() {
    let heap_pad = pad_heap();
    let args = parse_args();
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(&args.config)
            .unwrap_or_else(|e| usage(&format!("{}: {e}", args.config.display()))),
    )
    .unwrap_or_else(|e| usage(&format!("{}: {e}", args.config.display())));
    let config = GlmConfig::from_file(&args.config).unwrap_or_else(|e| usage(&e.to_string()));
    let name = raw["name"].as_str().unwrap_or("model").to_string();
    let bench = &raw["bench"];
    let pick = |arg: Option<usize>, key: &str, default: usize| {
        arg.or_else(|| bench[key].as_u64().map(|v| v as usize))
            .unwrap_or(default)
    };
    let p = pick(args.prompt_len, "prompt_len", 128);
    let n = pick(args.new_tokens, "new_tokens", 32);
    let warmup = pick(args.warmup, "warmup", 2);
    let reps = pick(args.reps, "reps", 7).max(1);
    let batch4 = args
        .batch4
        .or_else(|| bench["batch4"].as_bool())
        .unwrap_or(true);
    let num_text_tokens = raw["num_text_tokens"]
        .as_u64()
        .map_or(config.special_tokens.mask as usize, |v| v as usize);
    if p < 3 || p + n > config.max_sequence_length || num_text_tokens <= 10 {
        usage("prompt length / new tokens do not fit the model");
    }

    let quant = match args.format.as_str() {
        "f32" => None,
        "int8" => Some(8),
        "int4" => Some(4),
        other => usage(&format!("--format {other}: expected f32, int8 or int4")),
    };
    let file = SafetensorsFile::open(&args.weights).unwrap_or_else(|e| usage(&e.to_string()));
    let t = Instant::now();
    let quant = quant
        .map(|bits| QuantizeOptions::from_bits(bits).unwrap_or_else(|e| usage(&e.to_string())));
    let model = if args.tensor_parallel > 1 {
        Engine::Split(
            TensorParallel::<B>::from_source(
                &config,
                &file,
                &[Default::default()],
                ModelOptions::default(),
                quant,
                TpLayout::new(args.tensor_parallel),
            )
            .unwrap_or_else(|e| usage(&e.to_string())),
        )
    } else {
        Engine::Single(Box::new(
            GlmModel::<B>::from_source_quantized(
                &config,
                &file,
                &Default::default(),
                ModelOptions::default(),
                quant,
            )
            .unwrap_or_else(|e| usage(&e.to_string())),
        ))
    };
    let build_s = t.elapsed().as_secs_f64();
    let params = config.num_parameters();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = load_avg();

    let step_bytes = model.decode_step_bytes();
    let allreduce_us = model.allreduce_us(config.hidden_size);
    let peak = peak_gflops();
    let mut line = json!({
        "bench": "glm-rs generation (burn Flex)",
        "name": name,
        "weights": args.weights.display().to_string(),
        "dtype": "float32",
        "format": args.format,
        "tensor_parallel": args.tensor_parallel,
        "allreduce_us": allreduce_us.map(round3),
        "params": params,
        "weight_bytes": params * 4,
        "bytes_per_decode_step": step_bytes,
        "peak_gflops": round3(peak),
        "malloc_top_pad": heap_pad,
        "blas": cfg!(feature = "openblas"),
        "prompt_len": p,
        "new_tokens": n,
        "decode_steps": n - 1,
        "prefill_logits_rows": if args.last_row_only { "last" } else { "all" },
        "warmup": warmup,
        "reps": reps,
        "statistic": "median over reps",
        "threads": threads,
        "model_build_s": round3(build_s),
        "load_avg_before": load_before,
    });
    let mut batches = vec![1usize];
    if batch4 {
        batches.push(4);
    }
    for batch in batches {
        let rows: Vec<Vec<i64>> = (0..batch)
            .map(|b| prompt_row(&config, num_text_tokens, p, b))
            .collect();
        for _ in 0..warmup {
            model.generate(&rows, n, args.last_row_only);
        }
        let runs: Vec<Run> = (0..reps)
            .map(|_| model.generate(&rows, n, args.last_row_only))
            .collect();
        let prefill: Vec<f64> = runs.iter().map(|r| round3(r.prefill_ms)).collect();
        let decode: Vec<f64> = runs.iter().map(|r| round3(r.decode_tok_s)).collect();
        let steps: Vec<f64> = runs.iter().flat_map(|r| r.step_ms.clone()).collect();
        let e2e: Vec<f64> = runs
            .iter()
            .map(|r| r.prefill_ms + r.step_ms.iter().sum::<f64>())
            .collect();
        let deterministic = runs.iter().all(|r| r.tokens == runs[0].tokens);
        let flops = prefill_flops(&config, batch, p, args.last_row_only);
        let key = format!("b{batch}");
        line[&key] = json!({
            "batch": batch,
            "prefill_ms_median": round3(median(&prefill)),
            "prefill_ms_min": prefill.iter().copied().fold(f64::INFINITY, f64::min),
            "prefill_ms_all": prefill,
            "prefill_tokens_per_s": round3((batch * p) as f64 / (median(&prefill) / 1e3)),
            "prefill_gflops": round3(flops / (median(&prefill) / 1e3) / 1e9),
            "prefill_fraction_of_peak": round3(flops / (median(&prefill) / 1e3) / 1e9 / peak),
            // One step streams the weights once for all `batch` rows.
            "weight_GBps": round3(step_bytes as f64 * median(&decode) / batch as f64 / 1e9),
            "decode_tokens_per_s_median": round3(median(&decode)),
            "decode_tokens_per_s_max": decode.iter().copied().fold(0.0, f64::max),
            "decode_tokens_per_s_all": decode,
            "decode_step_ms_median": round3(median(&steps)),
            "e2e_ms_median": round3(median(&e2e)),
            "generated_tokens": runs[0].tokens,
            "deterministic_across_reps": deterministic,
        });
    }
    line["load_avg_after"] = load_avg();

    if let Some(path) = &args.membw {
        if let Some(bw) = read_jsonl(path)
            .iter()
            .rev()
            .find_map(|l| l["roofline_bandwidth_GBps"].as_f64())
        {
            let tok_s = line["b1"]["decode_tokens_per_s_median"]
                .as_f64()
                .unwrap_or(0.0);
            line["roofline_bandwidth_GBps"] = json!(bw);
            line["b1_fraction_of_roofline"] = json!(round3(tok_s * step_bytes as f64 / (bw * 1e9)));
        }
    }
    if let Some(path) = &args.reference {
        let lines = read_jsonl(path);
        match lines.iter().rev().find(|l| l["name"] == json!(name)) {
            Some(r) => {
                let mut cmp = json!({});
                for key in ["b1", "b4"] {
                    let (ours, theirs) = (&line[key], &r[key]);
                    if ours.is_null() || theirs.is_null() {
                        continue;
                    }
                    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                    let mismatch =
                        first_mismatch(&ours["generated_tokens"], &theirs["generated_tokens"]);
                    cmp[key] = json!({
                        "ratio_decode": round3(f(ours, "decode_tokens_per_s_median") / f(theirs, "decode_tokens_per_s_median")),
                        "ratio_prefill": round3(f(theirs, "prefill_ms_median") / f(ours, "prefill_ms_median")),
                        "reference_decode_tokens_per_s": f(theirs, "decode_tokens_per_s_median"),
                        "reference_prefill_ms": f(theirs, "prefill_ms_median"),
                        "greedy_tokens_identical": mismatch.is_none(),
                        "first_token_mismatch": mismatch,
                    });
                }
                line["vs_reference"] = cmp;
            }
            None => eprintln!("no reference line named {name} in {}", path.display()),
        }
    }
    let text = line.to_string();
    println!("{text}");
    if let Some(out) = &args.out {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .and_then(|mut f| writeln!(f, "{text}"));
        if let Err(e) = written {
            usage(&format!("{}: {e}", out.display()));
        }
    }
}
