//! Language modelling as `LanguageModelTaskDataset` + `ModelForEvaluation.calculate_loss`
//! (spec §9.4): strided windows of `max_seq_length − 1` tokens; window 0 scores every token,
//! later windows keep the first `max_seq_length − 1 − generation_length` tokens as a bidirectional
//! prompt and score the rest; loss = Σ cross-entropy on f32 logits over the loss mask.
//!
//! Windows are built lazily ([`windows`] is an iterator): a window and its `[n, n]` mask exist
//! only while its micro-batch is being scored, so evaluating a document needs memory for its
//! token ids plus one micro-batch of windows, whatever its length.

use burn::tensor::backend::Backend;
use glm_core::blank::GlmInput;
use glm_core::GlmModel;

use super::error::{EvalError, EvalResult};
use super::score::{check_layout, token_log_probs, SoftmaxDtype};

/// One scoring window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Input tokens: `prompt + [mask, <sop>] + text[:-1]`.
    pub tokens: Vec<u32>,
    /// Targets: `prompt + [mask] + text`.
    pub targets: Vec<u32>,
    /// `0 .. n`.
    pub position_ids: Vec<u32>,
    /// `[n, n]`, `true` = blocked: the prompt and the mask are bidirectional, the rest causal.
    pub mask: Vec<bool>,
    /// Which rows are scored.
    pub loss_mask: Vec<bool>,
    /// Length of the bidirectional prompt (0 for window 0 and unidirectional tasks).
    pub prompt_length: usize,
}

/// The window layout of an `lm` task, checked: `max_seq_length ≥ 2` and
/// `1 ≤ generation_length ≤ max_seq_length − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLayout {
    /// `max_seq_length` (L): a window holds at most L − 1 document tokens.
    pub max_seq_length: usize,
    /// `generation_length` (G): the stride between windows.
    pub generation_length: usize,
    /// Causal prompt (no bidirectional block after window 0).
    pub unidirectional: bool,
    /// `[gMASK]` with `use_task_mask`, else `[MASK]`.
    pub mask_id: u32,
    /// `<sop>`.
    pub sop_id: u32,
}

impl WindowLayout {
    /// Checks the sizes; the error says which one is wrong.
    pub fn new(
        max_seq_length: usize,
        generation_length: usize,
        unidirectional: bool,
        mask_id: u32,
        sop_id: u32,
    ) -> EvalResult<Self> {
        if max_seq_length < 2 {
            return Err(EvalError::Usage(format!(
                "lm windows: max_seq_length {max_seq_length} must be at least 2"
            )));
        }
        if generation_length == 0 || generation_length > max_seq_length - 1 {
            return Err(EvalError::Usage(format!(
                "lm windows: generation_length {generation_length} must be in 1..={}",
                max_seq_length - 1
            )));
        }
        Ok(Self {
            max_seq_length,
            generation_length,
            unidirectional,
            mask_id,
            sop_id,
        })
    }

    /// Number of windows of a document of `n` tokens (at least 1).
    pub fn num_windows(&self, n: usize) -> usize {
        // `new` guarantees L ≥ 2 and G ≥ 1.
        n.saturating_sub(self.max_seq_length - 1)
            .div_ceil(self.generation_length)
            .saturating_add(1)
    }

    /// Window `idx` of `tokens` (`LanguageModelTaskDataset.__getitem__`); an index past the
    /// last window gives an empty-text window (never panics).
    pub fn window(&self, tokens: &[u32], idx: usize) -> Window {
        let (l, g) = (self.max_seq_length, self.generation_length);
        let start = idx.saturating_mul(g).min(tokens.len());
        let end = start.saturating_add(l - 1).min(tokens.len());
        let chunk = tokens.get(start..end).unwrap_or(&[]);
        let (prompt, text) = if idx == 0 || self.unidirectional {
            (&chunk[..0], chunk)
        } else {
            let p = (l - 1 - g).min(chunk.len());
            chunk.split_at(p)
        };
        let p = prompt.len();
        let n = p + text.len() + 1;
        let mut input = Vec::with_capacity(n + 1);
        input.extend_from_slice(prompt);
        input.extend([self.mask_id, self.sop_id]);
        input.extend_from_slice(&text[..text.len().saturating_sub(1)]);
        input.truncate(n);
        let mut targets = Vec::with_capacity(n);
        targets.extend_from_slice(prompt);
        targets.push(self.mask_id);
        targets.extend_from_slice(text);
        let mask = glm_core::blank::glm_attention_mask(n, p + 1);
        let mut loss_mask = vec![false; p + 1];
        loss_mask.extend(std::iter::repeat_n(true, text.len()));
        Window {
            tokens: input,
            targets,
            position_ids: (0..n).map(|i| i as u32).collect(),
            mask,
            loss_mask,
            prompt_length: p,
        }
    }

    /// The windows of a document, built one at a time as the iterator advances.
    pub fn windows<'a>(&self, tokens: &'a [u32]) -> Windows<'a> {
        Windows {
            layout: *self,
            tokens,
            next: 0,
            count: self.num_windows(tokens.len()),
        }
    }
}

