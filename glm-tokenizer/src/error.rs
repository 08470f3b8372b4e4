//! The crate's one error type.
//!
//! Every variant names the model source (a file path, or `<memory>` for bytes handed over
//! directly) and the protobuf field or piece that was wrong, so a bad `ice_text.model` is
//! diagnosable from the message alone.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a SentencePiece model or building a tokenizer.
///
/// Encoding text and decoding ids never fail: those paths have no error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// Path that was opened.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The protobuf bytes end in the middle of a field.
    #[error("{source_name}: truncated protobuf in {field} at byte {offset}")]
    Truncated {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Protobuf field being read, e.g. `ModelProto.pieces[12].score`.
        field: String,
        /// Byte offset (in the enclosing message) where the data ran out.
        offset: usize,
    },

    /// A field carries a wire type that its declaration does not allow (e.g. a file that is not a
    /// SentencePiece model at all), or a wire type protobuf does not define.
    #[error("{source_name}: field {field} has wire type {wire_type}, expected {expected} (byte {offset})")]
    WireType {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Protobuf field being read.
        field: String,
        /// Wire type found.
        wire_type: u8,
        /// Wire type the schema requires (`"varint"`, `"length-delimited"`, ...).
        expected: &'static str,
        /// Byte offset of the field tag.
        offset: usize,
    },

    /// Bytes that are structurally wrong for their field: an over-long varint, a field number of
    /// zero, a piece that is not UTF-8, an unknown enum value.
    #[error("{source_name}: malformed {field} at byte {offset}: {reason}")]
    Malformed {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Protobuf field being read.
        field: String,
        /// Byte offset where the problem was seen.
        offset: usize,
        /// What was wrong.
        reason: String,
    },

    /// The protobuf decoded, but the model breaks a SentencePiece invariant (no `<unk>`, a
    /// duplicate piece, a byte piece without `byte_fallback`, a broken charsmap...).
    #[error("{source_name}: invalid model: {field}: {reason}")]
    InvalidModel {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Field or piece concerned, e.g. `pieces[7]` or `normalizer_spec.precompiled_charsmap`.
        field: String,
        /// What was wrong.
        reason: String,
    },

    /// A valid SentencePiece model that uses a feature this crate does not implement
    /// (BPE/word/char models, a denormalizer).
    #[error("{source_name}: unsupported model feature: {what}")]
    Unsupported {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Feature that was found.
        what: String,
    },

    /// A vocabulary layout that expects GLM's special pieces in the file (ChatGLM-6B) did not
    /// find one of them.
    #[error("{source_name}: GLM special piece {piece:?} is not in the vocabulary")]
    MissingSpecialPiece {
        /// Model file name or `<memory>`.
        source_name: String,
        /// Piece text that was looked up, e.g. `[gMASK]`.
        piece: String,
    },
}
