//! The GeGLU MLP of GLM-130B (SAT `GEGLU` + `mlp_forward_default`).
//!
//! `u = m·W₁ᵀ + b₁` is split into two CONTIGUOUS halves; the SECOND half is the gate that goes
//! through the exact erf GELU, the first half is linear: `g = u₁ ⊙ gelu(u₂)` (spec §2.5; gelu on
//! the first half moves the fixtures' logits by ~15).

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, Tensor};

use crate::dropout::Dropout;
use crate::linear::GlmLinear;

/// GeGLU MLP: `dense_h_to_4h` (h → 2·inner), gate, `dense_4h_to_h` (inner → h).
#[derive(Module, Debug)]
pub struct GeGlu<B: Backend> {
    /// `mlp.dense_h_to_4h`: `[2·inner, h]`, rows = [value half; gate half].
    pub dense_h_to_4h: GlmLinear<B>,
    /// `mlp.dense_4h_to_h`: `[h, inner]`.
    pub dense_4h_to_h: GlmLinear<B>,
}

impl<B: Backend> GeGlu<B> {
    /// # Shapes
    /// - `m`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(&self, m: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with_dropout(m, None)
    }

    /// [`forward`](Self::forward) with dropout on the output in training mode (`None` = inference).
    ///
    /// # Shapes
    /// - `m`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward_with_dropout(
        &self,
        m: Tensor<B, 3>,
        dropout: Option<&mut Dropout>,
    ) -> Tensor<B, 3> {
        let u = self.dense_h_to_4h.forward(m);
        let [batch, seq, width] = u.dims();
        let inner = width / 2;
        // Each half materialised contiguous (the narrowed view collapses to 2-D, a fast copy), so
        // the element-wise GELU and product run on contiguous same-shape operands.
        let half = |at: usize| {
            u.clone()
                .narrow(2, at, inner)
                .reshape([batch * seq * inner])
                .reshape([batch, seq, inner])
        };
        let (u1, u2) = (half(0), half(inner));
        drop(u);
        let out = self.dense_4h_to_h.forward(u1 * activation::gelu(u2));
        match dropout {
            Some(d) => d.hidden(out),
            None => out,
        }
    }
}
