//! Streaming: turn the rows a step callback sees into new text pieces of row 0, UTF-8 safe through
//! the tokenizer's streaming decoder (a piece is emitted only once it is complete and final).

use glm_tokenizer::{StreamDecoder, Tokenizer};

use crate::strategy::DONE;

/// Follows row 0 of a generation and yields the text of each new token as it becomes final.
pub struct TokenStream<'a> {
    decoder: StreamDecoder<'a>,
    seen: usize,
    end_tokens: Vec<u32>,
    finished: bool,
}

impl<'a> TokenStream<'a> {
    /// Streams tokens generated after `context_len` positions.
    pub fn new(tokenizer: &'a Tokenizer, context_len: usize, end_tokens: Vec<u32>) -> Self {
        Self {
            decoder: tokenizer.stream_decoder(),
            seen: context_len,
            end_tokens,
            finished: false,
        }
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
            if let Some(piece) = self.decoder.push(t as u32) {
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
