//! The GLM layer: vocabulary layouts, GLM's special ids, whitespace tokens and the
//! [`Tokenizer`] that glm-infer uses.
//!
//! Every GLM tokenizer is icetk's SentencePiece text model plus a few rules, so one type with
//! options ([`crate::options`]) covers them all (see [`crate::Mode`] for the eight
//! combinations in the golden data):
//! - **ids are shifted** by `num_image_tokens` (20000: image tokens come first; 0 for
//!   ChatGLM-6B v1.1, whose file already holds the extra pieces);
//! - **pieces are appended** after the 130000 text pieces (SAT `GLM130BTokenizer`):
//!   `[MASK] [gMASK] [sMASK] <eod> <sop> <eop> <ENC> <dBLOCK>` (CONTROL, or USER_DEFINED
//!   with `special_tokens`), `<|tab|>`, `<|blank_2|>`..`<|blank_80|>` (USER_DEFINED) and
//!   `<0x00>`..`<0xFF>` (BYTE, with `byte_fallback` turned on);
//! - **text is rewritten** before SentencePiece (`\n` → `<n>`, tabs and space runs → tokens)
//!   and after decoding (back again); see [`crate::whitespace`].
//!
//! Special ids are looked up in the final vocabulary, never hard-coded, so the same code gives
//! `[gMASK]` = 150001 for GLM-130B and 130001 for ChatGLM-6B.

use std::borrow::Cow;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{byte_piece, piece, SentencePieceModel};
use crate::options::{EncodeFlags, TokenizerOptions, VocabLayout};
use crate::proto::{ModelProto, PieceType};
use crate::stream::StreamDecoder;
use crate::whitespace::{blank_token, WhitespaceTokens, NEWLINE_TOKEN, TAB_TOKEN};

/// GLM's eight special tokens, in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlmSpecial {
    /// `[MASK]`: short blank infilling.
    Mask,
    /// `[gMASK]`: generation mask (left-to-right continuation).
    GMask,
    /// `[sMASK]`: sentence-level mask.
    SMask,
    /// `<eod>` (`<unused_0>` in ChatGLM-6B): end of document.
    Eod,
    /// `<sop>`: start of a generated span.
    Sop,
    /// `<eop>`: end of a generated span.
    Eop,
    /// `<ENC>`.
    Enc,
    /// `<dBLOCK>`.
    DBlock,
}

impl GlmSpecial {
    /// All specials in id order.
    pub const ALL: [GlmSpecial; 8] = [
        Self::Mask,
        Self::GMask,
        Self::SMask,
        Self::Eod,
        Self::Sop,
        Self::Eop,
        Self::Enc,
        Self::DBlock,
    ];

    /// Piece text as GLM-130B writes it.
    pub fn piece(self) -> &'static str {
        match self {
            Self::Mask => "[MASK]",
            Self::GMask => "[gMASK]",
            Self::SMask => "[sMASK]",
            Self::Eod => "<eod>",
            Self::Sop => "<sop>",
            Self::Eop => "<eop>",
            Self::Enc => "<ENC>",
            Self::DBlock => "<dBLOCK>",
        }
    }
}

/// A GLM tokenizer: SentencePiece model + GLM layout. Cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    model: SentencePieceModel,
    options: TokenizerOptions,
    whitespace: WhitespaceTokens,
    /// Global ids of the GLM specials, in [`GlmSpecial::ALL`] order.
    specials: [u32; 8],
    eos_id: u32,
}

