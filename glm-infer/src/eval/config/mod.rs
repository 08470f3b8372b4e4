//! Task definitions: the original GLM-130B task YAML (`evaluation/configs.py`, loaded there with
//! dataclass-wizard), parsed field by field with the line of every key.
//!
//! Keys are accepted in kebab-case, snake_case or camelCase (`file-pattern`, `micro_batch_size`,
//! even the mixed `max_seq-length` of the original MMLU file). Unknown keys, keys that belong to
//! another task type, wrong types and duplicates are errors naming the file, the line and the key.
//!
//! (Over 400 lines: `TaskConfig::from_yaml_str` checks every field of the three task types with its own error; about a fifth is unit tests.)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::error::{EvalError, EvalResult};
use super::yaml::{self, Node};

mod fields;
mod generation;
mod kinds;
mod language_model;

pub use fields::normalize_key;
use fields::{Fields, IGNORED_KEYS};
pub use kinds::{
    FilePattern, GenerationSettings, LanguageModelSettings, Metric, SamplingStrategyName,
    TaskHandler, TaskKind, TaskType,
};

/// One parsed task file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskConfig {
    /// The YAML file.
    pub source: PathBuf,
    /// `name`.
    pub name: String,
    /// `type`.
    pub task_type: TaskType,
    /// `path`, relative to the data root (as written).
    pub path: String,
    /// `module`, as written.
    pub module: Option<String>,
    /// The task class this port runs.
    pub handler: TaskHandler,
    /// `metrics` (the class default when absent; LAMBADA and Pile fix their own).
    pub metrics: Vec<Metric>,
    /// `use_task_mask`: `[gMASK]` instead of `[MASK]` (gen / lm).
    pub use_task_mask: bool,
    /// `use_multitask_encoding` (choice positions count up from the mask; `mul` only).
    pub use_multitask_encoding: bool,
    /// `unidirectional`: causal context (requires `use_task_mask`).
    pub unidirectional: bool,
    /// `max_seq_length` (2048).
    pub max_seq_length: usize,
    /// `file_pattern` (`**/*.json*`).
    pub file_pattern: FilePattern,
    /// `micro_batch_size` (1).
    pub micro_batch_size: usize,
    /// Type-specific settings.
    pub kind: TaskKind,
    /// Keys the original's task files carry that its config classes ignore (e.g. MMLU's
    /// `no-tokenized`), accepted with a warning.
    pub warnings: Vec<String>,
    /// `(normalized key, key as written, line)` of every field of the file, so checks made
    /// when the task runs (against the model) can name the field and its line.
    #[serde(skip)]
    pub field_lines: Vec<(String, String, usize)>,
}

/// Upper limit of every length field of a task file (`max_seq_length`, `max_gen_length`,
/// `min_gen_length`, `no_repeat_ngram_size`, `generation_length`): 2^20 tokens, far beyond any GLM
/// model (GLM-130B: 2048). Larger values are refused while parsing, before anything is allocated;
/// the model's own `max_sequence_length` is checked when the task runs.
pub const MAX_LENGTH_LIMIT: usize = 1 << 20;

/// Upper limit of `micro_batch_size`.
pub const MAX_MICRO_BATCH_SIZE: usize = 1 << 16;

/// Upper limit of `num_beams`.
pub const MAX_NUM_BEAMS: usize = 1 << 10;

impl TaskConfig {
    /// The flags that shape this task's multiple-choice samples.
    pub fn choice_encoding(&self) -> super::mc::ChoiceEncoding {
        super::mc::ChoiceEncoding {
            use_multitask_encoding: self.use_multitask_encoding,
            use_task_mask: self.use_task_mask,
        }
    }

