//! Filling blanks as GLM-130B `generate.py fill_blanks` does (spec §3.4): take the FIRST remaining
//! mask of the chosen type, generate for it (positions = that mask's index for `[MASK]`/`[sMASK]`),
//! strip a trailing end token, splice the fill in place of the mask and start again on the new
//! sequence (full re-encoding). The `out_seq_length` budget is shared by all blanks. With beam
//! search only beam 0's fill is carried into the next blank.

use std::sync::{Mutex, PoisonError};

use burn::tensor::backend::Backend;
use glm_core::blank::BlankInput;
use glm_core::parallel::TensorParallel;
use glm_core::GlmModel;

use crate::error::{Error, Result};
use crate::generate::{batch_filling_sequence, GenerationSample, StepCallback};
use crate::prompt::Prompt;
use crate::strategy::{Hypothesis, Strategy};

/// One blank of a [`fill_blanks`] run (beam 0).
#[derive(Debug, Clone, PartialEq)]
pub struct FillIteration {
    /// Index of the mask being filled.
    pub mask_position: usize,
    /// The input of this iteration (sequence + `<sop>`).
    pub input_tokens: Vec<u32>,
    /// Generation budget of this iteration.
    pub max_gen_length: usize,
    /// Every hypothesis of the strategy (best first).
    pub hypotheses: Vec<Hypothesis>,
    /// The fill of beam 0 (without the end token).
    pub blank_tokens: Vec<u32>,
    /// Beam 0's sequence after splicing.
    pub sequence_after: Vec<u32>,
}

/// The result of [`fill_blanks`].
#[derive(Debug, Clone, PartialEq)]
pub struct FillResult {
    /// Final sequence per beam (trailing eos removed), best first.
    pub sequences: Vec<Vec<u32>>,
    /// Per beam, the fill of each blank.
    pub blanks: Vec<Vec<Vec<u32>>>,
    /// Per blank, what happened.
    pub iterations: Vec<FillIteration>,
}

/// Fills every mask of `prompt.kind`, left to right. `out_seq_length` is the maximum total length
/// (context + `<sop>` + generated) of every iteration, as `--out-seq-length`.
///
/// The prompt is checked first ([`Prompt::validate`]: non-empty, ids in the vocabulary, at least
/// one mask of its kind, not longer than `max_sequence_length`), and `out_seq_length` must not
/// exceed `max_sequence_length` and must leave a budget for every blank: typed errors, never a
/// panic or an unchanged "answer".
pub fn fill_blanks<B: Backend>(
    model: &GlmModel<B>,
    prompt: &Prompt,
    strategy: &mut dyn Strategy,
    out_seq_length: usize,
    on_step: &mut StepCallback<'_>,
) -> Result<FillResult> {
    let config = model.config();
    prompt.validate(config)?;
    if out_seq_length > config.max_sequence_length {
        return Err(Error::Prompt(format!(
            "out_seq_length {out_seq_length} exceeds the model's max_sequence_length {}",
            config.max_sequence_length
        )));
    }
    let specials = config.special_tokens;
    let mask_id = prompt.kind.token(&specials);
    let end_tokens = strategy.end_tokens().to_vec();
    let mut outputs: Vec<Vec<u32>> = vec![prompt.tokens.clone()];
    let mut blanks: Vec<Vec<Vec<u32>>> = vec![Vec::new()];
    let mut iterations = Vec::new();
    loop {
        let seq = outputs[0].clone();
        let Some(mask_position) = seq.iter().position(|&t| t == mask_id) else {
            break;
        };
        let blank = BlankInput {
            tokens: [seq.as_slice(), &[specials.sop]].concat(),
            mask_position,
            kind: prompt.kind,
        };
        let sop_index = blank.context_length() - 1;
        let max_gen_length = out_seq_length.checked_sub(blank.context_length()).filter(|&m| m > 0).ok_or_else(|| {
            Error::Prompt(format!(
                "no generation budget left for the blank at {mask_position}: the input has {} tokens, --out-seq-length is {out_seq_length}",
                blank.context_length()
            ))
        })?;
        let sample = GenerationSample::from_blank(&blank, max_gen_length, config)?;
        let hypotheses = batch_filling_sequence(model, &[sample], strategy, on_step)?
            .into_iter()
            .next()
            .unwrap_or_default();
        if hypotheses.is_empty() {
            return Err(Error::Prompt("the strategy returned no sequence".into()));
        }
        let previous = blanks[0].clone();
        outputs.clear();
        let mut new_blanks = Vec::new();
        for h in &hypotheses {
            let fill = crate::generate::generated_tokens(h, blank.context_length(), &end_tokens);
            let spliced = [
                &seq[..mask_position],
                fill.as_slice(),
                &seq[mask_position + 1..sop_index],
            ]
            .concat();
            let mut b = previous.clone();
            b.push(fill);
            new_blanks.push(b);
            outputs.push(spliced);
        }
        iterations.push(FillIteration {
            mask_position,
            input_tokens: blank.tokens.clone(),
            max_gen_length,
            hypotheses,
            blank_tokens: new_blanks[0].last().cloned().unwrap_or_default(),
            sequence_after: outputs[0].clone(),
        });
        blanks = new_blanks;
    }
    for out in &mut outputs {
        if out.last() == Some(&specials.eos) {
            out.pop();
        }
    }
    Ok(FillResult {
        sequences: outputs,
        blanks,
        iterations,
    })
}

/// [`fill_blanks`] on a tensor-parallel group: rank 0 runs `strategy` on the calling thread (with
/// `on_step`), every other rank `r` runs `followers[r - 1]` — a strategy built like `strategy`,
/// with the same seed and the same history, so that every rank takes the same decisions from the
/// same (all-reduced) logits. Returns rank 0's result.
///
/// `followers` must hold `world − 1` strategies (a typed error otherwise). A rank that fails stops
/// every rank ([`TensorParallel::run`]).
pub fn fill_blanks_parallel<B: Backend>(
    group: &TensorParallel<B>,
    prompt: &Prompt,
    strategy: &mut dyn Strategy,
    followers: &[Mutex<Box<dyn Strategy>>],
    out_seq_length: usize,
    on_step: &mut StepCallback<'_>,
) -> Result<FillResult> {
    let world = group.world();
    if followers.len() + 1 != world {
        return Err(Error::Usage(format!(
            "{} follower strategies for {world} tensor-parallel ranks (need {})",
            followers.len(),
            world.saturating_sub(1)
        )));
    }
    group.run(
        |lead| fill_blanks(lead, prompt, strategy, out_seq_length, on_step),
        |rank| {
            let r = rank.tensor_parallel_rank().map_or(0, |tp| tp.dims().rank);
            let follower = followers
                .get(r.wrapping_sub(1))
                .ok_or_else(|| Error::Usage(format!("no strategy for rank {r}")))?;
            let mut follower = follower.lock().unwrap_or_else(PoisonError::into_inner);
            fill_blanks(rank, prompt, follower.as_mut(), out_seq_length, &mut |_| {}).map(drop)
        },
    )
}
