//! Generation on wgpu (lavapipe in CI): the same greedy tokens as the original for one prompt.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use glm_core::weights::SafetensorsFile;
use glm_core::{GlmModel, ModelOptions};
use glm_infer::{
    build_prompt, fill_blanks, generated_tokens, BaseStrategy, IdCodec, SamplingConfig,
};

#[test]
fn greedy_gmask_on_wgpu_matches_the_original() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let cfg = config();
    let file = SafetensorsFile::open(fixtures().join("model.safetensors")).unwrap();
    let model =
        GlmModel::<Wgpu>::from_source(&cfg, &file, &device, ModelOptions::default()).unwrap();
    let json = read_json("greedy.json");
    let case = &json["a_gmask"];
    let prompt = build_prompt(
        case["prompt_text"].as_str().unwrap(),
        &IdCodec,
        &cfg.special_tokens,
        cfg.max_sequence_length,
    )
    .unwrap();
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
