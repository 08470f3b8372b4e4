//! GLM's whitespace tokens, applied as text rewrites around SentencePiece.
//!
//! Encoding (SwissArmyTransformer `GLM130BTokenizer._preprocess`): `\n` → `<n>`, then `\t` →
//! `<|tab|>`, then every run of spaces, longest first, → `<|blank_N|>` (N = 2..=80). Python does
//! this with `str.replace` from N = 80 down, which cuts a run of `r` spaces into `r / 80`
//! `<|blank_80|>` tokens and a remainder (`<|blank_{r%80}|>`, or one plain space when the
//! remainder is 1); [`WhitespaceTokens::preprocess`] does the same in one pass.
//!
//! Decoding replaces the literal strings back in the SentencePiece output. The patterns all
//! start with `<`, contain no other `<`, and are replaced by whitespace, so matches never
//! overlap and a replacement never creates a new match: one left-to-right pass equals Python's
//! chain of `str.replace` calls, and a streaming decoder only has to hold back a tail that
//! starts at the last `<` and could still grow into a pattern.

use std::borrow::Cow;

/// Which literal tokens a vocabulary layout rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhitespaceTokens {
    /// `<|tab|>` and `<|blank_N|>` exist (GLM-130B 2023 / ChatGLM); otherwise only `<n>`.
    pub tab_and_blanks: bool,
    /// Longest blank token (80 in every released GLM model).
    pub max_blank_length: usize,
}

/// `<n>`, the newline piece (id 4 in icetk's text model).
pub const NEWLINE_TOKEN: &str = "<n>";
/// `<|tab|>`.
pub const TAB_TOKEN: &str = "<|tab|>";

/// `<|blank_N|>` for a run of `n` spaces.
pub fn blank_token(n: usize) -> String {
    format!("<|blank_{n}|>")
}

