//! INT8 / INT4 GLM models (GLM-130B's weight-only quantization, spec §5) through `glm-quant`.
//!
//! The model type stays [`GlmModel`]: only the weights of the four linears of every layer
//! (`attention.query_key_value`, `attention.dense`, `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`) become
//! [`QuantizedWeight`]s; embeddings, biases and LayerNorms stay float.
//!
//! - [`GlmModel::from_source_quantized`]: load an already-quantized checkpoint (SAT
//!   `--from-quantized-checkpoint` semantics, biases kept) or quantize a float one on load
//!   (`--quantization-bit-width 4|8`), with per-shard scales for the row-parallel layers when a
//!   tensor-parallel degree is given.
//! - [`GlmModel::quantize`]: quantize the linears of a float model in place.
//! - [`GlmModel::save_quantized_safetensors`]: int8 / packed-int4 `.weight` + F16 `.weight_scale`
//!   under the original names, with a `__metadata__` marker (`glm_quant`, `tensor_parallel`).
//! - [`convert_checkpoint`]: float checkpoint (file or folder) → quantized safetensors, streamed one
//!   tensor at a time (what `glm quantize` runs).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use glm_quant::scheme::{METADATA_SCHEME_KEY, METADATA_TP_KEY, SCALE_SUFFIX};
pub use glm_quant::{QuantError, QuantScheme, QuantizedMatrix, QuantizedWeight};

use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::linear::{GlmLinear, LinearWeight};
use crate::model::{GlmModel, ModelOptions};
use crate::weights::{
    check_source, is_float, is_ignored_name, load_float, param_specs, split_rule, ParamKind,
    SafetensorsFile, SatCheckpoint, SplitRule, WeightSource,
};

/// The four linears of every layer that GLM-130B quantizes (name suffixes of their prefixes).
pub const QUANTIZED_LINEARS: [&str; 4] = [
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
];

/// Whether the linear `prefix` (e.g. `transformer.layers.0.attention.dense`) is row-parallel
/// (split along its INPUT dim across tensor-parallel ranks, hence one scale per row per shard).
pub fn is_row_parallel(prefix: &str) -> bool {
    split_rule(&format!("{prefix}.weight")) == SplitRule::Columns
}

/// Whether `name` is the weight of one of the quantized linears.
pub fn is_quantized_linear_weight(name: &str) -> bool {
    name.starts_with("transformer.layers.")
        && QUANTIZED_LINEARS
            .iter()
            .any(|l| name.strip_suffix(".weight").is_some_and(|p| p.ends_with(l)))
}

/// How to quantize float weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeOptions {
    /// INT8 or INT4.
    pub scheme: QuantScheme,
    /// Tensor-parallel degree the row-parallel scales are computed for (the original quantizes
    /// each TP shard on its own). `None`: the source's degree for a SAT folder, else 1.
    pub tensor_parallel: Option<usize>,
}

impl QuantizeOptions {
    /// `--quantization-bit-width bits` (4 or 8), no tensor parallelism.
    pub fn from_bits(bits: u32) -> Result<Self> {
        Ok(Self {
            scheme: QuantScheme::from_bits(bits).map_err(quant_err)?,
            tensor_parallel: None,
        })
    }

    /// Emulates the per-shard scales of tensor-parallel degree `tp`.
    pub fn with_tensor_parallel(mut self, tp: usize) -> Self {
        self.tensor_parallel = Some(tp);
        self
    }

    fn shards(&self, prefix: &str, source_tp: usize) -> usize {
        if is_row_parallel(prefix) {
            self.tensor_parallel.unwrap_or(source_tp).max(1)
        } else {
            1
        }
    }
}

/// glm-quant errors surface as [`Error::InvalidInput`] (their message names the tensor).
fn quant_err(e: QuantError) -> Error {
    Error::InvalidInput(e.to_string())
}

/// Tensor-parallel degree of a source when it is a SAT folder, else 1.
fn source_tp(source: &dyn WeightSource) -> usize {
    let dir = source.location();
    if dir.join("latest").is_file() {
        SatCheckpoint::open(dir)
            .map(|c| c.tensor_parallel())
            .unwrap_or(1)
    } else {
        1
    }
}

