//! The strategy interface of the decoding loop (GLM-130B `generation/strategies.py`): one call per
//! step with the logits of every live row; beam search may reorder / expand the rows.

/// Token value of a row that finished earlier (the original pads finished rows with −1).
pub const DONE: i64 = -1;

/// A finished sequence with its scores (beam search fills the scores).
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The whole sequence: context, generated tokens, possibly an end token and −1 padding.
    pub tokens: Vec<i64>,
    /// Length-penalised score (beam search), if any.
    pub penalized_score: Option<f32>,
    /// Cumulative log-probability (beam search), if any.
    pub raw_score: Option<f32>,
}

/// A decoding strategy: BaseStrategy (sampling / greedy) or BeamSearchStrategy. `Send`, so that
/// each tensor-parallel rank can run its own copy (same seed, same decisions) on its own thread.
pub trait Strategy: Send {
    /// One step. `logits` is `[rows, vocab]` row-major (f32); `tokens` holds every live row's
    /// sequence and gets the new token appended (rows may be replaced). Returns, when the rows
    /// were reordered or expanded, the parent row of each new row (the KV cache follows it).
    fn step(
        &mut self,
        logits: &[f32],
        vocab: usize,
        tokens: &mut Vec<Vec<i64>>,
    ) -> Option<Vec<usize>>;

    /// Whether every batch entry is finished.
    fn is_done(&self) -> bool;

    /// The results per batch entry (best first) and a reset for the next call.
    fn finalize(&mut self, tokens: Vec<Vec<i64>>) -> Vec<Vec<Hypothesis>>;

    /// Tokens that end generation (`<eop>`, eos).
    fn end_tokens(&self) -> &[u32];
}

/// The value used for every ban and filter (fp16 min), as the original.
pub const FILTER_VALUE: f32 = -65504.0;

/// Numerically-stable log-softmax of one row (f32, as `F.log_softmax` on f32 logits).
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let log_sum = sum.ln();
    row.iter().map(|&x| x - max - log_sum).collect()
}

/// Softmax of one row (f32).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
