//! Atomic, self-verifying checkpoints.
//!
//! `DIR/checkpoints/step-NNNNNNNN/` holds `state.safetensors` (f32 master weights `master.NAME`,
//! AdamW moments `adam_m.NAME` / `adam_v.NAME`) and `meta.json` ([`CheckpointMeta`]: step, AdamW
//! step count, loss scaler, data position incl. RNG, config fingerprint and the FNV-1a checksum
//! of `state.safetensors`). A checkpoint is written into a hidden temporary folder, fsynced and
//! renamed into place; `DIR/checkpoints/latest` (also replaced atomically) names the newest.
//! Loading verifies the checksum and falls back to older complete checkpoints, so a torn or
//! half-written checkpoint is never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use glm_core::weights::{save_safetensors, SafetensorsFile, WeightSource};
use serde::{Deserialize, Serialize};

use crate::data::{fnv1a, write_atomic, DataState};
use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::schedule::LossScaler;

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Optimizer steps completed (including skipped ones).
    pub step: u64,
    /// AdamW updates applied.
    pub updates: u64,
    /// Loss scaler.
    pub scaler: LossScaler,
    /// Data position.
    pub data: DataState,
    /// [`crate::TrainConfig::fingerprint`] of the run.
    pub fingerprint: String,
    /// FNV-1a of `state.safetensors`, hex.
    pub checksum: String,
    /// Parameter names in order.
    pub params: Vec<String>,
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The folder it came from.
    pub path: PathBuf,
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorData>,
}

const STATE: &str = "state.safetensors";
const META: &str = "meta.json";
const LATEST: &str = "latest";

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

fn file_checksum(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:016x}", fnv1a(&bytes, 0xcbf2_9ce4_8422_2325)))
}

fn to_host<B: Backend>(t: &Tensor<B, 1>) -> TensorData {
    t.clone().into_data().convert::<f32>()
}

/// Writes a checkpoint of `optim` under `root` (`DIR/checkpoints`), points `latest` at it and
/// deletes all but the newest `keep` checkpoints.
pub fn save<B: Backend>(
    root: &Path,
    mut meta: CheckpointMeta,
    optim: &AdamW<B>,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let fin = step_dir(root, meta.step);
    let tmp = root.join(format!(".tmp-step-{:08}-{}", meta.step, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut tensors = BTreeMap::new();
    for (i, info) in optim.infos.iter().enumerate() {
        tensors.insert(format!("master.{}", info.name), to_host(&optim.master[i]));
        tensors.insert(format!("adam_m.{}", info.name), to_host(&optim.m[i]));
        tensors.insert(format!("adam_v.{}", info.name), to_host(&optim.v[i]));
    }
    let state = tmp.join(STATE);
    save_safetensors(&state, &tensors, None)?;
    meta.checksum = file_checksum(&state)?;
    meta.updates = optim.updates;
    meta.params = optim.infos.iter().map(|i| i.name.clone()).collect();
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Checkpoint {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&tmp.join(META), &json)?;
    if fin.exists() {
        // Left over from a run that was killed after this step and resumed from an earlier one.
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    write_atomic(
        &root.join(LATEST),
        fin.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .as_bytes(),
    )?;
    // Prune: keep the newest `keep` complete checkpoints, remove stale temporaries.
    let mut steps = list_steps(root);
    steps.sort_unstable();
    let cut = steps.len().saturating_sub(keep.max(1));
    for s in &steps[..cut] {
        let _ = std::fs::remove_dir_all(step_dir(root, *s));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-step-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(fin)
}

fn list_steps(root: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("step-").and_then(|s| s.parse().ok())
        })
        .collect()
}

/// Reads and verifies one checkpoint folder.
pub fn load_dir(dir: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let meta_path = dir.join(META);
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: CheckpointMeta =
        serde_json::from_str(&text).map_err(|e| bad(format!("meta.json: {e}")))?;
    let state = dir.join(STATE);
    let sum = file_checksum(&state)?;
    if sum != meta.checksum {
        return Err(bad(format!(
            "state.safetensors checksum {sum} != {}",
            meta.checksum
        )));
    }
    let file = SafetensorsFile::open(&state)?;
    let mut tensors = BTreeMap::new();
    for name in file.names() {
        let t = file.load(&name)?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        meta,
        tensors,
    })
}

/// The newest verified checkpoint under `root` (`latest` first, then every `step-*` folder from
/// the newest down); `None` if there is none. Damaged checkpoints are skipped.
pub fn load_latest(root: &Path) -> Option<Checkpoint> {
    let mut candidates = Vec::new();
    if let Ok(name) = std::fs::read_to_string(root.join(LATEST)) {
        candidates.push(root.join(name.trim()));
    }
    let mut steps = list_steps(root);
    steps.sort_unstable_by(|a, b| b.cmp(a));
    candidates.extend(steps.into_iter().map(|s| step_dir(root, s)));
    let mut best: Option<Checkpoint> = None;
    for dir in candidates {
        if let Ok(c) = load_dir(&dir) {
            if best.as_ref().is_none_or(|b| c.meta.step > b.meta.step) {
                best = Some(c);
            }
        }
    }
    best
}

impl Checkpoint {
    /// Restores master weights and moments into `optim` (names and shapes must match).
    pub fn restore_optim<B: Backend>(
        &self,
        optim: &mut AdamW<B>,
        device: &B::Device,
    ) -> Result<()> {
        let bad = |reason: String| Error::Checkpoint {
            path: self.path.clone(),
            reason,
        };
        for (i, info) in optim.infos.iter().enumerate() {
            let n: usize = info.shape.iter().product();
            let fetch = |prefix: &str| -> Result<Tensor<B, 1>> {
                let key = format!("{prefix}.{}", info.name);
                let data = self
                    .tensors
                    .get(&key)
                    .ok_or_else(|| bad(format!("missing `{key}`")))?;
                if data.num_elements() != n {
                    return Err(bad(format!(
                        "`{key}` has {} values, expected {n}",
                        data.num_elements()
                    )));
                }
                let values: Vec<f32> = data
                    .clone()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| bad(format!("`{key}`: {e:?}")))?;
                Ok(Tensor::<B, 1>::from_data(
                    TensorData::new(values, [n]),
                    device,
                ))
            };
            optim.master[i] = fetch("master")?;
            optim.m[i] = fetch("adam_m")?;
            optim.v[i] = fetch("adam_v")?;
        }
        optim.updates = self.meta.updates;
        Ok(())
    }
}
