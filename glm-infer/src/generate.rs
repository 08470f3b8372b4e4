//! The decoding loop of the original (GLM-130B `evaluation/model.py: batch_filling_sequence`,
//! spec §4.1): one forward over the whole (padded) context, the logits of each sample's last
//! context row pick the first token, then one token per step through the KV cache until the
//! strategy is done or the padded length is reached. Beam search reorders the cache rows.

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};
use glm_core::{ForwardOptions, GlmConfig, GlmModel};

use crate::error::{Error, Result};
use crate::strategy::{Hypothesis, Strategy, DONE};

/// One sample of a generation batch: the context and the full-length layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSample {
    /// Context tokens (incl. `<sop>`), possibly right-padded to the batch width.
    pub tokens: Vec<u32>,
    /// Real context length (the row whose logits give the first token is `context_length − 1`).
    pub context_length: usize,
    /// Position ids of every index up to the total length (context width + generation budget).
    pub position_ids: Vec<u32>,
    /// `[total, total]` attention mask, `true` = blocked.
    pub mask: Vec<bool>,
}

impl GenerationSample {
    /// The generate.py layout of a blank-filling input with `max_gen_length` new tokens.
    ///
    /// Errors (before allocating the `[total, total]` mask) when `blank` does not fit `config`
    /// ([`BlankInput::validate`](glm_core::blank::BlankInput::validate): ids, mask position,
    /// `<sop>`), when `max_gen_length` is 0, or when context + budget exceeds
    /// `max_sequence_length`.
    pub fn from_blank(
        blank: &glm_core::blank::BlankInput,
        max_gen_length: usize,
        config: &GlmConfig,
    ) -> Result<Self> {
        blank.validate(config)?;
        if max_gen_length == 0 {
            return Err(Error::Prompt(
                "no generation budget: max_gen_length is 0".into(),
            ));
        }
        let total = blank
            .context_length()
            .checked_add(max_gen_length)
            .filter(|&t| t <= config.max_sequence_length)
            .ok_or_else(|| {
                Error::Prompt(format!(
                    "{} context tokens + {max_gen_length} to generate exceed max_sequence_length {}",
                    blank.context_length(),
                    config.max_sequence_length
                ))
            })?;
        Ok(Self {
            tokens: blank.tokens.clone(),
            context_length: blank.context_length(),
            position_ids: blank.position_ids(total),
            mask: blank.attention_mask(total),
        })
    }

    /// The evaluation layout (`ModelForEvaluation.generate_text`): a context right-padded to the
    /// batch width `W` with its `[W, W]` mask, then one generated row per target position, each
    /// seeing the `<sop>` row's context mask and the generated rows causally.
    ///
    /// Errors ([`Error::Prompt`]) when the parts do not fit together: an empty context,
    /// `context_length` outside `1..=W`, `W` position ids, a `[W, W]` mask, or a layout whose
    /// mask size overflows.
    pub fn evaluation(
        tokens: Vec<u32>,
        context_length: usize,
        context_positions: Vec<u32>,
        context_mask: &[bool],
        target_position_ids: &[u32],
    ) -> Result<Self> {
        let w = tokens.len();
        let g = target_position_ids.len();
        if w == 0 {
            return Err(Error::Prompt("evaluation sample: empty context".into()));
        }
        if context_length == 0 || context_length > w {
            return Err(Error::Prompt(format!(
                "evaluation sample: context length {context_length} outside 1..={w} (the context width)"
            )));
        }
        if context_positions.len() != w {
            return Err(Error::Prompt(format!(
                "evaluation sample: {} context position ids for a context of width {w}",
                context_positions.len()
            )));
        }
        if w.checked_mul(w) != Some(context_mask.len()) {
            return Err(Error::Prompt(format!(
                "evaluation sample: context mask of {} entries, expected {w}×{w}",
                context_mask.len()
            )));
        }
        let total = w
            .checked_add(g)
            .filter(|t| t.checked_mul(*t).is_some())
            .ok_or_else(|| {
                Error::Prompt(format!(
                    "evaluation sample: {w} context + {g} generated rows overflow the mask size"
                ))
            })?;
        let mut mask = vec![true; total * total];
        for (i, row) in context_mask.chunks_exact(w).enumerate() {
            mask[i * total..i * total + w].copy_from_slice(row);
        }
        let sop_row = &context_mask[(context_length - 1) * w..context_length * w];
        for i in 0..g {
            let row = (w + i) * total;
            mask[row..row + w].copy_from_slice(sop_row);
            for j in 0..g {
                mask[row + w + j] = j > i;
            }
        }
        let mut position_ids = context_positions;
        position_ids.extend_from_slice(target_position_ids);
        Ok(Self {
            tokens,
            context_length,
            position_ids,
            mask,
        })
    }

