//! # glm-train
//!
//! Training and fine-tuning of GLM-130B-family models ([`glm_core::GlmModel`]) on burn, following
//! the GLM-130B recipe (spec §8):
//!
//! - [`objective`]: blank infilling — `[MASK]` spans (Poisson λ=3, 15 % of the tokens, shuffled
//!   Part B) or `[gMASK]` suffixes, mixed 30 / 70, plus instruction pairs (MIP, 5 %); loss only on
//!   generated rows.
//! - [`data`]: text / JSONL corpora tokenized into memory-mapped token files, a seeded
//!   train/validation split, packing of documents into fixed-length sequences ([`batch`]), a
//!   resumable stream.
//! - [`optim`], [`schedule`]: AdamW on f32 master weights (torch semantics), warm-up + cosine
//!   decay, global-norm clipping, dynamic loss scaling with overflow skipping.
//! - [`step`]: loss, embedding gradient shrink, dropout, gradient accumulation, data parallelism.
//! - `host` (feature `flex`): the CPU step of f32 models without dropout — forward and a
//!   hand-written backward on host memory through glm-quant's GEMM, taken by [`step`]
//!   automatically (`GLM_TRAIN_GENERIC=1` keeps burn's autodiff).
//! - [`init`]: DeepNorm initialisation.
//! - [`checkpoint`]: atomic checkpoints (model + optimizer + scheduler + RNG + data position + loss
//!   scale); a resumed run repeats an uninterrupted one bit for bit on the CPU.
//! - [`trainer`]: the training loop behind the `glm-train` CLI ([`config::TrainConfig`]), and
//!   [`quickstart`].
//!
//! # Example
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::DType;
//! use glm_core::GlmConfig;
//! use glm_train::objective::gmask_layout;
//! use glm_train::batch::{Batch, Sequence};
//! use glm_train::optim::AdamWConfig;
//! use glm_train::schedule::LossScaler;
//! use glm_train::step::{ForwardConfig, TrainState};
//!
//! type B = Autodiff<Flex>;
//! let config = GlmConfig::tiny();
//! let device = Default::default();
//! let model = glm_train::init::deepnorm_model::<B>(&config, &Default::default(), 7, DType::F32, &device).unwrap();
//! let mut state = TrainState::new(model, DType::F32, AdamWConfig::default(), LossScaler::fixed());
//! let text: Vec<u32> = (10..40).collect();
//! let segment = gmask_layout(&text, 12, &config.special_tokens);
//! let batch = Batch::from_sequences(&[Sequence::pack(&[segment], 32, 0, 1)]);
//! let forward = ForwardConfig { shrink_alpha: 0.1, hidden_dropout: 0.1, attention_dropout: 0.1 };
//! let grads = state.grads(&[batch], &forward, &[]).unwrap();
//! let report = state.apply(grads, 1e-3);
//! assert!(report.loss > 0.0 && !report.skipped);
//! ```

#![warn(missing_docs)]
// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
#[cfg(feature = "flex")]
pub mod host;
pub mod init;
pub mod objective;
pub mod optim;
pub mod params;
pub mod plot;
pub mod quickstart;
pub mod rng;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Error, Result};
pub use trainer::Trainer;

/// Runs the README's example as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
