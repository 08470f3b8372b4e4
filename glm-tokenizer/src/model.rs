//! A loaded SentencePiece model: vocabulary, normalizer and unigram segmenter, with
//! SentencePiece's own encode (`EncodeAsIds`) and decode (`DecodeIds`) rules.
//!
//! Load-time checks follow sentencepiece 0.2.3 `ModelInterface::InitializePieces` and
//! `unigram::Model`: pieces are non-empty, shorter than 8000 bytes, free of NUL, with finite
//! scores, and unique within their class (NORMAL/USER_DEFINED/UNUSED share one namespace, the
//! reserved kinds another); at most one `<unk>`, required unless `byte_fallback` is on; byte
//! pieces only with `byte_fallback`, only as `<0xXX>`, and then all 256 of them.
//!
//! (Over 400 lines: the SentencePiece unigram model (Viterbi segmentation, byte fallback, normalisation) that icetk's text tokenizer is.)

use std::collections::HashMap;
use std::path::Path;

use crate::charsmap::CharsMap;
use crate::error::{Error, Result};
use crate::normalizer::{Normalizer, SPACE_SYMBOL};
use crate::proto::{ModelProto, PieceProto, PieceType};
use crate::unigram::{Segment, Unigram};

/// Marks "not a byte piece" in the per-id byte table.
const NOT_BYTE: u16 = u16::MAX;
/// Pieces this long or longer are rejected (`kMaxPieceSize`).
const MAX_PIECE_BYTES: usize = 8000;

/// A SentencePiece unigram model ready to encode and decode.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    source_name: String,
    proto: ModelProto,
    /// PieceToId: reserved kinds first, then the normal namespace (as the C++ lookup order).
    reserved_ids: HashMap<String, u32>,
    normal_ids: HashMap<String, u32>,
    /// Byte value of each `<0xXX>` piece, `NOT_BYTE` elsewhere.
    byte_value: Vec<u16>,
    /// Id of the `<0xXX>` piece for each byte (all present whenever byte fallback is on).
    byte_id: [u32; 256],
    /// Id of `<unk>`; `u32::MAX` marks unknown characters when the model has none.
    unk_id: u32,
    normalizer: Normalizer,
    unigram: Unigram,
}

impl SentencePieceModel {
    /// Reads and loads a `.model` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a model from protobuf bytes; `source_name` labels errors (e.g. the file name).
    pub fn from_bytes(bytes: &[u8], source_name: &str) -> Result<Self> {
        Self::from_proto(ModelProto::decode(bytes, source_name)?, source_name)
    }

    /// Loads an already-decoded (possibly edited) `ModelProto`.
    pub fn from_proto(proto: ModelProto, source_name: &str) -> Result<Self> {
        let invalid = |field: String, reason: String| Error::InvalidModel {
            source_name: source_name.to_string(),
            field,
            reason,
        };
        if proto.trainer_spec.model_type != 1 {
            let kind = match proto.trainer_spec.model_type {
                2 => "BPE".to_string(),
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                other => format!("model_type {other}"),
            };
            return Err(Error::Unsupported {
                source_name: source_name.to_string(),
                what: format!("{kind} model (only UNIGRAM is implemented)"),
            });
        }
        if proto
            .denormalizer_spec
            .as_ref()
            .is_some_and(|d| !d.precompiled_charsmap.is_empty())
        {
            return Err(Error::Unsupported {
                source_name: source_name.to_string(),
                what: "denormalizer_spec with a charsmap".to_string(),
            });
        }
        if proto.pieces.len() >= u32::MAX as usize / 2 {
            return Err(invalid("pieces".into(), "too many pieces".into()));
        }

        let mut reserved_ids = HashMap::new();
        let mut normal_ids = HashMap::with_capacity(proto.pieces.len());
        let mut byte_value = vec![NOT_BYTE; proto.pieces.len()];
        let mut byte_id = [u32::MAX; 256];
        let mut unk_id = None;
        let mut user_defined = Vec::new();
        for (i, p) in proto.pieces.iter().enumerate() {
            let field = || format!("pieces[{i}] {:?}", p.piece);
            if p.piece.is_empty() {
                return Err(invalid(
                    format!("pieces[{i}]"),
                    "piece must not be empty".into(),
                ));
            }
            if p.piece.len() >= MAX_PIECE_BYTES {
                return Err(invalid(format!("pieces[{i}]"), "piece is too long".into()));
            }
            if !p.score.is_finite() {
                return Err(invalid(field(), "score is NaN or Inf".into()));
            }
            if p.piece == "\0" && p.kind == PieceType::Unused {
                continue; // the C++ loader skips this placeholder
            }
            if p.piece.contains('\0') {
                return Err(invalid(
                    field(),
                    "piece must not include a NUL character".into(),
                ));
            }
            let map = match p.kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => &mut normal_ids,
                _ => &mut reserved_ids,
            };
            if map.insert(p.piece.clone(), i as u32).is_some() {
                return Err(invalid(field(), "piece is already defined".into()));
            }
            match p.kind {
                PieceType::UserDefined => user_defined.push(p.piece.as_str()),
                PieceType::Unknown if unk_id.is_some() => {
                    return Err(invalid(field(), "a second UNKNOWN piece".into()));
                }
                PieceType::Unknown => unk_id = Some(i as u32),
                PieceType::Byte => {
                    if !proto.trainer_spec.byte_fallback {
                        return Err(invalid(
                            field(),
                            "byte piece although trainer_spec.byte_fallback is false".into(),
                        ));
                    }
                    let Some(b) = parse_byte_piece(&p.piece) else {
                        return Err(invalid(
                            field(),
                            "BYTE piece is not of the form <0xXX>".into(),
                        ));
                    };
                    byte_value[i] = u16::from(b);
                    byte_id[b as usize] = i as u32;
                }
                _ => {}
            }
        }
        let byte_fallback = proto.trainer_spec.byte_fallback;
        if unk_id.is_none() && !byte_fallback {
            return Err(invalid("pieces".into(), "no UNKNOWN (<unk>) piece".into()));
        }
        if byte_fallback {
            if let Some(b) = byte_id.iter().position(|&id| id == u32::MAX) {
                return Err(invalid(
                    "pieces".into(),
                    format!(
                        "byte_fallback is on but {} is missing (all 256 byte pieces are required)",
                        byte_piece(b as u8)
                    ),
                ));
            }
        }
        let unk_id = unk_id.unwrap_or(u32::MAX);
        if normal_ids.is_empty() {
            return Err(invalid("pieces".into(), "no matchable piece".into()));
        }

