//! The vocabulary of a task file: task types, the task classes this port implements, metrics,
//! file patterns and the type-specific settings (`gen`, `lm`).

/// `type:` of a task (`TaskType` of the original).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TaskType {
    /// `mul`: multiple choice scored by conditional log-probabilities.
    #[serde(rename = "mul")]
    MultiChoice,
    /// `gen`: generation scored by EM / F1 (or a task's own metric).
    #[serde(rename = "gen")]
    Generation,
    /// `lm`: language modelling (loss, perplexity, bits per byte).
    #[serde(rename = "lm")]
    LanguageModel,
    /// `other`: a custom task; needs a `module` this port knows.
    #[serde(rename = "other")]
    Other,
}

impl TaskType {
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "mul" => Some(Self::MultiChoice),
            "gen" => Some(Self::Generation),
            "lm" => Some(Self::LanguageModel),
            "other" => Some(Self::Other),
            _ => None,
        }
    }

    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MultiChoice => "mul",
            Self::Generation => "gen",
            Self::LanguageModel => "lm",
            Self::Other => "other",
        }
    }

    pub(super) fn python_enum(self) -> &'static str {
        match self {
            Self::MultiChoice => "MULTICHOICE",
            Self::Generation => "GENERATION",
            Self::LanguageModel => "LANGUAGE_MODEL",
            Self::Other => "OTHER",
        }
    }
}

/// The task classes of the original this port implements (`module:` or the type's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TaskHandler {
    /// `evaluation.MultiChoiceTask`.
    MultiChoice,
    /// `tasks.mmlu.task.MMLU`: multiple choice plus an "Overall" line over every group.
    Mmlu,
    /// `evaluation.GenerationTask`.
    Generation,
    /// `tasks.lambada.task.LAMBADA`: beam search with banned punctuation, first-word answers,
    /// exact-match accuracy.
    Lambada,
    /// `evaluation.LanguageModelTask`.
    LanguageModel,
    /// `tasks.language-modeling.pile.Pile`: tokenized JSONL documents, bits per byte per subset.
    Pile,
    /// `tasks.ethnic.crows-pair.tasks.CrowsPairTask`: CrowS-Pairs, per-category share of pairs
    /// whose first sentence scores at least as high as the second (see [`crate::eval::bias`]).
    CrowsPair,
    /// `tasks.ethnic.stereoset.tasks.StereoSetTask`: StereoSet intrasentence, LMS / SS / ICAT per
    /// domain and overall from length-normalised choice scores (see [`crate::eval::bias`]).
    StereoSet,
}

impl TaskHandler {
    pub(super) fn from_module(module: &str) -> Option<Self> {
        match module {
            "evaluation.MultiChoiceTask" | "evaluation.tasks.MultiChoiceTask" => {
                Some(Self::MultiChoice)
            }
            "evaluation.GenerationTask" | "evaluation.tasks.GenerationTask" => {
                Some(Self::Generation)
            }
            "evaluation.LanguageModelTask" | "evaluation.tasks.LanguageModelTask" => {
                Some(Self::LanguageModel)
            }
            "tasks.mmlu.task.MMLU" => Some(Self::Mmlu),
            "tasks.lambada.task.LAMBADA" => Some(Self::Lambada),
            "tasks.language-modeling.pile.Pile" => Some(Self::Pile),
            // The current path, and the folder spellings of earlier revisions of the repository.
            "tasks.ethnic.crows-pair.tasks.CrowsPairTask"
            | "tasks.ethnic.CROWS_PAIR.tasks.CrowsPairTask" => Some(Self::CrowsPair),
            "tasks.ethnic.stereoset.tasks.StereoSetTask"
            | "tasks.ethnic.StereoSet.tasks.StereoSetTask"
            | "tasks.ethnic.tasks.StereoSetTask" => Some(Self::StereoSet),
            _ => None,
        }
    }

    pub(super) fn default_for(t: TaskType) -> Option<Self> {
        match t {
            TaskType::MultiChoice => Some(Self::MultiChoice),
            TaskType::Generation => Some(Self::Generation),
            TaskType::LanguageModel => Some(Self::LanguageModel),
            TaskType::Other => None,
        }
    }

    /// The config class the original loads for this handler.
    pub fn family(self) -> TaskType {
        match self {
            Self::MultiChoice | Self::Mmlu | Self::CrowsPair | Self::StereoSet => {
                TaskType::MultiChoice
            }
            Self::Generation | Self::Lambada => TaskType::Generation,
            Self::LanguageModel | Self::Pile => TaskType::LanguageModel,
        }
    }
}