    /// Total length: context width + generation budget (every position of the layout).
    pub fn total(&self) -> usize {
        self.position_ids.len()
    }
}

/// Called after every step with the rows' token sequences (context + generated, −1 when done).
pub type StepCallback<'a> = dyn FnMut(&[Vec<i64>]) + 'a;

/// Runs the original decoding loop on `samples` (all of the same context width and total length).
/// Returns per sample the strategy's hypotheses (best first).
pub fn batch_filling_sequence<B: Backend>(
    model: &GlmModel<B>,
    samples: &[GenerationSample],
    strategy: &mut dyn Strategy,
    on_step: &mut StepCallback<'_>,
) -> Result<Vec<Vec<Hypothesis>>> {
    let first = samples
        .first()
        .ok_or_else(|| Error::Prompt("empty batch".into()))?;
    let width = first.tokens.len();
    let total = first.total();
    if width == 0 {
        return Err(Error::Prompt("empty context".into()));
    }
    if total <= width {
        return Err(Error::Prompt(format!(
            "no generation budget: total length {total} ≤ context length {width}"
        )));
    }
    for (k, s) in samples.iter().enumerate() {
        if s.tokens.len() != width
            || s.total() != total
            || total.checked_mul(total) != Some(s.mask.len())
        {
            return Err(Error::Prompt(format!(
                "sample {k}: {} tokens, {} positions and {} mask entries; samples of a batch \
                 must share context width ({width}) and total length ({total}, mask {total}²)",
                s.tokens.len(),
                s.total(),
                s.mask.len()
            )));
        }
        if s.context_length == 0 || s.context_length > width {
            return Err(Error::Prompt(format!(
                "sample {k}: context length {} outside 1..={width}",
                s.context_length
            )));
        }
        model.check_input(&s.tokens, &s.position_ids)?;
    }
    let device = model.word_embeddings.val().device();
    let vocab = model.config().vocab_size;
    let mut tokens: Vec<Vec<i64>> = samples
        .iter()
        .map(|s| s.tokens.iter().map(|&t| t as i64).collect())
        .collect();
    // Which sample's positions/mask each row uses (beams share their sample's layout).
    let mut row_sample: Vec<usize> = (0..samples.len()).collect();
    let mut cache = model.new_cache();
    // Room for every position the loop caches: no step copies the cache.
    cache.reserve(total);
    let mut counter = width - 1;
    let mut index = 0;
    while counter < total - 1 {
        let rows = tokens.len();
        let n = counter + 1 - index;
        let mut tok = Vec::with_capacity(rows * n);
        let mut pos = Vec::with_capacity(rows * n);
        let mut mask = Vec::with_capacity(rows * n * (counter + 1));
        for (r, row) in tokens.iter().enumerate() {
            let s = row_sample
                .get(r)
                .and_then(|&k| samples.get(k))
                .ok_or_else(|| Error::Strategy(format!("row {r} has no sample")))?;
            // Finished rows carry −1; the original's vocab-parallel embedding maps it to zeros,
            // any id works since those rows are never read again.
            tok.extend(
                row[index..=counter]
                    .iter()
                    .map(|&t| if t == DONE { 0 } else { t }),
            );
            pos.extend(s.position_ids[index..=counter].iter().map(|&p| p as i64));
            for i in index..=counter {
                mask.extend_from_slice(&s.mask[i * total..i * total + counter + 1]);
            }
        }
        let tok = Tensor::<B, 2, Int>::from_data(TensorData::new(tok, [rows, n]), &device);
        let pos = Tensor::<B, 2, Int>::from_data(TensorData::new(pos, [rows, n]), &device);
        let mask = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(mask, [rows, 1, n, counter + 1]),
            &device,
        );
        let first_step = counter == width - 1;
        let ragged = first_step && samples.iter().any(|s| s.context_length != width);
        let logits = if ragged {
            // Each sample's first token comes from its own last context row.
            let rows: Vec<usize> = samples.iter().map(|s| s.context_length - 1).collect();
            model.forward_cached_rows(tok, pos, mask, &mut cache, &rows)?
        } else {
            model
                .forward_with(
                    tok,
                    pos,
                    mask,
                    Some(&mut cache),
                    ForwardOptions {
                        hidden_states: false,
                        last_only: true,
                    },
                )?
                .logits
        };
        let host: Vec<f32> = logits
            .cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Prompt(format!("reading logits: {e:?}")))?;
        if rows.checked_mul(vocab) != Some(host.len()) {
            return Err(Error::Prompt(format!(
                "the model returned {} logits for {rows} rows of {vocab}",
                host.len()
            )));
        }
        counter += 1;
        index = counter;
        if let Some(parents) = strategy.step(&host, vocab, &mut tokens) {
            if parents.len() != tokens.len() {
                return Err(Error::Strategy(format!(
                    "the strategy returned {} parents for {} rows",
                    parents.len(),
                    tokens.len()
                )));
            }
            cache.select_batch(&parents)?;
            row_sample = parents
                .iter()
                .map(|&p| {
                    row_sample.get(p).copied().ok_or_else(|| {
                        Error::Strategy(format!("parent row {p} of {rows} does not exist"))
                    })
                })
                .collect::<Result<_>>()?;
        }
        on_step(&tokens);
        if strategy.is_done() {
            break;
        }
    }
    Ok(strategy.finalize(tokens))
}

