//! [`GlmConfig`]: the hyper-parameters of a GLM-130B-family model under the original SAT argument
//! names (`num_layers`, `hidden_size`, ...), as they appear in the fixtures' `config.json`.
//!
//! Spec §1: GLM-130B is 70 layers × 12288 hidden, 96 heads, GeGLU inner size 32768, vocab 150528,
//! 2048 positions. Derived quantities (head size, DeepNorm α) are methods, never stored twice.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    pub fn inner_size(&self) -> usize {
        self.inner_hidden_size
            .unwrap_or(4 * self.hidden_size * 2 / 3)
    }

    /// Size of one attention head (`hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// DeepNorm residual scale α = (2N)^½, computed in f64 as Python does.
    pub fn deepnorm_alpha(&self) -> f64 {
        (2.0 * self.num_layers as f64).sqrt()
    }

    /// Checks that the config describes a buildable model.
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
        if !(self.rotary_base.is_finite() && self.rotary_base > 1.0) {
            return Err(Error::InvalidConfig {
                field: "rotary_base",
                reason: format!("must be > 1, got {}", self.rotary_base),
            });
        }
        Ok(())
    }

    /// Number of parameters, computed from shapes (nothing is allocated).
    ///
    /// Per layer: fused QKV (3h·h + 3h), dense (h·h + h), `dense_h_to_4h` (2i·h + 2i),
    /// `dense_4h_to_h` (h·i + h), two LayerNorms (4h); plus the tied embedding and the final LN.
    pub fn num_parameters(&self) -> u64 {
        let h = self.hidden_size as u64;
        let i = self.inner_size() as u64;
        let per_layer =
            (3 * h * h + 3 * h) + (h * h + h) + (2 * i * h + 2 * i) + (h * i + h) + 4 * h;
        per_layer * self.num_layers as u64 + self.vocab_size as u64 * h + 2 * h
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
