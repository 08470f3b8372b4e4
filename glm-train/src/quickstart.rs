//! The laptop quickstart: train a small GLM on the bundled bilingual corpus with the synthetic
//! tokenizer, on the CPU, in minutes, and hand back the model and tokenizer (glm-infer fills
//! `[MASK]` / `[gMASK]` prompts with them).

use std::path::Path;
use std::sync::Arc;

use glm_core::vocab::VocabMap;
use glm_core::GlmModel;
use glm_tokenizer::Tokenizer;

use crate::config::TrainConfig;
use crate::data::TokenStore;
use crate::error::{Error, Result};
use crate::trainer::{load_tokenizer, read_metrics, train_seconds, MetricsLine, Trainer};

/// What [`quickstart`] returns.
#[cfg(feature = "flex")]
pub struct Quickstart {
    /// The trained model (f32, CPU backend).
    pub model: GlmModel<burn::backend::Flex>,
    /// The tokenizer the corpus was encoded with.
    pub tokenizer: Tokenizer,
    /// Metrics of the steps run by this call (empty if the run in `out` was already complete).
    pub metrics: Vec<MetricsLine>,
    /// The compact vocabulary's map (`None` with the full vocabulary): the model's ids are
    /// indices into it, the tokenizer's ids its values.
    pub vocab_map: Option<VocabMap>,
    /// The tokenized corpus, in the model's ids.
    pub documents: Arc<TokenStore>,
    /// Indices of the documents trained on.
    pub train_docs: Vec<u32>,
    /// Indices of the held-out documents (validation).
    pub validation_docs: Vec<u32>,
    /// Validation loss of the final model (`None` without validation documents).
    pub val_loss: Option<f64>,
    /// Training wall time of the whole run (all its segments) recorded in `metrics.jsonl`.
    pub train_seconds: f64,
}

/// Trains (or finishes / reloads a finished run in `out`) with the config at `config`
/// (`examples/configs/quickstart.json`) on the CPU and returns the model.
#[cfg(feature = "flex")]
pub fn quickstart(config: &Path, out: &Path, progress: bool) -> Result<Quickstart> {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    let config = TrainConfig::from_file(config)?;
    let tokenizer = load_tokenizer(&config)?
        .ok_or_else(|| Error::config("data.tokenizer", "the quickstart needs a tokenizer"))?;
    let device = Default::default();
    // Continue a run that wrote a checkpoint. A demo run stopped before its first checkpoint has
    // nothing to continue from: its metrics are kept aside (renamed, never deleted) and the
    // quickstart starts over, instead of refusing the folder as `glm-train` does.
    let resume = out.join("checkpoints").exists();
    let metrics_path = out.join("metrics.jsonl");
    if !resume && metrics_path.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let aside = out.join(format!("metrics.jsonl.interrupted-{stamp}"));
        std::fs::rename(&metrics_path, &aside).map_err(|e| Error::io(&metrics_path, e))?;
        eprintln!(
            "quickstart: the earlier run in {} stopped before its first checkpoint; its metrics \
             are kept as {} and training starts over",
            out.display(),
            aside.display()
        );
    }
    let mut trainer = Trainer::<B>::new(config, out, &device, resume)?;
    trainer.progress = progress;
    let metrics = trainer.run()?;
    let val_loss = trainer.validation_loss()?;
    let train_seconds = train_seconds(&read_metrics(&metrics_path)?);
    Ok(Quickstart {
        model: trainer.state.master_model(),
        tokenizer,
        metrics,
        vocab_map: trainer.vocab_map.clone(),
        documents: trainer.documents.clone(),
        train_docs: trainer.train_docs.clone(),
        validation_docs: trainer.validation_docs.clone(),
        val_loss,
        train_seconds,
    })
}
