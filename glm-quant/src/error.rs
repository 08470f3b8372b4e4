//! The error type of `glm-quant`: every variant names the tensor and what is wrong with it.

/// Errors of quantization, packing and quantized-checkpoint handling.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A bit width other than 4 or 8 was requested.
    #[error("unsupported quantization bit width {0} (GLM-130B supports 4 and 8)")]
    UnsupportedBits(u32),
    /// A scheme marker string could not be parsed.
    #[error("unknown quantization marker {0:?} (expected \"int8\" or \"int4\")")]
    UnknownMarker(String),
    /// A kernel was asked to run on an instruction set this CPU lacks.
    #[error("this CPU cannot run the {0} kernels")]
    UnsupportedIsa(&'static str),
    /// A buffer or tensor does not have the shape the layout implies.
    #[error("tensor `{tensor}`: shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name (or a description when it has none).
        tensor: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the operation cannot use.
    #[error("tensor `{tensor}`: dtype {found}, expected {expected}")]
    DtypeMismatch {
        /// Tensor name.
        tensor: String,
        /// The expected dtype(s).
        expected: String,
        /// The dtype found.
        found: String,
    },
    /// A weight holds NaN or an infinity (its row scale would be meaningless).
    #[error("tensor `{tensor}`: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Row (output feature).
        row: usize,
        /// Column (input feature).
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// An integer value lies outside what the scheme can store.
    #[error("tensor `{tensor}`: value {value} at index {index} is outside the {scheme} range")]
    ValueOutOfRange {
        /// Tensor name.
        tensor: String,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: i32,
        /// The scheme marker (`int8` / `int4`).
        scheme: &'static str,
    },
    /// The tensor-parallel degree does not divide the input features as the layout needs.
    #[error("tensor `{tensor}`: {in_features} input features cannot be split into {shards} shards{extra}")]
    BadShards {
        /// Tensor name.
        tensor: String,
        /// Input features.
        in_features: usize,
        /// Requested shard count.
        shards: usize,
        /// Extra explanation (e.g. the int4 even-shard rule).
        extra: String,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with [`QuantError`].
pub type Result<T> = std::result::Result<T, QuantError>;