/// The generated part of a hypothesis as the original extracts it: tokens after `context_width`
/// up to the first −1, minus one trailing end token.
pub fn generated_tokens(h: &Hypothesis, context_width: usize, end_tokens: &[u32]) -> Vec<u32> {
    let line = &h.tokens;
    let mut unfinished = line.iter().position(|&t| t == DONE).unwrap_or(line.len());
    if unfinished > 0 && end_tokens.contains(&(line[unfinished - 1] as u32)) {
        unfinished -= 1;
    }
    line[context_width.min(unfinished)..unfinished]
        .iter()
        .map(|&t| t as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inconsistent_evaluation_samples_are_errors() {
        let mask = glm_core::blank::glm_attention_mask(3, 2);
        let ok = GenerationSample::evaluation(vec![5, 6, 7], 3, vec![0, 1, 2], &mask, &[3, 4]);
        assert_eq!(ok.map(|s| s.mask.len()).ok(), Some(25));
        let zero = GenerationSample::evaluation(vec![5, 6, 7], 0, vec![0, 1, 2], &mask, &[3]);
        assert!(
            matches!(&zero, Err(Error::Prompt(m)) if m.contains("context length 0")),
            "{zero:?}"
        );
        let long = GenerationSample::evaluation(vec![5, 6, 7], 4, vec![0, 1, 2], &mask, &[3]);
        assert!(long.is_err());
        let empty = GenerationSample::evaluation(vec![], 1, vec![], &[], &[3]);
        assert!(empty.is_err());
        let positions = GenerationSample::evaluation(vec![5, 6, 7], 3, vec![0, 1], &mask, &[3]);
        assert!(positions.is_err());
        let short_mask =
            GenerationSample::evaluation(vec![5, 6, 7], 3, vec![0, 1, 2], &mask[..8], &[3]);
        assert!(short_mask.is_err());
    }
}
