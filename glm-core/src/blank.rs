//! Blank-infilling inputs (spec §3): tokens, 1-D position ids and the attention mask of the
//! `[MASK]`, `[sMASK]` and `[gMASK]` layouts, exactly as GLM-130B's `generate.py`
//! (`get_masks_and_position_ids`) builds them.
//!
//! Layout: `[context (bidirectional)] <sop> g₁ g₂ …` — every row sees the keys before `<sop>`;
//! `<sop>` and generated tokens are causal; context rows do not see `<sop>`.
//! Positions: `[gMASK]` keeps counting; `[MASK]`/`[sMASK]` give `<sop>` and every generated token
//! the position of the mask being filled.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::config::{GlmConfig, SpecialTokens};
use crate::error::{Error, Result};

/// The kind of blank a prompt asks to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// `[MASK]`: short blank; generated positions stay at the mask's index.
    Mask,
    /// `[sMASK]`: sentence blank; same position rule as `[MASK]`.
    SMask,
    /// `[gMASK]`: long blank; positions keep counting.
    GMask,
}

impl MaskKind {
    /// The token id of this mask.
    pub fn token(self, specials: &SpecialTokens) -> u32 {
        match self {
            MaskKind::Mask => specials.mask,
            MaskKind::SMask => specials.smask,
            MaskKind::GMask => specials.gmask,
        }
    }

    /// generate.py's choice: `[MASK]` if present, else `[sMASK]`, else `[gMASK]`.
    pub fn choose(tokens: &[u32], specials: &SpecialTokens) -> Self {
        if tokens.contains(&specials.mask) {
            MaskKind::Mask
        } else if tokens.contains(&specials.smask) {
            MaskKind::SMask
        } else {
            MaskKind::GMask
        }
    }

    /// Whether positions keep counting through the generated part.
    pub fn is_gmask(self) -> bool {
        self == MaskKind::GMask
    }
}

/// Attention mask of the GLM layout, `[len, len]` row-major, `true` = blocked: key `j` is visible
/// from query `i` iff `j < prefix_len` (bidirectional part) or `j ≤ i` (causal part).
///
/// Built without size arithmetic; `len` is the caller's (a validated input's length, at most
/// `max_sequence_length`).
pub fn glm_attention_mask(len: usize, prefix_len: usize) -> Vec<bool> {
    (0..len)
        .flat_map(|i| (0..len).map(move |j| !(j < prefix_len || j <= i)))
        .collect()
}

/// `Err` naming `what` when `ids` holds an id ≥ `end` (`field` names the config limit).
pub(crate) fn check_ids(what: &str, ids: &[u32], end: usize, field: &str) -> Result<()> {
    match ids.iter().position(|&t| t as usize >= end) {
        Some(at) => Err(Error::InvalidInput(format!(
            "{what} {} at index {at} is outside 0..{end} ({field})",
            ids[at]
        ))),
        None => Ok(()),
    }
}

/// One blank-filling input: the context up to and including `<sop>`, the position of the mask
/// being filled and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlankInput {
    /// Context tokens including the trailing `<sop>`.
    pub tokens: Vec<u32>,
    /// Index of the mask token being filled (its position id).
    pub mask_position: usize,
    /// Kind of the mask.
    pub kind: MaskKind,
}

impl BlankInput {
    /// Builds the input for `context` (WITHOUT `<sop>`): fills the first mask of the kind
    /// generate.py would choose and appends `<sop>`. A context without any mask is an error
    /// (generate.py appends `[gMASK]` first; see glm-infer).
    pub fn from_context(context: &[u32], specials: &SpecialTokens) -> Result<Self> {
        let kind = MaskKind::choose(context, specials);
        let mask_id = kind.token(specials);
        let mask_position = context
            .iter()
            .position(|&t| t == mask_id)
            .ok_or_else(|| Error::InvalidInput("the context holds no mask token".into()))?;
        let mut tokens = context.to_vec();
        tokens.push(specials.sop);
        Ok(Self {
            tokens,
            mask_position,
            kind,
        })
    }

    /// Checks the public fields against `config`: at least a mask and `<sop>`, `<sop>` last,
    /// `mask_position` inside the context and holding the mask token of `kind`, every id in the
    /// vocabulary, at most `max_sequence_length` tokens.
    pub fn validate(&self, config: &GlmConfig) -> Result<()> {
        self.check_layout()?;
        let specials = &config.special_tokens;
        if self.tokens.last() != Some(&specials.sop) {
            return Err(Error::InvalidInput(format!(
                "blank input must end with <sop> ({}), ends with {:?}",
                specials.sop,
                self.tokens.last()
            )));
        }
        let want = self.kind.token(specials);
        let found = self.tokens.get(self.mask_position).copied();
        if found != Some(want) {
            return Err(Error::InvalidInput(format!(
                "mask_position {} holds {found:?}, not the {:?} token {want}",
                self.mask_position, self.kind
            )));
        }
        if self.tokens.len() > config.max_sequence_length {
            return Err(Error::InvalidInput(format!(
                "blank input has {} tokens, max_sequence_length is {}",
                self.tokens.len(),
                config.max_sequence_length
            )));
        }
        check_ids("token id", &self.tokens, config.vocab_size, "vocab_size")
    }

