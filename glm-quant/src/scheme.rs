//! [`QuantScheme`]: GLM-130B's weight-only symmetric per-row scheme (INT8 or INT4) and its marker
//! strings.

use crate::error::{QuantError, Result};

/// Key of the safetensors `__metadata__` entry that marks a quantized checkpoint (`"int8"` / `"int4"`).
pub const METADATA_SCHEME_KEY: &str = "glm_quant";
/// Key of the `__metadata__` entry holding the tensor-parallel degree the row-parallel scales were
/// computed for (`"1"`, `"2"`, …).
pub const METADATA_TP_KEY: &str = "tensor_parallel";
/// Suffix of the scale tensor next to a quantized weight (`<linear>.weight_scale`), as in SAT checkpoints.
pub const SCALE_SUFFIX: &str = "_scale";

/// Which integer width the weights are stored in.
///
/// Both are symmetric absmax schemes with one fp16 scale per output row (per tensor-parallel
/// shard for row-parallel layers): INT8 values in `[-127, 127]`, INT4 values in `[-7, 7]`
/// (`-8` is never produced by the quantizer but is accepted when unpacking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantScheme {
    /// 8-bit weights, one byte per value (`W8A16`).
    Int8,
    /// 4-bit weights, two values per byte, even column in the HIGH nibble (`W4A16`).
    Int4,
}

impl QuantScheme {
    /// The scheme for `--quantization-bit-width bits` (4 or 8).
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            8 => Ok(Self::Int8),
            4 => Ok(Self::Int4),
            other => Err(QuantError::UnsupportedBits(other)),
        }
    }

    /// Bits per weight (4 or 8).
    pub fn bits(self) -> u32 {
        match self {
            Self::Int8 => 8,
            Self::Int4 => 4,
        }
    }

    /// The largest quantized magnitude, `2^(bits-1) - 1` (127 or 7): the scale divisor.
    pub fn max_q(self) -> i32 {
        (1 << (self.bits() - 1)) - 1
    }

    /// The smallest storable value (-128 or -8).
    pub fn min_storable(self) -> i32 {
        -(1 << (self.bits() - 1))
    }

    /// The marker string stored in checkpoint metadata (`"int8"` / `"int4"`).
    pub fn marker(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }

    /// Parses a marker written by [`marker`](Self::marker).
    pub fn from_marker(marker: &str) -> Result<Self> {
        match marker {
            "int8" => Ok(Self::Int8),
            "int4" => Ok(Self::Int4),
            other => Err(QuantError::UnknownMarker(other.to_string())),
        }
    }

    /// Bytes one row of `in_features` values occupies in a checkpoint (`in` or `ceil(in/2)`).
    pub fn row_bytes(self, in_features: usize) -> usize {
        match self {
            Self::Int8 => in_features,
            Self::Int4 => in_features.div_ceil(2),
        }
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.marker())
    }
}
