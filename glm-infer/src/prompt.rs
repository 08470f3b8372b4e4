//! Input rules of GLM-130B `generate.py` (spec §3.4): choose the mask type, split the raw text on
//! `[MASK]` / `[sMASK]` / `[gMASK]`, tokenize every segment separately (each gets its own dummy
//! prefix), append `[gMASK]` when there is no mask and eos when the text does not end in a mask.

use glm_core::blank::MaskKind;
use glm_core::{GlmConfig, SpecialTokens};

use crate::error::{Error, Result};

/// Text ↔ ids for prompts and answers (special ids are handled by the caller).
pub trait TextCodec {
    /// Token ids of a text segment.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of a span of ids.
    fn detokenize(&self, ids: &[u32]) -> String;
}

/// The icetk / GLM-130B tokenizer from `glm-tokenizer`.
impl TextCodec for glm_tokenizer::Tokenizer {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text))
    }
    fn detokenize(&self, ids: &[u32]) -> String {
        self.decode(ids)
    }
}

/// A codec whose "text" is whitespace-separated integer ids — the stand-in tokenizer the golden
/// fixtures were made with, handy for debugging a model without a vocabulary.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdCodec;

impl TextCodec for IdCodec {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        text.split_whitespace()
            .map(|w| {
                w.parse::<u32>()
                    .map_err(|_| Error::Prompt(format!("`{w}` is not a token id")))
            })
            .collect()
    }
    fn detokenize(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A prompt turned into ids by the generate.py rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Context ids (masks inserted, `[gMASK]` / eos appended as the rules say), without `<sop>`.
    pub tokens: Vec<u32>,
    /// The mask type whose occurrences get filled.
    pub kind: MaskKind,
    /// The raw text as generate.py prints it (with ` [gMASK]` appended when it had no mask).
    pub raw_text: String,
}

impl Prompt {
    /// Checks the public fields against `config`: at least one token, every id in the
    /// vocabulary, at most `max_sequence_length` tokens, at least one mask of `kind` (else there
    /// is nothing to fill and the "answer" would be the prompt itself).
    pub fn validate(&self, config: &GlmConfig) -> Result<()> {
        if self.tokens.is_empty() {
            return Err(Error::Prompt("empty prompt".into()));
        }
        check_prompt_ids(&self.tokens, config.vocab_size)?;
        check_prompt_length(self.tokens.len(), config.max_sequence_length)?;
        let mask_id = self.kind.token(&config.special_tokens);
        if !self.tokens.contains(&mask_id) {
            return Err(Error::Prompt(format!(
                "the prompt holds no {:?} token ({mask_id}) to fill",
                self.kind
            )));
        }
        Ok(())
    }
}

fn check_prompt_ids(tokens: &[u32], vocab_size: usize) -> Result<()> {
    match tokens.iter().position(|&t| t as usize >= vocab_size) {
        Some(at) => Err(Error::Prompt(format!(
            "token id {} at index {at} is outside the vocabulary (0..{vocab_size})",
            tokens[at]
        ))),
        None => Ok(()),
    }
}

fn check_prompt_length(len: usize, max_sequence_length: usize) -> Result<()> {
    if len > max_sequence_length {
        return Err(Error::Prompt(format!(
            "text too long: {len} tokens, the model takes at most {max_sequence_length}"
        )));
    }
    Ok(())
}

const MASK_LITERALS: [(&str, MaskKind); 3] = [
    ("[MASK]", MaskKind::Mask),
    ("[sMASK]", MaskKind::SMask),
    ("[gMASK]", MaskKind::GMask),
];

/// Splits `text` at every `[MASK]`, `[sMASK]`, `[gMASK]` (the regex `\[[sg]?MASK\]`).
pub fn split_masks(text: &str) -> (Vec<&str>, Vec<MaskKind>) {
    let mut segments = Vec::new();
    let mut masks = Vec::new();
    let mut rest = text;
    loop {
        let next = MASK_LITERALS
            .iter()
            .filter_map(|&(lit, kind)| rest.find(lit).map(|at| (at, lit, kind)))
            .min_by_key(|&(at, _, _)| at);
        match next {
            Some((at, lit, kind)) => {
                segments.push(&rest[..at]);
                masks.push(kind);
                rest = &rest[at + lit.len()..];
            }
            None => {
                segments.push(rest);
                return (segments, masks);
            }
        }
    }
}