    /// The checks that need no config: a mask and `<sop>` at least, `mask_position` before `<sop>`.
    fn check_layout(&self) -> Result<()> {
        if self.tokens.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "blank input needs a mask and <sop>, has {} tokens",
                self.tokens.len()
            )));
        }
        if self.mask_position + 1 >= self.tokens.len() {
            return Err(Error::InvalidInput(format!(
                "mask_position {} is not inside the context of {} tokens before <sop>",
                self.mask_position,
                self.tokens.len() - 1
            )));
        }
        Ok(())
    }

    /// Context length including `<sop>`.
    pub fn context_length(&self) -> usize {
        self.tokens.len()
    }

    /// Position id of absolute index `i` (context or generated); saturates at `u32::MAX` (out of
    /// every model's range, so the forward pass rejects it).
    pub fn position_id(&self, i: usize) -> u32 {
        let p = if self.kind.is_gmask() || i.saturating_add(1) < self.context_length() {
            i
        } else {
            self.mask_position
        };
        u32::try_from(p).unwrap_or(u32::MAX)
    }

    /// Position ids of the first `len` indices.
    pub fn position_ids(&self, len: usize) -> Vec<u32> {
        (0..len).map(|i| self.position_id(i)).collect()
    }

    /// Attention mask of the first `len` indices (`true` = blocked): keys before `<sop>` are
    /// visible to all, the rest causal.
    pub fn attention_mask(&self, len: usize) -> Vec<bool> {
        glm_attention_mask(len, self.context_length().saturating_sub(1))
    }

    /// The context as a batch-of-one [`GlmInput`], after [`validate`](Self::validate).
    pub fn to_input(&self, config: &GlmConfig) -> Result<GlmInput> {
        self.validate(config)?;
        let len = self.context_length();
        Ok(GlmInput {
            batch: 1,
            seq: len,
            tokens: self.tokens.clone(),
            position_ids: self.position_ids(len),
            mask: self.attention_mask(len),
        })
    }
}

/// Host-side model inputs of a batch, ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlmInput {
    /// Batch size.
    pub batch: usize,
    /// Sequence length (keys = queries).
    pub seq: usize,
    /// `[batch, seq]` token ids.
    pub tokens: Vec<u32>,
    /// `[batch, seq]` position ids.
    pub position_ids: Vec<u32>,
    /// `[batch, seq, seq]`, `true` = blocked.
    pub mask: Vec<bool>,
}

impl GlmInput {
    /// Checks that the fields describe one consistent, non-empty batch: `batch, seq ≥ 1`,
    /// `tokens` and `position_ids` of `batch·seq` and `mask` of `batch·seq·seq` entries (checked
    /// arithmetic).
    pub fn check_layout(&self) -> Result<()> {
        if self.batch == 0 || self.seq == 0 {
            return Err(Error::InvalidInput(format!(
                "empty input: batch {} × seq {}",
                self.batch, self.seq
            )));
        }
        let overflow =
            || Error::InvalidInput(format!("batch {} × seq {} overflows", self.batch, self.seq));
        let n = self.batch.checked_mul(self.seq).ok_or_else(overflow)?;
        let n_mask = n.checked_mul(self.seq).ok_or_else(overflow)?;
        let fields = [
            ("tokens", self.tokens.len(), n),
            ("position_ids", self.position_ids.len(), n),
            ("mask", self.mask.len(), n_mask),
        ];
        for (field, found, expected) in fields {
            if found != expected {
                return Err(Error::InvalidInput(format!(
                    "{field} has {found} entries, batch {} × seq {} needs {expected}",
                    self.batch, self.seq
                )));
            }
        }
        Ok(())
    }

    /// [`check_layout`](Self::check_layout), then against `config`: every token id
    /// `< vocab_size`, every position `< max_sequence_length` (the model's limit: rows beyond it
    /// are fine as long as their positions are, e.g. padding). Host-side only.
    pub fn validate(&self, config: &GlmConfig) -> Result<()> {
        self.check_layout()?;
        check_ids("token id", &self.tokens, config.vocab_size, "vocab_size")?;
        check_ids(
            "position id",
            &self.position_ids,
            config.max_sequence_length,
            "max_sequence_length",
        )
    }

