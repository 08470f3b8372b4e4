//! Fixture access for glm-infer's golden tests (`GLM_FIXTURES`, default `../shared/fixtures`).
#![allow(dead_code)]

use std::path::PathBuf;

use glm_core::weights::SafetensorsFile;
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

pub fn model() -> GlmModel<Cpu> {
    let file =
        SafetensorsFile::open(fixtures().join("model.safetensors")).expect("model.safetensors");
    GlmModel::from_source(
        &config(),
        &file,
        &Default::default(),
        ModelOptions::default(),
    )
    .expect("model")
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

/// `[batch][1][seq][seq]` 0/1 → per-sample flat bools.
pub fn masks(v: &Value) -> Vec<Vec<bool>> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            for h in b.as_array().unwrap() {
                for row in h.as_array().unwrap() {
                    out.extend(
                        row.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap() != 0),
                    );
                }
            }
            out
        })
        .collect()
}