impl WhitespaceTokens {
    /// Rewrites `text` before SentencePiece sees it (borrowed when nothing changes).
    pub fn preprocess<'t>(
        &self,
        text: &'t str,
        linebreak: bool,
        whitespaces: bool,
    ) -> Cow<'t, str> {
        let whitespaces = whitespaces && self.tab_and_blanks;
        let special =
            |b: u8| (linebreak && b == b'\n') || (whitespaces && (b == b'\t' || b == b' '));
        let bytes = text.as_bytes();
        let Some(first) = bytes.iter().position(|&b| special(b)) else {
            return Cow::Borrowed(text);
        };
        // The three bytes are ASCII, so every cut below is a char boundary.
        let mut out = String::with_capacity(text.len() + text.len() / 4);
        out.push_str(&text[..first]);
        let mut at = first;
        while at < bytes.len() {
            let next = bytes[at..]
                .iter()
                .position(|&b| special(b))
                .map_or(bytes.len(), |p| at + p);
            out.push_str(&text[at..next]);
            at = next;
            match bytes.get(at) {
                Some(b'\n') => {
                    out.push_str(NEWLINE_TOKEN);
                    at += 1;
                }
                Some(b'\t') => {
                    out.push_str(TAB_TOKEN);
                    at += 1;
                }
                Some(b' ') => {
                    let run = bytes[at..].iter().take_while(|&&b| b == b' ').count();
                    self.push_blank_run(run, &mut out);
                    at += run;
                }
                _ => {}
            }
        }
        Cow::Owned(out)
    }

    fn push_blank_run(&self, run: usize, out: &mut String) {
        let max = self.max_blank_length;
        if max < 2 {
            out.extend(std::iter::repeat_n(' ', run));
            return;
        }
        for _ in 0..run / max {
            out.push_str(&blank_token(max));
        }
        match run % max {
            0 => {}
            1 => out.push(' '),
            r => out.push_str(&blank_token(r)),
        }
    }

    /// The pattern that starts exactly at the beginning of `s`: `(its length, replacement)`.
    fn match_at(&self, s: &str) -> Option<(usize, Replacement)> {
        if s.starts_with(NEWLINE_TOKEN) {
            return Some((NEWLINE_TOKEN.len(), Replacement::Newline));
        }
        if !self.tab_and_blanks {
            return None;
        }
        if s.starts_with(TAB_TOKEN) {
            return Some((TAB_TOKEN.len(), Replacement::Tab));
        }
        let rest = s.strip_prefix("<|blank_")?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 4 || rest.starts_with('0') || !rest[digits..].starts_with("|>") {
            return None;
        }
        let n: usize = rest[..digits].parse().ok()?;
        (2..=self.max_blank_length)
            .contains(&n)
            .then_some(("<|blank_".len() + digits + 2, Replacement::Blank(n)))
    }

    /// Appends `s` to `out` with every pattern replaced by its whitespace.
    pub fn replace_into(&self, s: &str, out: &mut String) {
        let mut rest = s;
        while let Some(lt) = rest.find('<') {
            out.push_str(&rest[..lt]);
            rest = &rest[lt..];
            match self.match_at(rest) {
                Some((len, repl)) => {
                    repl.push_to(out);
                    rest = &rest[len..];
                }
                None => {
                    out.push('<');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
    }

    /// Byte index from which `s` must be held back because more text could turn its tail into
    /// a pattern; `s.len()` when all of it is final.
    pub fn stable_prefix_len(&self, s: &str) -> usize {
        match s.rfind('<') {
            Some(lt) if self.could_grow_into_pattern(&s[lt..]) => lt,
            _ => s.len(),
        }
    }

    /// Whether `tail` (starting with `<`) is a proper prefix of some pattern.
    fn could_grow_into_pattern(&self, tail: &str) -> bool {
        let proper_prefix = |pattern: &str| pattern.len() > tail.len() && pattern.starts_with(tail);
        if proper_prefix(NEWLINE_TOKEN) {
            return true;
        }
        if !self.tab_and_blanks {
            return false;
        }
        if proper_prefix(TAB_TOKEN) || proper_prefix("<|blank_") {
            return true;
        }
        // "<|blank_" + digits (+ "|"): can it still end as "<|blank_N|>" with N in range?
        let Some(rest) = tail.strip_prefix("<|blank_") else {
            return false;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (num, after) = rest.split_at(digits);
        if digits == 0 || num.starts_with('0') || !(after.is_empty() || after == "|") {
            return false;
        }
        let in_range = |n: usize| (2..=self.max_blank_length).contains(&n);
        if !after.is_empty() {
            return num.parse().is_ok_and(in_range);
        }
        (2..=self.max_blank_length).any(|n| n.to_string().starts_with(num))
    }
}

/// What a whitespace pattern turns back into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replacement {
    Newline,
    Tab,
    Blank(usize),
}

impl Replacement {
    fn push_to(self, out: &mut String) {
        match self {
            Self::Newline => out.push('\n'),
            Self::Tab => out.push('\t'),
            Self::Blank(n) => out.extend(std::iter::repeat_n(' ', n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLM: WhitespaceTokens = WhitespaceTokens {
        tab_and_blanks: true,
        max_blank_length: 80,
    };
    const ICETK: WhitespaceTokens = WhitespaceTokens {
        tab_and_blanks: false,
        max_blank_length: 80,
    };

    /// Python's chain of `str.replace` calls, written out literally.
    fn python_preprocess(text: &str) -> String {
        let mut t = text.replace('\n', "<n>").replace('\t', "<|tab|>");
        for i in (2..=80).rev() {
            t = t.replace(&" ".repeat(i), &blank_token(i));
        }
        t
    }

    fn python_decode(text: &str) -> String {
        let mut t = text.replace("<n>", "\n").replace("<|tab|>", "\t");
        for i in 2..=80 {
            t = t.replace(&blank_token(i), &" ".repeat(i));
        }
        t
    }

    #[test]
    fn preprocess_matches_python_replace_chain() {
        for text in [
            "a b",
            "a  b",
            "\t\tx\n",
            "   ",
            &" ".repeat(81),
            &" ".repeat(161),
            &" ".repeat(239),
            "x \n  y",
        ] {
            assert_eq!(
                GLM.preprocess(text, true, true),
                python_preprocess(text),
                "{text:?}"
            );
        }
        assert_eq!(ICETK.preprocess("a  b\n", true, true), "a  b<n>");
        assert_eq!(GLM.preprocess("a  b\n", false, false), "a  b\n");
    }

    #[test]
    fn replace_matches_python_replace_chain() {
        for text in [
            "<n><|tab|><|blank_2|><|blank_80|><|blank_81|><|blank_1|><|blank_02|>",
            "<<n>>",
            "<|blank_<n>",
            "a<|tab|b",
            "<|blank_9|><|blank_10|>",
        ] {
            let mut out = String::new();
            GLM.replace_into(text, &mut out);
            assert_eq!(out, python_decode(text), "{text:?}");
        }
    }

    #[test]
    fn holds_back_only_growable_tails() {
        for (s, held) in [
            ("ab<", 2),
            ("ab<n", 2),
            ("ab<n>", 5),
            ("<|blank_8", 0),
            ("<|blank_80", 0),
            ("<|blank_81", 10),
            ("<|blank_0", 9),
            ("<|blank_1", 0),
            ("<|blank_1|", 10),
            ("<|blank_12|", 0),
            ("<x", 2),
        ] {
            assert_eq!(GLM.stable_prefix_len(s), held, "{s:?}");
        }
        assert_eq!(ICETK.stable_prefix_len("<|t"), 3);
    }
}
