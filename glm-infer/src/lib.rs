//! # glm-infer
//!
//! Generation with GLM-130B exactly as the original (`generate.py`, `generation/strategies.py`,
//! `evaluation/model.py`): blank filling with `[MASK]` / `[sMASK]` / `[gMASK]`, sampling
//! ([`BaseStrategy`]: temperature, top-k, top-p, seeded), beam search ([`BeamSearchStrategy`]),
//! batched decoding with the KV cache, streaming, and the `glm` command-line tool.
//!
//! The two-call API is [`Glm`]: `Glm::load(path, LoadOptions::default())?` then
//! `glm.fill(text, &GenerateOptions::greedy(n))?` (see [`api`] and the README).
//!
//! # Example: the building blocks
//! ```
//! use burn::backend::Flex;
//! use glm_core::{GlmConfig, GlmModel, ModelOptions};
//! use glm_infer::{build_prompt, fill_blanks, BaseStrategy, IdCodec, SamplingConfig};
//!
//! let config = GlmConfig::tiny();
//! let model = GlmModel::<Flex>::random(&config, &Default::default(), ModelOptions::default(), 7).unwrap();
//! let specials = config.special_tokens;
//! let prompt = build_prompt("11 12 [MASK] 13", &IdCodec, &specials, config.max_sequence_length).unwrap();
//! let mut greedy = BaseStrategy::new(SamplingConfig::greedy(specials.end_tokens().to_vec())).unwrap();
//! let out = fill_blanks(&model, &prompt, &mut greedy, 16, &mut |_| {}).unwrap();
//! assert_eq!(out.blanks[0].len(), 1);
//! ```

#![warn(missing_docs)]
// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod beam;
pub mod cli;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
pub mod fill;
pub mod generate;
pub mod prompt;
pub mod sampling;
#[cfg(feature = "serve")]
pub mod serve;
pub mod strategy;
pub mod stream;

pub use api::{Cpu, Decoding, Fill, GenerateOptions, Glm, LoadOptions, Stream, StreamItem};
pub use beam::{BeamConfig, BeamSearchStrategy};
/// burn's dtype enum ([`LoadOptions::dtype`]), re-exported so users need not depend on burn.
pub use burn::tensor::DType;
pub use cli::OffloadFlags;
pub use error::{Error, Result};
pub use fill::{fill_blanks, FillIteration, FillResult};
pub use generate::{batch_filling_sequence, generated_tokens, GenerationSample};
pub use prompt::{build_prompt, build_prompt_for, IdCodec, Prompt, TextCodec};
pub use sampling::{BaseStrategy, SamplingConfig};
pub use strategy::{Hypothesis, Strategy};
pub use stream::TokenStream;

/// Runs the README's example as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
