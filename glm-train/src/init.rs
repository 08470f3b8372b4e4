//! DeepNorm initialisation (spec §8, paper §2.2): Xavier-normal weights with gain `(2N)^-½` for
//! the value rows of the fused QKV, the attention output projection and both MLP matrices, gain 1
//! for queries and keys; biases 0; LayerNorm γ 1, β 0; word embedding N(0, `embedding_std`).
//! Drawn on the host from the crate's seeded [`Rng`], so it does not depend on the backend RNG.
//!
//! The formulas are glm-core's [`deepnorm_std`], the same as
//! [`RandomSource`](glm_core::weights::RandomSource) uses; the difference is the stream: here one
//! sequential stream in build order (a training run is reproduced from its seed, as it always was),
//! there one stream per tensor (tensors drawn independently, so checkpoints of any size stream).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use glm_core::linear::GlmLinear;
use glm_core::weights::deepnorm_std;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rng::Rng;

/// Initialisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    /// Standard deviation of the word embedding.
    pub embedding_std: f64,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            embedding_std: 0.02,
        }
    }
}

fn normals(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // Box–Muller.
        let u1 = rng.uniform().max(f64::MIN_POSITIVE);
        let u2 = rng.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos() * std) as f32);
        if out.len() < n {
            out.push((r * t.sin() * std) as f32);
        }
    }
    out
}

/// A freshly initialised model in `dtype` (DeepNorm init drawn in f32, seeded; the rotary tables
/// follow `dtype` too, so build the model in the compute dtype).
pub fn deepnorm_model<B: Backend>(
    config: &GlmConfig,
    init: &InitConfig,
    seed: u64,
    dtype: DType,
    device: &B::Device,
) -> Result<GlmModel<B>> {
    config.validate()?;
    let mut rng = Rng::derive(seed, 0x1417);
    let mut fetch = |name: &str, shape: &[usize]| -> glm_core::Result<TensorData> {
        let n: usize = shape.iter().product();
        let values = if name.ends_with("layernorm.weight") {
            vec![1f32; n]
        } else if name.ends_with(".bias") {
            vec![0f32; n]
        } else {
            normals(&mut rng, n, init.embedding_std)
        };
        Ok(TensorData::new(values, shape.to_vec()).convert_dtype(dtype))
    };
    let mut linear_rng = Rng::derive(seed, 0x2417);
    let mut linear = |prefix: &str, out: usize, inp: usize| -> glm_core::Result<GlmLinear<B>> {
        let name = format!("{prefix}.weight");
        let mut w = Vec::with_capacity(out * inp);
        for row in 0..out {
            let std = deepnorm_std(config, &name, row, init.embedding_std).unwrap_or(0.0);
            w.extend(normals(&mut linear_rng, inp, std));
        }
        Ok(GlmLinear::new(
            Tensor::from_data(
                TensorData::new(w, [out, inp]).convert_dtype(dtype),
                (device, dtype),
            ),
            Tensor::from_data(
                TensorData::new(vec![0f32; out], [out]).convert_dtype(dtype),
                (device, dtype),
            ),
        ))
    };
    let options = ModelOptions {
        dtype,
        ..ModelOptions::default()
    };
    Ok(GlmModel::build(
        config,
        device,
        options,
        &mut fetch,
        &mut linear,
    )?)
}
