//! [`GlmConfig`]: the hyper-parameters of a GLM-130B-family model under the original SAT argument
//! names (`num_layers`, `hidden_size`, ...), as they appear in the fixtures' `config.json`.
//!
//! Spec §1: GLM-130B is 70 layers × 12288 hidden, 96 heads, GeGLU inner size 32768, vocab 150528,
//! 2048 positions. Derived quantities (head size, DeepNorm α) are methods, never stored twice.
//!
//! (Over 400 lines: every hyper-parameter with its limits, defaults, presets and validation errors naming the field.)

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rotary::RotaryPrecision;

/// Special token ids of the GLM blank-infilling vocabulary.
///
/// Original GLM-130B numbering (spec §3.1): `[MASK]` 150000, `[gMASK]` 150001, `[sMASK]` 150002,
/// `eod` 150003, `sop` 150004, `eop` 150005, `ENC` 150006, `dBLOCK` 150007, eos 20002, pad 0.
/// Small test models move the base (the fixtures use 1000..1007 and eos 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `[MASK]`: short blank, generated tokens keep the mask's position id.
    #[serde(rename = "[MASK]")]
    pub mask: u32,
    /// `[gMASK]`: long blank at the end, positions keep counting.
    #[serde(rename = "[gMASK]")]
    pub gmask: u32,
    /// `[sMASK]`: sentence blank, treated like `[MASK]` by generation.
    #[serde(rename = "[sMASK]")]
    pub smask: u32,
    /// End of document.
    pub eod: u32,
    /// Start of a generated piece (`<sop>`).
    pub sop: u32,
    /// End of a generated piece (`<eop>`).
    pub eop: u32,
    /// Reserved `ENC` token.
    #[serde(rename = "ENC")]
    pub enc: u32,
    /// Reserved `dBLOCK` token.
    #[serde(rename = "dBLOCK")]
    pub dblock: u32,
    /// End of sentence (`</s>`), appended by generate.py after a text not ending in a mask.
    pub eos: u32,
    /// Padding id used by the evaluation collate function.
    #[serde(rename = "[pad]")]
    pub pad: u32,
}

impl SpecialTokens {
    /// The ids of GLM-130B's icetk vocabulary.
    pub const fn glm_130b() -> Self {
        Self::with_base(150_000, 20_002)
    }

    /// Specials laid out as SAT does: `base + index` in
    /// `[MASK, gMASK, sMASK, eod, sop, eop, ENC, dBLOCK]`, with the given eos and pad 0.
    pub const fn with_base(base: u32, eos: u32) -> Self {
        Self {
            mask: base,
            gmask: base + 1,
            smask: base + 2,
            eod: base + 3,
            sop: base + 4,
            eop: base + 5,
            enc: base + 6,
            dblock: base + 7,
            eos,
            pad: 0,
        }
    }

    /// The tokens that end generation (`<eop>`, eos), as generate.py passes them.
    pub fn end_tokens(&self) -> [u32; 2] {
        [self.eop, self.eos]
    }

    /// Whether `id` is one of the three mask tokens.
    pub fn is_mask(&self, id: u32) -> bool {
        id == self.mask || id == self.gmask || id == self.smask
    }
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self::glm_130b()
    }
}

fn default_eps() -> f64 {
    1e-5
}

fn default_rotary_base() -> f64 {
    10_000.0
}

/// Hyper-parameters of a GLM-130B-family model (original SAT names).
///
/// Unknown fields of a `config.json` (provenance, command lines, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlmConfig {
    /// Number of transformer layers N (70 for GLM-130B).
    pub num_layers: usize,
    /// Hidden size h (12288).
    pub hidden_size: usize,
    /// Number of attention heads (96).
    pub num_attention_heads: usize,
    /// GeGLU inner size per branch (32768); `dense_h_to_4h` has twice as many rows.
    /// SAT's default when absent is `4h·2/3` (integer division).
    #[serde(default)]
    pub inner_hidden_size: Option<usize>,
    /// Rows of the word embedding = columns of the logits (150528, incl. padding).
    pub vocab_size: usize,
    /// Longest sequence (positions 0..max) the rotary tables cover (2048).
    pub max_sequence_length: usize,
    /// LayerNorm epsilon (1e-5).
    #[serde(default = "default_eps")]
    pub layernorm_epsilon: f64,
    /// Rotary base θ (10000).
    #[serde(default = "default_rotary_base")]
    pub rotary_base: f64,
    /// Special token ids.
    #[serde(default)]
    pub special_tokens: SpecialTokens,
}

