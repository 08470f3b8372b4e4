//! The error type of `glm-core`: every variant names what is wrong (file, tensor, shape, field).

use std::path::PathBuf;

/// Errors of config validation, weight loading/saving and input construction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration describes an impossible model.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field, under its original (SAT) name.
        field: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A `config.json` is not valid JSON or lacks a required field.
    #[error("{}: invalid config JSON: {source}", path.display())]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The parse error (includes line and column).
        source: serde_json::Error,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{}: missing tensor `{tensor}`", file.display())]
    MissingTensor {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// The missing tensor name.
        tensor: String,
    },
    /// The checkpoint holds a tensor the model does not have.
    #[error("{}: unexpected tensor `{tensor}`", file.display())]
    UnexpectedTensor {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// The unknown tensor name.
        tensor: String,
    },
    /// A tensor has the wrong shape.
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot convert.
    #[error("{}: tensor `{tensor}` has unsupported dtype {dtype}", file.display())]
    UnsupportedDtype {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// The file is truncated, corrupt or not in the expected format.
    #[error("{}: corrupt or truncated file: {reason}", file.display())]
    CorruptFile {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's stored data is damaged or does not match its description (storage entry missing,
    /// too short, failing its CRC, view out of range): the checkpoint must not be used.
    #[error("{}: tensor `{tensor}`: {reason}", file.display())]
    CorruptTensor {
        /// The checkpoint file.
        file: PathBuf,
        /// The tensor (several, joined, when a damaged storage backs more than one).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The weights do not fit the configuration (e.g. layer count).
    #[error("{}: config/weights mismatch: {reason}", file.display())]
    ConfigMismatch {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Model inputs are inconsistent (lengths, ids out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A device was asked for that this build or this machine cannot provide.
    #[error("device: {0}")]
    Device(String),
    /// A rank of a tensor-parallel group failed (a panic, a device or communication error); every
    /// rank of the group stops and returns this, naming the rank that failed first.
    #[error("tensor-parallel rank {rank} failed: {reason}")]
    TensorParallel {
        /// The rank that failed first.
        rank: usize,
        /// What happened.
        reason: String,
    },
    /// A node of a multi-node job was lost (killed, crashed, unreachable): every other node
    /// stops with this, naming it.
    #[error("multi-node: node {node} ({address}) was lost: {reason}")]
    NodeLost {
        /// The lost node's rank.
        node: u32,
        /// Its tensor data service address.
        address: String,
        /// What the collective saw.
        reason: String,
    },
    /// A multi-node job could not be formed (bad flags, the nodes disagree) or a collective failed
    /// without a node to blame (timeout).
    #[error("multi-node: {0}")]
    MultiNode(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::CorruptFile {
            file: file.into(),
            reason: reason.into(),
        }
    }
}