/// The linear prefixes of a config, with `(out, in)`.
fn linear_prefixes(config: &GlmConfig) -> Vec<(String, usize, usize)> {
    param_specs(config)
        .into_iter()
        .filter(|s| s.kind == ParamKind::LinearWeight)
        .filter_map(|s| {
            let prefix = s.name.strip_suffix(".weight")?.to_string();
            Some((prefix, s.shape[0], s.shape[1]))
        })
        .collect()
}

/// The scheme of a quantized checkpoint, inferred from its linear weights (`[out, in]` → int8,
/// `[out, ceil(in/2)]` → int4) and their `.weight_scale` tensors; `None` for a float checkpoint.
///
/// # Errors
/// Some linears quantized and others not, mixed schemes, or a shape that fits neither scheme.
pub fn source_scheme(source: &dyn WeightSource, config: &GlmConfig) -> Result<Option<QuantScheme>> {
    let file = source.location().to_path_buf();
    let mut found: Option<Option<QuantScheme>> = None;
    for (prefix, out, inp) in linear_prefixes(config) {
        let weight = format!("{prefix}.weight");
        let scale = format!("{weight}{SCALE_SUFFIX}");
        let this = if source.shape(&scale).is_some() {
            let shape = source.shape(&weight).ok_or_else(|| Error::MissingTensor {
                file: file.clone(),
                tensor: weight.clone(),
            })?;
            let scheme = match shape.as_slice() {
                [o, rb] if *o == out && *rb == inp => QuantScheme::Int8,
                [o, rb] if *o == out && *rb == QuantScheme::Int4.row_bytes(inp) => {
                    QuantScheme::Int4
                }
                _ => {
                    return Err(Error::ShapeMismatch {
                        file,
                        tensor: weight,
                        expected: vec![out, inp],
                        found: shape,
                    })
                }
            };
            Some(scheme)
        } else {
            None
        };
        match found {
            None => found = Some(this),
            Some(prev) if prev == this => {}
            Some(prev) => {
                return Err(Error::ConfigMismatch {
                    file,
                    reason: format!(
                        "`{weight}` is {} but an earlier linear is {}: a checkpoint is quantized all or nothing",
                        this.map_or("float".to_string(), |s| s.to_string()),
                        prev.map_or("float".to_string(), |s| s.to_string()),
                    ),
                })
            }
        }
    }
    Ok(found.flatten())
}

/// Checks a quantized source: every float tensor as [`check_source`] does, plus each linear's
/// `.weight` / `.weight_scale` shapes.
pub(crate) fn check_quantized_source(
    source: &dyn WeightSource,
    config: &GlmConfig,
    scheme: QuantScheme,
) -> Result<()> {
    let specs: Vec<_> = param_specs(config)
        .into_iter()
        .filter(|s| s.kind != ParamKind::LinearWeight)
        .collect();
    let extra = |name: &str| {
        is_quantized_linear_weight(name)
            || name
                .strip_suffix(SCALE_SUFFIX)
                .is_some_and(is_quantized_linear_weight)
    };
    check_source(source, &specs, config.num_layers, &extra)?;
    let file = source.location().to_path_buf();
    for (prefix, out, inp) in linear_prefixes(config) {
        let weight = format!("{prefix}.weight");
        let scale = format!("{weight}{SCALE_SUFFIX}");
        let expected = vec![out, scheme.row_bytes(inp)];
        match source.shape(&weight) {
            Some(s) if s == expected => {}
            Some(found) => {
                return Err(Error::ShapeMismatch {
                    file,
                    tensor: weight,
                    expected,
                    found,
                })
            }
            None => {
                return Err(Error::MissingTensor {
                    file,
                    tensor: weight,
                })
            }
        }
        match source.shape(&scale).as_deref() {
            Some([o]) if *o == out => {}
            Some([s, o]) if *o == out && *s > 0 && inp % s == 0 => {}
            Some(found) => {
                return Err(Error::ShapeMismatch {
                    file,
                    tensor: scale,
                    expected: vec![out],
                    found: found.to_vec(),
                })
            }
            None => {
                return Err(Error::MissingTensor {
                    file,
                    tensor: scale,
                })
            }
        }
    }
    Ok(())
}

