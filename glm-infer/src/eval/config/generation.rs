//! The fields of a `gen` task (`GenerationTaskConfig`): strategy, beams, penalties, lengths,
//! and the original's constraints between them.

use super::fields::Fields;
use super::kinds::{GenerationSettings, SamplingStrategyName};
use super::{MAX_LENGTH_LIMIT, MAX_NUM_BEAMS};
use crate::eval::error::EvalResult;

/// Reads the generation fields of `f` (removing them), checked against the task's micro batch
/// size and `max_seq_length` (their values and lines, for the messages).
pub(super) fn parse(
    f: &mut Fields<'_>,
    micro_batch_size: usize,
    mbs_line: usize,
    max_seq_length: usize,
    msl_line: usize,
) -> EvalResult<GenerationSettings> {
    let d = GenerationSettings::default();
    let sampling_strategy = match f.take("sampling_strategy") {
        None => d.sampling_strategy,
        Some((key, line, node)) => match f.scalar(&key, line, &node)?.trim() {
            "BaseStrategy" => SamplingStrategyName::BaseStrategy,
            "BeamSearchStrategy" => SamplingStrategyName::BeamSearchStrategy,
            other => {
                return Err(f.err(
                    line,
                    &key,
                    format!("unknown strategy `{other}` (BaseStrategy, BeamSearchStrategy)"),
                ))
            }
        },
    };
    let (num_beams, _) = f.integer("num_beams", d.num_beams, 1, MAX_NUM_BEAMS)?;
    let length_penalty = f.float("length_penalty", d.length_penalty)?;
    let (no_repeat_ngram_size, _) = f.integer(
        "no_repeat_ngram_size",
        d.no_repeat_ngram_size,
        0,
        MAX_LENGTH_LIMIT,
    )?;
    let (min_gen_length, _) = f.integer("min_gen_length", d.min_gen_length, 0, MAX_LENGTH_LIMIT)?;
    let (max_gen_length, mgl_line) =
        f.integer("max_gen_length", d.max_gen_length, 1, MAX_LENGTH_LIMIT)?;
    if micro_batch_size != 1 {
        return Err(f.err(
            mbs_line,
            &f.spelled("micro_batch_size"),
            "only micro batch size 1 is supported for generation tasks (as the original)",
        ));
    }
    if max_gen_length.saturating_add(2) >= max_seq_length {
        let (line, key) = if mgl_line > 0 {
            (mgl_line, "max_gen_length")
        } else {
            (msl_line, "max_seq_length")
        };
        return Err(f.err(
            line,
            &f.spelled(key),
            format!("max_gen_length {max_gen_length} + 2 leaves no room for the context in max_seq_length {max_seq_length}"),
        ));
    }
    Ok(GenerationSettings {
        sampling_strategy,
        num_beams,
        length_penalty,
        no_repeat_ngram_size,
        min_gen_length,
        max_gen_length,
    })
}