impl GlmConfig {
    /// The released GLM-130B (spec §1.1): 70 / 12288 / 96 heads / 32768 / 150528 / 2048.
    pub fn glm_130b() -> Self {
        Self {
            num_layers: 70,
            hidden_size: 12288,
            num_attention_heads: 96,
            inner_hidden_size: Some(32768),
            vocab_size: 150_528,
            max_sequence_length: 2048,
            layernorm_epsilon: 1e-5,
            rotary_base: 10_000.0,
            special_tokens: SpecialTokens::glm_130b(),
        }
    }

    /// A tiny model with the GLM-130B code path (2 layers, h=64, 4 heads, vocab 1024) for tests;
    /// specials at 1000.. as in the fixtures.
    pub fn tiny() -> Self {
        Self {
            num_layers: 2,
            hidden_size: 64,
            num_attention_heads: 4,
            inner_hidden_size: Some(172),
            vocab_size: 1024,
            max_sequence_length: 128,
            layernorm_epsilon: 1e-5,
            rotary_base: 10_000.0,
            special_tokens: SpecialTokens::with_base(1000, 2),
        }
    }

    /// A small model (8 layers, h=512, 8 heads, vocab 8192) like the `glm-small` benchmark config.
    pub fn small() -> Self {
        Self {
            num_layers: 8,
            hidden_size: 512,
            num_attention_heads: 8,
            inner_hidden_size: Some(1365),
            vocab_size: 8192,
            max_sequence_length: 2048,
            layernorm_epsilon: 1e-5,
            rotary_base: 10_000.0,
            special_tokens: SpecialTokens::with_base(8168, 2),
        }
    }

