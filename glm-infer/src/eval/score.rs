//! One batched forward pass that returns only the log-probabilities the harness needs: the
//! final-LayerNorm hidden states of the requested rows go through the tied output projection and a
//! log-softmax, so a batch never materialises `[batch, seq, vocab]` logits (150528 columns for
//! GLM-130B) — the original computes them all and then picks the same values.

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use glm_core::blank::GlmInput;
use glm_core::GlmModel;

use super::error::{EvalError, EvalResult};

/// Where to take the log-softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftmaxDtype {
    /// In the model's dtype (multiple choice: the original's `log_softmax` on fp16 logits).
    Model,
    /// On logits cast to f32 (language modelling: `vocab_parallel_cross_entropy(logits.float())`).
    F32,
}

/// Checks that a public sample's parts fit together: at least one token, one position id per
/// token and an `[n, n]` mask. `what` names the sample in the error.
pub fn check_layout(what: &str, tokens: usize, positions: usize, mask: usize) -> EvalResult<()> {
    if tokens == 0 {
        return Err(EvalError::Usage(format!("{what}: no tokens")));
    }
    if positions != tokens {
        return Err(EvalError::Usage(format!(
            "{what}: {positions} position ids for {tokens} tokens"
        )));
    }
    if tokens.checked_mul(tokens) != Some(mask) {
        return Err(EvalError::Usage(format!(
            "{what}: mask of {mask} entries, expected {tokens}×{tokens}"
        )));
    }
    Ok(())
}

/// `log p(token | row)` for every `(row, token)` pair of every sample of a padded batch.
///
/// `input` is a padded batch (see [`GlmInput::pad_batch`]); `pairs[b]` lists sample `b`'s rows and
/// target tokens. Returns the values in the same layout (f32).
pub fn token_log_probs<B: Backend>(
    model: &GlmModel<B>,
    input: &GlmInput,
    pairs: &[Vec<(usize, u32)>],
    dtype: SoftmaxDtype,
) -> EvalResult<Vec<Vec<f32>>> {
    if pairs.len() != input.batch {
        return Err(EvalError::Usage(format!(
            "{} pair lists for a batch of {}",
            pairs.len(),
            input.batch
        )));
    }
    if let Some(&(row, _)) = pairs.iter().flatten().find(|(row, _)| *row >= input.seq) {
        return Err(EvalError::Usage(format!(
            "row {row} is outside the batch width {}",
            input.seq
        )));
    }
    model.check_input(&input.tokens, &input.position_ids)?;
    let width = pairs.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let batch = input.batch;
    let device = model.word_embeddings.val().device();
    let (tokens, positions, mask) = input.to_tensors::<B>(&device);
    // The inference forward up to the final LayerNorm; logits only for the picked rows.
    let normed = model.forward_normed(tokens, positions, mask)?;
    let hidden = normed.dims()[2];
    let mut rows = Vec::with_capacity(batch * width);
    let mut ids = Vec::with_capacity(batch * width);
    for p in pairs {
        rows.extend(p.iter().map(|&(r, _)| r as i64));
        ids.extend(p.iter().map(|&(_, t)| t as i64));
        rows.extend(std::iter::repeat_n(0, width - p.len()));
        ids.extend(std::iter::repeat_n(0, width - p.len()));
    }
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [batch * width]), &device)
        .reshape([batch, width, 1])
        .expand([batch, width, hidden]);
    let picked = normed.gather(1, rows);
    let mut logits = model.logits(picked);
    if dtype == SoftmaxDtype::F32 {
        logits = logits.cast(DType::F32);
    }
    let log_probs = log_softmax(logits, 2);
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [batch * width]), &device)
        .reshape([batch, width, 1]);
    let values: Vec<f32> = log_probs
        .gather(2, ids)
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| EvalError::Readback {
            what: "log-probabilities",
            message: format!("{e:?}"),
        })?;
    Ok(pairs
        .iter()
        .enumerate()
        .map(|(b, p)| values[b * width..b * width + p.len()].to_vec())
        .collect())
}
