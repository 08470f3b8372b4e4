//! [`GlmLinear`]: `y = x·Wᵀ + b` with the weight kept in PyTorch's `[out, in]` layout, so checkpoints
//! map one-to-one onto the original parameter names and shapes.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use glm_quant::{QuantScheme, QuantizedWeight};

/// The weight of a [`GlmLinear`]: float, or quantized by `glm-quant` (INT8 / INT4, GLM-130B's
/// per-row scheme). The model code is the same for both.
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// Float weight, `[out, in]`.
    Float(Param<Tensor<B, 2>>),
    /// Quantized weight (`[out, in]` logically; see [`QuantizedWeight`]).
    Quantized(QuantizedWeight<B>),
}

/// A linear layer with bias (every GLM-130B linear has one; the tied output projection is not a
/// `GlmLinear`).
#[derive(Module, Debug)]
pub struct GlmLinear<B: Backend> {
    /// Weight, `[out, in]` (float or quantized).
    pub weight: LinearWeight<B>,
    /// Bias, `[out]` (always float, also when the weight is quantized).
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> GlmLinear<B> {
    /// Wraps existing float tensors.
    ///
    /// # Shapes
    /// - `weight`: `[out, in]`, `bias`: `[out]`
    pub fn new(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        Self {
            weight: LinearWeight::Float(Param::from_tensor(weight)),
            bias: Param::from_tensor(bias),
        }
    }

    /// A linear with a quantized weight and a float bias.
    ///
    /// # Shapes
    /// - `weight`: `[out, in]` (quantized), `bias`: `[out]`
    pub fn quantized(weight: QuantizedWeight<B>, bias: Tensor<B, 1>) -> Self {
        Self {
            weight: LinearWeight::Quantized(weight),
            bias: Param::from_tensor(bias),
        }
    }

    /// The float weight `[out, in]`, or `None` when the weight is quantized.
    pub fn float_weight(&self) -> Option<Tensor<B, 2>> {
        match &self.weight {
            LinearWeight::Float(w) => Some(w.val()),
            LinearWeight::Quantized(_) => None,
        }
    }

    /// The quantized weight, or `None` when the weight is float.
    pub fn quantized_weight(&self) -> Option<&QuantizedWeight<B>> {
        match &self.weight {
            LinearWeight::Float(_) => None,
            LinearWeight::Quantized(q) => Some(q),
        }
    }

    /// The quantization scheme, `None` for a float weight.
    pub fn scheme(&self) -> Option<QuantScheme> {
        self.quantized_weight().map(|q| q.scheme())
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => w.dims()[0],
            LinearWeight::Quantized(q) => q.out_features(),
        }
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => w.dims()[1],
            LinearWeight::Quantized(q) => q.in_features(),
        }
    }

    /// Bytes the weight occupies in a checkpoint (float: elements × dtype size; quantized: int8
    /// or packed int4 bytes + fp16 scales). The bias is not counted.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => {
                let w = w.val();
                w.shape().num_elements() * w.dtype().size()
            }
            LinearWeight::Quantized(q) => q.storage_bytes(),
        }
    }

    /// Applies the layer to the last dimension. A quantized weight runs its fastest kernel for
    /// the backend (see [`QuantizedWeight::forward`]); a float f32 weight on `Flex` with at most
    /// 8 rows (decode) runs glm-quant's f32 skinny GEMM
    /// ([`try_linear_f32`](glm_quant::kernels::try_linear_f32); `GLM_NO_FAST_GEMV` turns it off).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let x = x.reshape([batch * seq, d_in]);
        let y = match &self.weight {
            LinearWeight::Float(w) => {
                let (w, b) = (w.val(), self.bias.val());
                // CPU fast path (Flex, f32: the skinny GEMM up to 16 rows, the own prefill GEMM
                // or OpenBLAS above); the generic matmul otherwise.
                match glm_quant::kernels::try_linear_f32(x, &w, Some(&b)) {
                    Ok(y) => y,
                    Err(x) => x.matmul(w.transpose()) + b.unsqueeze::<2>(),
                }
            }
            LinearWeight::Quantized(q) => q.forward(x) + self.bias.val().unsqueeze::<2>(),
        };
        y.reshape([batch, seq, self.d_out()])
    }

    /// `x·Wᵀ` without the bias (the partial product of a row-parallel rank).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]` → `[rows, out]`
    pub fn forward_no_bias(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.weight {
            LinearWeight::Float(w) => {
                let w = w.val();
                match glm_quant::kernels::try_linear_f32(x, &w, None) {
                    Ok(y) => y,
                    Err(x) => x.matmul(w.transpose()),
                }
            }
            LinearWeight::Quantized(q) => q.forward(x),
        }
    }

    /// [`forward`](Self::forward) as a row-parallel linear of tensor-parallel rank `tp` (SAT
    /// `RowParallelLinear`): this rank's partial product `x_r·W_rᵀ` is summed over the ranks by
    /// an all-reduce, then the (replicated) bias is added once. `None`, or a degree of 1, is
    /// [`forward`](Self::forward).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, in / world]` → `[batch, seq, out]`
    pub fn forward_row_parallel(
        &self,
        x: Tensor<B, 3>,
        tp: Option<&crate::parallel::TpRank>,
    ) -> Tensor<B, 3> {
        let Some(tp) = tp.filter(|tp| tp.dims().world > 1) else {
            return self.forward(x);
        };
        let [batch, seq, d_in] = x.dims();
        let partial = self.forward_no_bias(x.reshape([batch * seq, d_in]));
        let y = tp.all_reduce(partial) + self.bias.val().unsqueeze::<2>();
        y.reshape([batch, seq, self.d_out()])
    }

    /// Host copies of the parameters under the original names: `{prefix}.weight` / `{prefix}.bias`
    /// for a float weight; a quantized weight exports `{prefix}.weight` (I8 `[out, in]`, or packed
    /// int4 `[out, ceil(in/2)]`) and `{prefix}.weight_scale` (F16 `[out]`, or `[shards, out]`), the
    /// tensors of a SAT quantized checkpoint.
    ///
    /// A quantized weight whose device tensors no longer form a valid matrix is
    /// [`Error::InvalidInput`](crate::error::Error::InvalidInput) naming it.
    pub fn export(
        &self,
        prefix: &str,
        out: &mut BTreeMap<String, TensorData>,
    ) -> crate::error::Result<()> {
        match &self.weight {
            LinearWeight::Float(w) => {
                out.insert(format!("{prefix}.weight"), w.val().into_data());
            }
            LinearWeight::Quantized(q) => {
                let name = format!("{prefix}.weight");
                let m = q
                    .to_matrix(&name)
                    .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))?;
                out.insert(
                    format!("{name}{}", glm_quant::scheme::SCALE_SUFFIX),
                    m.scale_data(),
                );
                out.insert(name, m.weight_data());
            }
        }
        out.insert(format!("{prefix}.bias"), self.bias.val().into_data());
        Ok(())
    }
}