    /// A base-size model (12 layers, h=768, 12 heads) for laptop training.
    pub fn base() -> Self {
        Self {
            num_layers: 12,
            hidden_size: 768,
            num_attention_heads: 12,
            inner_hidden_size: Some(2048),
            vocab_size: 32768,
            max_sequence_length: 2048,
            layernorm_epsilon: 1e-5,
            rotary_base: 10_000.0,
            special_tokens: SpecialTokens::with_base(32760, 2),
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|source| Error::ConfigJson {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as pretty JSON (atomically: temp file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidInput(e.to_string()))?;
        crate::weights::write_atomic(path.as_ref(), &json)
    }

    /// GeGLU inner size per branch (the explicit value, else SAT's `4h·2/3`).
    ///
    /// Computed without overflow: an absurd `hidden_size` saturates at `usize::MAX`, which
    /// [`validate`](Self::validate) rejects.
    pub fn inner_size(&self) -> usize {
        self.inner_hidden_size.unwrap_or_else(|| {
            usize::try_from(self.hidden_size as u128 * 8 / 3).unwrap_or(usize::MAX)
        })
    }

    /// Size of one attention head (`hidden_size / num_attention_heads`; 0 when there are no heads,
    /// which [`validate`](Self::validate) rejects).
    pub fn head_dim(&self) -> usize {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
    }

    /// DeepNorm residual scale α = (2N)^½, computed in f64 as Python does.
    pub fn deepnorm_alpha(&self) -> f64 {
        (2.0 * self.num_layers as f64).sqrt()
    }

    /// Checks that the config describes a buildable model: every size positive and within the
    /// [`limits`] (so every size derived from it is computed without overflow), heads dividing
    /// the hidden size into even head sizes, every parameter tensor and the rotary tables within
    /// [`limits::MAX_TENSOR_ELEMENTS`], the parameter count within [`limits::MAX_PARAMETERS`].
    ///
    /// Nothing is allocated. The rotary precision is a model option, not part of the config: see
    /// [`validate_rotary`](Self::validate_rotary), which model construction also runs.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_layers", self.num_layers),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("inner_hidden_size", self.inner_size()),
            ("vocab_size", self.vocab_size),
            ("max_sequence_length", self.max_sequence_length),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be positive".into(),
                });
            }
        }
        let bounded = [
            ("num_layers", self.num_layers, limits::MAX_LAYERS),
            ("hidden_size", self.hidden_size, limits::MAX_HIDDEN_SIZE),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::MAX_HIDDEN_SIZE,
            ),
            (
                "inner_hidden_size",
                self.inner_size(),
                limits::MAX_INNER_SIZE,
            ),
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB_SIZE),
            (
                "max_sequence_length",
                self.max_sequence_length,
                limits::MAX_SEQUENCE_LENGTH,
            ),
        ];
        for (field, value, limit) in bounded {
            if value > limit {
                return Err(Error::InvalidConfig {
                    field,
                    reason: format!("{value} exceeds the limit {limit}"),
                });
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::InvalidConfig {
                field: "num_attention_heads",
                reason: format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            });
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::InvalidConfig {
                field: "num_attention_heads",
                reason: format!("rotary needs an even head size, got {}", self.head_dim()),
            });
        }
        if !(self.layernorm_epsilon.is_finite() && self.layernorm_epsilon > 0.0) {
            return Err(Error::InvalidConfig {
                field: "layernorm_epsilon",
                reason: format!("must be a positive number, got {}", self.layernorm_epsilon),
            });
        }
        if !(self.rotary_base.is_finite()
            && self.rotary_base > 1.0
            && self.rotary_base <= f64::from(f32::MAX))
        {
            return Err(Error::InvalidConfig {
                field: "rotary_base",
                reason: format!(
                    "must be > 1 and a finite f32 (the tables are f32), got {}",
                    self.rotary_base
                ),
            });
        }
        // The largest single tensors: the embedding, the fused QKV / h→4h weights, the rotary
        // tables. Each must be addressable (isize) and within the sane cap.
        let (h, i) = (self.hidden_size, self.inner_size());
        let tensors: [(&'static str, &[usize]); 5] = [
            ("vocab_size", &[self.vocab_size, h]),
            ("hidden_size", &[3, h, h]),
            ("inner_hidden_size", &[2, i, h]),
            ("inner_hidden_size", &[h, i]),
            (
                "max_sequence_length",
                &[self.max_sequence_length, self.head_dim()],
            ),
        ];
        for (field, dims) in tensors {
            limits::tensor_elements(field, dims)?;
        }
        self.checked_num_parameters()
            .filter(|&n| n <= limits::MAX_PARAMETERS)
            .ok_or_else(|| Error::InvalidConfig {
                field: "num_layers",
                reason: format!(
                    "the model would have more than {} parameters",
                    limits::MAX_PARAMETERS
                ),
            })?;
        Ok(())
    }

    /// Checks that rotary tables of `precision` can cover every position of this config:
    /// fp16 tables ([`RotaryPrecision::Fp16Sat`]) hold positions only up to
    /// [`RotaryPrecision::max_positions`] (65504 is the largest finite fp16; beyond it the angle is
    /// infinite and cos/sin NaN). Such configs need [`RotaryPrecision::Fp32`] or
    /// [`RotaryPrecision::Fp32SatBuffer`], chosen explicitly.
    pub fn validate_rotary(&self, precision: RotaryPrecision) -> Result<()> {
        match precision.max_positions() {
            Some(max) if self.max_sequence_length > max => Err(Error::InvalidConfig {
                field: "max_sequence_length",
                reason: format!(
                    "{} positions do not fit {precision:?} rotary tables (fp16 positions end at \
                     {}); choose RotaryPrecision::Fp32 or Fp32SatBuffer explicitly",
                    self.max_sequence_length,
                    max - 1
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Number of parameters, computed from shapes (nothing is allocated).
    ///
    /// Per layer: fused QKV (3h·h + 3h), dense (h·h + h), `dense_h_to_4h` (2i·h + 2i),
    /// `dense_4h_to_h` (h·i + h), two LayerNorms (4h); plus the tied embedding and the final LN.
    /// Exact for every config [`validate`](Self::validate) accepts; saturates at `u64::MAX`
    /// otherwise (see [`checked_num_parameters`](Self::checked_num_parameters)).
    pub fn num_parameters(&self) -> u64 {
        self.checked_num_parameters().unwrap_or(u64::MAX)
    }

    /// [`num_parameters`](Self::num_parameters) with checked arithmetic: `None` when the count
    /// does not fit `u64`.
    pub fn checked_num_parameters(&self) -> Option<u64> {
        let h = u64::try_from(self.hidden_size).ok()?;
        let i = u64::try_from(self.inner_size()).ok()?;
        let layers = u64::try_from(self.num_layers).ok()?;
        let vocab = u64::try_from(self.vocab_size).ok()?;
        let hh = h.checked_mul(h)?;
        let ih = i.checked_mul(h)?;
        // 3h·h + 3h + h·h + h + 2i·h + 2i + h·i + h + 4h = 4h·h + 3i·h + 2i + 9h
        let per_layer = hh
            .checked_mul(4)?
            .checked_add(ih.checked_mul(3)?)?
            .checked_add(i.checked_mul(2)?)?
            .checked_add(h.checked_mul(9)?)?;
        per_layer
            .checked_mul(layers)?
            .checked_add(vocab.checked_mul(h)?)?
            .checked_add(h.checked_mul(2)?)
    }
}

/// Explicit size limits of [`GlmConfig::validate`]: generous for GLM-130B (h 12288, inner 32768,
/// vocab 150528, 2048 positions) and the largest published dense models, small enough that every
/// size derived from a config is computed without overflow and no absurd allocation is attempted.
pub mod limits {
    use crate::error::{Error, Result};

    /// Most transformer layers (GLM-130B: 70).
    pub const MAX_LAYERS: usize = 4096;
    /// Largest hidden size (GLM-130B: 12288); also bounds the head count.
    pub const MAX_HIDDEN_SIZE: usize = 1 << 18;
    /// Largest GeGLU inner size per branch (GLM-130B: 32768).
    pub const MAX_INNER_SIZE: usize = 1 << 20;
    /// Largest vocabulary (GLM-130B: 150528); ids must also fit the `u32` token type.
    pub const MAX_VOCAB_SIZE: usize = 1 << 24;
    /// Longest sequence (GLM-130B: 2048). Position ids are `u32` and turned into f32 angles,
    /// exact up to 2^24.
    pub const MAX_SEQUENCE_LENGTH: usize = 1 << 24;
    /// Most elements of any single tensor (GLM-130B's largest, the embedding, has 1.85·10⁹).
    pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 36;
    /// Most parameters of a model (GLM-130B: 1.3·10¹¹).
    pub const MAX_PARAMETERS: u64 = 1 << 44;

    /// Element count of a tensor of shape `dims` with checked arithmetic: a typed error naming
    /// `field` when it overflows, exceeds [`MAX_TENSOR_ELEMENTS`] or its f32 bytes would not be
    /// addressable (`isize`) on this machine.
    pub fn tensor_elements(field: &'static str, dims: &[usize]) -> Result<usize> {
        let too_big = || Error::InvalidConfig {
            field,
            reason: format!("a tensor of shape {dims:?} is too large"),
        };
        let n = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(too_big)?;
        let bytes = n.checked_mul(4).ok_or_else(too_big)?;
        if u64::try_from(n).map_or(true, |n| n > MAX_TENSOR_ELEMENTS)
            || isize::try_from(bytes).is_err()
        {
            return Err(too_big());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_impossible_configs() {
        let mut c = GlmConfig::tiny();
        c.num_attention_heads = 5;
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                field: "num_attention_heads",
                ..
            })
        ));
        let mut c = GlmConfig::tiny();
        c.hidden_size = 0;
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig {
                field: "hidden_size",
                ..
            })
        ));
        let mut c = GlmConfig::tiny();
        c.num_layers = 0;
        assert!(c.validate().is_err());
        let mut c = GlmConfig::tiny();
        c.layernorm_epsilon = -1.0;
        assert!(c.validate().is_err());
        for c in [
            GlmConfig::glm_130b(),
            GlmConfig::tiny(),
            GlmConfig::small(),
            GlmConfig::base(),
        ] {
            c.validate().unwrap();
        }
    }

    #[test]
    fn glm_130b_alpha_matches_python() {
        // (2*70)**0.5 in Python.
        assert_eq!(GlmConfig::glm_130b().deepnorm_alpha(), 11.832159566199232);
    }
}
