//! Running tasks end to end as `evaluate.py main()` + `BaseTask.evaluate()`: parse every task file
//! first, then per task, per file group, per data file: build the dataset, evaluate it in
//! micro-batches, compute the metrics, print the original's report lines and collect a
//! machine-readable [`Report`].
//!
//! (Over 400 lines: the original's `evaluate.py` + `BaseTask.evaluate` flow for the three task families and their reports, one pass per file.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use glm_core::GlmModel;

use super::bias::{self, BiasItems, BiasReport};
use super::config::{Metric, TaskConfig, TaskHandler, TaskKind};
use super::data::{self, Document, TokenFields};
use super::error::{EvalError, EvalResult};
use super::files::{find_all_tasks, glob_files, relative};
use super::gen::{self, GenerationContext, LambadaBans};
use super::lm::{self, Window, WindowLayout};
use super::mc::{self, ChoiceSample};
use super::metrics;
pub use super::report::{
    ChoiceResult, DocumentResult, FileDetails, FileReport, GenerationResult, GroupReport,
    MetricStats, MetricValue, Report, TaskReport, WindowResult,
};
use crate::prompt::TextCodec;

/// Receives the report lines and the progress of a run.
pub trait Observer {
    /// One line of the original's stdout report.
    fn line(&mut self, text: &str);
    /// A task starts; `total` = samples (windows for `lm`) it will evaluate.
    fn task_started(&mut self, _config: &TaskConfig, _total: usize) {}
    /// `n` more samples done.
    fn advance(&mut self, _n: usize) {}
    /// The current task is done.
    fn task_finished(&mut self) {}
}

/// Collects the lines (tests, libraries).
#[derive(Debug, Default)]
pub struct CollectLines(pub Vec<String>);

impl Observer for CollectLines {
    fn line(&mut self, text: &str) {
        self.0.push(text.to_string());
    }
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// `--data-path`: task `path`s are relative to it.
    pub data_root: PathBuf,
    /// Keep every scored token's loss in the report (`lm`).
    pub token_losses: bool,
    /// Split every data file over the processes of a multi-node job (each scores whole
    /// micro-batches of its own, then all results are gathered): the report is the one a single
    /// process writes. `None`: this process scores everything.
    pub sharding: Option<Arc<dyn Sharding>>,
}

enum Dataset {
    Choice {
        is_single_token: bool,
        samples: Vec<ChoiceSample>,
        /// CrowS-Pairs / StereoSet: their extra fields, line by line.
        bias: Option<BiasItems>,
    },
    Generation {
        items: Vec<(usize, GenerationContext, Vec<Vec<u32>>)>,
    },
    /// Documents (token ids) only: windows are built batch by batch while scoring.
    Language {
        documents: Vec<Document>,
        layout: WindowLayout,
        num_windows: usize,
    },
}

impl Dataset {
    fn len(&self) -> usize {
        match self {
            Dataset::Choice { samples, .. } => samples.len(),
            Dataset::Generation { items } => items.len(),
            Dataset::Language { num_windows, .. } => *num_windows,
        }
    }
}

