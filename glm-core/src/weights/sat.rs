//! Original SAT checkpoint folders (spec §6): `latest` names the iteration, `<iter>/mp_rank_XX_model_states.pt`
//! holds one tensor-parallel shard each (a torch zip pickle, state dict under the key `module`).
//! Shards are merged on load with the rules of GLM-130B's `tools/convert_tp.py`.

use std::path::{Path, PathBuf};

use burn::tensor::TensorData;

use super::{is_ignored_name, WeightSource};
use crate::error::{Error, Result};

mod pickle;
mod shard;

pub use self::shard::TorchShard;

/// How a parameter is split across tensor-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRule {
    /// Every rank holds the full tensor (LayerNorms, row-parallel biases).
    Replicated,
    /// Concatenated along dim 0 (embedding rows, fused QKV: whole heads per rank).
    Rows,
    /// Concatenated along dim 1 (row-parallel weights: `attention.dense`, `mlp.dense_4h_to_h`).
    Columns,
    /// GeGLU halves: each rank holds `[value chunk r; gate chunk r]`; the merged tensor is
    /// `[all value chunks; all gate chunks]`. Naive concatenation would interleave them.
    GluHalves,
    /// Per-shard quantization scales of a row-parallel weight: stacked to `[tp, out]`.
    PerShard,
}

/// The split rule of an original parameter name.
pub fn split_rule(name: &str) -> SplitRule {
    let replicated = [
        "input_layernorm.weight",
        "input_layernorm.bias",
        "post_attention_layernorm.weight",
        "post_attention_layernorm.bias",
        "final_layernorm.weight",
        "final_layernorm.bias",
        "attention.dense.bias",
        "mlp.dense_4h_to_h.bias",
    ];
    if replicated.iter().any(|s| name.ends_with(s)) {
        SplitRule::Replicated
    } else if name.ends_with("attention.dense.weight_scale")
        || name.ends_with("mlp.dense_4h_to_h.weight_scale")
    {
        SplitRule::PerShard
    } else if name.ends_with("attention.dense.weight") || name.ends_with("mlp.dense_4h_to_h.weight")
    {
        SplitRule::Columns
    } else if name.contains("mlp.dense_h_to_4h.") {
        SplitRule::GluHalves
    } else {
        SplitRule::Rows
    }
}

/// Merges the shards of one tensor (any dtype; works on raw bytes).
pub fn merge_tp_shards(name: &str, rule: SplitRule, shards: Vec<TensorData>) -> Result<TensorData> {
    let bad = |reason: String| Error::InvalidInput(format!("tensor `{name}`: {reason}"));
    let first = shards.first().ok_or_else(|| bad("no shards".into()))?;
    let dtype = first.dtype;
    let shape = first.shape.to_vec();
    for s in &shards {
        if s.dtype != dtype || s.shape.to_vec() != shape {
            return Err(bad(format!(
                "shards disagree: {:?} {:?} vs {:?} {:?}",
                dtype, shape, s.dtype, s.shape
            )));
        }
    }
    let tp = shards.len();
    if tp == 1 || rule == SplitRule::Replicated {
        return Ok(shards.into_iter().next().unwrap_or_else(|| unreachable!()));
    }
    let rows = *shape
        .first()
        .ok_or_else(|| bad("scalar tensor cannot be split".into()))?;
    let row_elems: usize = shape[1..].iter().product();
    let esize = dtype.size();
    let row_bytes = row_elems * esize;
    let mut out = Vec::with_capacity(rows * row_bytes * tp);
    let mut merged_shape = shape.clone();
    match rule {
        SplitRule::Replicated => unreachable!(),
        SplitRule::Rows | SplitRule::PerShard => {
            for s in &shards {
                out.extend_from_slice(s.as_bytes());
            }
            if rule == SplitRule::PerShard {
                merged_shape.insert(0, tp);
            } else {
                merged_shape[0] = rows * tp;
            }
        }
        SplitRule::Columns => {
            if shape.len() != 2 {
                return Err(bad(format!("column split needs a matrix, got {shape:?}")));
            }
            for r in 0..rows {
                for s in &shards {
                    out.extend_from_slice(&s.as_bytes()[r * row_bytes..(r + 1) * row_bytes]);
                }
            }
            merged_shape[1] = shape[1] * tp;
        }
        SplitRule::GluHalves => {
            if rows % 2 != 0 {
                return Err(bad(format!("GLU shard has an odd row count {rows}")));
            }
            let half = rows / 2 * row_bytes;
            for part in 0..2 {
                for s in &shards {
                    out.extend_from_slice(&s.as_bytes()[part * half..(part + 1) * half]);
                }
            }
            merged_shape[0] = rows * tp;
        }
    }
    Ok(TensorData::from_bytes_vec(out, merged_shape, dtype))
}

