//! Runnable examples of the GLM-130B crates (`src/bin/*.rs`):
//!
//! - `blank_filling`: load the golden fixture model, fill `[MASK]` / `[gMASK]` prompts greedily and
//!   with beam search, print every beam with its score:
//!   `cargo run -p glm-examples --bin blank_filling [-- FIXTURE_DIR]`.
//! - `quickstart`: train a small GLM on the bundled corpus, then fill `[MASK]` / `[gMASK]` prompts.
//!
//! [`fuzz`] is the fuzz harness for every parser of a user file (`benches/fuzz.rs`,
//! `tests/fuzz.rs`).

#![warn(missing_docs)]
#[cfg(feature = "flex")]
pub mod fuzz;
pub mod quickstart;

/// Folder of the fixture model: the first CLI argument, else `GLM_FIXTURES`, else `../shared/fixtures`.
pub fn fixture_dir() -> Result<std::path::PathBuf, glm_core::Error> {
    match std::env::args().nth(1) {
        Some(dir) => Ok(dir.into()),
        None => glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures"),
    }
}