fn load_dataset(
    config: &TaskConfig,
    path: &Path,
    codec: &dyn TextCodec,
    specials: &glm_core::SpecialTokens,
    vocab_size: usize,
    max_positions: usize,
) -> EvalResult<Dataset> {
    let fields = TokenFields {
        path,
        codec,
        vocab_size,
    };
    match &config.kind {
        TaskKind::MultiChoice => {
            let items = data::read_choice_file(&fields)?;
            let samples = mc::prepare_file(
                &items,
                config.max_seq_length,
                config.choice_encoding(),
                specials,
                path,
            )?;
            let is_single_token = samples.first().is_none_or(|s| s.is_single_token);
            let bias = match config.handler {
                TaskHandler::CrowsPair => Some(BiasItems::Crows(bias::read_crows(path)?)),
                TaskHandler::StereoSet => {
                    let extra = bias::read_stereoset(path)?;
                    for (item, e) in items.iter().zip(&extra) {
                        if e.goal_label.len() < item.choices.len() {
                            return Err(EvalError::data(
                                path,
                                e.line,
                                "goal_label",
                                format!(
                                    "{} labels for {} choices",
                                    e.goal_label.len(),
                                    item.choices.len()
                                ),
                            ));
                        }
                    }
                    Some(BiasItems::Stereo(extra))
                }
                _ => None,
            };
            if let Some(b) = &bias {
                let lines: Vec<usize> = match b {
                    BiasItems::Crows(v) => v.iter().map(|x| x.line).collect(),
                    BiasItems::Stereo(v) => v.iter().map(|x| x.line).collect(),
                };
                if !lines.iter().copied().eq(items.iter().map(|i| i.line)) {
                    return Err(EvalError::Usage(format!(
                        "{}: the bias fields and the choice items were read from different lines",
                        path.display()
                    )));
                }
            }
            Ok(Dataset::Choice {
                is_single_token,
                samples,
                bias,
            })
        }
        TaskKind::Generation(g) => {
            let mut items = Vec::new();
            for item in data::read_generation_file(&fields)? {
                let text = gen::truncate_text(&item.text, config.max_seq_length, g.max_gen_length);
                let ctx = gen::build_generation_context(
                    text,
                    g.max_gen_length,
                    config.use_task_mask,
                    config.unidirectional,
                    specials,
                )
                .map_err(|m| EvalError::data(path, item.line, "inputs", m))?;
                items.push((item.line, ctx, item.targets));
            }
            Ok(Dataset::Generation { items })
        }
        TaskKind::LanguageModel(l) => {
            let documents = if config.handler == TaskHandler::Pile {
                data::read_pile_file(&fields)?
            } else {
                vec![data::read_text_document(&fields)?]
            };
            let mask_id = if config.use_task_mask {
                specials.gmask
            } else {
                specials.mask
            };
            let layout = WindowLayout::new(
                config.max_seq_length,
                l.generation_length,
                config.unidirectional,
                mask_id,
                specials.sop,
            )
            .map_err(|e| EvalError::task(&config.source, 0, "generation_length", e.to_string()))?;
            let mut num_windows = 0usize;
            for doc in &documents {
                if doc.tokens.is_empty() {
                    return Err(EvalError::Data {
                        path: path.to_path_buf(),
                        line: doc.line,
                        field: None,
                        message: "the document has no tokens".into(),
                    });
                }
                // The longest window of this document: min(L, tokens + 1) positions.
                let longest = config
                    .max_seq_length
                    .min(doc.tokens.len().saturating_add(1));
                if longest > max_positions {
                    return Err(config.field_error(
                        "max_seq_length",
                        format!(
                            "{}{}: its windows need {longest} positions, the model has max_sequence_length {max_positions}",
                            path.display(),
                            if doc.line > 0 { format!(":{}", doc.line) } else { String::new() }
                        ),
                    ));
                }
                num_windows = num_windows.saturating_add(layout.num_windows(doc.tokens.len()));
            }
            Ok(Dataset::Language {
                documents,
                layout,
                num_windows,
            })
        }
    }
}

/// Parses every task of `inputs` (files, or folders searched for `**/*.yaml`), printing the
/// original's loading lines.
pub fn load_tasks(inputs: &[PathBuf], observer: &mut dyn Observer) -> EvalResult<Vec<TaskConfig>> {
    let paths = find_all_tasks(inputs)?;
    observer.line("> Loading task configs");
    let mut tasks = Vec::new();
    for path in paths {
        let config = TaskConfig::from_file(&path)?;
        observer.line(&format!(
            "    Task {} loaded from config {}",
            config.name,
            path.display()
        ));
        for w in &config.warnings {
            observer.line(&format!("    warning: {w}"));
        }
        tasks.push(config);
    }
    let n = tasks.len();
    observer.line(&format!(
        "> Successfully load {n} task{}",
        if n > 1 { "s" } else { "" }
    ));
    Ok(tasks)
}

