//! Prefill and one KV-cache decode step on the CPU backend (Flex), f32, random weights of the
//! benchmark config (`GLM_BENCH_CONFIG`, default `../shared/bench/configs/glm-small/config.json`).
//! Prompt ids follow `../shared/bench/README.md` so the work equals the reference's.

use std::hint::black_box;

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use glm_core::blank::BlankInput;
use glm_core::{GlmConfig, GlmModel, ModelOptions};

fn bench_config() -> (GlmConfig, usize) {
    let path = std::env::var("GLM_BENCH_CONFIG").unwrap_or_else(|_| {
        glm_core::data_dir::workspace_root()
            .join("../shared/bench/configs/glm-small/config.json")
            .to_string_lossy()
            .into_owned()
    });
    let config = GlmConfig::from_file(&path).expect("bench config");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let prompt_len = raw["bench"]["prompt_len"].as_u64().unwrap_or(128) as usize;
    (config, prompt_len)
}

/// `P-2` text ids (bench README formula), then `[gMASK]`, `<sop>`.
fn prompt(config: &GlmConfig, p: usize) -> BlankInput {
    let text_tokens = config.special_tokens.mask as usize; // num_text_tokens: specials start there
    let mut ids: Vec<u32> = (0..p - 2)
        .map(|i| (10 + ((i * 7919 + 13) % (text_tokens - 10))) as u32)
        .collect();
    ids.push(config.special_tokens.gmask);
    BlankInput::from_context(&ids, &config.special_tokens).expect("prompt")
}

fn forward(c: &mut Criterion) {
    let (config, p) = bench_config();
    let device = Default::default();
    let model =
        GlmModel::<Flex>::random(&config, &device, ModelOptions::default(), 1).expect("model");
    let blank = prompt(&config, p);
    let (tokens, positions, mask) = blank
        .to_input(&config)
        .expect("input")
        .to_tensors::<Flex>(&device);
    let mut group = c.benchmark_group(format!(
        "glm-core/{}L-{}h",
        config.num_layers, config.hidden_size
    ));
    group.sample_size(10);
    group.bench_function(format!("prefill_{p}"), |b| {
        b.iter(|| {
            let logits = model
                .forward(tokens.clone(), positions.clone(), mask.clone())
                .expect("forward");
            black_box(logits.argmax(2).into_data());
        })
    });
    // One decode step after the prompt: the cache is rebuilt outside the timed closure.
    let mut cache = model.new_cache();
    model
        .forward_cached(tokens.clone(), positions.clone(), mask.clone(), &mut cache)
        .expect("prefill");
    let step_tok = Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![11i64], [1, 1]), &device);
    let step_pos =
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![p as i64], [1, 1]), &device);
    let step_mask = Tensor::<Flex, 4, Bool>::from_data(
        TensorData::new(vec![false; p + 1], [1, 1, 1, p + 1]),
        &device,
    );
    group.bench_function("decode_step", |b| {
        b.iter_batched(
            || cache.clone(),
            |mut cache| {
                let logits = model
                    .forward_with(
                        step_tok.clone(),
                        step_pos.clone(),
                        step_mask.clone(),
                        Some(&mut cache),
                        glm_core::ForwardOptions {
                            hidden_states: false,
                            last_only: true,
                        },
                    )
                    .expect("decode step");
                black_box(logits.logits.argmax(2).into_data());
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
