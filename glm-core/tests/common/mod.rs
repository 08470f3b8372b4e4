//! Fixture access shared by the golden tests: the folder comes from `GLM_FIXTURES`
//! (default `../shared/fixtures`); nothing about its sizes is assumed.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use glm_core::weights::{SafetensorsFile, WeightSource};
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use serde_json::Value;

pub type Cpu = burn::backend::Flex;

pub fn fixtures() -> PathBuf {
    glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").expect("fixture folder")
}

pub fn read_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn config() -> GlmConfig {
    GlmConfig::from_file(fixtures().join("config.json")).expect("config.json")
}

pub fn model_file() -> SafetensorsFile {
    SafetensorsFile::open(fixtures().join("model.safetensors")).expect("model.safetensors")
}

pub fn load_model<B: Backend>(device: &B::Device, options: ModelOptions) -> GlmModel<B> {
    GlmModel::from_source(&config(), &model_file(), device, options).expect("load model")
}

/// A tensor of a fixture safetensors file as f32 values + shape.
pub fn tensor_f32(file: &str, key: &str) -> (Vec<f32>, Vec<usize>) {
    let f = SafetensorsFile::open(fixtures().join(file)).expect(file);
    let data = f.load(key).unwrap_or_else(|e| panic!("{e}"));
    let shape = data.shape.to_vec();
    (data.convert::<f32>().to_vec::<f32>().unwrap(), shape)
}

pub fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u32)
        .collect()
}

pub fn ints2(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().expect("array").iter().map(ints).collect()
}

/// `[batch][1][seq][seq]` 0/1 → flat bools.
pub fn mask4(v: &Value) -> Vec<bool> {
    let mut out = Vec::new();
    for b in v.as_array().expect("array") {
        for h in b.as_array().expect("array") {
            for row in h.as_array().expect("array") {
                for x in row.as_array().expect("array") {
                    out.push(x.as_u64().expect("0/1") != 0);
                }
            }
        }
    }
    out
}

pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn host<B: Backend, const D: usize>(data: TensorData, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(data, device)
}

/// Max |a - b| over rows `[b, s < valid[b], ..]` of `[batch, seq, width]` tensors.
pub fn max_diff_valid(
    a: &[f32],
    b: &[f32],
    batch: usize,
    seq: usize,
    width: usize,
    valid: &[usize],
) -> f32 {
    assert_eq!(a.len(), batch * seq * width, "shape of ours");
    assert_eq!(b.len(), batch * seq * width, "shape of golden");
    assert_eq!(valid.len(), batch, "one valid length per sample");
    assert!(
        valid.iter().all(|&v| v > 0 && v <= seq),
        "valid lengths {valid:?} outside 1..={seq}"
    );
    let mut m = 0f32;
    for (bi, &valid_len) in valid.iter().enumerate().take(batch) {
        for s in 0..valid_len {
            let o = (bi * seq + s) * width;
            for (x, y) in a[o..o + width].iter().zip(&b[o..o + width]) {
                m = m.max((x - y).abs());
            }
        }
    }
    m
}

/// The model input of one `cases.json` case.
pub fn case_input(case: &Value) -> glm_core::blank::GlmInput {
    let tokens = ints2(&case["tokens"]);
    glm_core::blank::GlmInput {
        batch: tokens.len(),
        seq: tokens[0].len(),
        tokens: tokens.concat(),
        position_ids: ints2(&case["position_ids"]).concat(),
        mask: mask4(&case["attention_mask"]),
    }
}

/// Every `cases.json` case: name, input, valid lengths, key of its golden logits.
pub fn case_inputs() -> Vec<(String, glm_core::blank::GlmInput, Vec<usize>, String)> {
    let json = read_json("cases.json");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let valid = ints(&c["valid_lengths"])
                .iter()
                .map(|&v| v as usize)
                .collect();
            let key = c["tensors"]["logits"]["key"]
                .as_str()
                .expect("key")
                .to_string();
            (
                c["name"].as_str().expect("name").to_string(),
                case_input(c),
                valid,
                key,
            )
        })
        .collect()
}

/// The logits tolerance of `sat_tp.json` (its `tolerance` text: "... logits X absolute").
pub fn sat_tp_tolerance() -> f32 {
    read_json("sat_tp.json")["tolerance"]
        .as_str()
        .and_then(|s| s.split("logits ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("logits tolerance in sat_tp.json")
}

/// The `cases.json` case sat_tp.json's logits were computed for.
pub fn sat_tp_case() -> Value {
    let json = read_json("sat_tp.json");
    let name = json["logits"]["case"]
        .as_str()
        .and_then(|s| s.split_whitespace().next())
        .expect("the case of sat_tp.json's logits")
        .to_string();
    read_json("cases.json")["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name.as_str())
        .cloned()
        .expect("the sat_tp case in cases.json")
}

/// A forward of `input` on every rank of `group` (rank 0's logits; every rank computes the same).
pub fn group_logits<B: Backend>(
    group: &glm_core::parallel::TensorParallel<B>,
    input: &glm_core::blank::GlmInput,
) -> Vec<f32> {
    let options = glm_core::ForwardOptions::default();
    let out = group
        .run(
            |rank0| rank0.forward_input(input, options),
            |rank| rank.forward_input(input, options).map(drop),
        )
        .expect("tensor-parallel forward");
    to_vec(out.logits)
}
