//! The training loop behind the `glm-train` CLI: data preparation, the step loop with metrics,
//! validation, checkpoints and resume.
//!
//! (Over 400 lines: the training loop: schedule, steps, evaluation, metrics, checkpoints and resume, in the order they happen.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use glm_core::parallel::{NodeGroup, NodeSpec};
use glm_core::vocab::VocabMap;
use glm_core::{GlmConfig, GlmModel};
use glm_tokenizer::{Tokenizer, TokenizerOptions};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::checkpoint::{self, CheckpointMeta, CorpusInfo};
use crate::config::{Precision, TrainConfig, Vocabulary};
use crate::data::{
    prepare_corpus, read_instructions, split_documents, DataStream, StreamConfig, TokenStore,
};
use crate::error::{Error, Result};
use crate::init::deepnorm_model;
use crate::schedule::LossScaler;
use crate::step::{eval_loss, ForwardConfig, StepReport, TrainState};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// 1-based step.
    pub step: u64,
    /// Mean training loss over the step's target tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping (`null` on overflow).
    pub grad_norm: Option<f64>,
    /// Loss scale the step ran with.
    pub loss_scale: f64,
    /// Whether the update was skipped (gradient overflow).
    pub skipped: bool,
    /// Steps skipped so far.
    pub skipped_total: u64,
    /// Non-padding tokens per second.
    pub tokens_per_s: f64,
    /// Target tokens of the step.
    pub targets: usize,
    /// Validation loss, on validation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation perplexity `exp(val_loss)`, on validation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    /// Wall seconds since the previous line of this run segment (the step, its validation and
    /// the checkpoint written after the previous step); absent in files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
}

/// Training wall time recorded in `metrics` (the sum of [`MetricsLine::wall_s`]).
pub fn train_seconds(metrics: &[MetricsLine]) -> f64 {
    metrics.iter().filter_map(|m| m.wall_s).sum()
}

/// Reads `metrics.jsonl` (complete, parseable lines only).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(complete_lines(&text)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    // A last line without '\n' was torn by a kill.
    let end = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    text[..end].lines()
}

/// Loads the tokenizer of a config (GLM-130B layout), if one is named.
pub fn load_tokenizer(config: &TrainConfig) -> Result<Option<Tokenizer>> {
    match &config.data.tokenizer {
        Some(p) => Ok(Some(Tokenizer::from_file(p, TokenizerOptions::glm130b())?)),
        None => Ok(None),
    }
}

/// A training run.
pub struct Trainer<B: AutodiffBackend> {
    /// The configuration.
    pub config: TrainConfig,
    /// Output folder.
    pub out: PathBuf,
    /// Model + optimizer + loss scaler.
    pub state: TrainState<B>,
    /// Training data.
    pub stream: DataStream,
    /// Fixed validation batches.
    pub validation: Vec<Batch>,
    /// Steps completed.
    pub step: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// The data-parallel replicas' devices (`config.data_parallel` of them); the first holds the
    /// master weights and the optimizer state.
    pub devices: Vec<B::Device>,
    /// The corpus being trained on (recorded in checkpoints, checked on resume).
    pub corpus: CorpusInfo,
    /// The model's config: `config.model`, or with a compact vocabulary its renumbered version.
    pub model_config: GlmConfig,
    /// The compact vocabulary's map (`None` with the full vocabulary).
    pub vocab_map: Option<VocabMap>,
    /// The tokenized corpus, in the model's ids.
    pub documents: Arc<TokenStore>,
    /// Indices of the training documents in [`Trainer::documents`].
    pub train_docs: Vec<u32>,
    /// Indices of the held-out (validation) documents in [`Trainer::documents`].
    pub validation_docs: Vec<u32>,
    /// The multi-node job this trainer is a node of (`None`: a single-process run). Every node
    /// trains the same model on its share of each step; only node 0 writes metrics, checkpoints,
    /// the plot and the final model.
    pub nodes: Option<NodeGroup<B::InnerBackend>>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Prepares data and model; with `resume`, continues from the newest valid checkpoint in
    /// `out/checkpoints` — if there is none, [`Error::NothingToResume`] lists every folder found
    /// and why it was rejected, and nothing in `out` is changed. Without `resume` an `out` that
    /// already holds a run is an error. With `config.data_parallel` = n > 1, the n replicas all run on
    /// `device` (several CPU workers); see [`Trainer::new_data_parallel`] for several devices.
    pub fn new(config: TrainConfig, out: &Path, device: &B::Device, resume: bool) -> Result<Self> {
        let devices = vec![device.clone(); config.data_parallel.max(1)];
        Self::new_data_parallel(config, out, &devices, resume)
    }

