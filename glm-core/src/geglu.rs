//! The GeGLU MLP of GLM-130B (SAT `GEGLU` + `mlp_forward_default`).
//!
//! `u = m·W₁ᵀ + b₁` is split into two CONTIGUOUS halves; the SECOND half is the gate that goes
//! through the exact erf GELU, the first half is linear: `g = u₁ ⊙ gelu(u₂)` (spec §2.5; gelu on
//! the first half moves the fixtures' logits by ~15).

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, Tensor};

use crate::dropout::Dropout;
use crate::linear::GlmLinear;
use crate::parallel::TpRank;

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
        self.forward_parallel(m, dropout, None)
    }

    /// [`forward_with_dropout`](Self::forward_with_dropout) on tensor-parallel rank `tp`: this
    /// rank's `[value chunk | gate chunk]` rows of `dense_h_to_4h` keep the gate local, and
    /// `dense_4h_to_h` all-reduces its partial products before adding the bias.
    ///
    /// # Shapes
    /// - `m`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward_parallel(
        &self,
        m: Tensor<B, 3>,
        dropout: Option<&mut Dropout>,
        tp: Option<&TpRank>,
    ) -> Tensor<B, 3> {
        let u = self.dense_h_to_4h.forward(m);
        let out = self.dense_4h_to_h.forward_row_parallel(geglu_gate(u), tp);
        match dropout {
            Some(d) => d.hidden(out),
            None => out,
        }
    }
}

/// The gate `u₁ ⊙ gelu(u₂)` of `u = [u₁ | u₂]` along the last dim.
///
/// On the CPU backend (`Flex`, f32) one fused pass of glm-quant's
/// [`host_elem`](glm_quant::kernels::host_elem) kernel with a vectorized `erf` (within
/// [`ERF_MAX_ABS_ERROR`](glm_quant::kernels::host_elem::ERF_MAX_ABS_ERROR) of libm's, tested
/// against [`geglu_gate_reference`]); every other backend and dtype runs
/// [`geglu_gate_generic`].
///
/// # Shapes
/// - `u`: `[batch, seq, 2·inner]` → `[batch, seq, inner]`
pub fn geglu_gate<B: Backend>(u: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = u.dims();
    let inner = width / 2;
    match glm_quant::kernels::try_geglu_f32(u.reshape([batch * seq, width])) {
        Ok(gated) => gated.reshape([batch, seq, inner]),
        Err(u) => geglu_gate_generic(u.reshape([batch, seq, width])),
    }
}

/// The generic gate: each half first materialised contiguous (the narrowed view collapses to 2-D,
/// a fast copy) so the element-wise GELU and product run on contiguous same-shape operands.
/// Bit-identical to [`geglu_gate_reference`] (tested).
///
/// # Shapes
/// - `u`: `[batch, seq, 2·inner]` → `[batch, seq, inner]`
pub fn geglu_gate_generic<B: Backend>(u: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = u.dims();
    let inner = width / 2;
    let half = |at: usize| {
        u.clone()
            .narrow(2, at, inner)
            .reshape([batch * seq * inner])
            .reshape([batch, seq, inner])
    };
    let (u1, u2) = (half(0), half(inner));
    drop(u);
    u1 * activation::gelu(u2)
}

/// The plain reference of [`geglu_gate`]: the same product on the narrowed views, as the original
/// writes it (`x1, x2 = x.chunk(2, -1); x1 * gelu(x2)`).
///
/// # Shapes
/// - `u`: `[batch, seq, 2·inner]` → `[batch, seq, inner]`
pub fn geglu_gate_reference<B: Backend>(u: Tensor<B, 3>) -> Tensor<B, 3> {
    let inner = u.dims()[2] / 2;
    let u1 = u.clone().narrow(2, 0, inner);
    let u2 = u.narrow(2, inner, inner);
    u1 * activation::gelu(u2)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn contiguous_gate_equals_the_reference_bit_for_bit() {
        let device = Default::default();
        for (b, s, inner) in [(1, 1, 3), (2, 5, 7), (3, 4, 16)] {
            let u = Tensor::<Flex, 3>::random(
                [b, s, 2 * inner],
                Distribution::Normal(0.0, 2.0),
                &device,
            );
            let fast: Vec<f32> = geglu_gate_generic(u.clone()).into_data().to_vec().unwrap();
            let reference: Vec<f32> = geglu_gate_reference(u).into_data().to_vec().unwrap();
            assert_eq!(fast, reference, "[{b}, {s}, 2·{inner}]");
        }
    }

    #[test]
    fn fused_cpu_gate_stays_within_the_erf_bound_of_the_reference() {
        use glm_quant::kernels::host_elem::ERF_MAX_ABS_ERROR;
        let device = Default::default();
        for (b, s, inner) in [(1, 1, 3), (2, 5, 37), (3, 4, 16)] {
            let u = Tensor::<Flex, 3>::random(
                [b, s, 2 * inner],
                Distribution::Normal(0.0, 2.0),
                &device,
            );
            let values: Vec<f32> = u.clone().into_data().to_vec().unwrap();
            let fused = geglu_gate(u.clone());
            assert_eq!(fused.dims(), [b, s, inner]);
            let fused: Vec<f32> = fused.into_data().to_vec().unwrap();
            let reference: Vec<f32> = geglu_gate_reference(u).into_data().to_vec().unwrap();
            assert_eq!(fused.len(), reference.len());
            for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
                let (row, col) = (i / inner, i % inner);
                let (a, g) = (
                    values[row * 2 * inner + col],
                    values[row * 2 * inner + inner + col],
                );
                let bound = 0.5 * (a * g).abs() * ERF_MAX_ABS_ERROR
                    + 2.0 * f32::EPSILON * r.abs().max(a.abs());
                assert!(
                    (f - r).abs() <= bound,
                    "[{b}, {s}, 2·{inner}] at {i}: {f} vs {r}"
                );
            }
        }
    }
}
