//! Multiple-choice scoring exactly as `MultiChoiceTaskDataset` + `ModelForEvaluation.cond_log_prob`
//! (spec §9.2): context + `[MASK]` (appended unless the text holds one), then per choice a block
//! `<sop> choice[:-1]`, causal inside, seeing the whole context but not the other blocks; every
//! choice token at the mask's position. Score = SUM of the choice tokens' log-probabilities.
//! When every item of a FILE has only single-token choices, one `<sop>` is appended and every
//! choice is read from the log-softmax at that row (the MMLU "Answer: (" layout).

use burn::tensor::backend::Backend;
use glm_core::blank::GlmInput;
use glm_core::{GlmModel, SpecialTokens};

use super::data::ChoiceItem;
use super::error::{EvalError, EvalResult};
use super::score::{check_layout, token_log_probs, SoftmaxDtype};

/// The model input of one multiple-choice item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceSample {
    /// Line of the item in its file.
    pub line: usize,
    /// Context after left truncation (before `[MASK]` is appended).
    pub text: Vec<u32>,
    /// The choices.
    pub choices: Vec<Vec<u32>>,
    /// Correct choice.
    pub label: i64,
    /// Tokens: context (+ `[MASK]`), then the choice blocks.
    pub tokens: Vec<u32>,
    /// Position ids.
    pub position_ids: Vec<u32>,
    /// `[n, n]` row-major, `true` = blocked.
    pub mask: Vec<bool>,
    /// Rows whose logits predict each choice's tokens (single-token layout: one row, shared).
    pub choice_target_ids: Vec<Vec<usize>>,
    /// Whether this sample uses the single-token layout.
    pub is_single_token: bool,
}

impl ChoiceSample {
    /// Checks that the public fields fit together (tokens / positions / mask, one non-empty
    /// choice at least, target rows matching the choices); an error names the data line.
    pub fn validate(&self) -> EvalResult<()> {
        let what = format!("choice sample of line {}", self.line);
        check_layout(
            &what,
            self.tokens.len(),
            self.position_ids.len(),
            self.mask.len(),
        )?;
        if self.choices.is_empty() || self.choices.iter().any(Vec::is_empty) {
            return Err(EvalError::Usage(format!(
                "{what}: needs at least one choice and no empty choice"
            )));
        }
        let consistent = if self.is_single_token {
            matches!(self.choice_target_ids.as_slice(), [rows] if rows.len() == 1)
                && self.choices.iter().all(|c| c.len() == 1)
        } else {
            self.choice_target_ids.len() == self.choices.len()
                && self
                    .choice_target_ids
                    .iter()
                    .zip(&self.choices)
                    .all(|(rows, c)| rows.len() == c.len())
        };
        if !consistent {
            return Err(EvalError::Usage(format!(
                "{what}: choice_target_ids do not match the choices"
            )));
        }
        Ok(())
    }

    /// `(row, token)` pairs whose log-probabilities make up the choice scores (empty for an
    /// inconsistent sample; see [`validate`](Self::validate)).
    pub fn pairs(&self) -> Vec<(usize, u32)> {
        if self.is_single_token {
            let Some(&row) = self.choice_target_ids.first().and_then(|r| r.first()) else {
                return Vec::new();
            };
            self.choices
                .iter()
                .filter_map(|c| c.first().map(|&t| (row, t)))
                .collect()
        } else {
            self.choice_target_ids
                .iter()
                .zip(&self.choices)
                .flat_map(|(rows, c)| rows.iter().copied().zip(c.iter().copied()))
                .collect()
        }
    }

    /// Folds the values of [`pairs`](Self::pairs) into one score per choice (sums in f32).
    pub fn scores(&self, values: &[f32]) -> Vec<f32> {
        if self.is_single_token {
            return values.to_vec();
        }
        let mut out = Vec::with_capacity(self.choices.len());
        let mut at = 0usize;
        for c in &self.choices {
            let end = at.saturating_add(c.len()).min(values.len());
            out.push(values.get(at..end).unwrap_or(&[]).iter().sum());
            at = end;
        }
        out
    }

    /// As a batch-of-one model input.
    pub fn to_input(&self) -> GlmInput {
        GlmInput {
            batch: 1,
            seq: self.tokens.len(),
            tokens: self.tokens.clone(),
            position_ids: self.position_ids.clone(),
            mask: self.mask.clone(),
        }
    }
}

/// The layout of one multiple-choice sample: `(tokens, position ids, [n, n] mask, target rows)`.
pub type ChoiceLayout = (Vec<u32>, Vec<u32>, Vec<bool>, Vec<Vec<usize>>);

