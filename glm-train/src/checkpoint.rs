//! Atomic, self-verifying checkpoints.
//!
//! `DIR/checkpoints/step-NNNNNNNN/` holds `state.safetensors` (f32 master weights `master.NAME`,
//! AdamW moments `adam_m.NAME` / `adam_v.NAME`) and `meta.json` ([`CheckpointMeta`]: step, AdamW
//! step count, loss scaler, data position incl. RNG, config fingerprint, the corpus it was
//! written for, size and FNV-1a checksum of `state.safetensors`, and a `checksum` over every other
//! byte of `meta.json` itself).
//!
//! A checkpoint is written into a hidden temporary folder, fsynced and renamed into place; an
//! existing folder of the same step is first renamed aside (`.old-step-…`) and deleted only after
//! the new one is in place, so at every moment one complete copy exists under a known name.
//! `DIR/checkpoints/latest` (also replaced atomically) names the newest. Loading verifies both
//! checksums and falls back to older complete checkpoints, so a torn, half-written or edited
//! checkpoint is never used; [`scan`] says why each newer folder was rejected.
//!
//! (Over 400 lines: atomic checkpoint folders with checksummed metadata, verification on resume and pruning of old steps.)

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use glm_core::weights::{save_safetensors, sync_dir, write_atomic, SafetensorsFile, WeightSource};
use serde::{Deserialize, Serialize};

use crate::data::{fnv1a, DataState};
use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::schedule::LossScaler;

/// The corpus a checkpoint was written for; a resume on another corpus is refused
/// ([`Error::CorpusChanged`]) instead of indexing documents that no longer exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusInfo {
    /// Documents of the tokenized corpus.
    pub documents: u64,
    /// Tokens of the tokenized corpus.
    pub tokens: u64,
    /// [`crate::data::TokenStore::fingerprint`] (document boundaries).
    pub fingerprint: String,
    /// Instruction (MIP) pairs.
    pub instructions: u64,
    /// [`glm_core::vocab::VocabMap::fingerprint`] of a compact-vocabulary run (absent with the
    /// full vocabulary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_map: Option<String>,
}

impl CorpusInfo {
    /// What differs between the corpus a checkpoint was written for (`self`) and `now`; `None`
    /// if they match.
    pub fn difference(&self, now: &CorpusInfo) -> Option<String> {
        let mut d = Vec::new();
        if self.documents != now.documents {
            d.push(format!(
                "{} documents then, {} now",
                self.documents, now.documents
            ));
        }
        if self.tokens != now.tokens {
            d.push(format!("{} tokens then, {} now", self.tokens, now.tokens));
        }
        if self.instructions != now.instructions {
            d.push(format!(
                "{} instructions then, {} now",
                self.instructions, now.instructions
            ));
        }
        if self.vocab_map != now.vocab_map {
            d.push(format!(
                "compact vocabulary {} then, {} now",
                self.vocab_map.as_deref().unwrap_or("(none)"),
                now.vocab_map.as_deref().unwrap_or("(none)")
            ));
        }
        if d.is_empty() && self.fingerprint != now.fingerprint {
            d.push(format!(
                "document boundaries differ (fingerprint {} then, {} now)",
                self.fingerprint, now.fingerprint
            ));
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The corpus of the run.
    pub corpus: CorpusInfo,
    /// Size of `state.safetensors` in bytes.
    pub state_bytes: u64,
    /// FNV-1a of `state.safetensors`, hex.
    pub state_checksum: String,
    /// Parameter names in order.
    pub params: Vec<String>,
    /// FNV-1a of `meta.json` with this value left empty, hex (filled in by [`save`]).
    pub checksum: String,
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
const TMP_PREFIX: &str = ".tmp-step-";
const OLD_PREFIX: &str = ".old-step-";
/// Largest `meta.json` read (it holds names and a few numbers).
const MAX_META_BYTES: u64 = 64 << 20;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Makes temporary folder names unique per call within a process.
static SAVES: AtomicU64 = AtomicU64::new(0);

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// FNV-1a of a file, streamed, and its length.
fn file_checksum(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut h, mut n) = (FNV_OFFSET, 0u64);
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        let Some(chunk) = buf.get(..k).filter(|c| !c.is_empty()) else {
            break;
        };
        h = fnv1a(chunk, h);
        n = n.saturating_add(k as u64);
    }
    Ok((format!("{h:016x}"), n))
}

/// The `"checksum": "…"` field as it appears in `meta.json`.
fn checksum_field(value: &str) -> String {
    format!("\"checksum\": \"{value}\"")
}

/// The text of `meta.json` for `meta` (pretty JSON), with `checksum` covering every other byte.
fn meta_text(meta: &CheckpointMeta, dir: &Path) -> Result<String> {
    let mut blank = meta.clone();
    blank.checksum = String::new();
    let text = serde_json::to_string_pretty(&blank).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("cannot encode meta.json: {e}"),
    })?;
    let sum = format!("{:016x}", fnv1a(text.as_bytes(), FNV_OFFSET));
    Ok(text.replacen(&checksum_field(""), &checksum_field(&sum), 1))
}

