//! [`GlmLinear`]: `y = x·Wᵀ + b` with the weight kept in PyTorch's `[out, in]` layout, so checkpoints
//! map one-to-one onto the original parameter names and shapes.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A linear layer with bias (every GLM-130B linear has one; the tied output projection is not a
/// `GlmLinear`).
#[derive(Module, Debug)]
pub struct GlmLinear<B: Backend> {
    /// Weight, `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Bias, `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> GlmLinear<B> {
    /// Wraps existing tensors.
    ///
    /// # Shapes
    /// - `weight`: `[out, in]`, `bias`: `[out]`
    pub fn new(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
        }
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Input features.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Applies the layer to the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let y = x
            .reshape([batch * seq, d_in])
            .matmul(self.weight.val().transpose())
            + self.bias.val().unsqueeze::<2>();
        y.reshape([batch, seq, self.d_out()])
    }

    /// Host copies of the parameters under `{prefix}.weight` / `{prefix}.bias` (original names).
    pub fn export(&self, prefix: &str, out: &mut BTreeMap<String, TensorData>) {
        out.insert(format!("{prefix}.weight"), self.weight.val().into_data());
        out.insert(format!("{prefix}.bias"), self.bias.val().into_data());
    }
}