/// A lazy iterator over the windows of one document (see [`WindowLayout::windows`]).
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    layout: WindowLayout,
    tokens: &'a [u32],
    next: usize,
    count: usize,
}

impl Iterator for Windows<'_> {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.next >= self.count {
            return None;
        }
        let w = self.layout.window(self.tokens, self.next);
        self.next += 1;
        Some(w)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Windows<'_> {}

/// Number of windows of a document of `n` tokens (at least 1); 0 for an invalid layout
/// (`max_seq_length < 2`, `generation_length` outside `1..max_seq_length`).
pub fn num_windows(n: usize, max_seq_length: usize, generation_length: usize) -> usize {
    WindowLayout::new(max_seq_length, generation_length, false, 0, 0)
        .map(|l| l.num_windows(n))
        .unwrap_or(0)
}

/// Every window of a document, lazily (see [`WindowLayout`] for the checks).
pub fn windows(
    tokens: &[u32],
    max_seq_length: usize,
    generation_length: usize,
    unidirectional: bool,
    mask_id: u32,
    sop_id: u32,
) -> EvalResult<Windows<'_>> {
    Ok(WindowLayout::new(
        max_seq_length,
        generation_length,
        unidirectional,
        mask_id,
        sop_id,
    )?
    .windows(tokens))
}

impl Window {
    /// Checks that the public fields fit together: tokens, targets, positions and loss mask of
    /// one length, an `[n, n]` mask.
    pub fn validate(&self) -> EvalResult<()> {
        let n = self.tokens.len();
        check_layout("lm window", n, self.position_ids.len(), self.mask.len())?;
        if self.targets.len() != n || self.loss_mask.len() != n {
            return Err(EvalError::Usage(format!(
                "lm window: {} targets and {} loss-mask entries for {n} tokens",
                self.targets.len(),
                self.loss_mask.len()
            )));
        }
        Ok(())
    }
}

/// Per-token losses of a micro-batch of windows (right-padded to the longest, pads blocked).
/// Returns per window the cross-entropy of every scored row, in row order.
pub fn window_losses<B: Backend>(
    model: &GlmModel<B>,
    windows: &[&Window],
) -> EvalResult<Vec<Vec<f32>>> {
    for w in windows {
        w.validate()?;
    }
    let inputs: Vec<GlmInput> = windows
        .iter()
        .map(|w| GlmInput {
            batch: 1,
            seq: w.tokens.len(),
            tokens: w.tokens.clone(),
            position_ids: w.position_ids.clone(),
            mask: w.mask.clone(),
        })
        .collect();
    let batch = GlmInput::pad_batch(&inputs, 1, model.config().special_tokens.pad)?;
    let pairs: Vec<Vec<(usize, u32)>> = windows
        .iter()
        .map(|w| {
            w.targets
                .iter()
                .zip(&w.loss_mask)
                .enumerate()
                .filter(|(_, (_, &scored))| scored)
                .map(|(i, (&t, _))| (i, t))
                .collect()
        })
        .collect();
    let values = token_log_probs(model, &batch, &pairs, SoftmaxDtype::F32)?;
    Ok(values
        .into_iter()
        .map(|v| v.into_iter().map(|x| -x).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_original_layout() {
        let doc: Vec<u32> = (10..40).collect();
        // L = 8: windows of 7 tokens, stride 3.
        let layout = WindowLayout::new(8, 3, false, 1001, 1004).unwrap();
        assert_eq!(num_windows(doc.len(), 8, 3), 9);
        assert_eq!(layout.windows(&doc).len(), 9);
        let w0 = layout.window(&doc, 0);
        assert_eq!(w0.tokens, vec![1001, 1004, 10, 11, 12, 13, 14, 15]);
        assert_eq!(w0.targets, vec![1001, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(w0.loss_mask.iter().filter(|&&m| m).count(), 7);
        let w1 = layout.window(&doc, 1);
        assert_eq!(w1.prompt_length, 4);
        assert_eq!(w1.tokens, vec![13, 14, 15, 16, 1001, 1004, 17, 18]);
        assert_eq!(w1.targets, vec![13, 14, 15, 16, 1001, 17, 18, 19]);
        assert!(!w1.mask[4]);
        assert!(w1.mask[5 * 8 + 6]);
        assert_eq!(num_windows(3, 8, 3), 1);
        assert_eq!(layout.windows(&doc).nth(1), Some(w1));
    }

    #[test]
    fn invalid_layouts_are_errors_not_panics() {
        assert!(WindowLayout::new(1, 1, false, 0, 0).is_err());
        assert!(WindowLayout::new(8, 0, false, 0, 0).is_err());
        assert!(WindowLayout::new(8, 8, false, 0, 0).is_err());
        assert_eq!(num_windows(100, 0, 0), 0);
        let layout = WindowLayout::new(8, 7, false, 0, 0).unwrap();
        assert_eq!(layout.num_windows(usize::MAX), usize::MAX / 7 + 1);
        // Past the end: an empty-text window, no panic.
        assert_eq!(layout.window(&[1, 2, 3], usize::MAX).tokens, vec![0]);
    }
}
