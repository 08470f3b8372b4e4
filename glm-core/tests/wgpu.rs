//! The same model code on wgpu (lavapipe in CI): one golden case within 1e-3, and the KV cache.
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
    let case = &json["cases"][0];
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
    let ours = to_vec(model.forward(t, p, m));
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
    let n = input.seq;
    let mut cache = model.new_cache();
    let (t, p, m) = input.to_tensors::<Wgpu>(&device);
    let first = to_vec(model.forward_cached(t, p, m, &mut cache));
    assert_eq!(first.len(), n * model.config().vocab_size);
    let next = 7u32;
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
    let stepped = to_vec(model.forward_cached(t, p, m, &mut cache));
    let (t, p, m) = longer.to_tensors::<Wgpu>(&device);
    let full = to_vec(model.forward(t, p, m));
    let v = model.config().vocab_size;
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