    /// Stacks inputs of different lengths, right-padding each to the longest length rounded up to
    /// `multiple` (the evaluation collate function uses 32): pad token `pad_id`, position 0, pad keys
    /// blocked for every row and pad rows fully blocked.
    pub fn pad_batch(inputs: &[GlmInput], multiple: usize, pad_id: u32) -> Result<GlmInput> {
        if inputs.is_empty() {
            return Err(Error::InvalidInput("empty batch".into()));
        }
        for (k, input) in inputs.iter().enumerate() {
            if input.batch != 1 {
                return Err(Error::InvalidInput(format!(
                    "pad_batch takes single samples, sample {k} is a batch of {}",
                    input.batch
                )));
            }
            input
                .check_layout()
                .map_err(|e| Error::InvalidInput(format!("pad_batch sample {k}: {e}")))?;
        }
        let longest = inputs.iter().map(|i| i.seq).max().unwrap_or(0);
        let m = multiple.max(1);
        let too_big = || {
            Error::InvalidInput(format!(
                "pad_batch: {} samples of {longest} tokens (padded to a multiple of {m}) overflow",
                inputs.len()
            ))
        };
        let seq = longest.div_ceil(m).checked_mul(m).ok_or_else(too_big)?;
        let n = inputs.len().checked_mul(seq).ok_or_else(too_big)?;
        let n_mask = n.checked_mul(seq).ok_or_else(too_big)?;
        let mut out = GlmInput {
            batch: inputs.len(),
            seq,
            tokens: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            mask: Vec::with_capacity(n_mask),
        };
        for input in inputs {
            let n = input.seq;
            out.tokens.extend(&input.tokens);
            out.tokens.extend(std::iter::repeat_n(pad_id, seq - n));
            out.position_ids.extend(&input.position_ids);
            out.position_ids.extend(std::iter::repeat_n(0, seq - n));
            // Rows of the sample (each of its n rows, then blocked padding keys), then pad rows.
            for row in input.mask.chunks_exact(n) {
                out.mask.extend_from_slice(row);
                out.mask.extend(std::iter::repeat_n(true, seq - n));
            }
            out.mask.extend(std::iter::repeat_n(true, (seq - n) * seq));
        }
        Ok(out)
    }

    /// Uploads to `device` after [`check_layout`](Self::check_layout): tokens and positions
    /// `[batch, seq]`, mask `[batch, 1, seq, seq]`. Ids are checked against a model by
    /// [`validate`](Self::validate), [`GlmModel::forward_input`](crate::GlmModel::forward_input)
    /// or the model's tensor entry points.
    #[allow(clippy::type_complexity)]
    pub fn try_to_tensors<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 4, Bool>)> {
        self.check_layout()?;
        Ok(self.to_tensors(device))
    }

    /// Uploads to `device`: tokens and positions `[batch, seq]`, mask `[batch, 1, seq, seq]`.
    ///
    /// # Panics
    /// When the fields are inconsistent (`tokens`/`position_ids` not `batch·seq` long, `mask` not
    /// `batch·seq·seq`): for inputs not built by this crate, use
    /// [`try_to_tensors`](Self::try_to_tensors) or [`validate`](Self::validate) first.
    pub fn to_tensors<B: Backend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 4, Bool>) {
        let ints = |v: &[u32]| {
            let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [self.batch, self.seq]), device)
        };
        let mask = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(self.mask.clone(), [self.batch, 1, self.seq, self.seq]),
            device,
        );
        (ints(&self.tokens), ints(&self.position_ids), mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_rule_is_bidirectional_prefix_then_causal() {
        // context of 3 + <sop> (len 4) + 2 generated.
        let m = glm_attention_mask(6, 3);
        let visible = |i: usize, j: usize| !m[i * 6 + j];
        assert!(visible(0, 2), "context sees later context");
        assert!(!visible(0, 3), "context does not see <sop>");
        assert!(visible(3, 3) && !visible(3, 4), "<sop> is causal");
        assert!(visible(5, 4) && visible(5, 0));
    }

    #[test]
    fn positions_follow_the_mask_kind() {
        let s = SpecialTokens::with_base(1000, 2);
        let b = BlankInput::from_context(&[5, 1000, 6, 2], &s).unwrap();
        assert_eq!(b.kind, MaskKind::Mask);
        assert_eq!(b.position_ids(7), vec![0, 1, 2, 3, 1, 1, 1]);
        let g = BlankInput::from_context(&[5, 6, 1001], &s).unwrap();
        assert_eq!(g.position_ids(6), vec![0, 1, 2, 3, 4, 5]);
        assert!(BlankInput::from_context(&[5, 6], &s).is_err());
        // [MASK] wins over [sMASK].
        let m = BlankInput::from_context(&[1002, 7, 1000], &s).unwrap();
        assert_eq!((m.kind, m.mask_position), (MaskKind::Mask, 2));
    }
}
