//! Blank-infilling inputs (spec §3): tokens, 1-D position ids and the attention mask of the
//! `[MASK]`, `[sMASK]` and `[gMASK]` layouts, exactly as GLM-130B's `generate.py`
//! (`get_masks_and_position_ids`) builds them.
//!
//! Layout: `[context (bidirectional)] <sop> g₁ g₂ …` — every row sees the keys before `<sop>`;
//! `<sop>` and generated tokens are causal; context rows do not see `<sop>`.
//! Positions: `[gMASK]` keeps counting; `[MASK]`/`[sMASK]` give `<sop>` and every generated token
//! the position of the mask being filled.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::config::SpecialTokens;
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
pub fn glm_attention_mask(len: usize, prefix_len: usize) -> Vec<bool> {
    let mut mask = vec![false; len * len];
    for i in 0..len {
        for j in 0..len {
            mask[i * len + j] = !(j < prefix_len || j <= i);
        }
    }
    mask
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

    /// Context length including `<sop>`.
    pub fn context_length(&self) -> usize {
        self.tokens.len()
    }

    /// Position id of absolute index `i` (context or generated).
    pub fn position_id(&self, i: usize) -> u32 {
        if self.kind.is_gmask() || i + 1 < self.context_length() {
            i as u32
        } else {
            self.mask_position as u32
        }
    }

    /// Position ids of the first `len` indices.
    pub fn position_ids(&self, len: usize) -> Vec<u32> {
        (0..len).map(|i| self.position_id(i)).collect()
    }

    /// Attention mask of the first `len` indices (`true` = blocked): keys before `<sop>` are
    /// visible to all, the rest causal.
    pub fn attention_mask(&self, len: usize) -> Vec<bool> {
        glm_attention_mask(len, self.context_length() - 1)
    }

    /// The context as a batch-of-one [`GlmInput`].
    pub fn to_input(&self) -> GlmInput {
        let len = self.context_length();
        GlmInput {
            batch: 1,
            seq: len,
            tokens: self.tokens.clone(),
            position_ids: self.position_ids(len),
            mask: self.attention_mask(len),
        }
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
    /// Stacks inputs of different lengths, right-padding each to the longest length rounded up to
    /// `multiple` (the evaluation collate function uses 32): pad token `pad_id`, position 0, pad keys
    /// blocked for every row and pad rows fully blocked.
    pub fn pad_batch(inputs: &[GlmInput], multiple: usize, pad_id: u32) -> Result<GlmInput> {
        if inputs.is_empty() {
            return Err(Error::InvalidInput("empty batch".into()));
        }
        if let Some(bad) = inputs.iter().find(|i| i.batch != 1) {
            return Err(Error::InvalidInput(format!(
                "pad_batch takes single samples, got a batch of {}",
                bad.batch
            )));
        }
        let longest = inputs.iter().map(|i| i.seq).max().unwrap_or(0);
        let m = multiple.max(1);
        let seq = longest.div_ceil(m) * m;
        let mut out = GlmInput {
            batch: inputs.len(),
            seq,
            tokens: Vec::with_capacity(inputs.len() * seq),
            position_ids: Vec::with_capacity(inputs.len() * seq),
            mask: Vec::with_capacity(inputs.len() * seq * seq),
        };
        for input in inputs {
            let n = input.seq;
            out.tokens.extend(&input.tokens);
            out.tokens.extend(std::iter::repeat_n(pad_id, seq - n));
            out.position_ids.extend(&input.position_ids);
            out.position_ids.extend(std::iter::repeat_n(0, seq - n));
            for i in 0..seq {
                for j in 0..seq {
                    out.mask.push(if i < n && j < n {
                        input.mask[i * n + j]
                    } else {
                        true
                    });
                }
            }
        }
        Ok(out)
    }

    /// Uploads to `device`: tokens and positions `[batch, seq]`, mask `[batch, 1, seq, seq]`.
    pub fn to_tensors<B: Backend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 4, Bool>) {
        let ints = |v: &[u32]| {
            let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
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
