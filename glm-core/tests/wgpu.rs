//! The same model code on wgpu (lavapipe in CI): one golden case within 1e-3, and the KV cache.
//! The case is picked by kind from the fixtures (single sample ending `[gMASK] <sop>`, specials
//! from config.json), never by position or by the public set's ids.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use glm_core::blank::GlmInput;
use glm_core::{GlmModel, ModelOptions};

#[test]
fn gmask_case_matches_the_original_on_wgpu() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let model: GlmModel<Wgpu> = load_model(&device, ModelOptions::default());
    let json = read_json("cases.json");
    let specials = model.config().special_tokens;
    // The left-to-right generation case: one sample whose context ends `[gMASK] <sop>`.
    let case = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| {
            let t = ints2(&c["tokens"]);
            t.len() == 1
                && c.get("context_length").is_none()
                && t[0].ends_with(&[specials.gmask, specials.sop])
        })
        .expect("a single-sample [gMASK] <sop> case in cases.json");
    let tokens = ints2(&case["tokens"]);
    let input = GlmInput {
        batch: tokens.len(),
        seq: tokens[0].len(),
        tokens: tokens.concat(),
        position_ids: ints2(&case["position_ids"]).concat(),
        mask: mask4(&case["attention_mask"]),
    };
    let valid: Vec<usize> = ints(&case["valid_lengths"])
        .iter()
        .map(|&v| v as usize)
        .collect();
    let (t, p, m) = input.to_tensors::<Wgpu>(&device);
    let ours = to_vec(model.forward(t, p, m).expect("forward"));
    let key = case["tensors"]["logits"]["key"].as_str().unwrap();
    let (golden, _) = tensor_f32("cases.safetensors", key);
    let d = max_diff_valid(
        &ours,
        &golden,
        input.batch,
        input.seq,
        model.config().vocab_size,
        &valid,
    );
    assert!(d <= 1e-3, "wgpu logits differ by {d}");

    // KV cache on wgpu: context pass + one step equals the full forward of context + token.
    // The [gMASK] layout this relies on, checked on the fixture: positions 0..n, prefix = all
    // before <sop> bidirectional.
    let n = input.seq;
    assert_eq!(
        input.position_ids,
        (0..n as u32).collect::<Vec<_>>(),
        "{}: [gMASK] position ids",
        case["name"]
    );
    assert_eq!(
        input.mask,
        glm_core::blank::glm_attention_mask(n, n - 1),
        "{}: [gMASK] attention mask",
        case["name"]
    );
    let mut cache = model.new_cache();
    let (t, p, m) = input.to_tensors::<Wgpu>(&device);
    let first = to_vec(model.forward_cached(t, p, m, &mut cache).expect("forward"));
    assert_eq!(first.len(), n * model.config().vocab_size);
    // The next token: the case's first text token (an id of this fixture's vocabulary).
    let next = input.tokens[0];
    assert!((next as usize) < model.config().vocab_size);
    let mut longer = input.clone();
    longer.seq = n + 1;
    longer.tokens.push(next);
    longer.position_ids.push(n as u32);
    longer.mask = glm_core::blank::glm_attention_mask(n + 1, n - 1);
    let step = GlmInput {
        batch: 1,
        seq: 1,
        tokens: vec![next],
        position_ids: vec![n as u32],
        mask: vec![false],
    };
    let (t, p, _) = step.to_tensors::<Wgpu>(&device);
    let m = burn::tensor::Tensor::<Wgpu, 4, burn::tensor::Bool>::from_data(
        burn::tensor::TensorData::new(vec![false; n + 1], [1, 1, 1, n + 1]),
        &device,
    );
    let stepped = to_vec(model.forward_cached(t, p, m, &mut cache).expect("forward"));
    let (t, p, m) = longer.to_tensors::<Wgpu>(&device);
    let full = to_vec(model.forward(t, p, m).expect("forward"));
    let v = model.config().vocab_size;
    assert_eq!(stepped.len(), v, "one step of logits");
    assert_eq!(full.len(), (n + 1) * v, "full logits");
    let d = stepped
        .iter()
        .zip(&full[n * v..])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        d <= 1e-3,
        "wgpu cache step differs from full recompute by {d}"
    );
}

/// Tensor parallelism on wgpu: the TP=2 SAT folder loaded per rank (both ranks on the one
/// adapter, all-reduced by burn-collective) reproduces the original two-process run's logits.
#[test]
fn tp2_sat_folder_on_wgpu_matches_the_two_process_run() {
    use glm_core::parallel::{TensorParallel, TpLayout};
    use glm_core::weights::SatCheckpoint;
    let device = burn::backend::wgpu::WgpuDevice::default();
    let case = sat_tp_case();
    let case_name = case["name"].as_str().expect("name");
    let input = case_input(&case);
    let ckpt = SatCheckpoint::open(fixtures().join("sat_tp2")).expect("sat_tp2");
    let cfg = config();
    let group = TensorParallel::<Wgpu>::from_source(
        &cfg,
        &ckpt,
        &[device],
        ModelOptions::default(),
        None,
        TpLayout::new(ckpt.tensor_parallel()),
    )
    .expect("load per rank on wgpu");
    let ours = group_logits(&group, &input);
    let (golden, _) = tensor_f32(
        "sat_tp.safetensors",
        &format!("tp2_fp16.{case_name}.logits"),
    );
    let d = max_diff_valid(
        &ours,
        &golden,
        input.batch,
        input.seq,
        cfg.vocab_size,
        &[input.seq],
    );
    assert!(d <= 1e-3, "wgpu TP=2 logits differ by {d}");
}