/// Loads the linear `prefix` from `source` onto `device`: float weight + bias in `dtype`, or, for
/// a quantized checkpoint (`scheme`), its integer weight and F16 scales as stored. The pages of
/// the stored tensors are released once copied.
pub(crate) fn load_linear<B: Backend>(
    source: &dyn WeightSource,
    prefix: &str,
    scheme: Option<QuantScheme>,
    inp: usize,
    device: &B::Device,
    dtype: DType,
) -> Result<GlmLinear<B>> {
    let name = format!("{prefix}.weight");
    let bias = Tensor::from_data(
        load_float(source, &format!("{prefix}.bias"), dtype)?,
        (device, dtype),
    );
    let Some(scheme) = scheme else {
        let weight = Tensor::from_data(load_float(source, &name, dtype)?, (device, dtype));
        return Ok(GlmLinear::new(weight, bias));
    };
    let scale_name = format!("{name}{SCALE_SUFFIX}");
    let weight = source.load(&name)?;
    let scale = source.load(&scale_name)?;
    let m =
        QuantizedMatrix::from_checkpoint(&name, &weight, &scale, scheme, inp).map_err(quant_err)?;
    drop((weight, scale));
    source.release(&name);
    source.release(&scale_name);
    Ok(GlmLinear::quantized(
        QuantizedWeight::from_matrix(&m, device),
        bias,
    ))
}

impl<B: Backend> GlmModel<B> {
    /// Loads a model whose four linears per layer are quantized.
    ///
    /// - Quantized source (`<linear>.weight` I8 + `<linear>.weight_scale` F16, e.g. a SAT folder
    ///   written by `convert_tp.py --quantization-bit-width`, TP shards merged with per-shard
    ///   row-parallel scales, or a file saved by [`save_quantized_safetensors`](Self::save_quantized_safetensors)):
    ///   loaded as is, biases kept (the original's `--from-quantized-checkpoint`). `quant`, if
    ///   given, must name the same scheme.
    /// - Float source and `quant = Some(..)`: quantized on load exactly as the original (fp16
    ///   cast, fp16 scales, per-shard scales for row-parallel layers when a tensor-parallel degree is
    ///   given or the source is a SAT folder with several shards).
    /// - Float source and `quant = None`: a float model, as [`from_source`](Self::from_source).
    pub fn from_source_quantized(
        config: &GlmConfig,
        source: &dyn WeightSource,
        device: &B::Device,
        options: ModelOptions,
        quant: Option<QuantizeOptions>,
    ) -> Result<Self> {
        config.validate()?;
        config.validate_rotary(options.rotary)?;
        let stored = source_scheme(source, config)?;
        let dtype = options.dtype;
        let fetch = |name: &str| load_float(source, name, dtype);
        let bias = |prefix: &str| -> Result<Tensor<B, 1>> {
            Ok(Tensor::from_data(
                fetch(&format!("{prefix}.bias"))?,
                (device, dtype),
            ))
        };
        match (stored, quant) {
            (None, None) => Self::from_source(config, source, device, options),
            (Some(scheme), q) => {
                if let Some(q) = q.filter(|q| q.scheme != scheme) {
                    return Err(Error::ConfigMismatch {
                        file: source.location().to_path_buf(),
                        reason: format!("checkpoint is {scheme}, {} was requested", q.scheme),
                    });
                }
                check_quantized_source(source, config, scheme)?;
                Self::build(
                    config,
                    device,
                    options,
                    &mut |name, _| fetch(name),
                    &mut |prefix, _out, inp| {
                        let name = format!("{prefix}.weight");
                        let weight = source.load(&name)?;
                        let scale = source.load(&format!("{name}{SCALE_SUFFIX}"))?;
                        let m =
                            QuantizedMatrix::from_checkpoint(&name, &weight, &scale, scheme, inp)
                                .map_err(quant_err)?;
                        drop((weight, scale));
                        source.release(&name);
                        source.release(&format!("{name}{SCALE_SUFFIX}"));
                        Ok(GlmLinear::quantized(
                            QuantizedWeight::from_matrix(&m, device),
                            bias(prefix)?,
                        ))
                    },
                )
            }
            (None, Some(q)) => {
                check_source(source, &param_specs(config), config.num_layers, &|_| false)?;
                let tp = source_tp(source);
                Self::build(
                    config,
                    device,
                    options,
                    &mut |name, _| fetch(name),
                    &mut |prefix, _out, _inp| {
                        let name = format!("{prefix}.weight");
                        let weight = source.load(&name)?;
                        let m = QuantizedMatrix::quantize(
                            &name,
                            &weight,
                            q.shards(prefix, tp),
                            q.scheme,
                        )
                        .map_err(quant_err)?;
                        drop(weight);
                        source.release(&name);
                        Ok(GlmLinear::quantized(
                            QuantizedWeight::from_matrix(&m, device),
                            bias(prefix)?,
                        ))
                    },
                )
            }
        }
    }

