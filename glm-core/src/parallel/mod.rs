//! Tensor parallelism (spec §6): the model split over several ranks, one device each, exactly as
//! SAT splits GLM-130B, communicating through burn-collective (NCCL on CUDA).
//!
//! - [`TpLayout`] / [`ShardDims`]: which part of every parameter a rank holds (`torch.chunk`
//!   sizes for the vocabulary; whole heads; GeGLU halves).
//! - [`RankSource`]: a checkpoint as one rank sees it (its own SAT `mp_rank_XX` file, or slices).
//! - [`TensorParallel`]: the group of rank models and the runner that keeps them in lock step and
//!   turns any rank's failure into one typed error on every rank.
//!
//! ```
//! use burn::backend::Flex;
//! use glm_core::parallel::{TensorParallel, TpLayout};
//! use glm_core::{blank::BlankInput, GlmConfig, ModelOptions};
//!
//! let config = GlmConfig::tiny();
//! let device = Default::default();
//! let group = TensorParallel::<Flex>::random(
//!     &config, &[device], ModelOptions::default(), 7, TpLayout::new(2))?;
//! let specials = config.special_tokens;
//! let input = BlankInput::from_context(&[11, 12, 13, specials.gmask], &specials)?
//!     .to_input(&config)?;
//! // Every rank runs the same forward; each returns the whole vocabulary's logits.
//! let logits = group.run(
//!     |rank0| rank0.forward_input(&input, Default::default()),
//!     |rank| rank.forward_input(&input, Default::default()).map(drop),
//! )?;
//! assert_eq!(logits.logits.dims(), [1, 5, config.vocab_size]);
//! # Ok::<(), glm_core::Error>(())
//! ```

mod comm;
mod group;
mod layout;
pub mod nodes;
mod source;

pub(crate) use self::comm::runs_on_host;
pub use self::comm::{collective_turn, TpRank};
pub use self::group::TensorParallel;
pub(crate) use self::layout::slice_bytes;
pub use self::layout::{chunk_range, EmbeddingLayout, ShardDims, TpLayout};
pub use self::nodes::{NodeGroup, NodeSpec};
pub use self::source::RankSource;

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}
