//! Shared pieces of the `glm` command line: config / tokenizer / model loading (behind
//! [`Glm`](crate::Glm), the one way to load a model), flag parsing, device selection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::DType;
use glm_core::quantized::QuantizeOptions;
use glm_core::vocab::VocabMap;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_tokenizer::{Tokenizer, TokenizerOptions};

use crate::error::{Error, Result};
use crate::prompt::{IdCodec, TextCodec};

pub use glm_core::device::{dispatch, DeviceKind, OnBackend};

/// Parses `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::Usage(format!(
            "unknown dtype `{other}` (expected f32, f16 or bf16)"
        ))),
    }
}

/// Reads the config of a model folder: `config.json` in the folder (or `explicit`).
pub fn load_config(model_dir: &Path, explicit: Option<&Path>) -> Result<GlmConfig> {
    let path = explicit
        .map(PathBuf::from)
        .unwrap_or_else(|| model_dir.join("config.json"));
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "no model config at {} (a model folder holds config.json + model.safetensors, or an original SAT checkpoint with --config)",
            path.display()
        )));
    }
    Ok(GlmConfig::from_file(&path)?)
}

/// `--quantization-bit-width 4|8` (+ optional tensor-parallel degree for the row-parallel scales).
pub fn quantize_options(
    bits: Option<u32>,
    tensor_parallel: Option<usize>,
) -> Result<Option<QuantizeOptions>> {
    let Some(bits) = bits else { return Ok(None) };
    let mut q = QuantizeOptions::from_bits(bits)
        .map_err(|e| Error::Usage(format!("--quantization-bit-width: {e}")))?;
    q.tensor_parallel = tensor_parallel;
    Ok(Some(q))
}

/// The flags that say which model to load and how: shared by `glm generate`, `glm serve` and
/// `glm evaluate` (each adds its own).
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder: config.json + model.safetensors, or an original SAT checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// config.json to use with a SAT checkpoint folder that has none.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// SentencePiece model (ice_text.model; default: one next to the model). Without one, prompts
    /// and task text are whitespace-separated token ids.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Tokenizer mode: icetk (GLM-130B release), glm130b, chatglm6b.
    #[arg(long, default_value = "icetk")]
    pub tokenizer_mode: String,
    /// cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Quantize a float checkpoint on load to INT4/INT8 weights, as the original's
    /// --quantization-bit-width (quantized checkpoints load as they are).
    #[arg(long)]
    pub quantization_bit_width: Option<u32>,
    /// Split the model over N tensor-parallel ranks as SAT splits it (one device each: cuda devices
    /// 0..N; on cpu and wgpu the ranks share the device). A SAT folder of N shards gives each rank
    /// its own file; INT quantize-on-load then uses per-rank scales, as convert_tp.py.
    #[arg(long)]
    pub tensor_parallel: Option<usize>,
    /// With --tensor-parallel: every rank holds the whole word embedding (no communication for the
    /// lookup and the logits) instead of its vocabulary rows.
    #[arg(long, requires = "tensor_parallel")]
    pub replicated_embedding: bool,
}

#[cfg(feature = "cli")]
impl ModelArgs {
    /// The [`LoadOptions`](crate::LoadOptions) these flags set (the others at their defaults).
    pub fn load_options(&self) -> Result<crate::LoadOptions> {
        Ok(crate::LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            quantization_bit_width: self.quantization_bit_width,
            tensor_parallel: self.tensor_parallel,
            replicated_embedding: self.replicated_embedding,
            tokenizer: self.tokenizer.clone(),
            tokenizer_mode: self.tokenizer_mode.clone(),
            config: self.config.clone(),
            ..crate::LoadOptions::default()
        })
    }
}

/// `--offload` and `--device-memory`: layer-streamed offload (see [`glm_core::offload`]).
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct OffloadFlags {
    /// Keep layers in the checkpoint and move each to the device just before its forward
    /// (BMInf-style offload; the checkpoint must be float or already quantized).
    #[cfg_attr(feature = "cli", arg(long))]
    pub offload: bool,
    /// With --offload: the device memory budget (e.g. 24GiB); as many leading layers as fit stay
    /// resident, by `glm plan`'s count. Without it only the layer being computed is on the device.
    #[cfg_attr(feature = "cli", arg(long, requires = "offload"))]
    pub device_memory: Option<String>,
}