/// A metric of the original `DEFAULT_METRICS` (plus the custom tasks' own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Metric {
    /// Percentage of correct predictions (`mul`; LAMBADA's exact-match accuracy).
    Accuracy,
    /// sklearn micro precision (= accuracy for single-label predictions).
    Precision,
    /// sklearn micro recall (= accuracy for single-label predictions).
    Recall,
    /// sklearn micro F1 (`F1_mul`, = accuracy for single-label predictions).
    F1Mul,
    /// SQuAD exact match, ×100.
    #[serde(rename = "EM")]
    Em,
    /// SQuAD token F1, ×100.
    F1,
    /// Word-level perplexity `exp(min(20, Σloss / words))`.
    #[serde(rename = "PPL")]
    Ppl,
    /// Bits per UTF-8 byte per Pile subset.
    #[serde(rename = "BPB")]
    Bpb,
    /// CrowS-Pairs: per bias type, the share of pairs whose first sentence scores ≥ the second.
    #[serde(rename = "CP")]
    Cp,
    /// StereoSet: LMS, SS and ICAT per domain and overall.
    #[serde(rename = "SS_ICAT")]
    SsIcat,
}

impl Metric {
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "Accuracy" => Some(Self::Accuracy),
            "Precision" => Some(Self::Precision),
            "Recall" => Some(Self::Recall),
            "F1_mul" => Some(Self::F1Mul),
            "EM" => Some(Self::Em),
            "F1" => Some(Self::F1),
            "PPL" => Some(Self::Ppl),
            "BPB" => Some(Self::Bpb),
            "CP" => Some(Self::Cp),
            "SS_ICAT" => Some(Self::SsIcat),
            _ => None,
        }
    }

    /// The name the original prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "Accuracy",
            Self::Precision => "Precision",
            Self::Recall => "Recall",
            Self::F1Mul => "F1_mul",
            Self::Em => "EM",
            Self::F1 => "F1",
            Self::Ppl => "PPL",
            Self::Bpb => "BPB",
            Self::Cp => "CP",
            Self::SsIcat => "SS_ICAT",
        }
    }

    pub(super) fn applies_to(self, family: TaskType) -> bool {
        match self {
            Self::Accuracy | Self::Precision | Self::Recall | Self::F1Mul => {
                family == TaskType::MultiChoice
            }
            Self::Em | Self::F1 => family == TaskType::Generation,
            Self::Ppl => family == TaskType::LanguageModel,
            Self::Bpb | Self::Cp | Self::SsIcat => false,
        }
    }
}

/// `file-pattern`: one glob (group `all`) or `{group: glob}` in file order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum FilePattern {
    /// A single pattern; the original names its group `all`.
    Single(String),
    /// Named groups.
    Groups(Vec<(String, String)>),
}

impl FilePattern {
    /// `(group, pattern)` pairs in order.
    pub fn groups(&self) -> Vec<(String, String)> {
        match self {
            FilePattern::Single(p) => vec![("all".to_string(), p.clone())],
            FilePattern::Groups(g) => g.clone(),
        }
    }
}

/// Decoding strategy of a `gen` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SamplingStrategyName {
    /// Greedy (temperature 1, top-k 1), as `GenerationTask` builds it.
    BaseStrategy,
    /// Deterministic beam search.
    BeamSearchStrategy,
}

/// Fields of `GenerationTaskConfig`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationSettings {
    /// `sampling_strategy` (BaseStrategy).
    pub sampling_strategy: SamplingStrategyName,
    /// `num_beams` (4).
    pub num_beams: usize,
    /// `length_penalty` (1.0).
    pub length_penalty: f64,
    /// `no_repeat_ngram_size` (3).
    pub no_repeat_ngram_size: usize,
    /// `min_gen_length` (0).
    pub min_gen_length: usize,
    /// `max_gen_length` (128).
    pub max_gen_length: usize,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            sampling_strategy: SamplingStrategyName::BaseStrategy,
            num_beams: 4,
            length_penalty: 1.0,
            no_repeat_ngram_size: 3,
            min_gen_length: 0,
            max_gen_length: 128,
        }
    }
}

/// Fields of `LanguageModelTaskConfig`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LanguageModelSettings {
    /// `generation_length` (256): tokens scored per window after the first = window stride.
    pub generation_length: usize,
}

/// The type-specific part of a task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum TaskKind {
    /// `mul`.
    MultiChoice,
    /// `gen`.
    Generation(GenerationSettings),
    /// `lm`.
    LanguageModel(LanguageModelSettings),
}