    /// Like [`Trainer::new`] with one data-parallel replica per entry of `devices` (which must
    /// hold `config.data_parallel` devices, or one to run every replica on it). The model, the
    /// master weights and the optimizer live on `devices[0]`; gradients are summed across replicas
    /// by burn-collective's all-reduce.
    pub fn new_data_parallel(
        config: TrainConfig,
        out: &Path,
        devices: &[B::Device],
        resume: bool,
    ) -> Result<Self> {
        Self::new_on_nodes(config, out, devices, resume, None)
    }

    /// Like [`Trainer::new_data_parallel`], as node `spec.rank` of a multi-node job when `spec`
    /// is given: every node runs `config.data_parallel` local replicas on `devices`, and one
    /// step is `grad_accumulation × data_parallel × nodes` micro-batches, split over the nodes'
    /// replicas as a single-process run with `data_parallel × nodes` replicas splits them.
    ///
    /// Every node passes the same `out` (a shared folder, or the same copy of it): node 0 alone
    /// writes there; with `resume` every node reads the newest valid checkpoint, and joining
    /// fails with [`glm_core::Error::MultiNode`] unless all nodes resumed the same one with the
    /// same configuration and corpus.
    pub fn new_on_nodes(
        config: TrainConfig,
        out: &Path,
        devices: &[B::Device],
        resume: bool,
        spec: Option<NodeSpec>,
    ) -> Result<Self> {
        config.validate()?;
        let writer = spec.as_ref().is_none_or(|s| s.rank == 0);
        let devices: Vec<B::Device> = match devices {
            [] => return Err(Error::config("data_parallel", "no device given")),
            [one] => vec![one.clone(); config.data_parallel],
            many if many.len() == config.data_parallel => many.to_vec(),
            many => {
                return Err(Error::config(
                    "data_parallel",
                    format!(
                        "{} devices given for data_parallel = {}",
                        many.len(),
                        config.data_parallel
                    ),
                ))
            }
        };
        let device = &devices[0];
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let metrics = out.join("metrics.jsonl");
        let ckpt_root = out.join("checkpoints");
        if writer && !resume && (metrics.exists() || ckpt_root.exists()) {
            return Err(Error::config(
                "--out",
                format!(
                    "{} already holds a run: pass --resume or choose another folder",
                    out.display()
                ),
            ));
        }
        let tokenizer = load_tokenizer(&config)?;
        let tokenize = tokenizer
            .as_ref()
            .map(|t| move |s: &str| -> Result<Vec<u32>> { Ok(t.encode(s)) });
        let tokenize_ref: Option<crate::data::TokenizeFn<'_>> = tokenize
            .as_ref()
            .map(|f| f as &(dyn Fn(&str) -> Result<Vec<u32>> + Sync));
        let tag = match (&config.data.tokenizer, &tokenizer) {
            (Some(p), Some(t)) => format!("{}:{}", p.display(), t.vocab_size()),
            _ => "pre-tokenized".to_string(),
        };
        let cache = config
            .data
            .cache_dir
            .clone()
            .unwrap_or_else(|| out.join("cache"));
        let store = prepare_corpus(&config.data.train, tokenize_ref, &tag, &cache)?;
        let mip = match &config.data.mip {
            Some(p) => read_instructions(p, tokenize_ref)?,
            None => Vec::new(),
        };
        check_vocab(&store, config.model.vocab_size)?;
        if let Some(bad) = mip
            .iter()
            .flat_map(|i| i.prompt.iter().chain(&i.target))
            .find(|&&t| t as usize >= config.model.vocab_size)
        {
            return Err(Error::Data(format!(
                "MIP token id {bad} is outside the vocabulary"
            )));
        }
        let (store, mip, model_config, vocab_map) = match config.vocabulary {
            Vocabulary::Full => (store, mip, config.model.clone(), None),
            Vocabulary::Compact => {
                let unknown = tokenizer.as_ref().and_then(|t| t.unk_id());
                compact_data(&config.model, store, mip, unknown)?
            }
        };
        let store = Arc::new(store);
        let corpus = CorpusInfo {
            documents: store.len() as u64,
            tokens: store.num_tokens(),
            fingerprint: store.fingerprint(),
            instructions: mip.len() as u64,
            vocab_map: vocab_map.as_ref().map(VocabMap::fingerprint),
        };
        let (train_docs, val_docs) =
            split_documents(store.len(), config.data.validation_fraction, config.seed);
        let stream_config = |seed| StreamConfig {
            seq_len: config.seq_len,
            objective: config.objective.clone(),
            specials: model_config.special_tokens,
            seed,
            min_segment: 8,
        };
        let stream = DataStream::new(
            store.clone(),
            train_docs.clone(),
            Arc::new(mip),
            stream_config(config.seed),
        )?;
        let validation = if val_docs.is_empty() || config.validate_every == 0 {
            Vec::new()
        } else {
            let mut v = DataStream::new(
                store.clone(),
                val_docs.clone(),
                Arc::new(Vec::new()),
                stream_config(config.seed ^ 0x7A11),
            )?;
            (0..config.validation_batches.max(1))
                .map(|_| v.next_batch(config.batch_size))
                .collect()
        };
        let model = deepnorm_model::<B>(
            &model_config,
            &config.init,
            config.seed,
            config.precision.dtype(),
            device,
        )?;
        let scaler = match config.precision {
            Precision::F32 => LossScaler::fixed(),
            _ => LossScaler::dynamic(config.loss_scale.clone()),
        };
        let state = TrainState::new(
            model,
            config.precision.dtype(),
            config.optimizer.clone(),
            scaler,
        );
        let mut trainer = Self {
            config,
            out: out.to_path_buf(),
            state,
            stream,
            validation,
            step: 0,
            progress: false,
            devices,
            corpus,
            model_config,
            vocab_map,
            documents: store,
            train_docs,
            validation_docs: val_docs,
            nodes: None,
        };
        let resumed = if resume {
            trainer.resume(writer)?
        } else {
            if writer {
                std::fs::File::create(&metrics).map_err(|e| Error::io(&metrics, e))?;
            }
            String::new()
        };
        if let Some(spec) = spec {
            // What every node must agree on: the run and where it starts.
            let agreement = glm_core::parallel::nodes::agreement(
                format!(
                    "{}|{}|{}|{resumed}",
                    trainer.config.fingerprint(),
                    trainer.corpus.fingerprint,
                    trainer.step
                )
                .as_bytes(),
            );
            trainer.nodes = Some(NodeGroup::join(spec, &trainer.devices, agreement)?);
        }
        Ok(trainer)
    }

