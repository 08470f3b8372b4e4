//! A checkpoint of random weights, generated one tensor (or one block of rows) at a time on
//! request.
//!
//! [`RandomSource`] is a [`WeightSource`] with the tensors of a config (original names, f32), each
//! drawn when it is loaded from a generator seeded by `(seed, tensor name, block)`: the same seed
//! gives the same tensor in any order, on any number of threads, and a model of any size can be
//! streamed to disk (`glm init-random`) holding one block of rows in memory
//! ([`WeightSource::load_rows`]).
//!
//! The init is GLM's DeepNorm one (spec §8, [`deepnorm_std`]): Xavier-normal weights with gain
//! `β = (2N)^-½` for the value rows of `query_key_value`, `attention.dense` and both MLP
//! matrices, 1 for the query / key rows; the word embedding `N(0, embedding_std)` (0.02 by
//! default); biases 0; LayerNorm γ = 1, β = 0. glm-train's `deepnorm_model` uses the same
//! [`deepnorm_std`]; it draws from one sequential stream (a training run is reproduced from its
//! seed), this source from one stream per tensor (tensors are drawn independently, in any order,
//! so a checkpoint of any size can be streamed).

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
    config: GlmConfig,
    embedding_std: f64,
    location: PathBuf,
}

impl RandomSource {
    /// The random checkpoint of `config` for `seed` (the config is validated first).
    pub fn new(config: &GlmConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            specs: param_specs(config),
            seed,
            config: config.clone(),
            embedding_std: 0.02,
            location: PathBuf::from(format!("<random seed {seed}>")),
        })
    }

    /// The word embedding's standard deviation (default 0.02, the training recipe's).
    pub fn with_embedding_std(mut self, std: f64) -> Self {
        self.embedding_std = std;
        self
    }

    fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// The standard deviation of row `row` of weight `name` under GLM's DeepNorm init (spec §8):