/// The task flags that shape a multiple-choice sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChoiceEncoding {
    /// `use_multitask_encoding`: with `[MASK]` appended (no blank filling), choice positions count
    /// up from the mask instead of repeating it.
    pub use_multitask_encoding: bool,
    /// `use_task_mask`: `[gMASK]` instead of `[MASK]`; the choice blocks' positions count up from
    /// `division` (spec §9.2; StereoSet's YAML sets it).
    pub use_task_mask: bool,
}

/// `build_multiple_choice_sample`: the layout of one item (text already truncated). An item
/// without choices or with an empty choice has no layout: the error says which.
///
/// With `use_task_mask` the `[gMASK]` is appended after the text (a `[MASK]` inside the text stays
/// an ordinary context token, as StereoSet's blanks do) and each choice block's positions are
/// `division, division + 1, …` (spec §9.2, the revision of `evaluation/dataset.py` these tasks
/// ran with; the repository's last revision starts one lower, at the `[gMASK]`'s own position,
/// but there the bias tasks no longer load). A `[gMASK]` already inside the text is refused, as
/// the original asserts ("Blank filling only support MASK").
pub fn build_choice_sample(
    text: &[u32],
    choices: &[Vec<u32>],
    is_single_token: bool,
    encoding: ChoiceEncoding,
    specials: &SpecialTokens,
) -> Result<ChoiceLayout, String> {
    if choices.is_empty() {
        return Err("no choices".into());
    }
    if let Some(i) = choices.iter().position(Vec::is_empty) {
        return Err(format!("choice {i} is empty"));
    }
    let mask_id = if encoding.use_task_mask {
        specials.gmask
    } else {
        specials.mask
    };
    if encoding.use_task_mask && text.contains(&mask_id) {
        return Err("the text holds [gMASK]: blank filling only supports [MASK]".into());
    }
    let mut tokens = text.to_vec();
    let mut positions: Vec<u32> = (0..text.len() as u32).collect();
    let blank_filling = text.contains(&mask_id);
    let mask_position = match text.iter().position(|&t| t == mask_id) {
        Some(p) => p,
        None => {
            let p = tokens.len();
            tokens.push(mask_id);
            positions.push(p as u32);
            p
        }
    };
    let division = tokens.len();
    let mut blocks = Vec::new();
    let mut targets = Vec::new();
    for choice in choices {
        let n = choice.len();
        if encoding.use_task_mask {
            positions.extend((division..division + n).map(|p| p as u32));
        } else if blank_filling || !encoding.use_multitask_encoding {
            positions.extend(std::iter::repeat_n(mask_position as u32, n));
        } else {
            positions.extend((mask_position..mask_position + n).map(|p| p as u32));
        }
        targets.push((tokens.len()..tokens.len() + n).collect::<Vec<_>>());
        blocks.push((tokens.len(), n));
        tokens.push(specials.sop);
        // `choice[:-1]`: every token but the last (choices are non-empty, checked above).
        tokens.extend_from_slice(choice.split_last().map_or(&[][..], |(_, head)| head));
        if is_single_token {
            break;
        }
    }
    let len = tokens.len();
    let mut mask = vec![true; len * len];
    for i in 0..len {
        for j in 0..division {
            mask[i * len + j] = false;
        }
    }
    for &(start, n) in &blocks {
        for i in start..start + n {
            for j in start..=i {
                mask[i * len + j] = false;
            }
        }
    }
    Ok((tokens, positions, mask, targets))
}

/// `MultiChoiceTaskDataset`: truncation, the per-file single-token flag, and every sample's layout.
pub fn prepare_file(
    items: &[ChoiceItem],
    max_seq_length: usize,
    encoding: ChoiceEncoding,
    specials: &SpecialTokens,
    path: &std::path::Path,
) -> EvalResult<Vec<ChoiceSample>> {
    let mut truncated = Vec::with_capacity(items.len());
    let mut is_single_token = true;
    for item in items {
        let total: usize = item.choices.iter().map(Vec::len).sum();
        let tgt = if total == item.choices.len() {
            1
        } else {
            total
        };
        if tgt >= max_seq_length {
            return Err(EvalError::data(
                path,
                item.line,
                "choices",
                format!("the choices take {tgt} tokens, max_seq_length is {max_seq_length}"),
            ));
        }
        let mut text = item.text.as_slice();
        if text.len() + tgt + 2 > max_seq_length {
            let keep = (max_seq_length as i64 - tgt as i64 - 2).max(0) as usize;
            text = &text[text.len() - keep.min(text.len())..];
        }
        if encoding.use_multitask_encoding && text.contains(&specials.mask) {
            return Err(EvalError::data(
                path,
                item.line,
                "inputs",
                "unified multitask encoding doesn't support blank filling",
            ));
        }
        if tgt != 1 {
            is_single_token = false;
        }
        truncated.push(text.to_vec());
    }
    items
        .iter()
        .zip(truncated)
        .map(|(item, text)| {
            let (tokens, position_ids, mask, choice_target_ids) =
                build_choice_sample(&text, &item.choices, is_single_token, encoding, specials)
                    .map_err(|reason| EvalError::data(path, item.line, "choices", reason))?;
            Ok(ChoiceSample {
                line: item.line,
                text,
                choices: item.choices.clone(),
                label: item.label,
                tokens,
                position_ids,
                mask,
                choice_target_ids,
                is_single_token,
            })
        })
        .collect()
}