    /// Whether this process writes the run's files (a single-process run, or node 0).
    pub fn is_writer(&self) -> bool {
        self.nodes.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Restores the newest valid checkpoint; returns its checksum. Only the `writer` trims
    /// `metrics.jsonl` to it.
    fn resume(&mut self, writer: bool) -> Result<String> {
        let root = self.out.join("checkpoints");
        let metrics = self.out.join("metrics.jsonl");
        let scan = checkpoint::scan(&root);
        let Some(ckpt) = scan.checkpoint else {
            return Err(Error::NothingToResume {
                root,
                found: scan.rejected,
            });
        };
        if ckpt.meta.fingerprint != self.config.fingerprint() {
            return Err(Error::Checkpoint {
                path: ckpt.path.clone(),
                reason: "written by a run with a different configuration".into(),
            });
        }
        if let Some(reason) = ckpt.meta.corpus.difference(&self.corpus) {
            return Err(Error::CorpusChanged {
                path: ckpt.path.clone(),
                reason,
            });
        }
        // Everything that can fail is checked before `metrics.jsonl` is touched.
        let kept = metrics_up_to(&metrics, ckpt.meta.step)?;
        let inner = match self.state.optim.master.first() {
            Some(t) => t.device(),
            None => return Err(Error::Data("the model has no parameters".into())),
        };
        ckpt.restore_optim(&mut self.state.optim, &inner)?;
        self.stream
            .restore(ckpt.meta.data.clone())
            .map_err(|e| Error::CorpusChanged {
                path: ckpt.path.clone(),
                reason: e.to_string(),
            })?;
        self.state.sync_model();
        self.state.scaler = ckpt.meta.scaler.clone();
        self.step = ckpt.meta.step;
        // History after the checkpoint is dropped (those steps are recomputed) together with a
        // line torn by a kill; the old file stays until the new one is complete.
        if let (true, Some(text)) = (writer, kept) {
            glm_core::weights::write_atomic(&metrics, text.as_bytes())?;
        }
        Ok(ckpt.meta.checksum.clone())
    }

    /// The forward settings of training steps.
    pub fn forward_config(&self) -> ForwardConfig {
        ForwardConfig {
            shrink_alpha: self.config.embedding_shrink,
            hidden_dropout: self.config.dropout.hidden,
            attention_dropout: self.config.dropout.attention,
        }
    }

    /// Runs one optimizer step (does not write metrics or checkpoints).
    pub fn train_step(&mut self) -> Result<(StepReport, usize)> {
        let nodes = self.nodes.as_ref().map_or(1, |g| g.nodes() as usize);
        let micro = self.config.grad_accumulation * self.config.data_parallel * nodes;
        let batches: Vec<Batch> = (0..micro)
            .map(|_| self.stream.next_batch(self.config.batch_size))
            .collect();
        let tokens: usize = batches.iter().map(|b| b.num_tokens(true)).sum();
        let lr = self
            .config
            .schedule
            .lr(self.state.optim.updates, self.config.steps);
        let grads = match &self.nodes {
            None => self
                .state
                .grads(&batches, &self.forward_config(), &self.devices)?,
            Some(group) => {
                self.state
                    .grads_on_nodes(&batches, &self.forward_config(), &self.devices, group)?
            }
        };
        Ok((self.state.apply(grads, lr), tokens))
    }

    /// Validation loss of the current model (`None` without validation data).
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        eval_loss(&self.state.model.valid(), &self.validation)
    }

