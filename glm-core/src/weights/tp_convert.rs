//! Writing original SAT checkpoint folders at any tensor-parallel degree (GLM-130B
//! `tools/convert_tp.py`): from any checkpoint (a safetensors file, or a SAT folder of any degree),
//! each rank's `mp_rank_XX_model_states.pt` streamed one tensor at a time, optionally quantized
//! per shard (INT8 / INT4, `--quantization-bit-width`).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use glm_quant::scheme::SCALE_SUFFIX;
use glm_quant::{QuantScheme, QuantizedMatrix};

use super::sat::{write_torch_shard, TorchEntry};
use super::{is_float, SatCheckpoint, WeightSource};
use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::parallel::{chunk_range, slice_bytes, RankSource, TpLayout};
use crate::quantized::{quant_err, source_scheme};
use crate::rotary::{RotaryPrecision, RotaryTables};

/// The key SAT 0.2.12 saves the rotary `inv_freq` buffer under (never loaded; written so that
/// the folders match the original's).
pub const SAT_INV_FREQ: &str = "mixins.rotary-embedding.rotary_emb.inv_freq";

/// How to write a SAT folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SatWriteOptions {
    /// Tensor-parallel degree of the output (number of `mp_rank_XX` files).
    pub tensor_parallel: usize,
    /// Quantize a float source's four linears per layer (per-shard scales, as convert_tp.py
    /// quantizes after splitting). A quantized source is written as it is (same scheme only).
    pub quantization: Option<QuantScheme>,
    /// Dtype of the float tensors (the original checkpoints are F16).
    pub float_dtype: DType,
    /// The iteration folder (and `latest`); `None`: the source's iteration for a SAT folder,
    /// else `release`.
    pub iteration: Option<String>,
}

/// What [`write_sat_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SatWriteReport {
    /// The shard files, rank order.
    pub shards: Vec<PathBuf>,
    /// Tensors per shard.
    pub tensors: usize,
    /// Bytes written in all.
    pub bytes: u64,
}

/// One step of [`write_sat_checkpoint`].
#[derive(Debug, Clone)]
pub struct SatWriteProgress<'a> {
    /// The rank being written.
    pub rank: usize,
    /// Tensors written so far over all ranks.
    pub done: usize,
    /// Tensors to write over all ranks.
    pub total: usize,
    /// The tensor just written.
    pub tensor: &'a str,
}

/// The SAT state-dict order of one layer's tensors (weight, scale if quantized, bias).
fn layer_names(l: usize, quantized: bool) -> Vec<String> {
    let p = format!("transformer.layers.{l}.");
    let mut names = Vec::new();
    let linear = |names: &mut Vec<String>, suffix: &str| {
        names.push(format!("{p}{suffix}.weight"));
        if quantized {
            names.push(format!("{p}{suffix}.weight{SCALE_SUFFIX}"));
        }
        names.push(format!("{p}{suffix}.bias"));
    };
    names.push(format!("{p}input_layernorm.weight"));
    names.push(format!("{p}input_layernorm.bias"));
    linear(&mut names, "attention.query_key_value");
    linear(&mut names, "attention.dense");
    names.push(format!("{p}post_attention_layernorm.weight"));
    names.push(format!("{p}post_attention_layernorm.bias"));
    linear(&mut names, "mlp.dense_4h_to_h");
    linear(&mut names, "mlp.dense_h_to_4h");
    names
}

/// Every key of a SAT state dict in the original's order.
fn state_dict_names(config: &GlmConfig, quantized: bool) -> Vec<String> {
    let mut names = vec![
        SAT_INV_FREQ.to_string(),
        "transformer.word_embeddings.weight".to_string(),
    ];
    for l in 0..config.num_layers {
        names.extend(layer_names(l, quantized));
    }
    names.push("transformer.final_layernorm.weight".into());
    names.push("transformer.final_layernorm.bias".into());
    names
}

/// The rotary `inv_freq` buffer as SAT builds it (fp16). Recomputed rather than copied: SAT never
/// loads it, and a source's copy may be a convert_tp half of it.
fn inv_freq(config: &GlmConfig) -> Result<TensorData> {
    let tables = RotaryTables::new(
        config.head_dim(),
        config.max_sequence_length,
        config.rotary_base,
        RotaryPrecision::Fp16Sat,
    )?;
    let n = tables.inv_freq.len();
    Ok(TensorData::new(tables.inv_freq, [n]).convert_dtype(DType::F16))
}

