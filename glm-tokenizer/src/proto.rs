//! The SentencePiece model file: a `ModelProto` protobuf message
//! (`sentencepiece_model.proto`), decoded by a small hand-written wire-format reader.
//!
//! Only the fields the encoder and decoder need are kept; every other field is skipped by its
//! wire type, as protobuf requires, so files written by any trainer version load. A field with
//! the wrong wire type, a truncated message or an unknown enum value is a typed [`Error`].
//! Embedded messages that appear twice are merged (protobuf semantics), singular scalars take
//! the last value.
//!
//! (Over 400 lines: a hand-written protobuf reader for SentencePiece model files with an error for every malformed field.)

use crate::error::{Error, Result};

/// Kind of a vocabulary entry (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceType {
    /// Ordinary piece, matched by the unigram model with its trained score.
    Normal,
    /// The `<unk>` piece; exactly one per model.
    Unknown,
    /// Control symbol (`<s>`, `</s>`, GLM's `[gMASK]` by default): never matched, decodes to "".
    Control,
    /// Always matched verbatim, never normalized (`<n>`, `<|tab|>`, `<|blank_N|>`).
    UserDefined,
    /// Unused slot: in the vocabulary but never produced by the encoder.
    Unused,
    /// Byte-fallback piece `<0xXX>`.
    Byte,
}

impl PieceType {
    fn from_proto(value: u64) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry (`ModelProto.SentencePiece`).
#[derive(Debug, Clone, PartialEq)]
pub struct PieceProto {
    /// Surface text of the piece, with `▁` (U+2581) standing for a space.
    pub piece: String,
    /// Log-probability score used by the unigram model.
    pub score: f32,
    /// Kind of piece.
    pub kind: PieceType,
}

/// The part of `TrainerSpec` that affects encoding and decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// `model_type`: 1 = UNIGRAM, 2 = BPE, 3 = WORD, 4 = CHAR.
    pub model_type: u64,
    /// Whether unknown characters are written out as `<0xXX>` byte pieces.
    pub byte_fallback: bool,
    /// Whether the whitespace marker goes after words instead of before them.
    pub treat_whitespace_as_suffix: bool,
    /// Text printed for `<unk>` when decoding (default `" ⁇ "`).
    pub unk_surface: String,
    /// Id of `<unk>` as declared by the trainer.
    pub unk_id: i32,
    /// Id of `<s>` (-1 when absent).
    pub bos_id: i32,
    /// Id of `</s>` (-1 when absent).
    pub eos_id: i32,
    /// Id of `<pad>` (-1 when absent).
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_surface: " \u{2047} ".to_string(),
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

/// `NormalizerSpec`: how text is normalized before segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// Rule name, e.g. `nmt_nfkc` or `identity` (informational; the charsmap is what applies).
    pub name: String,
    /// Double-array trie + replacement strings compiled from the rule.
    pub precompiled_charsmap: Vec<u8>,
    /// Prepend `▁` to the text.
    pub add_dummy_prefix: bool,
    /// Drop leading and trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Write spaces as `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// A decoded SentencePiece `ModelProto`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    /// Vocabulary in id order.
    pub pieces: Vec<PieceProto>,
    /// Trainer settings that matter at run time.
    pub trainer_spec: TrainerSpec,
    /// Normalizer applied before encoding.
    pub normalizer_spec: NormalizerSpec,
    /// Denormalizer applied after decoding, when the file has one.
    pub denormalizer_spec: Option<NormalizerSpec>,
}

impl ModelProto {
    /// Decodes a `ModelProto` from protobuf bytes. `source_name` is used in error messages.
    pub fn decode(bytes: &[u8], source_name: &str) -> Result<Self> {
        let mut model = ModelProto::default();
        let mut reader = Reader::new(bytes, source_name);
        while let Some((field, wire, at)) = reader.tag("ModelProto")? {
            match field {
                1 => {
                    let name = format!("ModelProto.pieces[{}]", model.pieces.len());
                    let body = reader.bytes_field(wire, at, &name)?;
                    model.pieces.push(decode_piece(body, source_name, &name)?);
                }
                2 => {
                    let body = reader.bytes_field(wire, at, "ModelProto.trainer_spec")?;
                    decode_trainer(body, source_name, &mut model.trainer_spec)?;
                }
                3 => {
                    let body = reader.bytes_field(wire, at, "ModelProto.normalizer_spec")?;
                    decode_normalizer(
                        body,
                        source_name,
                        "normalizer_spec",
                        &mut model.normalizer_spec,
                    )?;
                }
                5 => {
                    let body = reader.bytes_field(wire, at, "ModelProto.denormalizer_spec")?;
                    let spec = model
                        .denormalizer_spec
                        .get_or_insert_with(NormalizerSpec::default);
                    decode_normalizer(body, source_name, "denormalizer_spec", spec)?;
                }
                _ => reader.skip(wire, at, "ModelProto")?,
            }
        }
        Ok(model)
    }
}

