//! The error type of `glm-infer`.

/// Errors of prompt construction, generation and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model crate failed (loading, config, input).
    #[error(transparent)]
    Core(#[from] glm_core::Error),
    /// The tokenizer failed to load.
    #[error(transparent)]
    Tokenizer(#[from] glm_tokenizer::Error),
    /// The prompt cannot be generated from (too long, no budget left, bad ids).
    #[error("prompt: {0}")]
    Prompt(String),
    /// Strategy parameters are invalid.
    #[error("invalid strategy: {0}")]
    Strategy(String),
    /// A file of the CLI could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad command-line usage (unknown device, missing model, ...).
    #[error("{0}")]
    Usage(String),
    /// The evaluation harness failed (its own error type, with file, line and field).
    #[cfg(feature = "eval")]
    #[error(transparent)]
    Eval(Box<crate::eval::EvalError>),
}

#[cfg(feature = "eval")]
impl From<crate::eval::EvalError> for Error {
    fn from(e: crate::eval::EvalError) -> Self {
        // `EvalError` can hold an `Error` itself: boxed to keep both enums finite.
        Self::Eval(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
