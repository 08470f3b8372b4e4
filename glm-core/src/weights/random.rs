//! A checkpoint of random weights, generated one tensor at a time on request.
//!
//! [`RandomSource`] is a [`WeightSource`] with the tensors of a config (original names, f32), each
//! drawn when it is loaded from a generator seeded by `(seed, tensor name, block)`: the same seed
//! gives the same tensor in any order, on any number of threads, and a model of any size can be
//! streamed to disk (`glm init-random`) holding one tensor in memory.
//!
//! The init is GLM's DeepNorm one (spec §8): weights `N(0, gain / √fan_in)` with gain
//! `β = (2N)^-½` for the value rows of `query_key_value`, `attention.dense` and the MLP, 1
//! elsewhere (the word embedding and the query / key rows); biases 0; LayerNorm γ = 1, β = 0.

use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use rayon::prelude::*;

use super::{param_specs, ParamSpec, WeightSource};
use crate::config::GlmConfig;
use crate::error::{Error, Result};

/// Elements drawn from one generator stream (a block is filled by one thread).
const BLOCK: usize = 1 << 16;

/// Random weights of a config under the original names (see the module docs).
#[derive(Debug, Clone)]
pub struct RandomSource {
    specs: Vec<ParamSpec>,
    seed: u64,
    beta: f64,
    head_dim: usize,
    location: PathBuf,
}

impl RandomSource {
    /// The random checkpoint of `config` for `seed` (the config is validated first).
    pub fn new(config: &GlmConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            specs: param_specs(config),
            seed,
            beta: 1.0 / config.deepnorm_alpha(),
            head_dim: config.head_dim(),
            location: PathBuf::from(format!("<random seed {seed}>")),
        })
    }

    fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// SplitMix64: a stateless mix of a counter into 64 random bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name (its stream id).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fills `out` with standard normal values (Box–Muller) from the stream `key`.
fn fill_normal(out: &mut [f32], key: u64) {
    let mut state = key;
    let mut next_unit = || {
        state = state.wrapping_add(1);
        // 53 random bits → (0, 1]: never 0, so the logarithm is finite.
        ((splitmix(state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    for pair in out.chunks_mut(2) {
        let (u1, u2) = (next_unit(), next_unit());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        pair[0] = (r * t.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * t.sin()) as f32;
        }
    }
}

impl WeightSource for RandomSource {
    fn location(&self) -> &Path {
        &self.location
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.spec(name).map(|s| s.shape.clone())
    }

    fn load(&self, name: &str) -> Result<TensorData> {
        let spec = self.spec(name).ok_or_else(|| Error::MissingTensor {
            file: self.location.clone(),
            tensor: name.to_string(),
        })?;
        let shape = spec.shape.clone();
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::InvalidInput(format!("tensor `{name}`: {shape:?} overflows")))?;
        if name.ends_with("layernorm.weight") {
            return Ok(TensorData::new(vec![1f32; n], shape));
        }
        if name.ends_with(".bias") {
            return Ok(TensorData::new(vec![0f32; n], shape));
        }
        let (rows, cols) = match shape[..] {
            [r, c] => (r, c),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "tensor `{name}`: expected a matrix, got {shape:?}"
                )))
            }
        };
        let gain = if name.contains("attention.dense") || name.contains("mlp.") {
            self.beta
        } else {
            1.0
        };
        let std = (gain / (cols.max(1) as f64).sqrt()) as f32;
        let stream = splitmix(self.seed ^ name_hash(name));
        let mut values = vec![0f32; n];
        values
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, block)| {
                fill_normal(block, splitmix(stream.wrapping_add(b as u64)));
                for v in block.iter_mut() {
                    *v *= std;
                }
            });
        if name.ends_with("query_key_value.weight") {
            // DeepNorm scales only the value rows of the fused per-head [q|k|v] layout.
            let beta = self.beta as f32;
            let hn = self.head_dim.max(1);
            values
                .par_chunks_mut(cols.max(1))
                .enumerate()
                .filter(|(r, _)| r % (3 * hn) >= 2 * hn)
                .for_each(|(_, row)| row.iter_mut().for_each(|v| *v *= beta));
        }
        debug_assert_eq!(values.len(), rows * cols);
        Ok(TensorData::new(values, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tensor_and_sane_statistics() {
        let config = GlmConfig::tiny();
        let a = RandomSource::new(&config, 7).unwrap();
        let b = RandomSource::new(&config, 7).unwrap();
        let c = RandomSource::new(&config, 8).unwrap();
        let name = "transformer.layers.0.mlp.dense_h_to_4h.weight";
        let x = a.load(name).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(x, b.load(name).unwrap().to_vec::<f32>().unwrap());
        assert_ne!(x, c.load(name).unwrap().to_vec::<f32>().unwrap());
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let want = (1.0 / config.deepnorm_alpha()).powi(2) / config.hidden_size as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var / want - 1.0).abs() < 0.05, "{var} vs {want}");
        assert!(a.load("nope").is_err());
    }
}
