//! Self-attention of GLM-130B (SAT `RotaryEmbeddingMixin.attention_forward` +
//! `SelfAttentionWithFP32SoftmaxMixin.attention_fn`, spec §2.4).
//!
//! Fused QKV in the PER-HEAD layout `[heads][q|k|v][head_dim]`; rotary on q and k; the query is
//! divided by `sqrt(hn)·c` with `c = layer_id + 1`, blocked scores are filled with −10000 (the
//! original's non-apex path fills before multiplying by `c`), then `×c` and softmax in f32 whatever
//! the model dtype. The `c` trick is a no-op mathematically; it keeps fp16 scores in range.

use burn::module::Module;
use burn::tensor::{activation, backend::Backend, DType, Tensor};

use crate::layer::LayerInput;
use crate::linear::GlmLinear;

/// Value written into blocked attention scores (not −∞: the original fills −10000).
pub const MASK_FILL: f64 = -10000.0;

/// Multi-head self-attention with a fused, per-head interleaved QKV projection.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `attention.query_key_value`: `[3h, h]`.
    pub query_key_value: GlmLinear<B>,
    /// `attention.dense`: `[h, h]`.
    pub dense: GlmLinear<B>,
    /// Number of heads.
    pub num_heads: usize,
    /// 0-based layer index (sets the query–key scaling `c = layer_id + 1`).
    pub layer_id: usize,
}

impl<B: Backend> SelfAttention<B> {
    /// Attention over `a` with the forward's shared `input` (rotary angles, mask, KV cache;
    /// dropout on the probabilities and the output projection when it holds one). Without
    /// dropout, on the CPU backend (`Flex`, f32), scores, softmax and context run as one host
    /// kernel per (batch row, head) reading the KV cache in place (decode and prefill) ([`try_attention_f32`](glm_quant::kernels::try_attention_f32)); every other case
    /// runs the generic tensor ops.
    ///
    /// On a tensor-parallel rank the layer holds `num_heads` of the heads, and the output
    /// projection all-reduces its partial products before adding the bias (SAT's
    /// `RowParallelLinear`).
    ///
    /// # Shapes
    /// - `a`: `[batch, seq, hidden]`
    /// - `input.mask`: `[batch | 1, 1, seq, cached + seq]`, `true` = blocked
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, a: Tensor<B, 3>, input: &mut LayerInput<'_, B>) -> Tensor<B, 3> {
        let [batch, seq, _] = a.dims();
        let heads = self.num_heads;
        let hn = self.query_key_value.d_out() / (3 * heads.max(1));
        let width = heads * hn;
        let dtype = a.dtype();

        let qkv = self.query_key_value.forward(a);
        // CPU (`Flex`, f32): split and rotary in one pass, identical results.
        let (q, k, v) =
            match glm_quant::kernels::try_qkv_rotary_f32(&qkv, heads, &input.cos, &input.sin) {
                Some(qkv) => qkv,
                None => {
                    let [q, k, v] = split_qkv(qkv, heads);
                    let rotary = input.rotary;
                    let q = rotary.apply_bshd(q, &input.cos, &input.sin);
                    let k = rotary.apply_bshd(k, &input.cos, &input.sin).swap_dims(1, 2);
                    (q, k, v.swap_dims(1, 2))
                }
            };
        let (k, v) = match input.cache.as_deref_mut() {
            Some(cache) => cache.append(self.layer_id, k, v),
            None => (k, v),
        };
        let keys = k.dims()[2];

        let coeff = (self.layer_id + 1) as f64;
        if input.dropout.is_none() {
            // CPU (`Flex`, f32): one kernel per (batch row, head) over the cache.
            if let Some(context) =
                glm_quant::kernels::try_attention_f32(&q, &k, &v, &input.mask, coeff as f32)
            {
                return self.dense.forward_row_parallel(context, input.tp);
            }
        }
        let q = q.swap_dims(1, 2);
        let q = q / ((hn as f64).sqrt() * coeff);
        let scores = q.matmul(k.swap_dims(2, 3));
        let mask = input.mask.clone().expand([batch, heads, seq, keys]);
        let scores = scores.mask_fill(mask, MASK_FILL).cast(DType::F32) * coeff;
        let mut probs = activation::softmax(scores, 3).cast(dtype);
        if let Some(d) = input.dropout.as_deref_mut() {
            probs = d.attention(probs);
        }
        let context = probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, width]);
        let out = self.dense.forward_row_parallel(context, input.tp);
        match input.dropout.as_deref_mut() {
            Some(d) => d.hidden(out),
            None => out,
        }
    }
}

/// Splits the fused per-head `[heads][q|k|v][head_dim]` projection into q, k and v, each
/// materialised as a contiguous `[batch, seq, heads, head_dim]` (its view collapses to 2-D, which
/// backends copy fast) so rotary runs on same-shape contiguous operands. Bit-identical to
/// [`split_qkv_reference`] (tested).
///
/// # Shapes
/// - `qkv`: `[batch, seq, 3·hidden]` → three `[batch, seq, heads, hidden / heads]`
pub fn split_qkv<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [batch, seq, width] = qkv.dims();
    let hn = width / (3 * heads.max(1));
    let qkv = qkv.reshape([batch, seq, heads, 3 * hn]);
    let part = |i: usize| {
        qkv.clone()
            .narrow(3, i * hn, hn)
            .reshape([batch * seq * heads * hn])
            .reshape([batch, seq, heads, hn])
    };
    [part(0), part(1), part(2)]
}

/// The plain reference of [`split_qkv`]: the narrowed views, as the original's
/// `query_key_value.view(..., heads, 3 * hn).split(hn, dim=-1)`.
///
/// # Shapes
/// As [`split_qkv`].
pub fn split_qkv_reference<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [batch, seq, width] = qkv.dims();
    let hn = width / (3 * heads.max(1));
    let qkv = qkv.reshape([batch, seq, heads, 3 * hn]);
    [0, 1, 2].map(|i| qkv.clone().narrow(3, i * hn, hn))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn contiguous_split_equals_the_reference_bit_for_bit() {
        let device = Default::default();
        for (b, s, heads, hn) in [(1, 1, 1, 2), (2, 3, 4, 5), (3, 7, 2, 16)] {
            let qkv = Tensor::<Flex, 3>::random(
                [b, s, 3 * heads * hn],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let fast = split_qkv(qkv.clone(), heads);
            let reference = split_qkv_reference(qkv, heads);
            for (i, (f, r)) in fast.into_iter().zip(reference).enumerate() {
                assert_eq!(f.dims(), r.dims(), "part {i}");
                let (f, r): (Vec<f32>, Vec<f32>) = (
                    f.into_data().to_vec().unwrap(),
                    r.into_data().to_vec().unwrap(),
                );
                assert_eq!(f, r, "part {i} of [{b}, {s}, {heads}×3×{hn}]");
            }
        }
    }
}