    /// Quantizes every float linear of the model (on the host, bit-exact; the device copy of each
    /// float weight is released as it is replaced). Already-quantized linears are kept.
    pub fn quantize(mut self, quant: QuantizeOptions) -> Result<Self> {
        if self.offload.is_some() {
            return Err(Error::InvalidInput(
                "cannot quantize a layer-streamed (offloaded) model in place: quantize its \
                 checkpoint with `glm quantize` and offload that"
                    .into(),
            ));
        }
        let tp = quant.tensor_parallel.unwrap_or(1);
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let linears = [
                (
                    "attention.query_key_value",
                    &mut layer.attention.query_key_value,
                ),
                ("attention.dense", &mut layer.attention.dense),
                ("mlp.dense_h_to_4h", &mut layer.mlp.dense_h_to_4h),
                ("mlp.dense_4h_to_h", &mut layer.mlp.dense_4h_to_h),
            ];
            for (suffix, lin) in linears {
                let prefix = format!("transformer.layers.{l}.{suffix}");
                let Some(w) = lin.float_weight() else {
                    continue;
                };
                let device = w.device();
                let name = format!("{prefix}.weight");
                let m = QuantizedMatrix::quantize(
                    &name,
                    &w.into_data(),
                    quant.shards(&prefix, tp),
                    quant.scheme,
                )
                .map_err(quant_err)?;
                lin.weight = LinearWeight::Quantized(QuantizedWeight::from_matrix(&m, &device));
            }
        }
        Ok(self)
    }

    /// The scheme of the quantized linears and the largest shard count among them, or `None` for
    /// a float model.
    pub fn quantization(&self) -> Option<(QuantScheme, usize)> {
        let mut found = None;
        for layer in &self.layers {
            for lin in [
                &layer.attention.query_key_value,
                &layer.attention.dense,
                &layer.mlp.dense_h_to_4h,
                &layer.mlp.dense_4h_to_h,
            ] {
                if let Some(q) = lin.quantized_weight() {
                    let shards = found.map_or(1, |(_, s)| s).max(q.layout().shards);
                    found = Some((q.scheme(), shards));
                }
            }
        }
        found
    }

    /// Bytes of every parameter as a checkpoint stores it (float tensors in the model dtype,
    /// quantized weights as int8 / packed int4 + fp16 scales) — also what one batch-1 decode step
    /// streams from memory (every matrix once, the tied LM head reads the whole embedding).
    pub fn weight_bytes(&self) -> usize {
        let size = |t: Tensor<B, 1>| t.shape().num_elements() * t.dtype().size();
        let emb = self.word_embeddings.val();
        let mut total = emb.shape().num_elements() * emb.dtype().size();
        total += size(self.final_layernorm.weight.val()) + size(self.final_layernorm.bias.val());
        for layer in &self.layers {
            for ln in [&layer.input_layernorm, &layer.post_attention_layernorm] {
                total += size(ln.weight.val()) + size(ln.bias.val());
            }
            for lin in [
                &layer.attention.query_key_value,
                &layer.attention.dense,
                &layer.mlp.dense_h_to_4h,
                &layer.mlp.dense_4h_to_h,
            ] {
                total += lin.weight_bytes() + size(lin.bias.val());
            }
        }
        total
    }

    /// Saves the model as safetensors under the original names: quantized linears as
    /// `<linear>.weight` (I8, packed int4 for INT4) + `<linear>.weight_scale` (F16 `[out]`, or
    /// `[shards, out]` for per-shard scales), float tensors converted to `float_dtype`, and the
    /// `__metadata__` marker `{"glm_quant": "int8"|"int4", "tensor_parallel": "<shards>"}`
    /// (atomic: temp + rename). A float model is saved without the marker.
    pub fn save_quantized_safetensors(
        &self,
        path: impl AsRef<Path>,
        float_dtype: DType,
    ) -> Result<()> {
        let tensors: BTreeMap<String, TensorData> = self
            .named_tensors()?
            .into_iter()
            .map(|(k, v)| {
                let keep = !is_float(v.dtype) || k.ends_with(SCALE_SUFFIX);
                let v = if keep {
                    v
                } else {
                    v.convert_dtype(float_dtype)
                };
                (k, v)
            })
            .collect();
        let metadata = self.quantization().map(|(scheme, shards)| {
            HashMap::from([
                (METADATA_SCHEME_KEY.to_string(), scheme.marker().to_string()),
                (METADATA_TP_KEY.to_string(), shards.to_string()),
            ])
        });
        crate::weights::save_safetensors(path.as_ref(), &tensors, metadata)
    }
}