/// Loads a model folder: `config.json` + `model.safetensors` (float or quantized), or an original
/// SAT checkpoint folder (`latest` + `<iter>/mp_rank_XX_model_states.pt`, float or quantized).
/// Quantized checkpoints load as they are; `quant` quantizes a float checkpoint on load, as the
/// original's `--quantization-bit-width`. With `offload.offload` the layers are streamed
/// ([`GlmModel::from_source_offloaded`]); `sequence_length` is what the budget is planned for.
pub(crate) fn load_model<B: Backend>(
    model_dir: &Path,
    config: &GlmConfig,
    device: &B::Device,
    options: ModelOptions,
    quant: Option<QuantizeOptions>,
    offload: &OffloadFlags,
    sequence_length: usize,
) -> Result<GlmModel<B>> {
    check_model_dir(model_dir)?;
    let source: glm_core::offload::SharedSource =
        std::sync::Arc::from(glm_core::quantized::open_checkpoint(model_dir)?);
    if !offload.offload {
        return Ok(GlmModel::from_source_quantized(
            config,
            source.as_ref(),
            device,
            options,
            quant,
        )?);
    }
    let scheme = glm_core::quantized::source_scheme(source.as_ref(), config)?;
    if quant.is_some() && scheme.is_none() {
        return Err(Error::Usage(
            "--offload streams layers from the checkpoint and cannot quantize them on load: \
             quantize it once with `glm quantize`, then offload the quantized folder"
                .into(),
        ));
    }
    let resident = match &offload.device_memory {
        None => 0,
        Some(budget) => {
            use glm_core::plan::{parse_bytes, EmbeddingLayout, LinearFormat, PlanRequest};
            let memory =
                parse_bytes(budget).map_err(|e| Error::Usage(format!("--device-memory: {e}")))?;
            let request = PlanRequest {
                config: config.clone(),
                dtype_bytes: options.dtype.size() as u64,
                linears: match scheme {
                    None => LinearFormat::Float,
                    Some(glm_core::quantized::QuantScheme::Int8) => LinearFormat::Int8,
                    Some(glm_core::quantized::QuantScheme::Int4) => LinearFormat::Int4,
                },
                tensor_parallel: 1,
                batch: 1,
                sequence_length: sequence_length.max(1),
                device_memory: vec![memory],
                offload: true,
                embedding: EmbeddingLayout::VocabParallel,
                workspace: 512 << 20,
            };
            let plan = glm_core::plan::plan(&request).map_err(|e| Error::Usage(e.to_string()))?;
            // The plan counts the streamed layer among the resident ones.
            plan.devices
                .first()
                .map_or(0, |d| d.resident_layers.saturating_sub(1))
        }
    };
    Ok(GlmModel::from_source_offloaded(
        config, source, device, options, resident,
    )?)
}

/// Checks that `model_dir` is a checkpoint folder (`model.safetensors` or a SAT `latest`).
fn check_model_dir(model_dir: &Path) -> Result<()> {
    if !model_dir.is_dir() {
        return Err(Error::Usage(format!(
            "model folder {} does not exist",
            model_dir.display()
        )));
    }
    if !model_dir.join("latest").is_file() && !model_dir.join("model.safetensors").is_file() {
        return Err(Error::Usage(format!(
            "{}: neither model.safetensors nor a SAT checkpoint (`latest`) found",
            model_dir.display()
        )));
    }
    Ok(())
}

/// Loads a model folder (as [`load_model`]) split over the tensor-parallel ranks of `layout`, one
/// device each (`devices`: one per rank, or one for all). A SAT folder of that many shards gives
/// each rank its own `mp_rank_XX` file; anything else is sliced on load.
pub(crate) fn load_parallel<B: Backend>(
    model_dir: &Path,
    config: &GlmConfig,
    devices: &[B::Device],
    options: ModelOptions,
    quant: Option<QuantizeOptions>,
    offload: &OffloadFlags,
    layout: glm_core::parallel::TpLayout,
) -> Result<glm_core::parallel::TensorParallel<B>> {
    check_model_dir(model_dir)?;
    if offload.offload {
        return Err(Error::Usage(
            "--offload and --tensor-parallel together are not supported: split the model over \
             ranks, or stream its layers on one device"
                .into(),
        ));
    }
    let source = glm_core::quantized::open_checkpoint(model_dir)?;
    Ok(glm_core::parallel::TensorParallel::from_source(
        config,
        source.as_ref(),
        devices,
        options,
        quant,
        layout,
    )?)
}

/// A prompt codec chosen on the command line.
#[derive(Debug, Clone)]
pub enum Codec {
    /// A SentencePiece (icetk) tokenizer.
    Ice(Box<Tokenizer>),
    /// Whitespace-separated ids.
    Ids(IdCodec),
    /// The codec of a compact-vocabulary model (`vocab_map.json` beside its config): the inner
    /// codec speaks the tokenizer's ids, the map translates them to the model's and back, so
    /// prompts and outputs keep the tokenizer's ids on the outside.
    Compact(Box<Codec>, Arc<VocabMap>),
}

