//! Generation tasks as `GenerationTaskDataset` + `ModelForEvaluation.generate_text` +
//! `GenerationTask` (spec §9.3): the context (truncated to its last
//! `max_seq_length − max_gen_length − 2` tokens) gets `[MASK|gMASK] <sop>` (or just `<sop>` when it
//! already holds the mask; `[gMASK] <sop>` in FRONT for unidirectional tasks), is padded to a
//! multiple of 32 and decoded with glm-infer's original loop and the task's strategy (greedy
//! BaseStrategy, or deterministic beam search). LAMBADA's task class is reproduced too.

use burn::tensor::backend::Backend;
use glm_core::blank::GlmInput;
use glm_core::{GlmModel, SpecialTokens};

use super::config::{GenerationSettings, SamplingStrategyName};
use super::error::{EvalError, EvalResult};
use super::score::check_layout;
use crate::beam::{BeamConfig, BeamSearchStrategy};
use crate::generate::{batch_filling_sequence, generated_tokens, GenerationSample};
use crate::prompt::TextCodec;
use crate::sampling::{BaseStrategy, SamplingConfig};
use crate::strategy::{Hypothesis, Strategy, FILTER_VALUE};

/// Python's `string.punctuation`.
pub const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The context part of a generation sample (`build_generation_sample`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationContext {
    /// Context tokens including `<sop>`.
    pub tokens: Vec<u32>,
    /// Position ids of the context.
    pub position_ids: Vec<u32>,
    /// Position ids of the generated tokens.
    pub target_position_ids: Vec<u32>,
    /// `[n, n]` context mask, `true` = blocked.
    pub mask: Vec<bool>,
}

/// `GenerationTaskDataset.process_single_item`'s truncation: keep the last
/// `max_seq_length − max_gen_length − 2` tokens when the text is too long.
pub fn truncate_text(text: &[u32], max_seq_length: usize, max_gen_length: usize) -> &[u32] {
    let needed = text.len().saturating_add(max_gen_length).saturating_add(2);
    if needed > max_seq_length {
        let keep = max_seq_length
            .saturating_sub(max_gen_length.saturating_add(2))
            .min(text.len());
        &text[text.len() - keep..]
    } else {
        text
    }
}

/// `build_generation_sample`. Errors (as the original's asserts) when a text that already holds
/// the mask is combined with `unidirectional` or `use_task_mask`.
pub fn build_generation_context(
    text: &[u32],
    max_gen_length: usize,
    use_task_mask: bool,
    unidirectional: bool,
    specials: &SpecialTokens,
) -> Result<GenerationContext, String> {
    let mask_id = if use_task_mask {
        specials.gmask
    } else {
        specials.mask
    };
    let (tokens, mask_position) = match text.iter().position(|&t| t == mask_id) {
        Some(p) => {
            if unidirectional || use_task_mask {
                return Err("blank filling (a mask inside the text) needs bidirectional attention and [MASK]".into());
            }
            ([text, &[specials.sop]].concat(), p)
        }
        None if unidirectional => ([&[mask_id, specials.sop], text].concat(), text.len()),
        None => ([text, &[mask_id, specials.sop]].concat(), text.len()),
    };
    let n = tokens.len();
    let mut position_ids: Vec<u32> = (0..n as u32).collect();
    let mut target_position_ids: Vec<u32> = (n..n + max_gen_length).map(|p| p as u32).collect();
    if !use_task_mask {
        position_ids[n - 1] = mask_position as u32;
        target_position_ids
            .iter_mut()
            .for_each(|p| *p = mask_position as u32);
    }
    let prefix = if unidirectional { 0 } else { n - 1 };
    let mask = glm_core::blank::glm_attention_mask(n, prefix);
    Ok(GenerationContext {
        tokens,
        position_ids,
        target_position_ids,
        mask,
    })
}

impl GenerationContext {
    /// The decoding-loop sample: context padded to a multiple of 32 (the evaluation collate
    /// function), generated rows after the padded block. Returns it with the padded width.
    pub fn to_sample(&self, pad_id: u32) -> EvalResult<(GenerationSample, usize)> {
        check_layout(
            "generation context",
            self.tokens.len(),
            self.position_ids.len(),
            self.mask.len(),
        )?;
        let single = GlmInput {
            batch: 1,
            seq: self.tokens.len(),
            tokens: self.tokens.clone(),
            position_ids: self.position_ids.clone(),
            mask: self.mask.clone(),
        };
        let padded = GlmInput::pad_batch(&[single], 32, pad_id)?;
        let width = padded.seq;
        let sample = GenerationSample::evaluation(
            padded.tokens,
            self.tokens.len(),
            padded.position_ids,
            &padded.mask,
            &self.target_position_ids,
        )?;
        Ok((sample, width))
    }
}

/// The task's strategy, as `GenerationTask.__init__` (and `LAMBADA.__init__`) build it.
pub fn make_strategy(
    settings: &GenerationSettings,
    specials: &SpecialTokens,
    lambada: Option<&LambadaBans>,
) -> EvalResult<Box<dyn Strategy>> {
    let end_tokens = specials.end_tokens().to_vec();
    match settings.sampling_strategy {
        SamplingStrategyName::BaseStrategy => Ok(Box::new(BaseStrategy::new(
            SamplingConfig::greedy(end_tokens),
        )?)),
        SamplingStrategyName::BeamSearchStrategy => {
            let beam = BeamSearchStrategy::new(BeamConfig {
                num_beams: settings.num_beams,
                length_penalty: settings.length_penalty as f32,
                consider_end: true,
                end_tokens,
                invalid_tokens: lambada
                    .map(|l| l.invalid_tokens.clone())
                    .unwrap_or_default(),
                no_repeat_ngram_size: settings.no_repeat_ngram_size,
                min_gen_length: settings.min_gen_length,
                deterministic: true,
                seed: 0,
            })?;
            Ok(match lambada {
                Some(l) => Box::new(BannedPrefixStrategy {
                    inner: beam,
                    prefixes: l.banned_prefixes.clone(),
                    length_generated: 0,
                }),
                None => Box::new(beam),
            })
        }
    }
}

/// LAMBADA's bans (`tasks/lambada/task.py`): invalid tokens and banned prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambadaBans {
    /// Always banned: 20068, 146010, 146337 and every single-token punctuation character.
    pub invalid_tokens: Vec<u32>,
    /// `[46010]`, `[146337]` and the token sequence of each punctuation character.
    pub banned_prefixes: Vec<Vec<u32>>,
}