    /// Reads and parses a task file.
    pub fn from_file(path: &Path) -> EvalResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses the YAML text of a task file (`path` is used for messages and recorded as source).
    pub fn from_yaml_str(text: &str, path: &Path) -> EvalResult<Self> {
        let doc = yaml::parse(text, path)?;
        let mut f = Fields::new(path, doc)?;
        let field_lines: Vec<(String, String, usize)> = f
            .entries
            .iter()
            .map(|(key, norm, line, _)| (norm.clone(), key.clone(), *line))
            .collect();
        let (_, _, name) = f.required("name")?;
        let (type_key, type_line, type_str) = f.required("type")?;
        let task_type = TaskType::parse(type_str.trim()).ok_or_else(|| {
            f.err(
                type_line,
                &type_key,
                format!("unknown task type `{type_str}` (mul, gen, lm, other)"),
            )
        })?;
        let (_, _, data_path) = f.required("path")?;
        let module_entry = f.take("module");
        let (module, handler) = match module_entry {
            Some((key, line, node)) if !node.is_null() => {
                let m = f.scalar(&key, line, &node)?;
                let handler = TaskHandler::from_module(m.trim()).ok_or_else(|| {
                    f.err(
                        line,
                        &key,
                        format!(
                            "custom task module `{m}` is not implemented in this port (known: tasks.mmlu.task.MMLU, \
                             tasks.lambada.task.LAMBADA, tasks.language-modeling.pile.Pile, \
                             tasks.ethnic.crows-pair.tasks.CrowsPairTask, \
                             tasks.ethnic.stereoset.tasks.StereoSetTask, evaluation.*Task)"
                        ),
                    )
                })?;
                if task_type != TaskType::Other && handler.family() != task_type {
                    return Err(f.err(
                        line,
                        &key,
                        format!(
                            "module `{m}` is a `{}` task but `type` is `{}`",
                            handler.family().as_str(),
                            task_type.as_str()
                        ),
                    ));
                }
                (Some(m), handler)
            }
            _ => {
                let handler = TaskHandler::default_for(task_type).ok_or_else(|| {
                    f.err(
                        type_line,
                        &type_key,
                        "type `other` needs a `module` naming the task class",
                    )
                })?;
                (None, handler)
            }
        };
        let family = handler.family();

        let metrics_entry = f.take("metrics");
        let mut metrics = match handler {
            TaskHandler::Lambada => vec![Metric::Accuracy],
            TaskHandler::Pile => vec![Metric::Bpb],
            TaskHandler::CrowsPair => vec![Metric::Cp],
            TaskHandler::StereoSet => vec![Metric::SsIcat],
            _ => match family {
                TaskType::MultiChoice => vec![Metric::Accuracy],
                TaskType::Generation => vec![Metric::Em, Metric::F1],
                _ => vec![Metric::Ppl],
            },
        };
        if let Some((key, line, node)) = metrics_entry {
            let names: Vec<(String, usize)> = match &node {
                Node::Seq { items, .. } => items
                    .iter()
                    .map(|n| f.scalar(&key, n.line(), n).map(|s| (s, n.line())))
                    .collect::<EvalResult<_>>()?,
                Node::Scalar { .. } if !node.is_null() => {
                    vec![(f.scalar(&key, line, &node)?, line)]
                }
                other => {
                    return Err(f.err(
                        line,
                        &key,
                        format!("expected a list of metric names, found {}", other.kind()),
                    ))
                }
            };
            // LAMBADA, Pile and the bias tasks define their metrics in code (`self.metrics`
            // overrides `config.metrics` there): their YAML list is not read.
            let overridden = matches!(
                handler,
                TaskHandler::Lambada
                    | TaskHandler::Pile
                    | TaskHandler::CrowsPair
                    | TaskHandler::StereoSet
            );
            if !overridden {
                let mut parsed = Vec::new();
                for (n, l) in names {
                    let m = Metric::parse(n.trim()).ok_or_else(|| {
                        f.err(l, &key, format!("unknown metric `{n}` (Accuracy, Precision, Recall, F1_mul, EM, F1, PPL)"))
                    })?;
                    if !m.applies_to(family) {
                        return Err(f.err(
                            l,
                            &key,
                            format!(
                                "metric `{n}` does not apply to a `{}` task",
                                family.as_str()
                            ),
                        ));
                    }
                    parsed.push(m);
                }
                metrics = parsed;
            }
        }
        let (use_task_mask, _) = f.boolean("use_task_mask", false)?;
        let (use_multitask_encoding, _) = f.boolean("use_multitask_encoding", false)?;
        let (unidirectional, uni_line) = f.boolean("unidirectional", false)?;
        if unidirectional && !use_task_mask {
            return Err(f.err(
                uni_line,
                &f.spelled("unidirectional"),
                "[MASK] doesn't support unidirectional attention: set use_task_mask: true",
            ));
        }
        let (max_seq_length, msl_line) = f.integer("max_seq_length", 2048, 2, MAX_LENGTH_LIMIT)?;
        let file_pattern = match f.take("file_pattern") {
            None => FilePattern::Single("**/*.json*".into()),
            Some((key, line, Node::Map { entries, .. })) => {
                let mut groups = Vec::new();
                for (group, gline, node) in entries {
                    let pattern = f.scalar(&format!("{key}.{group}"), gline, &node)?;
                    groups.push((group, pattern));
                }
                if groups.is_empty() {
                    return Err(f.err(line, &key, "needs at least one `group: pattern`"));
                }
                FilePattern::Groups(groups)
            }
            Some((key, line, node)) => FilePattern::Single(f.scalar(&key, line, &node)?),
        };
        let (micro_batch_size, mbs_line) =
            f.integer("micro_batch_size", 1, 1, MAX_MICRO_BATCH_SIZE)?;
        let kind = match family {
            TaskType::MultiChoice => TaskKind::MultiChoice,
            TaskType::Generation => TaskKind::Generation(generation::parse(
                &mut f,
                micro_batch_size,
                mbs_line,
                max_seq_length,
                msl_line,
            )?),
            _ => TaskKind::LanguageModel(language_model::parse(&mut f, max_seq_length, msl_line)?),
        };
        let mut warnings = Vec::new();
        for ignored in IGNORED_KEYS {
            if let Some((key, line, _)) = f.take(ignored) {
                warnings.push(format!(
                    "{}:{line}: field `{key}` is not read by the original task classes; ignored",
                    path.display()
                ));
            }
        }
        if let Some((key, norm, line, _)) = f.entries.first() {
            let other_family = [
                ("sampling_strategy", "gen"),
                ("num_beams", "gen"),
                ("length_penalty", "gen"),
                ("no_repeat_ngram_size", "gen"),
                ("min_gen_length", "gen"),
                ("max_gen_length", "gen"),
                ("generation_length", "lm"),
            ]
            .iter()
            .find(|(k, _)| k == norm)
            .map(|(_, t)| *t);
            let message = match other_family {
                Some(t) => format!(
                    "only valid for `{t}` tasks, this task is `{}`",
                    family.as_str()
                ),
                None => "unknown field".to_string(),
            };
            return Err(f.err(*line, key, message));
        }
        Ok(Self {
            source: path.to_path_buf(),
            name,
            task_type,
            path: data_path,
            module,
            handler,
            metrics,
            use_task_mask,
            use_multitask_encoding,
            unidirectional,
            max_seq_length,
            file_pattern,
            micro_batch_size,
            kind,
            warnings,
            field_lines,
        })
    }

