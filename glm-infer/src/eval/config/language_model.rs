//! The fields of an `lm` task (`LanguageModelTaskConfig`): the window stride.

use super::fields::Fields;
use super::kinds::LanguageModelSettings;
use super::MAX_LENGTH_LIMIT;
use crate::eval::error::EvalResult;

/// Reads `generation_length` (256 by default), which must fit the window of `max_seq_length − 1`.
pub(super) fn parse(
    f: &mut Fields<'_>,
    max_seq_length: usize,
    msl_line: usize,
) -> EvalResult<LanguageModelSettings> {
    let (generation_length, gl_line) = f.integer("generation_length", 256, 1, MAX_LENGTH_LIMIT)?;
    if generation_length > max_seq_length - 1 {
        let (line, key) = if gl_line > 0 {
            (gl_line, "generation_length")
        } else {
            (msl_line, "max_seq_length")
        };
        return Err(f.err(
            line,
            &f.spelled(key),
            format!("generation_length {generation_length} exceeds the window (max_seq_length − 1 = {})", max_seq_length - 1),
        ));
    }
    Ok(LanguageModelSettings { generation_length })
}
