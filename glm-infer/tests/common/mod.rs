//! Fixture access for glm-infer's golden tests (`GLM_FIXTURES`, default `../shared/fixtures`):
//! glm-core's test helpers, plus the fixture model on the CPU and per-sample masks.
#![allow(dead_code)]

#[path = "../../../glm-core/tests/common/mod.rs"]
mod core_common;

pub use core_common::*;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_infer::prompt::{build_prompt, IdCodec, Prompt};
use serde_json::Value;

/// The fixture model on the CPU backend, default options.
pub fn model() -> GlmModel<Cpu> {
    load_model(&Default::default(), ModelOptions::default())
}

/// `[batch][1][seq][seq]` 0/1 → per-sample flat bools.
pub fn masks(v: &Value) -> Vec<Vec<bool>> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|b| mask4(&Value::Array(vec![b.clone()])))
        .collect()
}

/// generate.py's input rules on a fixture prompt written as space-separated ids.
pub fn id_prompt(cfg: &GlmConfig, text: &str) -> Prompt {
    build_prompt(text, &IdCodec, &cfg.special_tokens, cfg.max_sequence_length)
        .unwrap_or_else(|e| panic!("prompt {text:?}: {e}"))
}

/// `glm serve` on a loopback port the OS picks, for `glm` (a model and its codec).
#[cfg(feature = "serve")]
pub fn loopback_server<B: burn::tensor::backend::Backend>(
    glm: glm_infer::Glm<B>,
    options: glm_infer::serve::ServeOptions,
) -> glm_infer::serve::Server
where
    glm_infer::Glm<B>: Send + 'static,
{
    let options = glm_infer::serve::ServeOptions {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..options
    };
    glm_infer::serve::start(glm, options, false).expect("server")
}

/// `glm serve` on the fixture model (default load options) on a loopback port.
#[cfg(feature = "serve")]
pub fn fixture_server(options: glm_infer::serve::ServeOptions) -> glm_infer::serve::Server {
    let glm =
        glm_infer::Glm::load(fixtures(), glm_infer::LoadOptions::default()).expect("fixture model");
    loopback_server(glm, options)
}