/// The `__metadata__` map of a safetensors file (reads only the header).
pub fn read_safetensors_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > file_len.saturating_sub(8) || len > 100 << 20 {
        return Err(Error::corrupt(
            path,
            format!("header length {len} exceeds the file"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::corrupt(path, format!("header is not JSON: {e}")))?;
    let mut out = HashMap::new();
    if let Some(meta) = json.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

/// The quantization marker of a safetensors file: `Some((scheme, tensor_parallel))` when it was
/// written by glm-quant, `None` for a file without a marker.
pub fn read_quantization_marker(path: impl AsRef<Path>) -> Result<Option<(QuantScheme, usize)>> {
    let path = path.as_ref();
    let meta = read_safetensors_metadata(path)?;
    let Some(marker) = meta.get(METADATA_SCHEME_KEY) else {
        return Ok(None);
    };
    let scheme =
        QuantScheme::from_marker(marker).map_err(|e| Error::corrupt(path, e.to_string()))?;
    let tp = match meta.get(METADATA_TP_KEY) {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| Error::corrupt(path, format!("bad {METADATA_TP_KEY} {s:?}")))?,
        None => 1,
    };
    Ok(Some((scheme, tp)))
}

/// Opens a checkpoint: a safetensors file, a folder holding `model.safetensors`, or an original
/// SAT folder (`latest` + `mp_rank_XX_model_states.pt`, shards merged).
pub fn open_checkpoint(path: impl AsRef<Path>) -> Result<Box<dyn WeightSource>> {
    let path = path.as_ref();
    if path.is_dir() {
        if path.join("latest").is_file() {
            return Ok(Box::new(SatCheckpoint::open(path)?));
        }
        return Ok(Box::new(SafetensorsFile::open(
            path.join("model.safetensors"),
        )?));
    }
    Ok(Box::new(SafetensorsFile::open(path)?))
}

/// One step of [`convert_checkpoint`].
#[derive(Debug, Clone)]
pub struct ConvertProgress<'a> {
    /// Tensors written so far (including this one).
    pub done: usize,
    /// Tensors to write.
    pub total: usize,
    /// The tensor just written.
    pub tensor: &'a str,
    /// Bytes written so far.
    pub bytes: u64,
}

/// What [`convert_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// The safetensors file.
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Linears quantized.
    pub quantized: usize,
    /// File size.
    pub bytes: u64,
    /// The tensor-parallel degree the row-parallel scales were computed for.
    pub tensor_parallel: usize,
}

fn st_dtype(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I8 => "I8",
        _ => return None,
    })
}

