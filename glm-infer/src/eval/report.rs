//! The machine-readable results of a run (`glm evaluate --report`): per task, per file group,
//! per data file, down to every item's scores, serialised as JSON.

use super::bias::BiasReport;
use super::config::TaskConfig;
use super::metrics::GroupStats;

/// The result of one multiple-choice item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChoiceResult {
    /// Line in the data file.
    pub line: usize,
    /// Sum of log-probabilities per choice.
    pub choice_log_probs: Vec<f32>,
    /// argmax.
    pub prediction: usize,
    /// The label.
    pub label: i64,
}

/// The result of one generation item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationResult {
    /// Line in the data file.
    pub line: usize,
    /// The prediction's ids (LAMBADA: the first word).
    pub prediction: Vec<u32>,
    /// The prediction, detokenized.
    pub prediction_text: String,
    /// The references, detokenized.
    pub references: Vec<String>,
}

/// One scored window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowResult {
    /// Σ cross-entropy over the loss mask.
    pub loss: f64,
    /// Tokens scored.
    pub num_scored: usize,
    /// Bidirectional prompt length.
    pub prompt_length: usize,
    /// Per-token losses (with [`EvalOptions::token_losses`](crate::eval::EvalOptions::token_losses)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_losses: Option<Vec<f32>>,
}

/// One language-modelling document.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DocumentResult {
    /// Line in a JSONL file (0 for a text file).
    pub line: usize,
    /// Tokens.
    pub num_tokens: usize,
    /// Words the perplexity is normalised by.
    pub num_original_tokens: usize,
    /// UTF-8 bytes.
    pub utf8_length: usize,
    /// Pile subset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    /// Σ window losses.
    pub total_loss: f64,
    /// Windows in order.
    pub windows: Vec<WindowResult>,
}

/// Per-item details of a file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FileDetails {
    /// `mul`.
    MultiChoice {
        /// The per-file single-token flag.
        is_single_token: bool,
        /// Items.
        samples: Vec<ChoiceResult>,
    },
    /// `gen`.
    Generation {
        /// Items.
        samples: Vec<GenerationResult>,
    },
    /// `lm`.
    LanguageModel {
        /// Documents.
        documents: Vec<DocumentResult>,
    },
}

/// One metric value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricValue {
    /// Metric name as printed.
    pub metric: String,
    /// Value (percent for accuracy / EM / F1).
    pub value: f64,
}

/// One data file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileReport {
    /// Path relative to the task's data folder.
    pub file: String,
    /// Dataset length (samples; windows for `lm`): the weight of the group average.
    pub num_samples: usize,
    /// Metric values (Pile: none; see `bits_per_byte`).
    pub metrics: Vec<MetricValue>,
    /// Pile: bits per byte per subset.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bits_per_byte: Vec<MetricValue>,
    /// CrowS-Pairs / StereoSet: their per-category metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<BiasReport>,
    /// Items.
    pub details: FileDetails,
}

/// max / median / average of one metric.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricStats {
    /// Metric name.
    pub metric: String,
    /// The statistics.
    #[serde(flatten)]
    pub stats: GroupStats,
}

/// One file group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupReport {
    /// Group name.
    pub name: String,
    /// Its glob.
    pub pattern: String,
    /// Files in order.
    pub files: Vec<FileReport>,
    /// Statistics per metric over the files.
    pub stats: Vec<MetricStats>,
    /// Pile: bits per byte per subset over the group's files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bits_per_byte: Vec<MetricValue>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskReport {
    /// Task name.
    pub name: String,
    /// The parsed task file.
    pub config: TaskConfig,
    /// The data folder used.
    pub data_path: String,
    /// Groups in file order.
    pub groups: Vec<GroupReport>,
    /// MMLU: statistics over every file of every group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overall: Option<Vec<MetricStats>>,
    /// Wall time.
    pub seconds: f64,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Tasks in order.
    pub tasks: Vec<TaskReport>,
    /// Wall time of all tasks.
    pub seconds: f64,
}
