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
//!
//! (Over 400 lines: GLM-130B's quantization of a whole model: load quantized or quantize on load, quantize in place, save, each checkpoint check.)

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use glm_quant::scheme::{METADATA_SCHEME_KEY, METADATA_TP_KEY, SCALE_SUFFIX};
pub use glm_quant::{QuantError, QuantScheme, QuantizedMatrix, QuantizedWeight};

pub use crate::weights::convert::{
    convert_checkpoint, open_checkpoint, read_quantization_marker, read_safetensors_metadata,
    stream_safetensors, ConvertProgress, ConvertReport,
};

use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::linear::{GlmLinear, LinearWeight};
use crate::model::{GlmModel, LinearLoader, ModelOptions};
use crate::parallel::ShardDims;
use crate::weights::{
    check_source, is_float, load_float, param_specs_for, split_rule, ParamKind, SatCheckpoint,
    SplitRule, WeightSource,
};

/// The four linears of every layer that GLM-130B quantizes (name suffixes of their prefixes).
pub const QUANTIZED_LINEARS: [&str; 4] = crate::layer::LINEAR_NAMES;

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

    pub(crate) fn shards(&self, prefix: &str, source_tp: usize) -> usize {
        if is_row_parallel(prefix) {
            self.tensor_parallel.unwrap_or(source_tp).max(1)
        } else {
            1
        }
    }
}

/// glm-quant errors surface as [`Error::InvalidInput`] (their message names the tensor).
pub(crate) fn quant_err(e: QuantError) -> Error {
    Error::InvalidInput(e.to_string())
}

/// Tensor-parallel degree of a source when it is a SAT folder, else 1.
pub(crate) fn source_tp(source: &dyn WeightSource) -> usize {
    let dir = source.location();
    if dir.join("latest").is_file() {
        SatCheckpoint::open(dir)
            .map(|c| c.tensor_parallel())
            .unwrap_or(1)
    } else {
        1
    }
}

/// The linear prefixes of a config, with `(out, in)` as `dims` holds them.
fn linear_prefixes(config: &GlmConfig, dims: &ShardDims) -> Vec<(String, usize, usize)> {
    param_specs_for(config, dims)
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
    source_scheme_for(source, config, &ShardDims::single(config))
}

/// [`source_scheme`] of a source holding the sizes `dims` (a tensor-parallel rank's view).
pub(crate) fn source_scheme_for(
    source: &dyn WeightSource,
    config: &GlmConfig,
    dims: &ShardDims,
) -> Result<Option<QuantScheme>> {
    let file = source.location().to_path_buf();
    let mut found: Option<Option<QuantScheme>> = None;
    for (prefix, out, inp) in linear_prefixes(config, dims) {
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
    dims: &ShardDims,
    scheme: QuantScheme,
) -> Result<()> {
    let specs: Vec<_> = param_specs_for(config, dims)
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
    for (prefix, out, inp) in linear_prefixes(config, dims) {
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
        let dims = ShardDims::single(config);
        Self::load_for(
            config,
            &dims,
            source,
            device,
            options,
            quant,
            source_tp(source),
        )
    }

    /// [`from_source_quantized`](Self::from_source_quantized) of the sizes `dims` (a
    /// tensor-parallel rank reading its view of the checkpoint); quantize-on-load computes
    /// row-parallel scales over `scale_tp` shards of each local weight.
    pub(crate) fn load_for(
        config: &GlmConfig,
        dims: &ShardDims,
        source: &dyn WeightSource,
        device: &B::Device,
        options: ModelOptions,
        quant: Option<QuantizeOptions>,
        scale_tp: usize,
    ) -> Result<Self> {
        config.validate()?;
        config.validate_rotary(options.rotary)?;
        let stored = source_scheme_for(source, config, dims)?;
        let dtype = options.dtype;
        let fetch = |name: &str| load_float(source, name, dtype);
        let bias = |prefix: &str| -> Result<Tensor<B, 1>> {
            Ok(Tensor::from_data(
                fetch(&format!("{prefix}.bias"))?,
                (device, dtype),
            ))
        };
        let build = |fetch: &mut dyn FnMut(&str, &[usize]) -> Result<TensorData>,
                     linear: &mut LinearLoader<'_, B>| {
            Self::build_first(
                config,
                dims,
                device,
                options,
                fetch,
                linear,
                config.num_layers,
            )
        };
        // The whole checkpoint is checked before anything is built.
        match stored {
            Some(scheme) => {
                if let Some(q) = quant.filter(|q| q.scheme != scheme) {
                    return Err(Error::ConfigMismatch {
                        file: source.location().to_path_buf(),
                        reason: format!("checkpoint is {scheme}, {} was requested", q.scheme),
                    });
                }
                check_quantized_source(source, config, dims, scheme)?;
            }
            None => check_source(
                source,
                &param_specs_for(config, dims),
                config.num_layers,
                &|_| false,
            )?,
        }
        match (stored, quant) {
            (None, None) => build(&mut |name, _| fetch(name), &mut |prefix, _out, inp| {
                load_linear(source, prefix, None, inp, device, dtype)
            }),
            (Some(scheme), _) => build(&mut |name, _| fetch(name), &mut |prefix, _out, inp| {
                load_linear(source, prefix, Some(scheme), inp, device, dtype)
            }),
            (None, Some(q)) => build(&mut |name, _| fetch(name), &mut |prefix, _out, _inp| {
                let name = format!("{prefix}.weight");
                let weight = source.load(&name)?;
                let m =
                    QuantizedMatrix::quantize(&name, &weight, q.shards(prefix, scale_tp), q.scheme)
                        .map_err(quant_err)?;
                drop(weight);
                source.release(&name);
                Ok(GlmLinear::quantized(
                    QuantizedWeight::from_matrix(&m, device),
                    bias(prefix)?,
                ))
            }),
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
        // A tensor-parallel rank's weights are one shard each: its scales are per-shard already.
        let tp = match self.tp {
            Some(_) => 1,
            None => quant.tensor_parallel.unwrap_or(1),
        };
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for (suffix, lin) in layer.linears_mut() {
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
            for lin in layer.linears().map(|(_, lin)| lin) {
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
            for lin in layer.linears().map(|(_, lin)| lin) {
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