/// Writes `source` as an original SAT folder at `output`: `latest` + `<iteration>/mp_rank_XX_model_states.pt`
/// for `options.tensor_parallel` ranks, split exactly as `convert_tp.py` splits (whole heads of
/// the per-head QKV, GeGLU halves, row-parallel input columns, `torch.chunk` vocabulary rows; the
/// rotary buffer chunked too, as convert_tp does), float tensors in `options.float_dtype`, and
/// with `options.quantization` every rank's four linears per layer quantized on their own (the
/// original's per-shard scales).
///
/// Streams one tensor at a time: memory is about twice the largest tensor (a SAT source of the
/// same degree hands each rank its own file's tensors; any other is sliced). Every file is written
/// atomically; `latest` is removed first and written last, stale `mp_rank` files of a larger
/// earlier degree are removed, so a folder is never a mix of two conversions. `progress` is called
/// after every tensor.
pub fn write_sat_checkpoint(
    source: &dyn WeightSource,
    config: &GlmConfig,
    output: &Path,
    options: &SatWriteOptions,
    progress: &mut dyn FnMut(&SatWriteProgress<'_>),
) -> Result<SatWriteReport> {
    config.validate()?;
    let layout = TpLayout::new(options.tensor_parallel);
    layout.check(config)?;
    if !is_float(options.float_dtype) {
        return Err(Error::InvalidInput(format!(
            "cannot write float tensors as {:?}",
            options.float_dtype
        )));
    }
    let stored = source_scheme(source, config)?;
    let quantize = match (stored, options.quantization) {
        (Some(have), Some(want)) if have != want => {
            return Err(Error::ConfigMismatch {
                file: source.location().to_path_buf(),
                reason: format!("checkpoint is {have}, {want} was requested"),
            })
        }
        (Some(have), None) => {
            return Err(Error::ConfigMismatch {
                file: source.location().to_path_buf(),
                reason: format!(
                    "checkpoint is {have}: writing it as float would need dequantized weights \
                     (pass the same --quantization-bit-width to keep it quantized)"
                ),
            })
        }
        (Some(_), Some(_)) => None,
        (None, want) => want,
    };
    let quantized = stored.is_some() || quantize.is_some();
    let iteration = match &options.iteration {
        Some(it) => it.clone(),
        None if source.location().join("latest").is_file() => {
            SatCheckpoint::open(source.location())?
                .iteration()
                .to_string()
        }
        None => "release".to_string(),
    };
    if iteration.is_empty() || iteration.contains(['/', '\\']) || iteration.starts_with('.') {
        return Err(Error::InvalidInput(format!(
            "bad iteration name {iteration:?}"
        )));
    }
    let dir = output.join(&iteration);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let latest = output.join("latest");
    match std::fs::remove_file(&latest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&latest, e)),
    }
    let world = layout.world;
    let full_inv_freq = inv_freq(config)?;
    let names = state_dict_names(config, quantized);
    let total = names.len() * world;
    let mut report = SatWriteReport {
        shards: Vec::with_capacity(world),
        tensors: names.len(),
        bytes: 0,
    };
    let mut done = 0;
    for rank in 0..world {
        let dims = layout.shard(config, rank)?;
        let view = RankSource::new(source, dims);
        view.check()?;
        let rotary_rows = chunk_range(full_inv_freq.shape[0], world, rank).unwrap_or(0..0);
        let mut entries = Vec::with_capacity(names.len());
        for name in &names {
            let (dtype, shape) = if name == SAT_INV_FREQ {
                (DType::F16, vec![rotary_rows.len()])
            } else if let Some(linear) = name.strip_suffix(SCALE_SUFFIX) {
                let weight = view.shape(linear).ok_or_else(|| missing(source, linear))?;
                (DType::F16, weight[..1].to_vec())
            } else if let Some(scheme) =
                quantize.filter(|_| crate::quantized::is_quantized_linear_weight(name))
            {
                let shape = view.shape(name).ok_or_else(|| missing(source, name))?;
                let [out, inp] = shape[..] else {
                    return Err(Error::InvalidInput(format!("tensor `{name}`: {shape:?}")));
                };
                (DType::I8, vec![out, scheme.row_bytes(inp)])
            } else if stored.is_some() && crate::quantized::is_quantized_linear_weight(name) {
                (
                    DType::I8,
                    view.shape(name).ok_or_else(|| missing(source, name))?,
                )
            } else {
                (
                    options.float_dtype,
                    view.shape(name).ok_or_else(|| missing(source, name))?,
                )
            };
            entries.push(TorchEntry {
                name: name.clone(),
                dtype,
                shape,
            });
        }
        let path = dir.join(format!("mp_rank_{rank:02}_model_states.pt"));
        let mut pending_scale: Option<TensorData> = None;
        let bytes = write_torch_shard(&path, &entries, &mut |i| {
            let entry = &entries[i];
            let name = entry.name.as_str();
            let data = if name == SAT_INV_FREQ {
                let n = full_inv_freq.shape[0];
                let bytes = slice_bytes(
                    full_inv_freq.as_bytes(),
                    &[n],
                    full_inv_freq.dtype.size(),
                    0,
                    std::slice::from_ref(&rotary_rows),
                )
                .ok_or_else(|| Error::InvalidInput(format!("`{name}`: {n} values")))?;
                TensorData::from_bytes_vec(bytes, [rotary_rows.len()], full_inv_freq.dtype)
            } else if name.ends_with(SCALE_SUFFIX) && quantize.is_some() {
                pending_scale
                    .take()
                    .ok_or_else(|| Error::InvalidInput(format!("`{name}` before its weight")))?
            } else if let Some(scheme) =
                quantize.filter(|_| crate::quantized::is_quantized_linear_weight(name))
            {
                let weight = view.load(name)?;
                let m = QuantizedMatrix::quantize(name, &weight, 1, scheme).map_err(quant_err)?;
                pending_scale = Some(m.scale_data());
                m.weight_data()
            } else {
                let data = view.load(name)?;
                if is_float(data.dtype) && entry.dtype != data.dtype {
                    data.convert_dtype(entry.dtype)
                } else {
                    data
                }
            };
            done += 1;
            progress(&SatWriteProgress {
                rank,
                done,
                total,
                tensor: name,
            });
            Ok(data)
        })?;
        report.bytes += bytes;
        report.shards.push(path);
    }
    // Ranks of an earlier, larger conversion would be read as part of this one.
    for stale in world.. {
        let path = dir.join(format!("mp_rank_{stale:02}_model_states.pt"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    crate::weights::write_atomic(&latest, iteration.as_bytes())?;
    Ok(report)
}

fn missing(source: &dyn WeightSource, name: &str) -> Error {
    Error::MissingTensor {
        file: source.location().to_path_buf(),
        tensor: name.to_string(),
    }
}