/// Builds the context ids of `raw_text` by generate.py's rules; errors when the text is empty
/// (only whitespace) or the ids are longer than `max_sequence_length`. The vocabulary size is not
/// known here: [`build_prompt_for`] also checks the ids, and [`fill_blanks`](crate::fill_blanks)
/// checks every prompt against its model.
pub fn build_prompt(
    raw_text: &str,
    codec: &dyn TextCodec,
    specials: &SpecialTokens,
    max_sequence_length: usize,
) -> Result<Prompt> {
    if raw_text.trim().is_empty() {
        return Err(Error::Prompt("empty prompt".into()));
    }
    let kind = if raw_text.contains("[MASK]") {
        MaskKind::Mask
    } else if raw_text.contains("[sMASK]") {
        MaskKind::SMask
    } else {
        MaskKind::GMask
    };
    let (segments, masks) = split_masks(raw_text);
    let mut tokens = Vec::new();
    for (segment, mask) in segments.iter().zip(&masks) {
        tokens.extend(codec.tokenize(segment)?);
        tokens.push(mask.token(specials));
    }
    tokens.extend(codec.tokenize(segments.last().copied().unwrap_or(""))?);
    let mut raw = raw_text.to_string();
    if !raw.contains("MASK]") {
        tokens.push(specials.gmask);
        raw.push_str(" [gMASK]");
    }
    if !raw.ends_with("MASK]") {
        tokens.push(specials.eos);
    }
    check_prompt_length(tokens.len(), max_sequence_length)?;
    Ok(Prompt {
        tokens,
        kind,
        raw_text: raw,
    })
}

/// [`build_prompt`] for a model's `config`: also checks every id (the codec's included) against
/// the vocabulary, so a tokenizer that does not match the model is an error here, not in the
/// forward pass.
pub fn build_prompt_for(
    raw_text: &str,
    codec: &dyn TextCodec,
    config: &GlmConfig,
) -> Result<Prompt> {
    let prompt = build_prompt(
        raw_text,
        codec,
        &config.special_tokens,
        config.max_sequence_length,
    )?;
    prompt.validate(config)?;
    Ok(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> SpecialTokens {
        SpecialTokens::with_base(1000, 2)
    }

    #[test]
    fn no_mask_appends_gmask_without_eos() {
        let p = build_prompt("5 6 7", &IdCodec, &specials(), 100).unwrap();
        assert_eq!(p.tokens, vec![5, 6, 7, 1001]);
        assert_eq!(p.kind, MaskKind::GMask);
        assert_eq!(p.raw_text, "5 6 7 [gMASK]");
    }

    #[test]
    fn inner_mask_appends_eos() {
        let p = build_prompt("5 [MASK] 7", &IdCodec, &specials(), 100).unwrap();
        assert_eq!(p.tokens, vec![5, 1000, 7, 2]);
        assert_eq!(p.kind, MaskKind::Mask);
        let p = build_prompt("5 [sMASK] 7 [sMASK]", &IdCodec, &specials(), 100).unwrap();
        assert_eq!(p.tokens, vec![5, 1002, 7, 1002], "ends with a mask: no eos");
        assert_eq!(p.kind, MaskKind::SMask);
    }

    #[test]
    fn mask_wins_over_smask_and_every_literal_is_inserted() {
        let p = build_prompt("1 [sMASK] 2 [MASK] 3 [gMASK]", &IdCodec, &specials(), 100).unwrap();
        assert_eq!(p.tokens, vec![1, 1002, 2, 1000, 3, 1001]);
        assert_eq!(p.kind, MaskKind::Mask);
    }

    #[test]
    fn too_long_is_rejected() {
        let err = build_prompt("1 2 3 4", &IdCodec, &specials(), 4).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert!(build_prompt("1 x 3", &IdCodec, &specials(), 10).is_err());
    }

    #[test]
    fn split_finds_masks_in_order() {
        let (segs, masks) = split_masks("a[gMASK]b[MASK][sMASK]");
        assert_eq!(segs, vec!["a", "b", "", ""]);
        assert_eq!(
            masks,
            vec![MaskKind::GMask, MaskKind::Mask, MaskKind::SMask]
        );
    }
}
