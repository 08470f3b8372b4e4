//! Original SAT checkpoint folders (spec §6): `latest` names the iteration, `<iter>/mp_rank_XX_model_states.pt`
//! holds one tensor-parallel shard each (a torch zip pickle, state dict under the key `module`).
//! Shards are merged on load with the rules of GLM-130B's `tools/convert_tp.py`.

use std::path::{Path, PathBuf};

use burn::tensor::TensorData;

use super::{is_ignored_name, WeightSource};
use crate::error::{Error, Result};

mod pickle;
mod shard;
mod writer;

pub use self::shard::TorchShard;
pub use self::writer::{write_torch_shard, TorchEntry};

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
///
/// Every shard must have the same dtype and shape, and hold exactly `numel · dtype size` bytes
/// (`TensorData`'s fields are public, so this is checked rather than trusted); otherwise, and when
/// the merged size overflows, the result is [`Error::InvalidInput`] naming the tensor. Rows split
/// by `torch.chunk` over a size the degree does not divide (an odd vocabulary: the last shard is
/// smaller) merge too, when every shard has exactly its `torch.chunk` size.
pub fn merge_tp_shards(name: &str, rule: SplitRule, shards: Vec<TensorData>) -> Result<TensorData> {
    let bad = |reason: String| Error::InvalidInput(format!("tensor `{name}`: {reason}"));
    let first = shards.first().ok_or_else(|| bad("no shards".into()))?;
    if rule == SplitRule::Rows
        && shards
            .iter()
            .any(|s| s.shape.first() != first.shape.first())
    {
        return merge_chunked_rows(name, shards);
    }
    let dtype = first.dtype;
    let shape = first.shape.to_vec();
    let esize = dtype.size();
    let shard_bytes = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(esize))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    for (rank, s) in shards.iter().enumerate() {
        if s.dtype != dtype || s.shape.to_vec() != shape {
            return Err(bad(format!(
                "shards disagree: {:?} {:?} vs {:?} {:?}",
                dtype, shape, s.dtype, s.shape
            )));
        }
        if s.as_bytes().len() != shard_bytes {
            return Err(bad(format!(
                "shard {rank} holds {} bytes, shape {shape:?} of {dtype:?} needs {shard_bytes}",
                s.as_bytes().len()
            )));
        }
    }
    let tp = shards.len();
    let rule = if tp == 1 { SplitRule::Replicated } else { rule };
    let (&rows, rest) = match shape.split_first() {
        Some(split) => split,
        None if rule == SplitRule::Replicated => (&1, &[][..]),
        None => return Err(bad("scalar tensor cannot be split".into())),
    };
    // Each shard holds exactly `rows * row_bytes` bytes (checked above), so the slices below are
    // in range.
    let row_bytes = rest
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(esize));
    let row_bytes = row_bytes.ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let total = shard_bytes
        .checked_mul(tp)
        .ok_or_else(|| bad(format!("{tp} shards of shape {shape:?} overflow")))?;
    let times_tp = |d: usize| {
        d.checked_mul(tp)
            .ok_or_else(|| bad(format!("{tp} shards of shape {shape:?} overflow")))
    };
    let mut merged_shape = shape.clone();
    let out = match rule {
        SplitRule::Replicated => {
            return shards
                .into_iter()
                .next()
                .ok_or_else(|| bad("no shards".into()))
        }
        SplitRule::Rows | SplitRule::PerShard => {
            let mut out = Vec::with_capacity(total);
            for s in &shards {
                out.extend_from_slice(s.as_bytes());
            }
            match (rule, merged_shape.first_mut()) {
                (SplitRule::Rows, Some(d0)) => *d0 = times_tp(rows)?,
                _ => merged_shape.insert(0, tp),
            }
            out
        }
        SplitRule::Columns => {
            let [_, cols] = shape[..] else {
                return Err(bad(format!("column split needs a matrix, got {shape:?}")));
            };
            let mut out = Vec::with_capacity(total);
            for r in 0..rows {
                for s in &shards {
                    let row = s.as_bytes().chunks_exact(row_bytes.max(1)).nth(r);
                    out.extend_from_slice(row.unwrap_or_default());
                }
            }
            merged_shape = vec![rows, times_tp(cols)?];
            out
        }
        SplitRule::GluHalves => {
            if rows % 2 != 0 {
                return Err(bad(format!("GLU shard has an odd row count {rows}")));
            }
            let half = shard_bytes / 2;
            let mut out = Vec::with_capacity(total);
            for part in 0..2 {
                for s in &shards {
                    let (value, gate) = s.as_bytes().split_at(half);
                    out.extend_from_slice(if part == 0 { value } else { gate });
                }
            }
            if let Some(d0) = merged_shape.first_mut() {
                *d0 = times_tp(rows)?;
            }
            out
        }
    };
    Ok(TensorData::from_bytes_vec(out, merged_shape, dtype))
}

