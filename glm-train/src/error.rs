//! The error type of `glm-train`.

use std::path::PathBuf;

/// Errors of configuration, data preparation, training and checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file (config, JSONL corpus line, checkpoint metadata) is invalid.
    #[error("{}: {reason}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong (includes line numbers for JSONL).
        reason: String,
    },
    /// A configuration value is impossible.
    #[error("invalid training config: {field}: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The corpus cannot provide what training needs.
    #[error("data: {0}")]
    Data(String),
    /// The training plot could not be drawn.
    #[error("training plot: {0}")]
    Plot(String),
    /// A checkpoint is damaged or does not fit the run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tokenized-corpus cache file (`NAME.tokens` / `NAME.offsets`) is damaged or too large.
    #[error("token cache {}: {reason}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--resume` found no checkpoint it can continue from.
    #[error("--resume: no valid checkpoint in {}: {}", root.display(), describe_found(found))]
    NothingToResume {
        /// The checkpoint folder (`OUT/checkpoints`).
        root: PathBuf,
        /// Every checkpoint folder looked at, with why it was rejected.
        found: Vec<(PathBuf, String)>,
    },
    /// A checkpoint was written for another corpus (documents added, removed or changed).
    #[error("checkpoint {}: written for a different corpus: {reason}", path.display())]
    CorpusChanged {
        /// The checkpoint folder.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A data-parallel step failed: a replica's forward/backward panicked or burn-collective's
    /// gradient all-reduce returned an error.
    #[error("data-parallel replica {replica}: {reason}")]
    DataParallel {
        /// The replica (peer id) that failed.
        replica: usize,
        /// What went wrong.
        reason: String,
    },
    /// An error of the model crate.
    #[error(transparent)]
    Model(#[from] glm_core::Error),
    /// An error of the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] glm_tokenizer::Error),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Config`].
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }
}

fn describe_found(found: &[(PathBuf, String)]) -> String {
    if found.is_empty() {
        return "no checkpoint folder found".into();
    }
    found
        .iter()
        .map(|(p, why)| format!("{} ({why})", p.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