impl LambadaBans {
    /// Builds the bans with `codec`; ids outside the model's vocabulary are dropped (the
    /// hard-coded ids are icetk's).
    pub fn new(codec: &dyn TextCodec, vocab_size: usize) -> Self {
        let fits = |t: &u32| (*t as usize) < vocab_size;
        let mut invalid_tokens: Vec<u32> = vec![20068, 146010, 146337];
        let mut banned_prefixes: Vec<Vec<u32>> = vec![vec![46010], vec![146337]];
        for p in PUNCTUATION.chars() {
            let ids = codec.tokenize(&p.to_string()).unwrap_or_default();
            if ids.len() == 1 {
                invalid_tokens.push(ids[0]);
            }
            banned_prefixes.push(ids);
        }
        invalid_tokens.retain(fits);
        banned_prefixes.retain(|p| !p.is_empty() && p.iter().all(fits));
        Self {
            invalid_tokens,
            banned_prefixes,
        }
    }
}

/// `BeamSearchStrategyForLAMBADA`: a banned prefix of length k bans its last token at generation
/// step k − 1 for the rows whose last k − 1 tokens equal the rest of the prefix.
struct BannedPrefixStrategy {
    inner: BeamSearchStrategy,
    prefixes: Vec<Vec<u32>>,
    length_generated: usize,
}

