//! The GLM-130B evaluation harness (`evaluate.py`, `evaluation/`, `tasks/`), unchanged task
//! definitions run against any model this crate loads, on any backend, float or quantized.
//!
//! - [`config`]: task YAML (`mul` / `gen` / `lm`, kebab- or snake-case keys), errors naming file,
//!   line and field.
//! - [`data`]: JSONL items with token ids or `*_pretokenized` text, raw text documents.
//! - [`mc`]: multiple-choice log-probability sums (single-token shortcut at `<sop>`, `[MASK]`).
//! - [`gen`]: generation through glm-infer's decoding loop and strategies; LAMBADA's task class.
//! - [`bias`]: CrowS-Pairs and StereoSet, the paper's bias benchmarks (their metrics and reports).
//! - [`lm`]: strided windows, loss, perplexity, bits per byte.
//! - [`metrics`]: Accuracy, EM, F1, PPL, BPB and the max / median / average summary.
//! - [`report`]: the JSON report types (task → group → file → item).
//! - [`runner`]: tasks → files → batches, the original's report lines and a JSON [`runner::Report`].
//! - [`cli`]: `glm evaluate`.
//!
//! # Example
//! ```
//! use burn::backend::Flex;
//! use glm_core::{GlmConfig, GlmModel, ModelOptions};
//! use glm_infer::eval::{mc, TaskConfig};
//!
//! let task = TaskConfig::from_yaml_str("name: t\ntype: mul\npath: t\nmicro-batch-size: 2\n", "t.yaml".as_ref()).unwrap();
//! assert_eq!(task.micro_batch_size, 2);
//! let config = GlmConfig::tiny();
//! let model = GlmModel::<Flex>::random(&config, &Default::default(), ModelOptions::default(), 1).unwrap();
//! let items = vec![glm_infer::eval::data::ChoiceItem { line: 1, text: vec![5, 6, 7], choices: vec![vec![8], vec![9]], label: 0 }];
//! let samples = mc::prepare_file(&items, 64, Default::default(), &config.special_tokens, "d.jsonl".as_ref()).unwrap();
//! let scores = mc::score_batch(&model, &samples).unwrap();
//! assert_eq!(scores[0].len(), 2);
//! ```

pub mod bias;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod files;
pub mod gen;
pub mod lm;
pub mod mc;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod score;
pub mod shard;
pub mod yaml;

pub use config::{FilePattern, Metric, TaskConfig, TaskHandler, TaskKind, TaskType};
pub use error::{EvalError, EvalResult};
pub use runner::{
    evaluate_task, evaluate_tasks, load_tasks, CollectLines, EvalOptions, Observer, Report,
};
pub use shard::Sharding;
