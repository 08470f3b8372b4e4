//! Language modelling as `LanguageModelTaskDataset` + `ModelForEvaluation.calculate_loss`
//! (spec §9.4): strided windows of `max_seq_length − 1` tokens; window 0 scores every token,
//! later windows keep the first `max_seq_length − 1 − generation_length` tokens as a bidirectional
//! prompt and score the rest; loss = Σ cross-entropy on f32 logits over the loss mask.

use burn::tensor::backend::Backend;
use glm_core::blank::GlmInput;
use glm_core::GlmModel;

use super::error::EvalResult;
use super::score::{token_log_probs, SoftmaxDtype};

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

/// Number of windows of a document of `n` tokens (at least 1).
pub fn num_windows(n: usize, max_seq_length: usize, generation_length: usize) -> usize {
    n.saturating_sub(max_seq_length - 1)
        .div_ceil(generation_length)
        + 1
}

/// Window `idx` of `tokens` (`LanguageModelTaskDataset.__getitem__`). `mask_id` is `[gMASK]`
/// with `use_task_mask`, else `[MASK]`.
pub fn window(
    tokens: &[u32],
    idx: usize,
    max_seq_length: usize,
    generation_length: usize,
    unidirectional: bool,
    mask_id: u32,
    sop_id: u32,
) -> Window {
    let start = (idx * generation_length).min(tokens.len());
    let end = (start + max_seq_length - 1).min(tokens.len());
    let chunk = &tokens[start..end];
    let (prompt, text) = if idx == 0 || unidirectional {
        (&chunk[..0], chunk)
    } else {
        let p = (max_seq_length - 1 - generation_length).min(chunk.len());
        chunk.split_at(p)
    };
    let p = prompt.len();
    let n = p + text.len() + 1;
    let mut input = prompt.to_vec();
    input.extend([mask_id, sop_id]);
    input.extend_from_slice(&text[..text.len().saturating_sub(1)]);
    input.truncate(n);
    let mut targets = prompt.to_vec();
    targets.push(mask_id);
    targets.extend_from_slice(text);
    let mask = glm_core::blank::glm_attention_mask(n, p + 1);
    let mut loss_mask = vec![false; p + 1];
    loss_mask.extend(std::iter::repeat_n(true, text.len()));
    Window {
        tokens: input,
        targets,
        position_ids: (0..n as u32).collect(),
        mask,
        loss_mask,
        prompt_length: p,
    }
}

/// Every window of a document.
pub fn windows(
    tokens: &[u32],
    max_seq_length: usize,
    generation_length: usize,
    unidirectional: bool,
    mask_id: u32,
    sop_id: u32,
) -> Vec<Window> {
    (0..num_windows(tokens.len(), max_seq_length, generation_length))
        .map(|i| {
            window(
                tokens,
                i,
                max_seq_length,
                generation_length,
                unidirectional,
                mask_id,
                sop_id,
            )
        })
        .collect()
}

/// Per-token losses of a micro-batch of windows (right-padded to the longest, pads blocked).
/// Returns per window the cross-entropy of every scored row, in row order.
pub fn window_losses<B: Backend>(
    model: &GlmModel<B>,
    windows: &[&Window],
) -> EvalResult<Vec<Vec<f32>>> {
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
            (0..w.targets.len())
                .filter(|&i| w.loss_mask[i])
                .map(|i| (i, w.targets[i]))
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
        assert_eq!(num_windows(doc.len(), 8, 3), 9);
        let w0 = window(&doc, 0, 8, 3, false, 1001, 1004);
        assert_eq!(w0.tokens, vec![1001, 1004, 10, 11, 12, 13, 14, 15]);
        assert_eq!(w0.targets, vec![1001, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(w0.loss_mask.iter().filter(|&&m| m).count(), 7);
        let w1 = window(&doc, 1, 8, 3, false, 1001, 1004);
        assert_eq!(w1.prompt_length, 4);
        assert_eq!(w1.tokens, vec![13, 14, 15, 16, 1001, 1004, 17, 18]);
        assert_eq!(w1.targets, vec![13, 14, 15, 16, 1001, 17, 18, 19]);
        assert!(!w1.mask[4]);
        assert!(w1.mask[5 * 8 + 6]);
        assert_eq!(num_windows(3, 8, 3), 1);
    }
}