/// [`merge_tp_shards`] of row shards of different lengths: `torch.chunk` sizes, checked.
fn merge_chunked_rows(name: &str, shards: Vec<TensorData>) -> Result<TensorData> {
    let bad = |reason: String| Error::InvalidInput(format!("tensor `{name}`: {reason}"));
    let first = shards.first().ok_or_else(|| bad("no shards".into()))?;
    let (dtype, rest) = (first.dtype, first.shape.get(1..).unwrap_or(&[]).to_vec());
    let row_bytes = rest
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", first.shape)))?;
    let rows: Vec<usize> = shards
        .iter()
        .map(|s| s.shape.first().copied().unwrap_or(0))
        .collect();
    let total: usize = rows.iter().sum();
    for (rank, s) in shards.iter().enumerate() {
        let want = crate::parallel::chunk_range(total, shards.len(), rank).map_or(0, |r| r.len());
        if s.dtype != dtype
            || s.shape.get(1..) != Some(&rest[..])
            || rows[rank] != want
            || Some(s.as_bytes().len()) != rows[rank].checked_mul(row_bytes)
        {
            return Err(bad(format!(
                "shard {rank} is {:?} {:?} ({} bytes); torch.chunk of {total} rows over {} ranks \
                 gives it {want} rows of {rest:?} {dtype:?}",
                s.dtype,
                s.shape,
                s.as_bytes().len(),
                shards.len()
            )));
        }
    }
    let mut out = Vec::with_capacity(total.saturating_mul(row_bytes));
    for s in &shards {
        out.extend_from_slice(s.as_bytes());
    }
    let mut shape = vec![total];
    shape.extend(rest);
    Ok(TensorData::from_bytes_vec(out, shape, dtype))
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
            SplitRule::Rows => {
                // torch.chunk rows: the last shard may be smaller.
                let mut rows = 0usize;
                for s in &self.shards {
                    rows = rows.checked_add(*s.shape(name)?.first()?)?;
                }
                *merged.first_mut()? = rows;
            }
            SplitRule::GluHalves => {
                let d = merged.first_mut()?;
                *d = d.checked_mul(tp)?;
            }
            SplitRule::Columns => {
                let d = merged.get_mut(1)?;
                *d = d.checked_mul(tp)?;
            }
            SplitRule::PerShard => merged.insert(0, tp),
        }
        Some(merged)
    }

    fn stored_shard(&self, name: &str, rank: usize, world: usize) -> Option<Result<TensorData>> {
        (world > 1 && world == self.shards.len()).then(|| self.load_shard(name, rank))
    }

    fn stored_shard_shape(&self, name: &str, rank: usize, world: usize) -> Option<Vec<usize>> {
        if world > 1 && world == self.shards.len() {
            Some(self.shards.get(rank)?.shape(name)?.to_vec())
        } else {
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    fn shard(bytes: usize, shape: [usize; 2]) -> TensorData {
        TensorData::from_bytes_vec(vec![0u8; bytes], shape, DType::F32)
    }

    #[test]
    fn merge_refuses_shards_whose_bytes_do_not_match_their_shape() {
        // `TensorData`'s fields are public: a shard may claim more elements than it holds.
        for rule in [
            SplitRule::Rows,
            SplitRule::Columns,
            SplitRule::GluHalves,
            SplitRule::PerShard,
        ] {
            let shards = vec![shard(6, [2, 2]), shard(6, [2, 2])];
            let err = merge_tp_shards("w", rule, shards).expect_err("short shard accepted");
            let msg = err.to_string();
            assert!(
                msg.contains("`w`") && msg.contains("6 bytes"),
                "{rule:?}: {msg}"
            );
        }
    }

    #[test]
    fn uneven_rows_merge_only_in_torch_chunk_sizes() {
        // 5 rows over 2 ranks: torch.chunk gives 3 + 2.
        let ok = merge_tp_shards(
            "e",
            SplitRule::Rows,
            vec![shard(3 * 2 * 4, [3, 2]), shard(2 * 2 * 4, [2, 2])],
        )
        .expect("3 + 2 rows");
        assert_eq!(ok.shape.to_vec(), vec![5, 2]);
        // 2 + 3 is not what torch.chunk writes.
        let err = merge_tp_shards(
            "e",
            SplitRule::Rows,
            vec![shard(2 * 2 * 4, [2, 2]), shard(3 * 2 * 4, [3, 2])],
        )
        .expect_err("2 + 3 rows");
        assert!(err.to_string().contains("torch.chunk"), "{err}");
    }

    #[test]
    fn merge_checks_the_merged_size() {
        let huge = usize::MAX / 2 + 1;
        let shards = vec![shard(0, [huge, 0]), shard(0, [huge, 0])];
        let err = merge_tp_shards("w", SplitRule::Rows, shards).expect_err("overflow accepted");
        assert!(err.to_string().contains("overflow"), "{err}");
    }

    #[test]
    fn merge_concatenates_columns_and_glu_halves() {
        let data = |v: &[f32], shape: [usize; 2]| TensorData::new(v.to_vec(), shape);
        let a = data(&[1.0, 2.0, 3.0, 4.0], [2, 2]);
        let b = data(&[5.0, 6.0, 7.0, 8.0], [2, 2]);
        let cols = merge_tp_shards("w", SplitRule::Columns, vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(cols.shape.to_vec(), vec![2, 4]);
        assert_eq!(
            cols.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]
        );
        let glu = merge_tp_shards("w", SplitRule::GluHalves, vec![a, b]).unwrap();
        assert_eq!(glu.shape.to_vec(), vec![4, 2]);
        assert_eq!(
            glu.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]
        );
    }
}
