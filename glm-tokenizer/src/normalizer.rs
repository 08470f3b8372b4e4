//! SentencePiece text normalization, as `normalizer.cc` applies a `NormalizerSpec`.
//!
//! Per position, in this order: a user-defined symbol (longest match) is copied verbatim; else
//! the longest precompiled-charsmap rule replaces its key (this is where `nmt_nfkc` folds
//! full-width forms and turns `\n`, `\r`, U+3000, NBSP... into spaces); else the character is
//! copied. Around that sit the whitespace flags: leading spaces dropped, runs collapsed and
//! trailing spaces dropped (`remove_extra_whitespaces`), spaces written as `▁`
//! (`escape_whitespaces`), and one `▁` put in front (`add_dummy_prefix`).

use crate::charsmap::CharsMap;
use crate::proto::NormalizerSpec;
use crate::trie::Trie;

/// The whitespace marker `▁` (U+2581) in UTF-8.
pub const SPACE_SYMBOL: &[u8] = "\u{2581}".as_bytes();

/// A ready-to-run normalizer.
#[derive(Debug, Clone)]
pub struct Normalizer {
    charsmap: Option<CharsMap>,
    user_defined: Option<Trie>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
}

impl Normalizer {
    /// Builds a normalizer from its spec, the already-parsed charsmap and the user-defined
    /// symbols of the vocabulary (matched before the charsmap and never normalized).
    pub fn new(
        spec: &NormalizerSpec,
        charsmap: Option<CharsMap>,
        user_defined: &[&str],
        treat_whitespace_as_suffix: bool,
    ) -> Self {
        let user_defined = (!user_defined.is_empty())
            .then(|| Trie::build(user_defined.iter().map(|s| (s.as_bytes(), 0)).collect()));
        Self {
            charsmap,
            user_defined,
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
            escape_whitespaces: spec.escape_whitespaces,
            treat_whitespace_as_suffix,
        }
    }

    /// Whether the spec adds a dummy `▁` prefix.
    pub fn add_dummy_prefix(&self) -> bool {
        self.add_dummy_prefix
    }

    /// Whether the spec removes extra whitespace.
    pub fn remove_extra_whitespaces(&self) -> bool {
        self.remove_extra_whitespaces
    }

    /// Normalized form of the first character(s) of `input` and how many input bytes it used.
    #[inline]
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        if let Some(trie) = &self.user_defined {
            if let Some((len, _)) = trie.longest_prefix(input) {
                return (&input[..len], len);
            }
        }
        if let Some(map) = &self.charsmap {
            if let Some((len, out)) = map.longest_match(input) {
                return (out, len);
            }
        }
        let len = utf8_char_len(input[0]).min(input.len());
        (&input[..len], len)
    }

    /// Normalizes `text` into `out` (cleared first).
    pub fn normalize_into(&self, text: &str, out: &mut Vec<u8>) {
        out.clear();
        let mut input = text.as_bytes();
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, len) = self.normalize_prefix(input);
                if piece != b" " {
                    break;
                }
                input = &input[len..];
            }
        }
        if input.is_empty() {
            return;
        }
        out.reserve(input.len() + input.len() / 2 + SPACE_SYMBOL.len());
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            b" "
        };
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, len) = self.normalize_prefix(input);
            if is_prev_space {
                while let [b' ', rest @ ..] = piece {
                    piece = rest;
                }
            }
            if !piece.is_empty() {
                if self.escape_whitespaces {
                    for &b in piece {
                        if b == b' ' {
                            out.extend_from_slice(SPACE_SYMBOL);
                        } else {
                            out.push(b);
                        }
                    }
                } else {
                    out.extend_from_slice(piece);
                }
                is_prev_space = piece.last() == Some(&b' ');
            }
            input = &input[len..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
    }

    /// Normalizes `text` into a new buffer (bytes, since a charsmap may emit anything).
    pub fn normalize(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.normalize_into(text, &mut out);
        out
    }
}

/// Length of the UTF-8 sequence a lead byte announces, as SentencePiece's `OneCharLen`
/// (continuation and invalid lead bytes count as 1).
#[inline(always)]
pub fn utf8_char_len(lead: u8) -> usize {
    const LEN: [u8; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LEN[(lead >> 4) as usize] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dummy: bool, remove: bool, escape: bool) -> NormalizerSpec {
        NormalizerSpec {
            add_dummy_prefix: dummy,
            remove_extra_whitespaces: remove,
            escape_whitespaces: escape,
            ..NormalizerSpec::default()
        }
    }

    fn run(n: &Normalizer, s: &str) -> String {
        String::from_utf8(n.normalize(s)).expect("utf8")
    }

    #[test]
    fn whitespace_flags() {
        let n = Normalizer::new(&spec(true, true, true), None, &[], false);
        assert_eq!(run(&n, "  a   b  "), "▁a▁b");
        assert_eq!(run(&n, "   "), "");
        let n = Normalizer::new(&spec(true, false, true), None, &[], false);
        assert_eq!(run(&n, "  a   b "), "▁▁▁a▁▁▁b▁");
        let n = Normalizer::new(&spec(false, true, false), None, &[], false);
        assert_eq!(run(&n, " a  b"), "a b");
    }

    #[test]
    fn user_defined_symbols_are_verbatim() {
        let n = Normalizer::new(
            &spec(true, true, true),
            None,
            &["<n>", "<|blank_2|>"],
            false,
        );
        assert_eq!(run(&n, "a<n> b<|blank_2|>"), "▁a<n>▁b<|blank_2|>");
    }
}