impl Tokenizer {
    /// Loads `path` (an `ice_text.model`) with the given options.
    pub fn from_file(path: impl AsRef<Path>, options: TokenizerOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string(), options)
    }

    /// Builds a tokenizer from model bytes; `source_name` labels errors.
    pub fn from_bytes(bytes: &[u8], source_name: &str, options: TokenizerOptions) -> Result<Self> {
        let mut proto = ModelProto::decode(bytes, source_name)?;
        let special_kind = if options.special_tokens {
            PieceType::UserDefined
        } else {
            PieceType::Control
        };
        match options.layout {
            VocabLayout::Glm130b | VocabLayout::Icetk => {
                for s in GlmSpecial::ALL {
                    proto.pieces.push(piece(s.piece(), special_kind));
                }
            }
            VocabLayout::ChatGlm6b => {
                for p in proto.pieces.iter_mut() {
                    if special_index(&p.piece, true).is_some() {
                        p.kind = special_kind;
                    }
                }
            }
        }
        if options.layout == VocabLayout::Glm130b {
            proto.pieces.push(piece(TAB_TOKEN, PieceType::UserDefined));
            for n in 2..=options.max_blank_length {
                proto
                    .pieces
                    .push(piece(blank_token(n), PieceType::UserDefined));
            }
            proto.trainer_spec.byte_fallback = true;
            for b in 0..=255u8 {
                proto.pieces.push(piece(byte_piece(b), PieceType::Byte));
            }
        }
        let model = SentencePieceModel::from_proto(proto, source_name)?;
        if (model.len() as u64) + u64::from(options.num_image_tokens) > u64::from(u32::MAX) {
            return Err(Error::InvalidModel {
                source_name: source_name.to_string(),
                field: "pieces".to_string(),
                reason: "vocabulary plus num_image_tokens does not fit in u32 ids".to_string(),
            });
        }
        let missing = |piece: &str| Error::MissingSpecialPiece {
            source_name: source_name.to_string(),
            piece: piece.to_string(),
        };
        let mut specials = [0u32; 8];
        for (slot, s) in specials.iter_mut().zip(GlmSpecial::ALL) {
            let id = model.piece_to_id(s.piece());
            let id = match (id, s) {
                (None, GlmSpecial::Eod) => model.piece_to_id("<unused_0>"),
                (id, _) => id,
            };
            *slot = id.ok_or_else(|| missing(s.piece()))? + options.num_image_tokens;
        }
        let declared_eos = u32::try_from(model.proto().trainer_spec.eos_id).ok();
        let eos = declared_eos
            .filter(|&id| (id as usize) < model.len())
            .or_else(|| model.piece_to_id("</s>"));
        let eos_id = eos.ok_or_else(|| missing("</s>"))? + options.num_image_tokens;
        let whitespace = WhitespaceTokens {
            tab_and_blanks: options.layout != VocabLayout::Icetk,
            max_blank_length: options.max_blank_length,
        };
        Ok(Self {
            model,
            options,
            whitespace,
            specials,
            eos_id,
        })
    }

    /// GLM-130B tokenizer with the default options ([`TokenizerOptions::glm130b`]).
    pub fn glm130b(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(path, TokenizerOptions::glm130b())
    }

    /// icetk tokenizer as the GLM-130B release uses it ([`TokenizerOptions::icetk`]).
    pub fn icetk(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(path, TokenizerOptions::icetk())
    }

    /// ChatGLM-6B v1.1 tokenizer ([`TokenizerOptions::chatglm6b`]).
    pub fn chatglm6b(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(path, TokenizerOptions::chatglm6b())
    }

    /// Options this tokenizer was built with.
    pub fn options(&self) -> &TokenizerOptions {
        &self.options
    }

    /// The underlying SentencePiece model (with GLM's pieces appended).
    pub fn model(&self) -> &SentencePieceModel {
        &self.model
    }

    /// Encodes `text` with the default [`EncodeFlags`] of the options.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, self.options.encode)
    }

    /// Encodes `text` with explicit flags.
    pub fn encode_with(&self, text: &str, flags: EncodeFlags) -> Vec<u32> {
        let mut text = self
            .whitespace
            .preprocess(text, flags.linebreak, flags.whitespaces);
        if !flags.add_dummy_prefix {
            text = Cow::Owned(format!("{NEWLINE_TOKEN}{text}"));
        }
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        self.model.encode_into(&text, &mut ids);
        if !flags.add_dummy_prefix {
            // "▁" and "<n>": the two ids the reference slices off with `tokens[2:]`.
            ids.drain(..ids.len().min(2));
        }
        let offset = self.options.num_image_tokens;
        if offset != 0 {
            ids.iter_mut().for_each(|id| *id += offset);
        }
        ids
    }

    /// Encodes many texts, in parallel over the available cores for large batches.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        let total: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(texts.len());
        if threads <= 1 || total < 64 * 1024 {
            return texts.iter().map(|t| self.encode(t.as_ref())).collect();
        }
        let chunk = texts.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = texts
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|t| self.encode(t.as_ref()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Decodes ids to text. Ids that are not text pieces of this vocabulary (image tokens below
    /// `num_image_tokens`, anything past [`Self::vocab_size`]) are skipped; the reference
    /// implementations raise on them instead.
    pub fn decode(&self, ids: &[u32]) -> String {
        let piece_ids: Vec<u32> = ids.iter().filter_map(|&id| self.to_piece_id(id)).collect();
        let raw = self.model.decode(&piece_ids);
        let mut out = String::with_capacity(raw.len());
        self.whitespace.replace_into(&raw, &mut out);
        out
    }

    /// A streaming decoder for generated ids.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// SentencePiece id of a global id, if it is a text piece of this vocabulary.
    pub(crate) fn to_piece_id(&self, id: u32) -> Option<u32> {
        id.checked_sub(self.options.num_image_tokens)
            .filter(|&p| (p as usize) < self.model.len())
    }

    pub(crate) fn whitespace(&self) -> &WhitespaceTokens {
        &self.whitespace
    }

    /// Global id of a GLM special token.
    pub fn special_id(&self, special: GlmSpecial) -> u32 {
        self.specials[special as usize]
    }

    /// `[MASK]` (150000 for GLM-130B).
    pub fn mask_id(&self) -> u32 {
        self.special_id(GlmSpecial::Mask)
    }

    /// `[gMASK]` (150001 for GLM-130B).
    pub fn gmask_id(&self) -> u32 {
        self.special_id(GlmSpecial::GMask)
    }

    /// `[sMASK]` (150002 for GLM-130B).
    pub fn smask_id(&self) -> u32 {
        self.special_id(GlmSpecial::SMask)
    }

    /// `<eod>` (150003 for GLM-130B; `<unused_0>` in ChatGLM-6B).
    pub fn eod_id(&self) -> u32 {
        self.special_id(GlmSpecial::Eod)
    }

    /// `<sop>` (150004 for GLM-130B).
    pub fn sop_id(&self) -> u32 {
        self.special_id(GlmSpecial::Sop)
    }

    /// `<eop>` (150005 for GLM-130B).
    pub fn eop_id(&self) -> u32 {
        self.special_id(GlmSpecial::Eop)
    }

    /// `</s>`, the end-of-sequence id generation stops at (20002 for GLM-130B).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `<unk>` (20000 for GLM-130B).
    pub fn unk_id(&self) -> Option<u32> {
        self.model
            .unk_id()
            .map(|id| id + self.options.num_image_tokens)
    }

    /// Global id of `piece`, if it is in the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.model
            .piece_to_id(piece)
            .map(|id| id + self.options.num_image_tokens)
    }

    /// Piece text of a global id; `None` for image tokens and ids past the vocabulary.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.to_piece_id(id).and_then(|p| self.model.id_to_piece(p))
    }

    /// Number of ids, image tokens included (150344 for GLM-130B, 130344 for ChatGLM-6B).
    pub fn vocab_size(&self) -> usize {
        self.model.len() + self.options.num_image_tokens as usize
    }

    /// Whether `id` is one of GLM's eight special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.specials.contains(&id)
    }
}

/// Index in [`GlmSpecial::ALL`] of a special piece text (`<unused_0>` counts as `<eod>` when
/// `chatglm` is set).
fn special_index(piece: &str, chatglm: bool) -> Option<usize> {
    GlmSpecial::ALL
        .iter()
        .position(|s| s.piece() == piece)
        .or_else(|| (chatglm && piece == "<unused_0>").then_some(GlmSpecial::Eod as usize))
}
