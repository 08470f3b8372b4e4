//! One GLM-130B transformer layer: DeepNorm post-LN with GeGLU (SAT `DeepNormWithGLUMixin`).
//!
//! ```text
//! a = LN_in(x);  h = a·α + attn(a);  m = LN_post(h);  x' = m·α + mlp(m)      α = sqrt(2N)
//! ```
//! The residual is the LayerNorm OUTPUT times α, not the pre-LN stream (spec §2.3, §11.1).

use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor};

use crate::attention::SelfAttention;
use crate::cache::KvCache;
use crate::dropout::Dropout;
use crate::geglu::GeGlu;
use crate::layernorm::LayerNorm;
use crate::linear::GlmLinear;
use crate::parallel::TpRank;
use crate::rotary::Rotary;

/// What every layer of one forward shares, built once per forward ([`LayerInput::new`]): the
/// rotary angles of the positions (cos / sin rows repeated over heads), the attention mask, the
/// KV cache and, in training, dropout.
pub struct LayerInput<'a, B: Backend> {
    /// The rotary tables (for their `rotate_half` permutation).
    pub rotary: &'a Rotary<B>,
    /// cos rows of the positions, `[batch, seq, heads, head_dim]`.
    pub cos: Tensor<B, 4>,
    /// sin rows of the positions, `[batch, seq, heads, head_dim]`.
    pub sin: Tensor<B, 4>,
    /// `[batch | 1, 1, seq, cached + seq]`, `true` = blocked.
    pub mask: Tensor<B, 4, Bool>,
    /// The KV cache when decoding.
    pub cache: Option<&'a mut KvCache<B>>,
    /// Dropout in training (`None`: inference).
    pub dropout: Option<&'a mut Dropout>,
    /// The tensor-parallel rank running this forward (`None`: the whole model on one device):
    /// the row-parallel linears all-reduce through it.
    pub tp: Option<&'a TpRank>,
}

impl<'a, B: Backend> LayerInput<'a, B> {
    /// The shared input of a forward over `position_ids` (`[batch, seq]`) with `heads` heads.
    pub fn new(
        rotary: &'a Rotary<B>,
        position_ids: Tensor<B, 2, Int>,
        heads: usize,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&'a mut KvCache<B>>,
        dropout: Option<&'a mut Dropout>,
    ) -> Self {
        let (cos, sin) = rotary.angles(position_ids, heads);
        Self {
            rotary,
            cos,
            sin,
            mask,
            cache,
            dropout,
            tp: None,
        }
    }

    /// The same input for a forward of tensor-parallel rank `tp`.
    pub fn with_tp(mut self, tp: Option<&'a TpRank>) -> Self {
        self.tp = tp;
        self
    }
}

/// A DeepNorm post-LN layer.
#[derive(Module, Debug)]
pub struct GlmLayer<B: Backend> {
    /// `input_layernorm`.
    pub input_layernorm: LayerNorm<B>,
    /// `attention`.
    pub attention: SelfAttention<B>,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: LayerNorm<B>,
    /// `mlp`.
    pub mlp: GeGlu<B>,
    /// DeepNorm α = sqrt(2·num_layers).
    pub deepnorm_alpha: f64,
}

/// The four linears of a layer under their original name suffixes, in checkpoint order: the one
/// table every per-linear loop (export, quantization, statistics) walks.
pub const LINEAR_NAMES: [&str; 4] = [
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
];

impl<B: Backend> GlmLayer<B> {
    /// The four linears with their name suffixes ([`LINEAR_NAMES`] order).
    pub fn linears(&self) -> [(&'static str, &GlmLinear<B>); 4] {
        [
            (LINEAR_NAMES[0], &self.attention.query_key_value),
            (LINEAR_NAMES[1], &self.attention.dense),
            (LINEAR_NAMES[2], &self.mlp.dense_h_to_4h),
            (LINEAR_NAMES[3], &self.mlp.dense_4h_to_h),
        ]
    }

    /// [`linears`](Self::linears), mutable.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut GlmLinear<B>); 4] {
        [
            (LINEAR_NAMES[0], &mut self.attention.query_key_value),
            (LINEAR_NAMES[1], &mut self.attention.dense),
            (LINEAR_NAMES[2], &mut self.mlp.dense_h_to_4h),
            (LINEAR_NAMES[3], &mut self.mlp.dense_4h_to_h),
        ]
    }

    /// The layer on `x` with the forward's shared `input` (dropout applied when it holds one).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>, input: &mut LayerInput<'_, B>) -> Tensor<B, 3> {
        let alpha = self.deepnorm_alpha;
        let a = self.input_layernorm.forward(x);
        let attn = self.attention.forward(a.clone(), input);
        let h = a * alpha + attn;
        let m = self.post_attention_layernorm.forward(h);
        let f = self
            .mlp
            .forward_parallel(m.clone(), input.dropout.as_deref_mut(), input.tp);
        m * alpha + f
    }
}
