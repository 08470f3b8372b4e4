//! The JSON configuration of a training run (`glm-train --config FILE`).
//!
//! Relative paths are resolved against the current directory first, then against the folder of
//! the config file, then against the workspace root.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use glm_core::GlmConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init::InitConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::AdamWConfig;
use crate::schedule::{LossScaleConfig, LrSchedule};

/// Float format of the forward/backward pass (master weights and optimizer state are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (loss scale fixed at 1).
    #[default]
    F32,
    /// f16 activations and weights, dynamic loss scaling.
    F16,
    /// bf16 activations and weights (loss scaling kept dynamic as well).
    Bf16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// Which token ids the model's embedding and LM head have rows for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Vocabulary {
    /// Every id of the model config's `vocab_size` (GLM-130B's layout; the default).
    #[default]
    Full,
    /// Only the ids found in the training data (corpus and MIP pairs), the special tokens and the
    /// tokenizer's `<unk>`: the model's `vocab_size` becomes their count and its ids are indices
    /// into them. The map is saved as `vocab_map.json` beside the exported `config.json`
    /// ([`glm_core::vocab::VocabMap`]); glm-infer translates through it, so prompts and outputs
    /// keep the tokenizer's ids.
    Compact,
}

impl Vocabulary {
    fn is_full(&self) -> bool {
        *self == Vocabulary::Full
    }
}

/// Where the data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Corpus files: `.txt` (documents separated by blank lines) or `.jsonl` (`text` or `ids`).
    pub train: Vec<PathBuf>,
    /// Optional JSONL instruction pairs (`prompt`/`target` or `prompt_ids`/`target_ids`) for MIP.
    pub mip: Option<PathBuf>,
    /// SentencePiece `ice_text.model` (GLM-130B layout); required for text sources.
    pub tokenizer: Option<PathBuf>,
    /// Fraction of documents held out for validation.
    pub validation_fraction: f64,
    /// Where tokenized corpora are cached (default `OUT/cache`).
    pub cache_dir: Option<PathBuf>,
}

/// Dropout probabilities (spec §8: 0.1 everywhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropoutConfig {
    /// Embedding, attention-output and MLP-output dropout.
    pub hidden: f64,
    /// Attention-probability dropout.
    pub attention: f64,
}

impl Default for DropoutConfig {
    fn default() -> Self {
        Self {
            hidden: 0.1,
            attention: 0.1,
        }
    }
}

/// A complete training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model hyper-parameters (SAT names, as `config.json`).
    pub model: GlmConfig,
    /// Data sources.
    pub data: DataConfig,
    /// Objective mixture.
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// AdamW and clipping.
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Loss scaling (used with f16 / bf16).
    #[serde(default)]
    pub loss_scale: LossScaleConfig,
    /// Dropout.
    #[serde(default)]
    pub dropout: DropoutConfig,
    /// Initialisation.
    #[serde(default)]
    pub init: InitConfig,
    /// Embedding gradient shrink α (0.1; 1 = off).
    #[serde(default = "default_shrink")]
    pub embedding_shrink: f64,
    /// Sequence length.
    pub seq_len: usize,
    /// Sequences per micro-batch (per data-parallel worker).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step per worker.
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    /// Data-parallel workers (each a thread with its own model copy; gradients all-reduced).
    #[serde(default = "one")]
    pub data_parallel: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Seed of initialisation, data order, objective and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Compute precision.
    #[serde(default)]
    pub precision: Precision,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Validation every N steps (0 = never).
    #[serde(default)]
    pub validate_every: u64,
    /// Validation batches (of `batch_size` sequences).
    #[serde(default = "two")]
    pub validation_batches: usize,
    /// Full or compact vocabulary (`"full"` by default; `"compact"` for small experiments).
    #[serde(default, skip_serializing_if = "Vocabulary::is_full")]
    pub vocabulary: Vocabulary,
}

/// Most sequences per micro-batch ([`TrainConfig::batch_size`]).
pub const MAX_BATCH_SIZE: usize = 1 << 16;
/// Most micro-batches accumulated per step ([`TrainConfig::grad_accumulation`]).
pub const MAX_GRAD_ACCUMULATION: usize = 1 << 16;
/// Most data-parallel replicas ([`TrainConfig::data_parallel`]).
pub const MAX_DATA_PARALLEL: usize = 1 << 12;
/// Most validation batches ([`TrainConfig::validation_batches`]).
pub const MAX_VALIDATION_BATCHES: usize = 1 << 16;
/// Most checkpoints kept ([`TrainConfig::keep_checkpoints`]).
pub const MAX_KEEP_CHECKPOINTS: usize = 1 << 16;
/// Most bytes of host memory the batches of one optimizer step (tokens, targets, the `L x L`
/// attention masks) or the fixed validation batches may take: 16 GiB.
pub const MAX_BATCH_BYTES: u64 = 16 << 30;

