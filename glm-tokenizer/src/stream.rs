//! Streaming decode: text out as ids come in, for printing tokens while they are generated.
//!
//! Text is released only once nothing that may follow can change it:
//! - byte pieces wait until they form a complete UTF-8 character (or are proven invalid:
//!   then each bad byte becomes U+FFFD, as `DecodeIds` does for the whole run);
//! - a tail that could still grow into `<n>`, `<|tab|>` or `<|blank_N|>` (pieces `<`, `|`,
//!   `blank`... arriving one by one) waits until it is complete or proven not to be one;
//! - the leading-`▁` rule only looks back, so it is applied as each piece arrives.
//!
//! The concatenation of everything [`StreamDecoder::push`] returns plus
//! [`StreamDecoder::finish`] equals [`Tokenizer::decode`] of all ids.

use crate::glm::Tokenizer;
use crate::model::{valid_char_len, BosState};

/// Incremental decoder borrowed from a [`Tokenizer`].
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    bos: BosState,
    /// Whether SentencePiece-level output (before the whitespace rewrite) is non-empty.
    produced: bool,
    /// Byte pieces that do not form a complete character yet.
    bytes: Vec<u8>,
    /// Decoded text not yet released because its tail might become a whitespace token.
    held: String,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder at the start of a text.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            bos: BosState::default(),
            produced: false,
            bytes: Vec::new(),
            held: String::new(),
        }
    }

    /// Feeds one id; returns the text that became final, if any. Ids that are not text pieces
    /// of the vocabulary are skipped, as in [`Tokenizer::decode`].
    pub fn push(&mut self, id: u32) -> Option<String> {
        let piece_id = self.tokenizer.to_piece_id(id)?;
        let model = self.tokenizer.model();
        if let Some(b) = model.byte_of(piece_id) {
            self.bytes.push(b);
            self.drain_bytes(false);
        } else {
            self.drain_bytes(true);
            model.push_surface(piece_id, &mut self.bos, &mut self.produced, &mut self.held);
        }
        self.release(false)
    }

    /// Flushes everything still held (incomplete bytes become U+FFFD) and resets the decoder
    /// for a new text. Returns "" when nothing was pending.
    pub fn finish(&mut self) -> String {
        self.drain_bytes(true);
        let out = self.release(true).unwrap_or_default();
        *self = Self::new(self.tokenizer);
        out
    }

    /// Moves complete characters from `bytes` to `held`. Without `at_end`, an incomplete
    /// sequence at the end waits for more bytes.
    fn drain_bytes(&mut self, at_end: bool) {
        let mut at = 0;
        while at < self.bytes.len() {
            let rest = &self.bytes[at..];
            if let Some(n) = valid_char_len(rest) {
                self.held
                    .push_str(std::str::from_utf8(&rest[..n]).unwrap_or("\u{fffd}"));
                at += n;
            } else if !at_end && rest.len() < announced_len(rest[0]) {
                break;
            } else {
                self.held.push('\u{fffd}');
                at += 1;
            }
        }
        self.produced |= at > 0;
        self.bytes.drain(..at);
    }

    fn release(&mut self, all: bool) -> Option<String> {
        let ws = self.tokenizer.whitespace();
        let upto = if all {
            self.held.len()
        } else {
            ws.stable_prefix_len(&self.held)
        };
        if upto == 0 {
            return None;
        }
        let mut out = String::with_capacity(upto);
        ws.replace_into(&self.held[..upto], &mut out);
        self.held.drain(..upto);
        (!out.is_empty()).then_some(out)
    }
}

/// Bytes a lead byte asks for (1 for bytes that cannot start a sequence).
fn announced_len(lead: u8) -> usize {
    match lead {
        b if b & 0xe0 == 0xc0 => 2,
        b if b & 0xf0 == 0xe0 => 3,
        b if b & 0xf8 == 0xf0 => 4,
        _ => 1,
    }
}