        let spec = &proto.normalizer_spec;
        let charsmap = if spec.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(CharsMap::parse(&spec.precompiled_charsmap, source_name)?)
        };
        let normalizer = Normalizer::new(
            spec,
            charsmap,
            &user_defined,
            proto.trainer_spec.treat_whitespace_as_suffix,
        );
        let unigram = Unigram::new(&proto.pieces, unk_id);
        Ok(Self {
            source_name: source_name.to_string(),
            proto,
            reserved_ids,
            normal_ids,
            byte_value,
            byte_id,
            unk_id,
            normalizer,
            unigram,
        })
    }

    /// Name used in error messages (the file path, or what the caller passed).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The decoded model file.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.proto.pieces.len()
    }

    /// Whether the vocabulary is empty (never true for a loaded model).
    pub fn is_empty(&self) -> bool {
        self.proto.pieces.is_empty()
    }

    /// Piece text of `id`.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.proto.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// Kind of piece `id`.
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.proto.pieces.get(id as usize).map(|p| p.kind)
    }

    /// Id of a piece, as SentencePiece's `PieceToId` (reserved kinds first); `None` when the
    /// piece is not in the vocabulary (where the C++ library would answer the `<unk>` id).
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.reserved_ids
            .get(piece)
            .or_else(|| self.normal_ids.get(piece))
            .copied()
    }

    /// Id of `<unk>` (a byte-fallback model may have none).
    pub fn unk_id(&self) -> Option<u32> {
        (self.unk_id != u32::MAX).then_some(self.unk_id)
    }

    /// Normalized form of `text` (bytes; `▁` marks spaces when escaping is on).
    pub fn normalize(&self, text: &str) -> Vec<u8> {
        self.normalizer.normalize(text)
    }

    /// Encodes `text` and appends the piece ids to `out` (SentencePiece `EncodeAsIds`).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.normalizer.normalize(text);
        let mut segments: Vec<Segment> = Vec::with_capacity(normalized.len() / 2 + 1);
        self.unigram.encode(&normalized, &mut segments);
        let byte_fallback = self.proto.trainer_spec.byte_fallback;
        let mut prev_unk = false;
        for seg in &segments {
            let is_unk = seg.id == self.unk_id;
            if is_unk && byte_fallback {
                let bytes = normalized
                    .get(seg.start as usize..seg.end as usize)
                    .unwrap_or_default();
                out.extend(bytes.iter().map(|&b| self.byte_id[b as usize]));
            } else if !(is_unk && prev_unk) {
                // A run of unknown characters collapses into one <unk>.
                out.push(seg.id);
            }
            prev_unk = is_unk;
        }
    }

    /// Encodes `text` into piece ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// Byte value of a BYTE piece.
    pub(crate) fn byte_of(&self, id: u32) -> Option<u8> {
        match self.byte_value.get(id as usize) {
            Some(&v) if v != NOT_BYTE => Some(v as u8),
            _ => None,
        }
    }

    /// Appends the decoded surface of the non-byte piece `id` (the body of sentencepiece
    /// 0.2.3 `DecodeOptimized`). `produced` says whether anything has been decoded so far,
    /// flushed byte pieces included; it is updated.
    pub(crate) fn push_surface(
        &self,
        id: u32,
        state: &mut BosState,
        produced: &mut bool,
        out: &mut String,
    ) {
        if *produced {
            state.is_bos_ws = false;
        }
        let Some(p) = self.proto.pieces.get(id as usize) else {
            return;
        };
        if p.kind == PieceType::Control {
            return;
        }
        let spec = &self.proto.normalizer_spec;
        let mut piece = p.piece.as_bytes();
        let mut has_bos_ws = false;
        if state.is_bos_ws && (spec.add_dummy_prefix || spec.remove_extra_whitespaces) {
            if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                piece = rest;
                // With remove_extra_whitespaces every leading ▁ goes: the phase goes on.
                has_bos_ws = !spec.remove_extra_whitespaces;
            }
        }
        let before = out.len();
        if p.kind == PieceType::Unknown {
            out.push_str(&self.proto.trainer_spec.unk_surface);
        } else {
            push_unescaped(piece, out);
        }
        *produced |= out.len() > before;
        if has_bos_ws || *produced {
            state.is_bos_ws = false;
        }
    }

    /// SentencePiece `DecodeIds` over piece ids; ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        let mut bytes = Vec::new();
        let mut state = BosState::default();
        for &id in ids {
            if id as usize >= self.len() {
                continue;
            }
            if let Some(b) = self.byte_of(id) {
                bytes.push(b);
                continue;
            }
            push_byte_run(&bytes, &mut text);
            bytes.clear();
            let mut produced = !text.is_empty();
            self.push_surface(id, &mut state, &mut produced, &mut text);
        }
        push_byte_run(&bytes, &mut text);
        text
    }
}