/// Scores a micro-batch: padded to a multiple of 32 (token 0, position 0, pads blocked), one
/// forward, log-softmax in the model dtype. Returns each sample's choice scores.
pub fn score_batch<B: Backend>(
    model: &GlmModel<B>,
    samples: &[ChoiceSample],
) -> EvalResult<Vec<Vec<f32>>> {
    for s in samples {
        s.validate()?;
    }
    let inputs: Vec<GlmInput> = samples.iter().map(ChoiceSample::to_input).collect();
    let pad = model.config().special_tokens.pad;
    let batch = GlmInput::pad_batch(&inputs, 32, pad)?;
    let pairs: Vec<Vec<(usize, u32)>> = samples.iter().map(ChoiceSample::pairs).collect();
    let values = token_log_probs(model, &batch, &pairs, SoftmaxDtype::Model)?;
    Ok(samples
        .iter()
        .zip(values)
        .map(|(s, v)| s.scores(&v))
        .collect())
}

/// `np.argmax`: the first index of the largest score.
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_see_the_context_but_not_each_other() {
        let s = SpecialTokens::with_base(1000, 2);
        let (tokens, pos, mask, targets) = build_choice_sample(
            &[5, 6],
            &[vec![7, 8], vec![9]],
            false,
            ChoiceEncoding::default(),
            &s,
        )
        .unwrap();
        assert_eq!(tokens, vec![5, 6, 1000, 1004, 7, 1004]);
        assert_eq!(pos, vec![0, 1, 2, 2, 2, 2]);
        assert_eq!(targets, vec![vec![3, 4], vec![5]]);
        let n = tokens.len();
        let sees = |i: usize, j: usize| !mask[i * n + j];
        assert!(
            sees(0, 2) && !sees(0, 3),
            "context is bidirectional and blind to choices"
        );
        assert!(sees(4, 3) && !sees(3, 4), "causal inside a block");
        assert!(
            !sees(5, 3) && !sees(5, 4) && sees(5, 2),
            "blocks do not see each other"
        );
    }

    #[test]
    fn an_empty_choice_is_an_error_not_a_panic() {
        let s = SpecialTokens::with_base(1000, 2);
        let e = build_choice_sample(
            &[5, 6],
            &[vec![7], vec![]],
            false,
            ChoiceEncoding::default(),
            &s,
        )
        .unwrap_err();
        assert!(e.contains("choice 1"), "{e}");
        assert!(build_choice_sample(&[5, 6], &[], false, ChoiceEncoding::default(), &s).is_err());
    }

    #[test]
    fn single_token_layout_has_one_sop() {
        let s = SpecialTokens::with_base(1000, 2);
        let (tokens, pos, _, targets) = build_choice_sample(
            &[5, 1000, 6],
            &[vec![7], vec![9]],
            true,
            ChoiceEncoding::default(),
            &s,
        )
        .unwrap();
        assert_eq!(tokens, vec![5, 1000, 6, 1004]);
        assert_eq!(pos, vec![0, 1, 2, 1]);
        assert_eq!(targets, vec![vec![3]]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn task_mask_appends_gmask_and_counts_positions_from_division() {
        let s = SpecialTokens::with_base(1000, 2);
        let enc = ChoiceEncoding {
            use_task_mask: true,
            ..Default::default()
        };
        // The [MASK] inside the text stays a context token; [gMASK] is appended.
        let (tokens, pos, mask, targets) =
            build_choice_sample(&[5, s.mask, 6], &[vec![7, 8], vec![9]], false, enc, &s).unwrap();
        assert_eq!(tokens, vec![5, s.mask, 6, s.gmask, s.sop, 7, s.sop]);
        assert_eq!(pos, vec![0, 1, 2, 3, 4, 5, 4]);
        assert_eq!(targets, vec![vec![4, 5], vec![6]]);
        let n = tokens.len();
        let sees = |i: usize, j: usize| !mask[i * n + j];
        assert!(sees(6, 3) && !sees(6, 5) && !sees(3, 4));
        let e = build_choice_sample(&[5, s.gmask], &[vec![7]], false, enc, &s).unwrap_err();
        assert!(e.contains("[gMASK]"), "{e}");
    }
}