/// Converts a float checkpoint (see [`open_checkpoint`]) into a quantized safetensors file at
/// `output/model.safetensors` (`output` is created; a `config.json` next to the input is copied):
/// the four linears of every layer become `.weight` (I8 / packed int4) + `.weight_scale` (F16),
/// every other tensor is converted to `float_dtype` (F16 like the original checkpoints, or F32).
///
/// Streams one tensor at a time (memory: one tensor), writes the header first, through
/// [`write_atomic_with`](crate::weights::write_atomic_with) (a temporary file renamed at the end).
/// The config is written atomically too; a stale `output/config.json` is removed when the input
/// has none. An output folder that is the input's own folder (compared as canonical paths, so
/// `m` and `./m` or a symlink are the same) is refused: the float checkpoint would be replaced.
/// `progress` is called after every tensor.
/// Writes every tensor of `source` (ignorable buffers skipped) to one safetensors file at `path`,
/// streamed one tensor at a time (memory: about one tensor in and one out), header first, through
/// [`write_atomic_with`](crate::weights::write_atomic_with). With `quant`, the four linears of
/// every layer become `.weight` (I8 / packed int4) + `.weight_scale` (F16) exactly as the
/// original quantizes them (per-shard scales for the row-parallel layers) and the header carries
/// the quantization marker; every other tensor is converted to `float_dtype`. `progress` is called
/// after every tensor. What [`convert_checkpoint`] and `glm init-random` write.
pub fn stream_safetensors(
    source: &dyn WeightSource,
    path: &Path,
    quant: Option<QuantizeOptions>,
    float_dtype: DType,
    progress: &mut dyn FnMut(&ConvertProgress<'_>),
) -> Result<ConvertReport> {
    let file = source.location().to_path_buf();
    let out_dtype = st_dtype(float_dtype)
        .filter(|_| is_float(float_dtype))
        .ok_or_else(|| {
            Error::InvalidInput(format!("cannot write float tensors as {float_dtype:?}"))
        })?;
    let tp = quant
        .and_then(|q| q.tensor_parallel)
        .unwrap_or_else(|| source_tp(source))
        .max(1);
    let quant = quant.map(|q| q.with_tensor_parallel(tp));
    // Plan: (name, dtype, shape) of every output tensor, sorted by name.
    let mut plan: Vec<(String, &'static str, Vec<usize>)> = Vec::new();
    for name in source.names() {
        if is_ignored_name(&name) {
            continue;
        }
        if name.ends_with(SCALE_SUFFIX) {
            return Err(Error::InvalidInput(format!(
                "{}: `{name}` shows the checkpoint is already quantized",
                file.display()
            )));
        }
        let shape = source.shape(&name).ok_or_else(|| Error::MissingTensor {
            file: file.clone(),
            tensor: name.clone(),
        })?;
        if let Some(quant) = quant.filter(|_| is_quantized_linear_weight(&name)) {
            let [out, inp] = shape[..] else {
                return Err(Error::ShapeMismatch {
                    file,
                    tensor: name,
                    expected: vec![0, 0],
                    found: shape,
                });
            };
            let shards = quant.shards(name.trim_end_matches(".weight"), tp);
            let scale_shape = if shards == 1 {
                vec![out]
            } else {
                vec![shards, out]
            };
            plan.push((format!("{name}{SCALE_SUFFIX}"), "F16", scale_shape));
            plan.push((name, "I8", vec![out, quant.scheme.row_bytes(inp)]));
        } else {
            plan.push((name, out_dtype, shape));
        }
    }
    plan.sort_by(|a, b| a.0.cmp(&b.0));
    let elem = |dt: &str| match dt {
        "F64" => 8,
        "F32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    };
    let mut header = serde_json::Map::new();
    let metadata = match quant {
        Some(quant) => serde_json::json!({
            METADATA_SCHEME_KEY: quant.scheme.marker(),
            METADATA_TP_KEY: tp.to_string(),
        }),
        None => serde_json::json!({ "format": "pt" }),
    };
    header.insert("__metadata__".into(), metadata);
    let mut offset = 0usize;
    for (name, dt, shape) in &plan {
        let n = shape
            .iter()
            .try_fold(elem(dt), |a: usize, &d| a.checked_mul(d))
            .and_then(|n| offset.checked_add(n).map(|end| (n, end)))
            .ok_or_else(|| Error::InvalidInput(format!("tensor `{name}`: {shape:?} overflows")))?;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [offset, n.1]}),
        );
        offset = n.1;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::InvalidInput(format!("cannot encode header: {e}")))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let path = path.to_path_buf();
    crate::weights::write_atomic_with(&path, |out| -> Result<ConvertReport> {
        let mut w = BufWriter::with_capacity(8 << 20, out);
        let io = |e| Error::io(&path, e);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header).map_err(io)?;
        let mut written = (8 + header.len()) as u64;
        let mut quantized = 0;
        let total = plan.len();
        // Names are sorted, so `<linear>.weight` comes right before `<linear>.weight_scale`.
        let mut pending_scale: Option<(String, TensorData)> = None;
        for (i, (name, _, shape)) in plan.iter().enumerate() {
            let data = if let Some(quant) = quant.filter(|_| is_quantized_linear_weight(name)) {
                let weight = source.load(name)?;
                let prefix = name.trim_end_matches(".weight");
                let m = QuantizedMatrix::quantize(
                    name,
                    &weight,
                    quant.shards(prefix, tp),
                    quant.scheme,
                )
                .map_err(quant_err)?;
                drop(weight);
                source.release(name);
                quantized += 1;
                pending_scale = Some((format!("{name}{SCALE_SUFFIX}"), m.scale_data()));
                m.weight_data()
            } else if let Some((_, scale)) = pending_scale.take_if(|(s, _)| s == name) {
                scale
            } else {
                load_float(source, name, float_dtype)?
            };
            if data.shape.to_vec() != *shape {
                return Err(Error::ShapeMismatch {
                    file: file.clone(),
                    tensor: name.clone(),
                    expected: shape.clone(),
                    found: data.shape.to_vec(),
                });
            }
            w.write_all(data.as_bytes()).map_err(io)?;
            written += data.as_bytes().len() as u64;
            progress(&ConvertProgress {
                done: i + 1,
                total,
                tensor: name,
                bytes: written,
            });
        }
        w.flush().map_err(io)?;
        Ok(ConvertReport {
            path: path.clone(),
            tensors: total,
            quantized,
            bytes: written,
            tensor_parallel: tp,
        })
    })
}