/// Reads `meta.json` of `dir` and checks its own checksum and the size of `state.safetensors`
/// (cheap: the state is not read).
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let bad = |reason: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let meta_path = dir.join(META);
    let size = std::fs::metadata(&meta_path)
        .map_err(|e| Error::io(&meta_path, e))?
        .len();
    if size > MAX_META_BYTES {
        return Err(bad(format!(
            "meta.json is {size} bytes (at most {MAX_META_BYTES})"
        )));
    }
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: CheckpointMeta =
        serde_json::from_str(&text).map_err(|e| bad(format!("meta.json: {e}")))?;
    let field = checksum_field(&meta.checksum);
    if meta.checksum.is_empty() || !text.contains(&field) {
        return Err(bad("meta.json has no checksum".into()));
    }
    let blank = text.replacen(&field, &checksum_field(""), 1);
    let sum = format!("{:016x}", fnv1a(blank.as_bytes(), FNV_OFFSET));
    if sum != meta.checksum {
        return Err(bad(format!(
            "meta.json checksum {sum} != {} (the file was changed or damaged)",
            meta.checksum
        )));
    }
    let state = dir.join(STATE);
    let len = std::fs::metadata(&state)
        .map_err(|e| Error::io(&state, e))?
        .len();
    if len != meta.state_bytes {
        return Err(bad(format!(
            "state.safetensors is {len} bytes, meta.json says {}",
            meta.state_bytes
        )));
    }
    Ok(meta)
}

/// [`read_meta`] plus the checksum of `state.safetensors` (reads the whole state once).
pub fn verify_dir(dir: &Path) -> Result<CheckpointMeta> {
    let meta = read_meta(dir)?;
    let (sum, len) = file_checksum(&dir.join(STATE))?;
    if sum != meta.state_checksum || len != meta.state_bytes {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "state.safetensors checksum {sum} ({len} bytes) != {} ({} bytes)",
                meta.state_checksum, meta.state_bytes
            ),
        });
    }
    Ok(meta)
}

fn to_host<B: Backend>(t: &Tensor<B, 1>) -> TensorData {
    t.clone().into_data().convert::<f32>()
}