/// Host bytes of `batches` batches of `batch` sequences of `seq` rows: per sequence an `L x L`
/// boolean mask plus tokens, positions and targets (`u32`), the loss mask and a dropout seed.
/// `None` on overflow.
fn batch_bytes(batches: usize, batch: usize, seq: usize) -> Option<u64> {
    let seq = seq as u64;
    let per_seq = seq
        .checked_mul(seq)?
        .checked_add(seq.checked_mul(13)?)?
        .checked_add(8)?;
    per_seq
        .checked_mul(batch as u64)?
        .checked_mul(batches as u64)
}

fn default_shrink() -> f64 {
    0.1
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}

/// Resolves `path`: as given if absolute or existing from the current directory, else relative
/// to `base` (the config's folder), else relative to the workspace root.
pub fn resolve(path: &Path, base: Option<&Path>) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    if let Some(b) = base.filter(|b| b.join(path).exists()) {
        return b.join(path);
    }
    let root = glm_core::data_dir::workspace_root();
    if root.join(path).exists() {
        return root.join(path);
    }
    path.to_path_buf()
}

impl TrainConfig {
    /// Reads and validates a JSON config; relative data paths are resolved (see module docs).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config: Self = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent();
        config.data.train = config.data.train.iter().map(|p| resolve(p, base)).collect();
        config.data.mip = config.data.mip.as_deref().map(|p| resolve(p, base));
        config.data.tokenizer = config.data.tokenizer.as_deref().map(|p| resolve(p, base));
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole config.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.objective.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        if self.seq_len < 8 || self.seq_len > self.model.max_sequence_length {
            return Err(Error::config(
                "seq_len",
                format!(
                    "must be in [8, max_sequence_length = {}]",
                    self.model.max_sequence_length
                ),
            ));
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 || self.data_parallel == 0 {
            return Err(Error::config(
                "batch_size",
                "batch_size, grad_accumulation and data_parallel must be positive",
            ));
        }
        if self.steps == 0 {
            return Err(Error::config("steps", "must be positive"));
        }
        if !(self.embedding_shrink > 0.0 && self.embedding_shrink <= 1.0) {
            return Err(Error::config("embedding_shrink", "must be in (0, 1]"));
        }
        for (f, p) in [
            ("dropout.hidden", self.dropout.hidden),
            ("dropout.attention", self.dropout.attention),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(f, "must be in [0, 1)"));
            }
        }
        if !(0.0..1.0).contains(&self.data.validation_fraction) {
            return Err(Error::config(
                "data.validation_fraction",
                "must be in [0, 1)",
            ));
        }
        if self.data.train.is_empty() {
            return Err(Error::config(
                "data.train",
                "at least one corpus file is needed",
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(Error::config("keep_checkpoints", "must be at least 1"));
        }
        for (field, value, max) in [
            ("batch_size", self.batch_size, MAX_BATCH_SIZE),
            (
                "grad_accumulation",
                self.grad_accumulation,
                MAX_GRAD_ACCUMULATION,
            ),
            ("data_parallel", self.data_parallel, MAX_DATA_PARALLEL),
            (
                "validation_batches",
                self.validation_batches,
                MAX_VALIDATION_BATCHES,
            ),
            (
                "keep_checkpoints",
                self.keep_checkpoints,
                MAX_KEEP_CHECKPOINTS,
            ),
        ] {
            if value > max {
                return Err(Error::config(
                    field,
                    format!("{value} is above the limit {max}"),
                ));
            }
        }
        // The host memory of one step's micro-batches and of the validation set.
        let micro = self.grad_accumulation * self.data_parallel; // both bounded above
        for (field, batches) in [
            ("batch_size", micro),
            ("validation_batches", self.validation_batches.max(1)),
        ] {
            match batch_bytes(batches, self.batch_size, self.seq_len) {
                Some(b) if b <= MAX_BATCH_BYTES => {}
                found => {
                    return Err(Error::config(
                        field,
                        format!(
                            "{batches} batches of {} sequences of {} tokens need {} bytes of \
                             host memory (attention masks included), more than the limit \
                             {MAX_BATCH_BYTES}",
                            self.batch_size,
                            self.seq_len,
                            found.map_or_else(|| "over 2^64".to_string(), |b| b.to_string())
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Fingerprint of everything that must not change across a resume (all but `steps` and
    /// intervals), for checkpoint compatibility checks.
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.steps = 0;
        c.checkpoint_every = 0;
        c.keep_checkpoints = 1;
        c.validate_every = 0;
        c.validation_batches = 0;
        c.data.cache_dir = None;
        let json = serde_json::to_string(&c).unwrap_or_default();
        format!(
            "{:016x}",
            crate::data::fnv1a(json.as_bytes(), 0xcbf2_9ce4_8422_2325)
        )
    }
}