/// Whether the decoder is still at the beginning of the text, where a leading `▁` is dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BosState {
    is_bos_ws: bool,
}

impl Default for BosState {
    fn default() -> Self {
        Self { is_bos_ws: true }
    }
}

/// Appends `piece` with every `▁` turned into a space. Pieces are `String`s, so the bytes are
/// UTF-8 and replacing the 3-byte marker keeps them so.
fn push_unescaped(piece: &[u8], out: &mut String) {
    let s = std::str::from_utf8(piece).unwrap_or_default();
    let mut rest = s;
    while let Some(at) = rest.find('\u{2581}') {
        out.push_str(&rest[..at]);
        out.push(' ');
        rest = &rest[at + '\u{2581}'.len_utf8()..];
    }
    out.push_str(rest);
}

/// Length of the valid UTF-8 character at the start of `bytes`, judged only on the bytes given
/// (SentencePiece's `IsValidDecodeUTF8`: overlong forms, surrogates and > U+10FFFF are invalid).
pub(crate) fn valid_char_len(bytes: &[u8]) -> Option<usize> {
    let need = match *bytes.first()? {
        0x00..=0x7f => 1,
        b if b & 0xe0 == 0xc0 => 2,
        b if b & 0xf0 == 0xe0 => 3,
        b if b & 0xf8 == 0xf0 => 4,
        _ => return None,
    };
    let chunk = bytes.get(..need)?;
    std::str::from_utf8(chunk).ok().map(|_| need)
}

/// Decodes a complete run of byte pieces: each valid character as itself, each byte that does
/// not start one as U+FFFD.
pub(crate) fn push_byte_run(bytes: &[u8], out: &mut String) {
    let mut at = 0;
    while at < bytes.len() {
        match valid_char_len(&bytes[at..]) {
            Some(n) => {
                out.push_str(std::str::from_utf8(&bytes[at..at + n]).unwrap_or("\u{fffd}"));
                at += n;
            }
            None => {
                out.push('\u{fffd}');
                at += 1;
            }
        }
    }
}

/// `<0xXX>` (upper-case hex, as `ByteToPiece` writes it) → byte.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// `<0xXX>` piece text for a byte.
pub(crate) fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// Builds a `PieceProto`.
pub(crate) fn piece(text: impl Into<String>, kind: PieceType) -> PieceProto {
    PieceProto {
        piece: text.into(),
        score: 0.0,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(parse_byte_piece(&byte_piece(b)), Some(b));
        }
        assert_eq!(parse_byte_piece("<0xab>"), None);
        assert_eq!(parse_byte_piece("<0x1>"), None);
    }

    #[test]
    fn byte_runs_replace_invalid_bytes_one_by_one() {
        let mut s = String::new();
        push_byte_run(&[0xe4, 0xbd], &mut s);
        assert_eq!(s, "\u{fffd}\u{fffd}");
        s.clear();
        push_byte_run(&[0xe4, 0xbd, 0xa0, 0x41, 0xc0, 0x80], &mut s);
        assert_eq!(s, "你A\u{fffd}\u{fffd}");
    }
}
