//! Generation on wgpu (lavapipe in CI): the same greedy tokens as the original for one prompt.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use glm_core::ModelOptions;
use glm_infer::{fill_blanks, generated_tokens, BaseStrategy, SamplingConfig};

#[test]
fn greedy_gmask_on_wgpu_matches_the_original() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let cfg = config();
    let model = load_model::<Wgpu>(&device, ModelOptions::default());
    let json = read_json("greedy.json");
    let case = &json["a_gmask"];
    let prompt = id_prompt(&cfg, case["prompt_text"].as_str().unwrap());
    let input = ints(&case["input_tokens"]);
    let want = ints(&case["generated_tokens"]);
    let mut greedy = BaseStrategy::new(SamplingConfig::greedy(
        cfg.special_tokens.end_tokens().to_vec(),
    ))
    .unwrap();
    let out = fill_blanks(
        &model,
        &prompt,
        &mut greedy,
        input.len() + want.len(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        generated_tokens(&out.iterations[0].hypotheses[0], input.len(), &[]),
        want
    );
}
