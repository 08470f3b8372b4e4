//! Streaming: turn the rows a step callback sees into new text pieces of row 0, UTF-8 safe through
//! the tokenizer's streaming decoder (a piece is emitted only once it is complete and final).

use glm_core::vocab::VocabMap;
use glm_tokenizer::{StreamDecoder, Tokenizer};

use crate::cli::Codec;
use crate::strategy::DONE;

/// Follows row 0 of a generation and yields the text of each new token as it becomes final.
pub struct TokenStream<'a> {
    decoder: StreamDecoder<'a>,
    seen: usize,
    end_tokens: Vec<u32>,
    finished: bool,
    map: Option<&'a VocabMap>,
}

impl<'a> TokenStream<'a> {
    /// Streams tokens generated after `context_len` positions.
    pub fn new(tokenizer: &'a Tokenizer, context_len: usize, end_tokens: Vec<u32>) -> Self {
        Self {
            decoder: tokenizer.stream_decoder(),
            seen: context_len,
            end_tokens,
            finished: false,
            map: None,
        }
    }

    /// A stream for `codec` (`None` for integer-id text, which has no streaming decoder): its
    /// tokenizer, and for a compact-vocabulary model its map (the rows hold the model's ids; the
    /// decoder is fed the tokenizer's).
    pub fn for_codec(codec: &'a Codec, context_len: usize, end_tokens: Vec<u32>) -> Option<Self> {
        let tokenizer = codec.tokenizer()?;
        let mut stream = Self::new(tokenizer, context_len, end_tokens);
        stream.map = codec.vocab_map();
        Some(stream)
    }

    /// Feeds the rows after a step; returns the new text of row 0 (possibly empty).
    pub fn push_rows(&mut self, rows: &[Vec<i64>]) -> String {
        let mut out = String::new();
        let Some(row) = rows.first() else { return out };
        while self.seen < row.len() {
            let t = row[self.seen];
            self.seen += 1;
            if self.finished || t == DONE {
                continue;
            }
            if self.end_tokens.contains(&(t as u32)) {
                self.finished = true;
                continue;
            }
            let t = match self.map {
                // An id beyond the map cannot come from the model's logits; it decodes as nothing.
                Some(map) => match map.to_outer(t as u32) {
                    Some(outer) => outer,
                    None => continue,
                },
                None => t as u32,
            };
            if let Some(piece) = self.decoder.push(t) {
                out.push_str(&piece);
            }
        }
        out
    }

    /// Flushes what is left.
    pub fn finish(&mut self) -> String {
        self.decoder.finish()
    }
}