/// Xavier-normal `√(2 / (fan_in + fan_out))` times the gain `β = (2N)^-½` for the value rows of the
/// per-head `[q|k|v]` layout, `attention.dense` and both MLP matrices (`dense_h_to_4h`'s fan-out
/// is one GLU half), gain 1 for query / key rows; `embedding_std` for the word embedding. `None`
/// for tensors that are not drawn (biases, LayerNorms) or names it does not know.
pub fn deepnorm_std(config: &GlmConfig, name: &str, row: usize, embedding_std: f64) -> Option<f64> {
    let h = config.hidden_size;
    let f = config.inner_size();
    let beta = 1.0 / config.deepnorm_alpha();
    let xavier = |fan_in: usize, fan_out: usize| (2.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    if name == "transformer.word_embeddings.weight" {
        return Some(embedding_std);
    }
    let prefix = name.strip_suffix(".weight")?;
    if prefix.ends_with("attention.query_key_value") {
        let hn = config.head_dim().max(1);
        let gain = if row % (3 * hn) >= 2 * hn { beta } else { 1.0 };
        Some(gain * xavier(h, h))
    } else if prefix.ends_with("attention.dense") {
        Some(beta * xavier(h, h))
    } else if prefix.ends_with("mlp.dense_h_to_4h") {
        Some(beta * xavier(h, f))
    } else if prefix.ends_with("mlp.dense_4h_to_h") {
        Some(beta * xavier(f, h))
    } else {
        None
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

/// Fills `out` with standard normal values from the stream `key` (Marsaglia's polar method: a
/// point drawn uniformly in the unit disc gives two independent normals with one logarithm and one
/// square root, no trigonometry).
fn fill_normal(out: &mut [f32], key: u64) {
    let mut state = key;
    let mut i = 0;
    while i < out.len() {
        state = state.wrapping_add(1);
        let bits = splitmix(state);
        // Two 32-bit halves → u, v uniform in (-1, 1) (never exactly 0 or ±1).
        let unit = |h: u64| ((h & 0xFFFF_FFFF) as f64 + 0.5) / 2_147_483_648.0 - 1.0;
        let (u, v) = (unit(bits >> 32), unit(bits));
        let s = u * u + v * v;
        if s >= 1.0 || s == 0.0 {
            continue;
        }
        let f = (-2.0 * s.ln() / s).sqrt();
        out[i] = (u * f) as f32;
        if let Some(second) = out.get_mut(i + 1) {
            *second = (v * f) as f32;
        }
        i += 2;
    }
}

impl RandomSource {
    /// Rows `rows` of the drawn matrix `name` (`[rows, cols]`), exactly the values
    /// [`load`](WeightSource::load) gives for them: the generator blocks that overlap the rows are
    /// drawn (in parallel), the part inside the rows kept, each row scaled by its std.
    fn draw_rows(
        &self,
        name: &str,
        (nrows, cols): (usize, usize),
        rows: std::ops::Range<usize>,
    ) -> Result<TensorData> {
        if rows.start > rows.end || rows.end > nrows {
            return Err(Error::InvalidInput(format!(
                "tensor `{name}`: rows {rows:?} of {nrows}"
            )));
        }
        let overflow =
            || Error::InvalidInput(format!("tensor `{name}`: [{nrows}, {cols}] overflows"));
        let start = rows.start.checked_mul(cols).ok_or_else(overflow)?;
        let end = rows.end.checked_mul(cols).ok_or_else(overflow)?;
        let stream = splitmix(self.seed ^ name_hash(name));
        let mut values = vec![0f32; end - start];
        // Split the output at block boundaries: (block index, offset in the block, segment).
        let mut segments = Vec::new();
        let mut rest = values.as_mut_slice();
        let mut at = start;
        while !rest.is_empty() {
            let (block, offset) = (at / BLOCK, at % BLOCK);
            let len = (BLOCK - offset).min(rest.len());
            let (segment, tail) = rest.split_at_mut(len);
            segments.push((block, offset, segment));
            rest = tail;
            at += len;
        }
        segments
            .into_par_iter()
            .for_each(|(block, offset, segment)| {
                let key = splitmix(stream.wrapping_add(block as u64));
                if offset == 0 && segment.len() == BLOCK {
                    fill_normal(segment, key);
                } else {
                    // A block cut by the row range: draw it whole (the stream is sequential), keep
                    // the part inside.
                    let mut whole = vec![0f32; offset + segment.len()];
                    fill_normal(&mut whole, key);
                    segment.copy_from_slice(&whole[offset..]);
                }
            });
        values
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                let r = rows.start + i;
                let std =
                    deepnorm_std(&self.config, name, r, self.embedding_std).unwrap_or(0.0) as f32;
                row.iter_mut().for_each(|v| *v *= std);
            });
        Ok(TensorData::new(values, [rows.len(), cols]))
    }

    /// `[rows, cols]` of a drawn matrix, or why it is not one.
    fn matrix(&self, name: &str) -> Result<(usize, usize)> {
        let spec = self.spec(name).ok_or_else(|| Error::MissingTensor {
            file: self.location.clone(),
            tensor: name.to_string(),
        })?;
        match spec.shape[..] {
            [r, c] if !name.ends_with("layernorm.weight") && !name.ends_with(".bias") => Ok((r, c)),
            _ => Err(Error::InvalidInput(format!(
                "tensor `{name}`: {:?} is not a drawn matrix",
                spec.shape
            ))),
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
        let (rows, cols) = self.matrix(name)?;
        self.draw_rows(name, (rows, cols), 0..rows)
    }

    fn load_rows(&self, name: &str, rows: std::ops::Range<usize>) -> Option<Result<TensorData>> {
        let dims = self.matrix(name).ok()?;
        Some(self.draw_rows(name, dims, rows))
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
        // Xavier-normal with the DeepNorm gain, dense_h_to_4h's fan-out one GLU half.
        let (h, f) = (config.hidden_size as f64, config.inner_size() as f64);
        let want = (1.0 / config.deepnorm_alpha()).powi(2) * 2.0 / (h + f);
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var / want - 1.0).abs() < 0.05, "{var} vs {want}");
        assert!(a.load("nope").is_err());
    }

    #[test]
    fn row_ranges_are_exactly_the_rows_of_the_whole_tensor() {
        // Matrices of many generator blocks, cut at row ranges that split blocks.
        let config = GlmConfig::small();
        let src = RandomSource::new(&config, 11).unwrap();
        for name in [
            "transformer.layers.0.attention.query_key_value.weight",
            "transformer.layers.1.mlp.dense_h_to_4h.weight",
            "transformer.word_embeddings.weight",
        ] {
            let shape = src.shape(name).unwrap();
            let (rows, cols) = (shape[0], shape[1]);
            assert!(
                rows * cols > 4 * BLOCK,
                "{name}: {shape:?} spans few blocks"
            );
            let whole = src.load(name).unwrap().to_vec::<f32>().unwrap();
            for range in [
                0..1,
                3..rows / 3,
                rows / 3..rows / 3 + 1,
                rows / 2..rows,
                0..rows,
            ] {
                let part = src.load_rows(name, range.clone()).unwrap().unwrap();
                assert_eq!(part.shape.to_vec(), vec![range.len(), cols]);
                let part = part.to_vec::<f32>().unwrap();
                assert!(
                    part == whole[range.start * cols..range.end * cols],
                    "{name} rows {range:?}"
                );
            }
            assert!(src.load_rows(name, rows..rows + 1).unwrap().is_err());
        }
        // LayerNorms and biases are not drawn row by row.
        assert!(src
            .load_rows("transformer.layers.0.input_layernorm.weight", 0..1)
            .is_none());
    }
}