    /// Trains until `config.steps`, appending to `metrics.jsonl` and checkpointing (node 0 of a
    /// multi-node job; the other nodes only train). A multi-node run leaves its job at the end.
    pub fn run(&mut self) -> Result<Vec<MetricsLine>> {
        let writer = self.is_writer();
        let metrics_path = self.out.join("metrics.jsonl");
        let mut file = if writer {
            Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&metrics_path)
                    .map_err(|e| Error::io(&metrics_path, e))?,
            )
        } else {
            None
        };
        let total = self.config.steps;
        let bar = if self.progress && writer {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(self.step);
            Some(b)
        } else {
            None
        };
        let mut lines = Vec::new();
        let mut mark = Instant::now();
        while self.step < total {
            let start = Instant::now();
            let (report, tokens) = self.train_step()?;
            self.step += 1;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let validate = writer
                && self.config.validate_every > 0
                && (self.step.is_multiple_of(self.config.validate_every) || self.step == total);
            let val_loss = if validate {
                self.validation_loss()?
            } else {
                None
            };
            let line = MetricsLine {
                step: self.step,
                loss: report.loss,
                lr: report.lr,
                grad_norm: report.grad_norm.is_finite().then_some(report.grad_norm),
                loss_scale: report.loss_scale,
                skipped: report.skipped,
                skipped_total: self.state.scaler.skipped,
                tokens_per_s: tokens as f64 / secs,
                targets: report.targets,
                val_loss,
                val_ppl: val_loss.map(f64::exp),
                wall_s: Some(mark.elapsed().as_secs_f64()),
            };
            mark = Instant::now();
            let json = serde_json::to_string(&line).map_err(|e| Error::Data(e.to_string()))?;
            if let Some(file) = file.as_mut() {
                file.write_all(format!("{json}\n").as_bytes())
                    .map_err(|e| Error::io(&metrics_path, e))?;
            }
            if let Some(b) = &bar {
                let val = val_loss.map(|v| format!(" val {v:.3}")).unwrap_or_default();
                b.set_message(format!(
                    "loss {:.4}{val} {:.0} tok/s",
                    report.loss, line.tokens_per_s
                ));
                b.inc(1);
            }
            let every = self.config.checkpoint_every;
            if writer && ((every > 0 && self.step.is_multiple_of(every)) || self.step == total) {
                self.save_checkpoint()?;
            }
            lines.push(line);
        }
        if let Some(b) = bar {
            b.finish();
        }
        if writer {
            self.export()?;
        }
        if let Some(group) = self.nodes.take() {
            group.finish()?;
        }
        Ok(lines)
    }

    /// Writes a checkpoint of the current state, then the training plot
    /// (`OUT/`[`PLOT_FILE`](crate::plot::PLOT_FILE)) from `OUT/metrics.jsonl`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let saved = self.save_checkpoint_only()?;
        self.write_plot()?;
        Ok(saved)
    }

    /// Redraws `OUT/`[`PLOT_FILE`](crate::plot::PLOT_FILE) from `OUT/metrics.jsonl` (nothing
    /// when no step has been logged yet).
    pub fn write_plot(&self) -> Result<()> {
        let metrics_path = self.out.join("metrics.jsonl");
        if !metrics_path.is_file() {
            return Ok(());
        }
        let metrics = read_metrics(&metrics_path)?;
        if metrics.is_empty() {
            return Ok(());
        }
        crate::plot::write_plot(&metrics, &self.out.join(crate::plot::PLOT_FILE))
    }

    fn save_checkpoint_only(&self) -> Result<PathBuf> {
        let meta = CheckpointMeta {
            step: self.step,
            updates: self.state.optim.updates,
            scaler: self.state.scaler.clone(),
            data: self.stream.state().clone(),
            fingerprint: self.config.fingerprint(),
            corpus: self.corpus.clone(),
            state_bytes: 0,
            state_checksum: String::new(),
            params: Vec::new(),
            checksum: String::new(),
        };
        checkpoint::save(
            &self.out.join("checkpoints"),
            meta,
            &self.state.optim,
            self.config.keep_checkpoints,
        )
    }

    /// Writes `OUT/model.safetensors` (f32, original names) and `OUT/config.json` (the model's
    /// own config: with a compact vocabulary its renumbered one, and `OUT/vocab_map.json` beside
    /// it — written first, so a `config.json` never names a map that is not there yet).
    pub fn export(&self) -> Result<()> {
        let model: GlmModel<B::InnerBackend> = self.state.master_model();
        match &self.vocab_map {
            Some(map) => {
                map.save_beside(&self.out)?;
            }
            None => {
                let stale = self.out.join(glm_core::vocab::VOCAB_MAP_FILE);
                if stale.exists() {
                    std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
                }
            }
        }
        model.save_safetensors(self.out.join("model.safetensors"), burn::tensor::DType::F32)?;
        self.model_config.save(self.out.join("config.json"))?;
        Ok(())
    }
}