    /// An error about field `name` (snake_case) of this task file, naming the key as written and
    /// its line (line 0 and the snake_case name when the field was left at its default).
    pub fn field_error(&self, name: &str, message: impl Into<String>) -> EvalError {
        let (key, line) = self
            .field_lines
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, k, l)| (k.clone(), *l))
            .unwrap_or_else(|| (name.to_string(), 0));
        EvalError::task(&self.source, line, key, message)
    }

    /// Checks what the task alone decides against a model that accepts `max_positions`
    /// positions (`max_sequence_length`): a `gen` sample reaches position `max_gen_length + 1`
    /// at least, whatever the data. Run before any data is read, so an absurd `max_gen_length`
    /// never allocates. (Window and sample lengths of `lm` / `mul` tasks depend on the data and
    /// are checked per file.)
    pub fn check_against_model(&self, max_positions: usize) -> EvalResult<()> {
        if let TaskKind::Generation(g) = &self.kind {
            if g.max_gen_length.saturating_add(2) > max_positions {
                return Err(self.field_error(
                    "max_gen_length",
                    format!(
                        "max_gen_length {} + 2 exceeds the model's max_sequence_length {max_positions}",
                        g.max_gen_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The config as the original prints it (`print(config)` of the dataclass), with `path`
    /// already joined to the data root.
    pub fn python_repr(&self, resolved_path: &str) -> String {
        let class = match self.kind {
            TaskKind::MultiChoice => "MultiChoiceTaskConfig",
            TaskKind::Generation(_) => "GenerationTaskConfig",
            TaskKind::LanguageModel(_) => "LanguageModelTaskConfig",
        };
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let b = |v: bool| if v { "True" } else { "False" };
        let mut s = format!(
            "{class}(name={}, type=<TaskType.{}: {}>, path={}, module={}, metrics=[{}], use_task_mask={}, \
             use_multitask_encoding={}, unidirectional={}, max_seq_length={}, file_pattern=",
            q(&self.name),
            self.task_type.python_enum(),
            q(self.task_type.as_str()),
            q(resolved_path),
            self.module.as_deref().map(q).unwrap_or_else(|| "None".into()),
            self.metrics.iter().map(|m| q(m.name())).collect::<Vec<_>>().join(", "),
            b(self.use_task_mask),
            b(self.use_multitask_encoding),
            b(self.unidirectional),
            self.max_seq_length,
        );
        match &self.file_pattern {
            FilePattern::Single(p) => s.push_str(&q(p)),
            FilePattern::Groups(g) => {
                let items: Vec<String> = g
                    .iter()
                    .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                    .collect();
                let _ = write!(s, "{{{}}}", items.join(", "));
            }
        }
        let _ = write!(s, ", micro_batch_size={}", self.micro_batch_size);
        match &self.kind {
            TaskKind::MultiChoice => {}
            TaskKind::Generation(g) => {
                let _ = write!(
                    s,
                    ", sampling_strategy={}, num_beams={}, length_penalty={:?}, no_repeat_ngram_size={}, min_gen_length={}, max_gen_length={}",
                    q(match g.sampling_strategy {
                        SamplingStrategyName::BaseStrategy => "BaseStrategy",
                        SamplingStrategyName::BeamSearchStrategy => "BeamSearchStrategy",
                    }),
                    g.num_beams,
                    g.length_penalty,
                    g.no_repeat_ngram_size,
                    g.min_gen_length,
                    g.max_gen_length
                );
            }
            TaskKind::LanguageModel(l) => {
                let _ = write!(s, ", generation_length={}", l.generation_length);
            }
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> EvalResult<TaskConfig> {
        TaskConfig::from_yaml_str(text, Path::new("task.yaml"))
    }

    #[test]
    fn key_spellings_are_normalised() {
        assert_eq!(normalize_key("file-pattern"), "file_pattern");
        assert_eq!(normalize_key("max_seq-length"), "max_seq_length");
        assert_eq!(normalize_key("microBatchSize"), "micro_batch_size");
        assert_eq!(normalize_key("use_task_mask"), "use_task_mask");
    }

    #[test]
    fn defaults_follow_the_original_classes() {
        let c = parse("name: CMRC2018\ntype: gen\npath: CLUE/cmrc2018\n").unwrap();
        assert_eq!(c.metrics, vec![Metric::Em, Metric::F1]);
        assert_eq!(c.file_pattern, FilePattern::Single("**/*.json*".into()));
        assert_eq!(c.kind, TaskKind::Generation(GenerationSettings::default()));
        assert_eq!(c.max_seq_length, 2048);
        let lm = parse("name: w\ntype: lm\npath: w\ngeneration-length: 256\nuse_task_mask: true\n")
            .unwrap();
        assert_eq!(
            lm.kind,
            TaskKind::LanguageModel(LanguageModelSettings {
                generation_length: 256
            })
        );
    }

    #[test]
    fn the_original_mmlu_file_parses() {
        let text = "name: \"MMLU\"\ntype: \"mul\"\nmodule: \"tasks.mmlu.task.MMLU\"\npath: \"MMLU\"\nfile-pattern:\n  stem: \"stem/*.json\"\n  social_sciences: \"social_sciences/*.json\"\nno-tokenized: true\nmicro-batch-size: 8\nmax_seq-length: 896";
        let c = parse(text).unwrap();
        assert_eq!(c.handler, TaskHandler::Mmlu);
        assert_eq!((c.micro_batch_size, c.max_seq_length), (8, 896));
        assert_eq!(
            c.file_pattern.groups()[1],
            ("social_sciences".into(), "social_sciences/*.json".into())
        );
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn errors_name_line_and_field() {
        let err = parse("name: a\ntype: mul\npath: p\nmax-seq-lenght: 10\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "task.yaml:4: field `max-seq-lenght`: unknown field");
        let err = parse("name: a\ntype: mul\npath: p\nmicro-batch-size: two\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("task.yaml:4: field `micro-batch-size`: expected an integer"),
            "{err}"
        );
        let err = parse("name: a\ntype: mul\npath: p\ngeneration_length: 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":4: field `generation_length`: only valid for `lm`"),
            "{err}"
        );
        let err = parse("name: a\ntype: gen\npath: p\nunidirectional: true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("task.yaml:4: field `unidirectional`"),
            "{err}"
        );
        let err = parse("name: a\ntype: mul\npath: p\nmetrics: [PPL]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("task.yaml:4: field `metrics`"), "{err}");
        let err = parse("name: a\ntype: xyz\npath: p\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("task.yaml:2: field `type`"), "{err}");
        let err = parse("name: a\npath: p\n").unwrap_err().to_string();
        assert_eq!(err, "task.yaml: field `type`: missing required field");
        let err = parse("name: a\ntype: mul\npath: p\nfile_pattern: x\nfile-pattern: y\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("task.yaml:5: field `file-pattern`: duplicate"),
            "{err}"
        );
        let err = parse("name: a\ntype: mul\nmodule: my.Task\npath: p\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("task.yaml:3: field `module`"), "{err}");
    }
}