fn decode_piece(bytes: &[u8], source_name: &str, name: &str) -> Result<PieceProto> {
    let mut piece = PieceProto {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut reader = Reader::new(bytes, source_name);
    while let Some((field, wire, at)) = reader.tag(name)? {
        match field {
            1 => piece.piece = reader.string_field(wire, at, &format!("{name}.piece"))?,
            2 => piece.score = reader.float_field(wire, at, &format!("{name}.score"))?,
            3 => {
                let field_name = format!("{name}.type");
                let value = reader.varint_field(wire, at, &field_name)?;
                piece.kind = PieceType::from_proto(value).ok_or_else(|| Error::Malformed {
                    source_name: source_name.to_string(),
                    field: field_name,
                    offset: at,
                    reason: format!("unknown piece type {value}"),
                })?;
            }
            _ => reader.skip(wire, at, name)?,
        }
    }
    Ok(piece)
}

fn decode_trainer(bytes: &[u8], source_name: &str, spec: &mut TrainerSpec) -> Result<()> {
    let mut reader = Reader::new(bytes, source_name);
    let name = "TrainerSpec";
    while let Some((field, wire, at)) = reader.tag(name)? {
        match field {
            3 => spec.model_type = reader.varint_field(wire, at, "TrainerSpec.model_type")?,
            24 => {
                spec.treat_whitespace_as_suffix =
                    reader.varint_field(wire, at, "TrainerSpec.treat_whitespace_as_suffix")? != 0
            }
            35 => {
                spec.byte_fallback =
                    reader.varint_field(wire, at, "TrainerSpec.byte_fallback")? != 0
            }
            // int32 fields are sign-extended 64-bit varints on the wire.
            40 => spec.unk_id = reader.varint_field(wire, at, "TrainerSpec.unk_id")? as i32,
            41 => spec.bos_id = reader.varint_field(wire, at, "TrainerSpec.bos_id")? as i32,
            42 => spec.eos_id = reader.varint_field(wire, at, "TrainerSpec.eos_id")? as i32,
            43 => spec.pad_id = reader.varint_field(wire, at, "TrainerSpec.pad_id")? as i32,
            44 => spec.unk_surface = reader.string_field(wire, at, "TrainerSpec.unk_surface")?,
            _ => reader.skip(wire, at, name)?,
        }
    }
    Ok(())
}

fn decode_normalizer(
    bytes: &[u8],
    source_name: &str,
    which: &str,
    spec: &mut NormalizerSpec,
) -> Result<()> {
    let mut reader = Reader::new(bytes, source_name);
    let field_name = |f: &str| format!("{which}.{f}");
    while let Some((field, wire, at)) = reader.tag(which)? {
        match field {
            1 => spec.name = reader.string_field(wire, at, &field_name("name"))?,
            2 => {
                spec.precompiled_charsmap = reader
                    .bytes_field(wire, at, &field_name("precompiled_charsmap"))?
                    .to_vec()
            }
            3 => {
                spec.add_dummy_prefix =
                    reader.varint_field(wire, at, &field_name("add_dummy_prefix"))? != 0
            }
            4 => {
                spec.remove_extra_whitespaces =
                    reader.varint_field(wire, at, &field_name("remove_extra_whitespaces"))? != 0
            }
            5 => {
                spec.escape_whitespaces =
                    reader.varint_field(wire, at, &field_name("escape_whitespaces"))? != 0
            }
            _ => reader.skip(wire, at, which)?,
        }
    }
    Ok(())
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Cursor over one protobuf message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    source_name: &'a str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], source_name: &'a str) -> Self {
        Self {
            buf,
            pos: 0,
            source_name,
        }
    }

    fn truncated(&self, field: &str, offset: usize) -> Error {
        Error::Truncated {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
            offset,
        }
    }

    fn wrong_wire(
        &self,
        field: &str,
        wire_type: u8,
        expected: &'static str,
        offset: usize,
    ) -> Error {
        Error::WireType {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
            wire_type,
            expected,
            offset,
        }
    }

    fn varint(&mut self, field: &str) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.truncated(field, start));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Malformed {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
            offset: start,
            reason: "varint longer than 64 bits".to_string(),
        })
    }

    /// Next `(field number, wire type, tag offset)`, or `None` at the end of the message.
    fn tag(&mut self, message: &str) -> Result<Option<(u64, u8, usize)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint(message)?;
        let field = key >> 3;
        let wire = (key & 7) as u8;
        if field == 0 {
            return Err(Error::Malformed {
                source_name: self.source_name.to_string(),
                field: message.to_string(),
                offset: at,
                reason: "field number 0".to_string(),
            });
        }
        Ok(Some((field, wire, at)))
    }

    fn take(&mut self, len: usize, field: &str, at: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(self.truncated(field, at));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn bytes_field(&mut self, wire: u8, at: usize, field: &str) -> Result<&'a [u8]> {
        if wire != WIRE_LEN {
            return Err(self.wrong_wire(field, wire, "length-delimited", at));
        }
        let len = self.varint(field)?;
        let len = usize::try_from(len).map_err(|_| self.truncated(field, at))?;
        self.take(len, field, at)
    }

    fn string_field(&mut self, wire: u8, at: usize, field: &str) -> Result<String> {
        let bytes = self.bytes_field(wire, at, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Malformed {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
            offset: at,
            reason: format!("not UTF-8: {e}"),
        })
    }

    fn varint_field(&mut self, wire: u8, at: usize, field: &str) -> Result<u64> {
        if wire != WIRE_VARINT {
            return Err(self.wrong_wire(field, wire, "varint", at));
        }
        self.varint(field)
    }

    fn float_field(&mut self, wire: u8, at: usize, field: &str) -> Result<f32> {
        if wire != WIRE_FIXED32 {
            return Err(self.wrong_wire(field, wire, "fixed32", at));
        }
        let raw = self.take(4, field, at)?;
        Ok(f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    fn skip(&mut self, wire: u8, at: usize, message: &str) -> Result<()> {
        match wire {
            WIRE_VARINT => self.varint(message).map(drop),
            WIRE_FIXED64 => self.take(8, message, at).map(drop),
            WIRE_LEN => self.bytes_field(wire, at, message).map(drop),
            WIRE_FIXED32 => self.take(4, message, at).map(drop),
            // 3/4 are the deprecated groups; SentencePiece never writes them.
            _ => Err(self.wrong_wire(message, wire, "a known wire type", at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    #[test]
    fn decodes_pieces_and_specs() {
        let mut piece = Vec::new();
        len_field(1, "▁a".as_bytes(), &mut piece);
        piece.push(2 << 3 | 5);
        piece.extend_from_slice(&(-1.5f32).to_le_bytes());
        piece.extend_from_slice(&[3 << 3, 4]);
        let mut norm = Vec::new();
        norm.extend_from_slice(&[3 << 3, 0]);
        let mut model = Vec::new();
        len_field(1, &piece, &mut model);
        len_field(3, &norm, &mut model);
        model.extend_from_slice(&[7 << 3 | 1, 0, 0, 0, 0, 0, 0, 0, 0]); // unknown fixed64, skipped
        let m = ModelProto::decode(&model, "t").expect("decodes");
        assert_eq!(m.pieces.len(), 1);
        assert_eq!(m.pieces[0].piece, "▁a");
        assert_eq!(m.pieces[0].score, -1.5);
        assert_eq!(m.pieces[0].kind, PieceType::UserDefined);
        assert!(!m.normalizer_spec.add_dummy_prefix);
        assert!(m.normalizer_spec.remove_extra_whitespaces);
    }

    #[test]
    fn negative_int32_is_sign_extended() {
        let mut trainer = Vec::new();
        varint(43 << 3, &mut trainer);
        varint(u64::MAX, &mut trainer);
        let mut model = Vec::new();
        len_field(2, &trainer, &mut model);
        let m = ModelProto::decode(&model, "t").expect("decodes");
        assert_eq!(m.trainer_spec.pad_id, -1);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(
            ModelProto::decode(&[1 << 3 | 2, 5, 1], "t"),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            ModelProto::decode(&[1 << 3, 5], "t"),
            Err(Error::WireType { .. })
        ));
        assert!(matches!(
            ModelProto::decode(&[0, 0], "t"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            ModelProto::decode(&[0x80; 12], "t"),
            Err(Error::Malformed { .. }) | Err(Error::Truncated { .. })
        ));
    }
}
