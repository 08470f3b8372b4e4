//! LayerNorm with f32 statistics whatever the model dtype (apex / torch compute LN in f32 and
//! round the output back to fp16).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

/// Affine LayerNorm over the last dimension (biased variance, as torch).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale γ, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift β, `[hidden]`.
    pub bias: Param<Tensor<B, 1>>,
    /// ε added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Wraps existing tensors.
    pub fn new(weight: Tensor<B, 1>, bias: Tensor<B, 1>, epsilon: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            epsilon,
        }
    }

    /// Normalises the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let (var, mean) = x.clone().var_mean_bias(2);
        let normed = (x - mean) / (var + self.epsilon).sqrt();
        let weight = self.weight.val().cast(DType::F32).unsqueeze::<3>();
        let bias = self.bias.val().cast(DType::F32).unsqueeze::<3>();
        (normed * weight + bias).cast(dtype)
    }
}
