//! The error type of the evaluation harness: every variant about a user file names the file, the
//! line and (where there is one) the field.

use std::path::{Path, PathBuf};

/// Errors of task parsing, data loading and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task YAML is not valid YAML, or a field is unknown, missing or of the wrong type.
    #[error("{}", located(path, *line, field.as_deref(), message))]
    Task {
        /// The YAML file.
        path: PathBuf,
        /// 1-based line of the offending key / value (0 = the whole file).
        line: usize,
        /// The field, as written in the file (`None` for syntax errors).
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A data file (JSONL, text) has a malformed line or field.
    #[error("{}", located(path, *line, field.as_deref(), message))]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line (0 = the whole file).
        line: usize,
        /// The JSON field (`None` for syntax errors).
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model failed (bad input for this model, loading).
    #[error(transparent)]
    Model(#[from] glm_core::Error),
    /// Generation / tokenization / CLI helpers failed.
    #[error(transparent)]
    Infer(#[from] crate::Error),
    /// A tensor could not be read back from the device.
    #[error("reading {what} back from the device: {message}")]
    Readback {
        /// Which tensor.
        what: &'static str,
        /// The backend's message.
        message: String,
    },
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
}

/// `Result` with [`EvalError`].
pub type EvalResult<T> = std::result::Result<T, EvalError>;

fn located(path: &Path, line: usize, field: Option<&str>, message: &str) -> String {
    let mut s = path.display().to_string();
    if line > 0 {
        s.push_str(&format!(":{line}"));
    }
    match field {
        Some(f) => format!("{s}: field `{f}`: {message}"),
        None => format!("{s}: {message}"),
    }
}

impl EvalError {
    /// A task-file error at `line` about `field`.
    pub fn task(
        path: &Path,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Task {
            path: path.to_path_buf(),
            line,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A data-file error at `line` about `field`.
    pub fn data(
        path: &Path,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Data {
            path: path.to_path_buf(),
            line,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