/// An original SAT checkpoint folder, read lazily and merged across tensor-parallel ranks.
pub struct SatCheckpoint {
    folder: PathBuf,
    iteration: String,
    shard_paths: Vec<PathBuf>,
    shards: Vec<TorchShard>,
    names: Vec<String>,
}

impl std::fmt::Debug for SatCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SatCheckpoint")
            .field("folder", &self.folder)
            .field("iteration", &self.iteration)
            .field("tensor_parallel", &self.shards.len())
            .finish()
    }
}

impl SatCheckpoint {
    /// Opens `folder` (reads `latest`, finds `mp_rank_XX_model_states.pt`, parses every shard's index).
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref().to_path_buf();
        let latest = folder.join("latest");
        let iteration = std::fs::read_to_string(&latest)
            .map_err(|e| Error::io(&latest, e))?
            .trim()
            .to_string();
        if iteration.is_empty() || iteration.contains(['/', '\\']) || iteration.starts_with('.') {
            return Err(Error::corrupt(
                &latest,
                format!("bad iteration name {iteration:?}"),
            ));
        }
        let dir = folder.join(&iteration);
        let mut shard_paths = Vec::new();
        for rank in 0.. {
            let p = dir.join(format!("mp_rank_{rank:02}_model_states.pt"));
            if !p.is_file() {
                break;
            }
            shard_paths.push(p);
        }
        if shard_paths.is_empty() {
            return Err(Error::io(
                dir.join("mp_rank_00_model_states.pt"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no model shard found"),
            ));
        }
        let mut shards = Vec::with_capacity(shard_paths.len());
        for p in &shard_paths {
            shards.push(TorchShard::open(p, Some("module"))?);
        }
        let names = shards[0].names();
        for (p, s) in shard_paths.iter().zip(&shards).skip(1) {
            if s.names() != names {
                return Err(Error::corrupt(
                    p,
                    "shard holds different tensor names than rank 0",
                ));
            }
        }
        Ok(Self {
            folder,
            iteration,
            shard_paths,
            shards,
            names,
        })
    }

    /// Tensor-parallel degree (number of shards).
    pub fn tensor_parallel(&self) -> usize {
        self.shards.len()
    }

    /// The iteration named by `latest`.
    pub fn iteration(&self) -> &str {
        &self.iteration
    }

    /// Loads one rank's shard of `name`, unmerged.
    pub fn load_shard(&self, name: &str, rank: usize) -> Result<TensorData> {
        let path = self
            .shard_paths
            .get(rank)
            .ok_or_else(|| Error::InvalidInput(format!("rank {rank} out of range")))?;
        let shard = self.shards.get(rank).ok_or_else(|| Error::MissingTensor {
            file: path.clone(),
            tensor: name.to_string(),
        })?;
        shard.load(name)
    }

    /// CRC-checks every entry of every shard (loading does this per tensor).
    pub fn verify(&self) -> Result<()> {
        self.shards.iter().try_for_each(TorchShard::verify)
    }
}

impl WeightSource for SatCheckpoint {
    fn location(&self) -> &Path {
        &self.folder
    }

    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let shape = self.shards.first()?.shape(name)?.to_vec();
        let tp = self.shards.len();
        let mut merged = shape;
        match split_rule(name) {
            SplitRule::Replicated => {}
            _ if tp == 1 => {}
            SplitRule::Rows | SplitRule::GluHalves => *merged.first_mut()? *= tp,
            SplitRule::Columns => *merged.get_mut(1)? *= tp,
            SplitRule::PerShard => merged.insert(0, tp),
        }
        Some(merged)
    }

    fn load(&self, name: &str) -> Result<TensorData> {
        if is_ignored_name(name) {
            return self.load_shard(name, 0);
        }
        let shards = (0..self.shards.len())
            .map(|r| self.load_shard(name, r))
            .collect::<Result<Vec<_>>>()?;
        merge_tp_shards(name, split_rule(name), shards)
            .map_err(|e| Error::corrupt(&self.folder, e.to_string()))
    }
}