/// The lines of `metrics.jsonl` up to `step` (a torn last line dropped): `Some(text)` if that
/// differs from the file, `None` if the file is already exactly that. A complete line that is not
/// a metrics record is an error naming the line (never silently dropped).
fn metrics_up_to(path: &Path, step: u64) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(String::new())),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    for (i, line) in complete_lines(&text).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: MetricsLine = serde_json::from_str(line).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        if m.step <= step {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    Ok((kept != text).then_some(kept))
}

/// The data of a compact-vocabulary run: the map (every id of the corpus and the MIP pairs, the
/// special tokens, `unknown`), the corpus renumbered into a store beside the original one (reused
/// when present), the MIP pairs renumbered and the model config with the compact vocabulary.
fn compact_data(
    outer: &GlmConfig,
    store: TokenStore,
    mut mip: Vec<crate::data::Instruction>,
    unknown: Option<u32>,
) -> Result<(
    TokenStore,
    Vec<crate::data::Instruction>,
    GlmConfig,
    Option<VocabMap>,
)> {
    let mut seen = vec![false; outer.vocab_size];
    let docs = (0..store.len()).flat_map(|d| store.doc(d).iter());
    let pairs = mip.iter().flat_map(|i| i.prompt.iter().chain(&i.target));
    for &t in docs.chain(pairs) {
        // Every id was checked against the outer vocabulary before.
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    let kept = seen
        .iter()
        .enumerate()
        .filter(|(_, &s)| s)
        .filter_map(|(i, _)| u32::try_from(i).ok());
    let map = VocabMap::for_config(outer, kept, unknown)?;
    let model_config = map.compact_config(outer)?;
    let inner = |ids: &[u32]| -> Result<Vec<u32>> { Ok(map.ids_to_inner(ids)?) };
    for i in &mut mip {
        i.prompt = inner(&i.prompt)?;
        i.target = inner(&i.target)?;
    }
    let mut prefix = store.path().as_os_str().to_owned();
    prefix.push(format!("-compact-{}", map.fingerprint()));
    let prefix = PathBuf::from(prefix);
    let compact = match TokenStore::exists(&prefix)
        .then(|| TokenStore::open(&prefix).ok())
        .flatten()
        .filter(|c| c.len() == store.len() && c.num_tokens() == store.num_tokens())
    {
        Some(c) => c,
        None => {
            let docs = (0..store.len())
                .map(|d| inner(store.doc(d)))
                .collect::<Result<Vec<_>>>()?;
            TokenStore::write(&prefix, &docs)?
        }
    };
    Ok((compact, mip, model_config, Some(map)))
}

fn check_vocab(store: &TokenStore, vocab: usize) -> Result<()> {
    for d in 0..store.len() {
        if let Some(&t) = store.doc(d).iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Data(format!(
                "token id {t} of document {d} is outside the model's vocabulary ({vocab})"
            )));
        }
    }
    Ok(())
}
