//! # glm-core
//!
//! The GLM-130B language model (Zeng et al., 2022, <https://arxiv.org/abs/2210.02414>) on
//! [burn](https://burn.dev), reproducing the original implementation (SwissArmyTransformer 0.2.12
//! `GLM130B` + the GLM-130B repository) within float32 noise. One model type, generic over burn's
//! `Backend`, runs on the CPU (`Flex`), wgpu and CUDA.
//!
//! - [`GlmConfig`]: hyper-parameters under the original names, with presets.
//! - [`GlmModel`]: DeepNorm post-LN layers, fused per-head QKV, rotary, f32-softmax attention,
//!   GeGLU, tied output.
//! - [`blank`]: `[MASK]` / `[sMASK]` / `[gMASK]` inputs (tokens, positions, masks).
//! - [`KvCache`]: incremental decoding.
//! - [`weights`]: safetensors and original SAT checkpoints (tensor-parallel shards merged).
//! - [`parallel`]: tensor parallelism (the model split over devices as SAT splits it).
//!
//! # Example
//! ```
//! use burn::backend::Flex;
//! use glm_core::{blank::BlankInput, GlmConfig, GlmModel, ModelOptions};
//!
//! let config = GlmConfig::tiny();
//! let device = Default::default();
//! let model = GlmModel::<Flex>::random(&config, &device, ModelOptions::default(), 42).unwrap();
//! let specials = config.special_tokens;
//! let input = BlankInput::from_context(&[11, 12, 13, specials.gmask], &specials).unwrap();
//! let (tokens, positions, mask) = input.to_input(&config).unwrap().to_tensors::<Flex>(&device);
//! let logits = model.forward(tokens, positions, mask).unwrap();
//! assert_eq!(logits.dims(), [1, 5, config.vocab_size]);
//! ```

#![warn(missing_docs)]
// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod attention;
pub mod blank;
pub mod cache;
pub mod config;
pub mod dropout;
pub mod error;
pub mod geglu;
pub mod host_pool;
pub mod layer;
pub mod layernorm;
pub mod linear;
pub mod model;
pub mod offload;
pub mod parallel;
pub mod plan;
pub mod quantized;
pub mod rotary;
pub mod support;
pub mod vocab;
/// The support modules under their former paths (`glm_core::device`, `glm_core::data_dir`).
pub use support::{data_dir, device};
pub mod weights;

pub use cache::KvCache;
pub use config::{GlmConfig, SpecialTokens};
pub use error::{Error, Result};
pub use model::{ForwardOptions, ForwardOutput, GlmModel, ModelOptions};
pub use rotary::RotaryPrecision;

/// Backends this crate was compiled with, for examples and tests.
pub mod backend {
    /// The CPU backend (pure Rust, SIMD gemm).
    #[cfg(feature = "flex")]
    pub type Cpu = burn::backend::Flex;
    /// wgpu (Vulkan / Metal / DX12; lavapipe in CI).
    #[cfg(feature = "wgpu")]
    pub type Wgpu = burn::backend::Wgpu;
    /// CUDA.
    #[cfg(feature = "cuda")]
    pub type Cuda = burn::backend::Cuda;
}

/// Runs the README's example as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