/// Evaluates every task (already parsed) in order.
pub fn evaluate_tasks<B: Backend>(
    model: &GlmModel<B>,
    codec: &dyn TextCodec,
    tasks: &[TaskConfig],
    options: &EvalOptions,
    observer: &mut dyn Observer,
) -> EvalResult<Report> {
    let start = Instant::now();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(evaluate_task(model, codec, task, options, observer)?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = tasks.len();
    observer.line(&format!(
        "Finish {n} task{} in {seconds:.1}s",
        if n > 1 { "s" } else { "" }
    ));
    Ok(Report {
        tasks: reports,
        seconds,
    })
}

fn stats_line(indent: &str, group: &str, stats: &[MetricStats]) -> Vec<String> {
    if let [only] = stats {
        let s = &only.stats;
        vec![format!(
            "{indent}Group {group} {}: max = {:.3}, median = {:.3}, average = {:.3}",
            only.metric, s.max, s.median, s.average
        )]
    } else {
        let mut lines = vec![format!("{indent}  Group {group}: ")];
        for m in stats {
            let s = &m.stats;
            lines.push(format!(
                "{indent}    Metric {}: max = {:.3}, median = {:.3}, average = {:.3}",
                m.metric, s.max, s.median, s.average
            ));
        }
        lines
    }
}

fn summarize(metric_names: &[Metric], files: &[&FileReport]) -> Vec<MetricStats> {
    let weights: Vec<usize> = files.iter().map(|f| f.num_samples).collect();
    metric_names
        .iter()
        .filter_map(|m| {
            let values: Vec<f64> = files
                .iter()
                .filter_map(|f| {
                    f.metrics
                        .iter()
                        .find(|v| v.metric == m.name())
                        .map(|v| v.value)
                })
                .collect();
            if values.len() != files.len() {
                return None;
            }
            metrics::group_stats(&values, &weights).map(|stats| MetricStats {
                metric: m.name().to_string(),
                stats,
            })
        })
        .collect()
}

/// Evaluates one task: every group, every file.
pub fn evaluate_task<B: Backend>(
    model: &GlmModel<B>,
    codec: &dyn TextCodec,
    config: &TaskConfig,
    options: &EvalOptions,
    observer: &mut dyn Observer,
) -> EvalResult<TaskReport> {
    let start = Instant::now();
    let specials = model.config().special_tokens;
    let vocab = model.config().vocab_size;
    let data_path = options.data_root.join(&config.path);
    let data_display = data_path.display().to_string();
    config.check_against_model(model.config().max_sequence_length)?;
    // Load every file first: data errors surface before any compute.
    let mut groups = Vec::new();
    let mut total = 0;
    for (group, pattern) in config.file_pattern.groups() {
        let mut files = Vec::new();
        for file in glob_files(&data_path, &pattern)? {
            let dataset = load_dataset(
                config,
                &file,
                codec,
                &specials,
                vocab,
                model.config().max_sequence_length,
            )?;
            total += dataset.len();
            files.push((relative(&file, &data_path), dataset));
        }
        groups.push((group, pattern, files));
    }
    observer.line("");
    observer.line("");
    observer.line(&config.python_repr(&data_display));
    observer.line(&format!("Evaluating task {}:", config.name));
    observer.task_started(config, total);
    let lambada = (config.handler == TaskHandler::Lambada).then(|| LambadaBans::new(codec, vocab));
    let mut strategy = match &config.kind {
        TaskKind::Generation(g) => Some(gen::make_strategy(g, &specials, lambada.as_ref())?),
        _ => None,
    };
    let mut group_reports = Vec::new();
    for (group, pattern, files) in groups {
        observer.line(&format!("    Evaluating group {group}:"));
        if files.is_empty() {
            observer.line(&format!(
                "        warning: no file of {} matches `{pattern}`",
                data_display
            ));
        }
        let mut file_reports = Vec::new();
        for (name, dataset) in files {
            let report = evaluate_file(
                model,
                codec,
                config,
                options,
                &name,
                dataset,
                &mut strategy,
                observer,
            )?;
            // Pile, CrowS-Pairs and StereoSet override `report_single_metrics` to print nothing.
            if !matches!(
                config.handler,
                TaskHandler::Pile | TaskHandler::CrowsPair | TaskHandler::StereoSet
            ) {
                let mut line = format!("        Finish {name}");
                for m in &report.metrics {
                    line.push_str(&format!(", {} = {:.3}", m.metric, m.value));
                }
                observer.line(&line);
            }
            file_reports.push(report);
        }
        let refs: Vec<&FileReport> = file_reports.iter().collect();
        let stats = summarize(&config.metrics, &refs);
        let bits_per_byte = if config.handler == TaskHandler::Pile {
            pile_bpb(&refs)
        } else {
            Vec::new()
        };
        group_reports.push(GroupReport {
            name: group,
            pattern,
            files: file_reports,
            stats,
            bits_per_byte,
        });
    }
    observer.line(&format!("Evaluation results of task {}:", config.name));
    for g in &group_reports {
        if config.handler == TaskHandler::Pile {
            observer.line(&format!("    Finish group {}:", g.name));
            for v in &g.bits_per_byte {
                observer.line(&format!("        {} = {:.3}", v.metric, v.value));
            }
            observer.line("");
        } else if matches!(
            config.handler,
            TaskHandler::CrowsPair | TaskHandler::StereoSet
        ) {
            // `report_group_metrics`: every file's lines, no group or file name.
            for f in &g.files {
                for l in f.bias.iter().flat_map(BiasReport::report_lines) {
                    observer.line(&l);
                }
            }
        } else {
            for l in stats_line("    ", &g.name, &g.stats) {
                observer.line(&l);
            }
        }
    }
    let overall = (config.handler == TaskHandler::Mmlu).then(|| {
        let all: Vec<&FileReport> = group_reports.iter().flat_map(|g| g.files.iter()).collect();
        let stats = summarize(&config.metrics, &all);
        for l in stats_line("", "Overall", &stats) {
            observer.line(&l);
        }
        stats
    });
    let seconds = start.elapsed().as_secs_f64();
    observer.line(&format!("Finish task {} in {seconds:.1}s.", config.name));
    observer.task_finished();
    Ok(TaskReport {
        name: config.name.clone(),
        config: config.clone(),
        data_path: data_display,
        groups: group_reports,
        overall,
        seconds,
    })
}

fn pile_bpb(files: &[&FileReport]) -> Vec<MetricValue> {
    let mut sets: Vec<(String, f64, usize)> = Vec::new();
    for f in files {
        if let FileDetails::LanguageModel { documents } = &f.details {
            for d in documents {
                let name = d.set_name.clone().unwrap_or_default();
                match sets.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(s) => {
                        s.1 += d.total_loss;
                        s.2 += d.utf8_length;
                    }
                    None => sets.push((name, d.total_loss, d.utf8_length)),
                }
            }
        }
    }
    sets.into_iter()
        .map(|(metric, loss, bytes)| MetricValue {
            metric,
            value: metrics::bits_per_byte(loss, bytes),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn evaluate_file<B: Backend>(
    model: &GlmModel<B>,
    codec: &dyn TextCodec,
    config: &TaskConfig,
    options: &EvalOptions,
    name: &str,
    dataset: Dataset,
    strategy: &mut Option<Box<dyn Strategy>>,
    observer: &mut dyn Observer,
) -> EvalResult<FileReport> {
    let num_samples = dataset.len();
    let mbs = config.micro_batch_size.max(1);
    match dataset {
        Dataset::Choice {
            is_single_token,
            samples,
            bias,
        } => {
            let sharding = options.sharding.as_deref();
            let mut scored: Vec<Option<Vec<f32>>> = vec![None; samples.len()];
            for (c, chunk) in samples.chunks(mbs).enumerate() {
                if sharding.is_some_and(|sh| !sh.owns(c)) {
                    continue;
                }
                let scores = mc::score_batch(model, chunk)?;
                if scores.len() != chunk.len() {
                    return Err(EvalError::Usage(format!(
                        "scored {} samples of a batch of {}",
                        scores.len(),
                        chunk.len()
                    )));
                }
                for (slot, lp) in scored[c * mbs..].iter_mut().zip(scores) {
                    *slot = Some(lp);
                }
                observer.advance(chunk.len());
            }
            let scored = shard::complete_f32(sharding, scored, observer)?;
            let mut results = Vec::with_capacity(samples.len());
            for (s, lp) in samples.iter().zip(scored) {
                let prediction = if config.handler == TaskHandler::StereoSet {
                    bias::stereoset_prediction(&lp, &s.choices)
                } else {
                    mc::argmax(&lp)
                };
                results.push(ChoiceResult {
                    line: s.line,
                    prediction,
                    choice_log_probs: lp,
                    label: s.label,
                });
            }
            if let Some(items) = bias {
                let report = match items {
                    BiasItems::Crows(items) => {
                        let first: Vec<f32> = results
                            .iter()
                            .map(|r| r.choice_log_probs.first().copied().unwrap_or(0.0))
                            .collect();
                        BiasReport::CrowsPairs {
                            categories: bias::crows_pair_metric(&first, &items)?,
                        }
                    }
                    BiasItems::Stereo(items) => {
                        let preds: Vec<usize> = results.iter().map(|r| r.prediction).collect();
                        BiasReport::StereoSet(bias::stereoset_metric(
                            &preds,
                            &items,
                            Path::new(name),
                        )?)
                    }
                };
                observer.line(report.metric_line());
                return Ok(FileReport {
                    file: name.into(),
                    num_samples,
                    metrics: Vec::new(),
                    bits_per_byte: Vec::new(),
                    bias: Some(report),
                    details: FileDetails::MultiChoice {
                        is_single_token,
                        samples: results,
                    },
                });
            }
            let preds: Vec<usize> = results.iter().map(|r| r.prediction).collect();
            let labels: Vec<i64> = results.iter().map(|r| r.label).collect();
            let acc = metrics::accuracy(&preds, &labels);
            let metrics = config
                .metrics
                .iter()
                .map(|m| MetricValue {
                    metric: m.name().into(),
                    value: acc,
                })
                .collect();
            Ok(FileReport {
                file: name.into(),
                num_samples,
                metrics,
                bits_per_byte: Vec::new(),
                bias: None,
                details: FileDetails::MultiChoice {
                    is_single_token,
                    samples: results,
                },
            })
        }
        Dataset::Generation { items } => {
            let strategy = strategy
                .as_deref_mut()
                .ok_or_else(|| EvalError::Usage("generation task without a strategy".into()))?;
            let sharding = options.sharding.as_deref();
            let mut predictions: Vec<Option<Vec<u32>>> = vec![None; items.len()];
            for (i, (_, ctx, _)) in items.iter().enumerate() {
                if sharding.is_some_and(|sh| !sh.owns(i)) {
                    continue;
                }
                let beams = gen::generate(model, ctx, strategy)?;
                let prediction = if config.handler == TaskHandler::Lambada {
                    gen::lambada_answer(&beams, codec)?
                } else {
                    beams.into_iter().next().unwrap_or_default()
                };
                predictions[i] = Some(prediction);
                observer.advance(1);
            }
            let predictions = shard::complete_words(sharding, predictions, observer)?;
            let results: Vec<GenerationResult> = items
                .iter()
                .zip(predictions)
                .map(|((line, _, targets), prediction)| GenerationResult {
                    line: *line,
                    prediction_text: codec.detokenize(&prediction),
                    prediction,
                    references: targets.iter().map(|t| codec.detokenize(t)).collect(),
                })
                .collect();
            let n = results.len().max(1) as f64;
            let score = |f: fn(&str, &str) -> f64| {
                100.0
                    * results
                        .iter()
                        .map(|r| metrics::max_over_references(f, &r.prediction_text, &r.references))
                        .sum::<f64>()
                    / n
            };
            let metrics = config
                .metrics
                .iter()
                .map(|m| {
                    let value = match (config.handler, m) {
                        (TaskHandler::Lambada, _) => score(metrics::strip_match),
                        (_, Metric::F1) => score(metrics::f1),
                        _ => score(metrics::exact_match),
                    };
                    MetricValue {
                        metric: m.name().into(),
                        value,
                    }
                })
                .collect();
            Ok(FileReport {
                file: name.into(),
                num_samples,
                metrics,
                bits_per_byte: Vec::new(),
                bias: None,
                details: FileDetails::Generation { samples: results },
            })
        }
        Dataset::Language {
            documents,
            layout,
            num_windows: _,
        } => {
            let mut per_doc: Vec<Vec<WindowResult>> = vec![Vec::new(); documents.len()];
            // Windows are made lazily, across documents, and scored `mbs` at a time (the
            // original's batches): only one micro-batch of windows (and masks) exists at once.
            let mut all = documents
                .iter()
                .enumerate()
                .flat_map(|(d, doc)| layout.windows(&doc.tokens).map(move |w| (d, w)));
            let sharding = options.sharding.as_deref();
            let mut chunk: Vec<(usize, Window)> = Vec::new();
            // Every window in order: its document and prompt length; its token losses (`None`
            // for another node's micro-batch).
            let mut windows: Vec<(usize, usize)> = Vec::new();
            let mut losses: Vec<Option<Vec<f32>>> = Vec::new();
            for c in 0.. {
                chunk.clear();
                chunk.extend(all.by_ref().take(mbs));
                if chunk.is_empty() {
                    break;
                }
                windows.extend(chunk.iter().map(|(d, w)| (*d, w.prompt_length)));
                if sharding.is_some_and(|sh| !sh.owns(c)) {
                    losses.extend(chunk.iter().map(|_| None));
                    continue;
                }
                let refs: Vec<&Window> = chunk.iter().map(|(_, w)| w).collect();
                let scored = lm::window_losses(model, &refs)?;
                if scored.len() != chunk.len() {
                    return Err(EvalError::Usage(format!(
                        "scored {} windows of a batch of {}",
                        scored.len(),
                        chunk.len()
                    )));
                }
                losses.extend(scored.into_iter().map(Some));
                observer.advance(chunk.len());
            }
            let losses = shard::complete_f32(sharding, losses, observer)?;
            for ((d, prompt_length), token_losses) in windows.into_iter().zip(losses) {
                let loss: f32 = token_losses.iter().sum();
                if let Some(doc) = per_doc.get_mut(d) {
                    doc.push(WindowResult {
                        loss: f64::from(loss),
                        num_scored: token_losses.len(),
                        prompt_length,
                        token_losses: options.token_losses.then_some(token_losses),
                    });
                }
            }
            let docs: Vec<DocumentResult> = documents
                .iter()
                .zip(per_doc)
                .map(|(d, windows)| DocumentResult {
                    line: d.line,
                    num_tokens: d.tokens.len(),
                    num_original_tokens: d.num_original_tokens,
                    utf8_length: d.utf8_length,
                    set_name: d.set_name.clone(),
                    total_loss: windows.iter().map(|w| w.loss).sum(),
                    windows,
                })
                .collect();
            let mut metric_values = Vec::new();
            let mut bpb = Vec::new();
            if config.handler == TaskHandler::Pile {
                bpb = pile_bpb(&[&FileReport {
                    file: String::new(),
                    num_samples,
                    metrics: Vec::new(),
                    bits_per_byte: Vec::new(),
                    bias: None,
                    details: FileDetails::LanguageModel {
                        documents: docs.clone(),
                    },
                }]);
            } else if let Some(first) = docs.first() {
                let losses: Vec<f64> = docs
                    .iter()
                    .flat_map(|d| d.windows.iter().map(|w| w.loss))
                    .collect();
                let ppl = metrics::perplexity(&losses, first.num_original_tokens);
                metric_values = config
                    .metrics
                    .iter()
                    .map(|m| MetricValue {
                        metric: m.name().into(),
                        value: ppl,
                    })
                    .collect();
            }
            Ok(FileReport {
                file: name.into(),
                num_samples,
                metrics: metric_values,
                bits_per_byte: bpb,
                bias: None,
                details: FileDetails::LanguageModel { documents: docs },
            })
        }
    }
}

use super::shard::{self, Sharding};
use crate::strategy::Strategy;
use std::sync::Arc;
