//! # glm-tokenizer
//!
//! GLM-130B reads and writes text through icetk: a SentencePiece unigram model
//! (`ice_text.model`, 130000 pieces) whose ids are shifted by 20000 because image tokens come
//! first, plus GLM's special tokens (`[MASK]` 150000 … `<dBLOCK>` 150007) and, in the 2023 code
//! path, whitespace tokens (`<|tab|>`, `<|blank_N|>`) and byte fallback.
//!
//! This crate reads the `.model` protobuf itself and re-implements SentencePiece 0.2.x's
//! normalizer, unigram Viterbi and decoder bit for bit, so ids equal the Python reference
//! (`GLM130BTokenizer`, `IceTokenizer`, ChatGLM-6B `SPTokenizer`) on every golden string.
//!
//! Layout of the crate, one concept per file:
//! - [`proto`] is the protobuf wire reader that yields a [`ModelProto`];
//! - `charsmap`, `trie`, [`normalizer`] and `unigram` are SentencePiece's normalizer and
//!   segmenter;
//! - [`model`] holds [`SentencePieceModel`] with SentencePiece's `EncodeAsIds` / `DecodeIds`;
//! - [`whitespace`] holds GLM's `<n>` / `<|tab|>` / `<|blank_N|>` rewrites;
//! - [`options`] holds [`TokenizerOptions`], [`EncodeFlags`], [`VocabLayout`] and [`Mode`];
//! - [`glm`] holds [`Tokenizer`] and the special ids ([`GlmSpecial`]);
//! - [`stream`] holds [`StreamDecoder`];
//! - [`error`] holds [`Error`].
//!
//! Reference code: SwissArmyTransformer `sat/tokenization/icetk_glm_130B/ice_tokenizer.py`,
//! icetk `ice_tokenizer.py`, google/sentencepiece `normalizer.cc`, `unigram_model.cc`,
//! `sentencepiece_processor.cc`.
//!
//! # Examples
//!
//! ```
//! use glm_tokenizer::{Tokenizer, TokenizerOptions};
//!
//! # fn main() -> Result<(), glm_tokenizer::Error> {
//! # let dir = std::env::var("GLM_TOKENIZER_DIR")
//! #     .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/tokenizer").to_string());
//! # let path = format!("{dir}/ice_text_synth.model");
//! // `path` points at an `ice_text.model` (here: the synthetic test model).
//! let tok = Tokenizer::from_file(&path, TokenizerOptions::glm130b())?;
//!
//! let ids = tok.encode("Hello World!\n\tdef f():");
//! assert_eq!(tok.decode(&ids), "Hello World!\n\tdef f():");
//!
//! // A GLM prompt: text, [gMASK], <sop>.
//! let mut prompt = tok.encode("你好");
//! prompt.extend([tok.gmask_id(), tok.sop_id()]);
//! assert_eq!((tok.gmask_id(), tok.sop_id(), tok.eos_id()), (150001, 150004, 20002));
//!
//! // Stream generated ids back to text.
//! let mut stream = tok.stream_decoder();
//! let mut text = String::new();
//! for id in tok.encode("生成的文本 ✓") {
//!     if let Some(piece) = stream.push(id) {
//!         text.push_str(&piece);
//!     }
//! }
//! text.push_str(&stream.finish());
//! assert_eq!(text, "生成的文本 ✓");
//! # Ok(())
//! # }
//! ```

// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod charsmap;
pub mod error;
pub mod glm;
pub mod model;
pub mod normalizer;
pub mod options;
pub mod proto;
pub mod stream;
mod trie;
mod unigram;
pub mod whitespace;

pub use error::{Error, Result};
pub use glm::{GlmSpecial, Tokenizer};
pub use model::SentencePieceModel;
pub use options::{EncodeFlags, Mode, TokenizerOptions, VocabLayout};
pub use proto::{ModelProto, PieceProto, PieceType};
pub use stream::StreamDecoder;

/// Runs the README's example as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