/// Removes a folder on drop unless disarmed (a failed save leaves no temporary folder).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Writes a checkpoint of `optim` under `root` (`DIR/checkpoints`), points `latest` at it and
/// prunes: of the checkpoints older than this one, the newest `keep - 1` that verify are kept
/// and older verified ones deleted. Folders that do not verify and folders of later steps (from
/// an abandoned continuation) are never deleted by pruning and never count towards `keep`; a
/// folder of this very step is replaced atomically.
pub fn save<B: Backend>(
    root: &Path,
    mut meta: CheckpointMeta,
    optim: &AdamW<B>,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let fin = step_dir(root, meta.step);
    let n = SAVES.fetch_add(1, Ordering::Relaxed);
    let unique = format!("{:08}-{}-{n}", meta.step, std::process::id());
    let tmp = root.join(format!("{TMP_PREFIX}{unique}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = DirGuard(Some(tmp.clone()));
    let mut tensors = BTreeMap::new();
    for (i, info) in optim.infos.iter().enumerate() {
        let (Some(m), Some(a), Some(v)) = (optim.master.get(i), optim.m.get(i), optim.v.get(i))
        else {
            return Err(Error::Checkpoint {
                path: tmp.clone(),
                reason: format!("optimizer state of `{}` is missing", info.name),
            });
        };
        tensors.insert(format!("master.{}", info.name), to_host(m));
        tensors.insert(format!("adam_m.{}", info.name), to_host(a));
        tensors.insert(format!("adam_v.{}", info.name), to_host(v));
    }
    let state = tmp.join(STATE);
    save_safetensors(&state, &tensors, None)?;
    drop(tensors);
    let (sum, len) = file_checksum(&state)?;
    meta.state_checksum = sum;
    meta.state_bytes = len;
    meta.updates = optim.updates;
    meta.params = optim.infos.iter().map(|i| i.name.clone()).collect();
    let text = meta_text(&meta, &tmp)?;
    write_atomic(&tmp.join(META), text.as_bytes())?;
    sync_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if std::fs::symlink_metadata(&fin).is_ok() {
        // Left over from a run that was killed after this step and resumed from an earlier one
        // (or damaged): move it aside, put the new one in place, then delete the old one.
        let aside = root.join(format!("{OLD_PREFIX}{unique}"));
        std::fs::rename(&fin, &aside).map_err(|e| Error::io(&fin, e))?;
        if let Err(e) = std::fs::rename(&tmp, &fin) {
            let _ = std::fs::rename(&aside, &fin);
            return Err(Error::io(&fin, e));
        }
        guard.0 = None;
        sync_dir(root).map_err(|e| Error::io(root, e))?;
        let _ = std::fs::remove_dir_all(&aside);
    } else {
        std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
        guard.0 = None;
        sync_dir(root).map_err(|e| Error::io(root, e))?;
    }
    let name = format!("step-{:08}", meta.step);
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    recover_and_clean(root);
    prune(root, meta.step, keep);
    Ok(fin)
}

/// A checkpoint folder name: `step-N` or `.old-step-N-…` (one being replaced when a crash hit).
fn folder_step(name: &str) -> Option<(u64, bool)> {
    if let Some(rest) = name.strip_prefix("step-") {
        return rest.parse().ok().map(|s| (s, false));
    }
    let rest = name.strip_prefix(OLD_PREFIX)?;
    rest.split('-').next()?.parse().ok().map(|s| (s, true))
}

/// Every checkpoint folder under `root` with its step, newest first (`step-N` before an
/// `.old-step-N-…` of the same step).
fn list_folders(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, bool, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            folder_step(&name).map(|(s, old)| (s, old, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    found.into_iter().map(|(s, _, p)| (s, p)).collect()
}

/// Removes temporary folders of interrupted saves; an `.old-step-N-…` folder (a save was killed
/// between moving the old copy aside and putting the new one in place) is renamed back to
/// `step-N` if that name is free, and removed if `step-N` exists.
fn recover_and_clean(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if let Some((step, true)) = folder_step(&name) {
            let target = step_dir(root, step);
            if std::fs::symlink_metadata(&target).is_ok() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::rename(e.path(), &target);
            }
        }
    }
}

/// Deletes verified checkpoints older than the `keep - 1` newest verified ones before `current`.
fn prune(root: &Path, current: u64, keep: usize) {
    let mut kept = 1usize; // `current`, just written
    for (step, dir) in list_folders(root) {
        if step >= current {
            continue;
        }
        if read_meta(&dir).is_err() {
            continue; // damaged: not counted, not deleted
        }
        if kept < keep.max(1) {
            kept += 1;
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Reads and verifies one checkpoint folder (both checksums, then every tensor).
pub fn load_dir(dir: &Path) -> Result<Checkpoint> {
    let meta = verify_dir(dir)?;
    let file = SafetensorsFile::open(dir.join(STATE))?;
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

/// What [`scan`] found.
#[derive(Debug)]
pub struct Scan {
    /// The newest checkpoint that verifies.
    pub checkpoint: Option<Checkpoint>,
    /// Folders newer than it (or all, without one) that were rejected, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
}

/// Looks for the newest verified checkpoint under `root`: every `step-*` folder (and the
/// `.old-step-*` copy of an interrupted replacement) from the newest step down.
pub fn scan(root: &Path) -> Scan {
    let mut rejected = Vec::new();
    for (_, dir) in list_folders(root) {
        match load_dir(&dir) {
            Ok(c) => {
                return Scan {
                    checkpoint: Some(c),
                    rejected,
                }
            }
            Err(e) => rejected.push((dir, e.to_string())),
        }
    }
    Scan {
        checkpoint: None,
        rejected,
    }
}

/// The newest verified checkpoint under `root` (see [`scan`]); `None` if there is none.
pub fn load_latest(root: &Path) -> Option<Checkpoint> {
    scan(root).checkpoint
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