pub fn convert_checkpoint(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    quant: QuantizeOptions,
    float_dtype: DType,
    progress: &mut dyn FnMut(&ConvertProgress<'_>),
) -> Result<ConvertReport> {
    let (input, output) = (input.as_ref(), output.as_ref());
    let source = open_checkpoint(input)?;
    let source: &dyn WeightSource = source.as_ref();
    // What `stream_safetensors` refuses, refused before any folder is created.
    if st_dtype(float_dtype)
        .filter(|_| is_float(float_dtype))
        .is_none()
    {
        return Err(Error::InvalidInput(format!(
            "cannot write float tensors as {float_dtype:?}"
        )));
    }
    if let Some(name) = source
        .names()
        .into_iter()
        .find(|n| n.ends_with(SCALE_SUFFIX))
    {
        return Err(Error::InvalidInput(format!(
            "{}: `{name}` shows the checkpoint is already quantized",
            source.location().display()
        )));
    }
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    let input_dir = if input.is_dir() {
        input
    } else {
        input
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
    if canonical(input_dir)? == canonical(output)? {
        return Err(Error::InvalidInput(format!(
            "{}: the output folder is the input's folder ({}); quantizing in place would replace \
             the float checkpoint and its config, choose another output folder",
            output.display(),
            input_dir.display()
        )));
    }
    let config = input_dir.join("config.json");
    let config_bytes = if config.is_file() {
        Some(std::fs::read(&config).map_err(|e| Error::io(&config, e))?)
    } else {
        None
    };
    // The old config goes first: a crash later leaves a model without a config (an error on
    // load), never a new model next to a config of another run.
    let config_dst = output.join("config.json");
    match std::fs::remove_file(&config_dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&config_dst, e)),
    }
    let path = output.join("model.safetensors");
    let report = stream_safetensors(source, &path, Some(quant), float_dtype, progress)?;
    if let Some(bytes) = config_bytes {
        crate::weights::write_atomic(&config_dst, &bytes)?;
    }
    Ok(report)
}