impl Strategy for BannedPrefixStrategy {
    fn step(
        &mut self,
        logits: &[f32],
        vocab: usize,
        tokens: &mut Vec<Vec<i64>>,
    ) -> Option<Vec<usize>> {
        let mut logits = logits.to_vec();
        for prefix in &self.prefixes {
            if prefix.len() != self.length_generated + 1 {
                continue;
            }
            let last = prefix[prefix.len() - 1] as usize;
            let head: Vec<i64> = prefix[..prefix.len() - 1]
                .iter()
                .map(|&t| t as i64)
                .collect();
            for (r, row) in tokens.iter().enumerate() {
                if row.len() >= head.len()
                    && row[row.len() - head.len()..] == head[..]
                    && last < vocab
                {
                    logits[r * vocab + last] = FILTER_VALUE;
                }
            }
        }
        self.length_generated += 1;
        self.inner.step(&logits, vocab, tokens)
    }

    fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    fn finalize(&mut self, tokens: Vec<Vec<i64>>) -> Vec<Vec<Hypothesis>> {
        self.length_generated = 0;
        self.inner.finalize(tokens)
    }

    fn end_tokens(&self) -> &[u32] {
        self.inner.end_tokens()
    }
}

/// Generates for one sample; returns every hypothesis's generated tokens (best first).
pub fn generate<B: Backend>(
    model: &GlmModel<B>,
    context: &GenerationContext,
    strategy: &mut dyn Strategy,
) -> EvalResult<Vec<Vec<u32>>> {
    let (sample, width) = context.to_sample(model.config().special_tokens.pad)?;
    let end_tokens = strategy.end_tokens().to_vec();
    let hyps = batch_filling_sequence(model, &[sample], strategy, &mut |_| {})?;
    let hyps = hyps.into_iter().next().unwrap_or_default();
    if hyps.is_empty() {
        return Err(EvalError::Usage("the strategy returned no sequence".into()));
    }
    Ok(hyps
        .iter()
        .map(|h| generated_tokens(h, width, &end_tokens))
        .collect())
}

/// `LAMBADA.predict_single_batch`: the first beam whose second word is punctuation, else beam 0;
/// the answer is the first word, re-tokenized.
pub fn lambada_answer(beams: &[Vec<u32>], codec: &dyn TextCodec) -> EvalResult<Vec<u32>> {
    let first_word = |tokens: &[u32]| -> EvalResult<Vec<u32>> {
        let text = codec.detokenize(tokens);
        let word = text.trim().split(' ').next().unwrap_or("");
        Ok(codec.tokenize(word)?)
    };
    for beam in beams {
        let text = codec.detokenize(beam);
        let words: Vec<&str> = text.trim().split(' ').collect();
        if words.len() >= 2 && PUNCTUATION.contains(words[1]) {
            return first_word(beam);
        }
    }
    first_word(beams.first().map(Vec::as_slice).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_follow_build_generation_sample() {
        let s = SpecialTokens::with_base(1000, 2);
        let c = build_generation_context(&[5, 6], 3, true, false, &s).unwrap();
        assert_eq!(c.tokens, vec![5, 6, 1001, 1004]);
        assert_eq!(c.position_ids, vec![0, 1, 2, 3]);
        assert_eq!(c.target_position_ids, vec![4, 5, 6]);
        let c = build_generation_context(&[5, 1000, 6], 2, false, false, &s).unwrap();
        assert_eq!(c.tokens, vec![5, 1000, 6, 1004]);
        assert_eq!(c.position_ids, vec![0, 1, 2, 1]);
        assert_eq!(c.target_position_ids, vec![1, 1]);
        let u = build_generation_context(&[5, 6], 2, true, true, &s).unwrap();
        assert_eq!(u.tokens, vec![1001, 1004, 5, 6]);
        assert!(u.mask[1], "unidirectional context is causal");
        assert!(build_generation_context(&[5, 1001], 2, true, false, &s).is_err());
        assert_eq!(truncate_text(&[1, 2, 3, 4, 5], 6, 2), &[4, 5]);
        // An absurd generation length truncates everything instead of overflowing.
        assert_eq!(truncate_text(&[1, 2, 3], 6, usize::MAX), &[] as &[u32]);
    }
}