impl Codec {
    /// The SentencePiece tokenizer, if text goes through one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        match self {
            Codec::Ice(t) => Some(t.as_ref()),
            Codec::Ids(_) => None,
            Codec::Compact(inner, _) => inner.tokenizer(),
        }
    }

    /// The compact vocabulary's map, if the model has one.
    pub fn vocab_map(&self) -> Option<&VocabMap> {
        match self {
            Codec::Compact(_, map) => Some(map),
            _ => None,
        }
    }

    /// Text → the tokenizer's ids (for a compact-vocabulary model, before translation into the
    /// model's ids; otherwise the same as [`TextCodec::tokenize`]).
    pub fn tokenize_outer(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Codec::Compact(inner, _) => inner.tokenize(text),
            other => other.tokenize(text),
        }
    }

    /// The tokenizer's ids → text (the inverse of [`Codec::tokenize_outer`]).
    pub fn detokenize_outer(&self, ids: &[u32]) -> String {
        match self {
            Codec::Compact(inner, _) => inner.detokenize(ids),
            other => other.detokenize(ids),
        }
    }

    /// Wraps `self` for a model with the compact vocabulary `map`.
    pub fn with_vocab_map(self, map: VocabMap) -> Self {
        match self {
            Codec::Compact(inner, _) => Codec::Compact(inner, Arc::new(map)),
            other => Codec::Compact(Box::new(other), Arc::new(map)),
        }
    }
}

impl TextCodec for Codec {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Codec::Ice(t) => t.tokenize(text),
            Codec::Ids(c) => c.tokenize(text),
            Codec::Compact(inner, map) => Ok(map.ids_to_inner(&inner.tokenize(text)?)?),
        }
    }
    fn detokenize(&self, ids: &[u32]) -> String {
        match self {
            Codec::Ice(t) => t.detokenize(ids),
            Codec::Ids(c) => c.detokenize(ids),
            // Ids beyond the map cannot come from the model's logits; they decode as nothing.
            Codec::Compact(inner, map) => {
                let outer: Vec<u32> = ids.iter().filter_map(|&t| map.to_outer(t)).collect();
                inner.detokenize(&outer)
            }
        }
    }
}

/// Loads `--tokenizer` in `mode` (icetk = the GLM-130B release path, glm130b, chatglm6b) and checks
/// its special ids against the model's config; `None` = integer ids.
pub(crate) fn load_codec(
    path: Option<&Path>,
    mode: &str,
    config: &GlmConfig,
    vocab_map: Option<VocabMap>,
) -> Result<Codec> {
    let Some(map) = vocab_map else {
        return load_plain_codec(path, mode, config);
    };
    // A compact-vocabulary model: the tokenizer is checked against the config in outer ids.
    let mut outer = config.clone();
    outer.vocab_size = map.outer_vocab_size;
    outer.special_tokens = map.outer_specials(&config.special_tokens)?;
    Ok(load_plain_codec(path, mode, &outer)?.with_vocab_map(map))
}

fn load_plain_codec(path: Option<&Path>, mode: &str, config: &GlmConfig) -> Result<Codec> {
    let Some(path) = path else {
        return Ok(Codec::Ids(IdCodec));
    };
    let options = match mode {
        "icetk" => TokenizerOptions::icetk(),
        "glm130b" => TokenizerOptions::glm130b(),
        "chatglm6b" => TokenizerOptions::chatglm6b(),
        other => {
            return Err(Error::Usage(format!(
                "unknown tokenizer mode `{other}` (icetk, glm130b, chatglm6b)"
            )))
        }
    };
    let tok = Tokenizer::from_file(path, options)?;
    let s = &config.special_tokens;
    let pairs = [
        ("[MASK]", tok.mask_id(), s.mask),
        ("[gMASK]", tok.gmask_id(), s.gmask),
        ("<sop>", tok.sop_id(), s.sop),
        ("eos", tok.eos_id(), s.eos),
    ];
    for (name, from_tok, from_cfg) in pairs {
        if from_tok != from_cfg {
            return Err(Error::Usage(format!(
                "tokenizer {} does not fit the model: {name} is {from_tok} in the tokenizer but {from_cfg} in the model config",
                path.display()
            )));
        }
    }
    if tok.vocab_size() > config.vocab_size {
        return Err(Error::Usage(format!(
            "tokenizer {} has {} ids, more than the model's vocab_size {}",
            path.display(),
            tok.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(Codec::Ice(Box::new(tok)))
}
