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
use crate::rotary::Rotary;

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

impl<B: Backend> GlmLayer<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same
    /// - `position_ids`: `[batch, seq]`; `mask`: `[batch | 1, 1, seq, cached + seq]` (`true` = blocked)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &Rotary<B>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_with_dropout(x, rotary, position_ids, mask, cache, None)
    }

    /// [`forward`](Self::forward) in training mode: dropout on the attention probabilities, the
    /// attention output and the MLP output, before each residual sum (`None` = inference).
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    pub fn forward_with_dropout(
        &self,
        x: Tensor<B, 3>,
        rotary: &Rotary<B>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
        mut dropout: Option<&mut Dropout>,
    ) -> Tensor<B, 3> {
        let alpha = self.deepnorm_alpha;
        let a = self.input_layernorm.forward(x);
        let attn = self.attention.forward_with_dropout(
            a.clone(),
            rotary,
            position_ids,
            mask,
            cache,
            dropout.as_deref_mut(),
        );
        let h = a * alpha + attn;
        let m = self.post_attention_layernorm.forward(h);
        let f = self.mlp.forward_with_dropout(m.clone(), dropout);
        m * alpha + f
    }
}
