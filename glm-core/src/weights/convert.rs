//! Streaming conversion of checkpoints: any [`WeightSource`] written to one safetensors file
//! tensor by tensor ([`stream_safetensors`], behind `glm quantize`, `glm init-random` and
//! [`convert_checkpoint`]), checkpoint opening ([`open_checkpoint`]) and the safetensors header
//! marker of quantized files ([`read_quantization_marker`]).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use glm_quant::scheme::{METADATA_SCHEME_KEY, METADATA_TP_KEY, SCALE_SUFFIX};
use glm_quant::{QuantScheme, QuantizedMatrix};

use super::{is_float, is_ignored_name, SafetensorsFile, SatCheckpoint, WeightSource};
use crate::error::{Error, Result};
use crate::quantized::{is_quantized_linear_weight, quant_err, source_tp, QuantizeOptions};

/// The `__metadata__` map of a safetensors file (reads only the header).
pub fn read_safetensors_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    // The safetensors crate's own header parser, on the memory map (nothing but the header is
    // read from disk).
    let file = SafetensorsFile::open(path.as_ref())?;
    Ok(file.user_metadata())
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
/// The one place a checkpoint path is recognised (`glm quantize`, `glm generate`, `glm evaluate`,
/// `glm_infer::Glm::load` all go through it); the source can be shared
/// across threads (layer-streamed offload keeps it).
pub fn open_checkpoint(path: impl AsRef<Path>) -> Result<Box<dyn WeightSource + Send + Sync>> {
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

/// The scheme and scale shard count of an already quantized source, read from its first
/// `attention.dense` (square: its packed width tells INT8 from INT4) and that weight's scales;
/// `None` for a float source.
fn stored_quantization(source: &dyn WeightSource) -> Result<Option<(QuantScheme, usize)>> {
    let Some(scale) = source
        .names()
        .into_iter()
        .find(|n| n.ends_with(&format!("attention.dense.weight{SCALE_SUFFIX}")))
    else {
        return Ok(None);
    };
    let weight = scale.trim_end_matches(SCALE_SUFFIX).to_string();
    let bad = |reason: String| Error::InvalidInput(format!("`{weight}`: {reason}"));
    let shape = source.shape(&weight).ok_or_else(|| bad("missing".into()))?;
    let [out, cols] = shape[..] else {
        return Err(bad(format!("shape {shape:?}")));
    };
    let scheme = if cols == out {
        QuantScheme::Int8
    } else if cols == QuantScheme::Int4.row_bytes(out) {
        QuantScheme::Int4
    } else {
        return Err(bad(format!(
            "[{out}, {cols}] is neither INT8 nor INT4 of a square matrix"
        )));
    };
    let shards = match source.shape(&scale).as_deref() {
        Some([s, _]) => *s,
        _ => 1,
    };
    Ok(Some((scheme, shards.max(1))))
}

/// Writes every tensor of `source` (ignorable buffers skipped) to one safetensors file at `path`,
/// streamed one tensor at a time (memory: about one tensor in and one out; for a source that
/// reads row blocks, [`WeightSource::load_rows`], a few blocks of ≈ 4 M elements), header first,
/// through
/// [`write_atomic_with`](crate::weights::write_atomic_with). With `quant`, the four linears of
/// every layer become `.weight` (I8 / packed int4) + `.weight_scale` (F16) exactly as the
/// original quantizes them (per-shard scales for the row-parallel layers) and the header carries
/// the quantization marker; every other tensor is converted to `float_dtype`. An already quantized
/// source is copied as it is (integer weights, per-shard scales, the marker); `quant` must then
/// name its scheme or be `None`. `progress` is called
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
    // An already quantized source (a SAT folder written by convert_tp.py, or our own file) is
    // copied as it is: integer weights, scales (per shard) and the marker.
    let stored = stored_quantization(source)?;
    if let (Some((have, _)), Some(want)) = (stored, quant) {
        if have != want.scheme {
            return Err(Error::ConfigMismatch {
                file,
                reason: format!("checkpoint is {have}, {} was requested", want.scheme),
            });
        }
    }
    let quant = if stored.is_some() { None } else { quant };
    let tp = quant
        .and_then(|q| q.tensor_parallel)
        .unwrap_or_else(|| stored.map_or_else(|| source_tp(source), |(_, s)| s))
        .max(1);
    let quant = quant.map(|q| q.with_tensor_parallel(tp));
    let copied = |name: &str| {
        stored.is_some()
            && (is_quantized_linear_weight(name)
                || name
                    .strip_suffix(SCALE_SUFFIX)
                    .is_some_and(is_quantized_linear_weight))
    };
    // Plan: (name, dtype, shape) of every output tensor, sorted by name.
    let mut plan: Vec<(String, &'static str, Vec<usize>)> = Vec::new();
    for name in source.names() {
        if is_ignored_name(&name) {
            continue;
        }
        if copied(&name) {
            let shape = source.shape(&name).ok_or_else(|| Error::MissingTensor {
                file: file.clone(),
                tensor: name.clone(),
            })?;
            let dt = if name.ends_with(SCALE_SUFFIX) {
                "F16"
            } else {
                "I8"
            };
            plan.push((name, dt, shape));
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
    let metadata = match quant.map(|q| q.scheme).or(stored.map(|(s, _)| s)) {
        Some(scheme) => serde_json::json!({
            METADATA_SCHEME_KEY: scheme.marker(),
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
        for (i, (name, dt, shape)) in plan.iter().enumerate() {
            // Sources that read row blocks (random weights, a safetensors file) are streamed a
            // block of rows at a time: memory stays one block however large the tensor.
            let streamable = !copied(name) && pending_scale.as_ref().is_none_or(|(s, _)| s != name);
            if streamable {
                let quantize = quant
                    .filter(|_| is_quantized_linear_weight(name))
                    .map(|q| (q.scheme, q.shards(name.trim_end_matches(".weight"), tp)));
                if let Some((n, scale)) =
                    write_streamed(source, name, quantize, float_dtype, &mut w, &path)?
                {
                    let expected = shape.iter().product::<usize>() as u64 * elem(dt) as u64;
                    if n != expected {
                        return Err(Error::InvalidInput(format!(
                            "tensor `{name}`: streamed {n} bytes, the header says {expected}"
                        )));
                    }
                    written += n;
                    if let Some(scale) = scale {
                        quantized += 1;
                        pending_scale = Some((format!("{name}{SCALE_SUFFIX}"), scale));
                    }
                    progress(&ConvertProgress {
                        done: i + 1,
                        total,
                        tensor: name,
                        bytes: written,
                    });
                    continue;
                }
            }
            let mut float = false;
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
            } else if copied(name) {
                // Integer weights and fp16 scales of a quantized source, as stored.
                let data = source.load(name)?;
                let want = if name.ends_with(SCALE_SUFFIX) {
                    DType::F16
                } else {
                    DType::I8
                };
                if data.dtype != want {
                    return Err(Error::UnsupportedDtype {
                        file: file.clone(),
                        tensor: name.clone(),
                        dtype: format!("{:?}", data.dtype),
                    });
                }
                data
            } else {
                let data = source.load(name)?;
                if !is_float(data.dtype) {
                    return Err(Error::UnsupportedDtype {
                        file: file.clone(),
                        tensor: name.clone(),
                        dtype: format!("{:?}", data.dtype),
                    });
                }
                float = true;
                data
            };
            if data.shape.to_vec() != *shape {
                return Err(Error::ShapeMismatch {
                    file: file.clone(),
                    tensor: name.clone(),
                    expected: shape.clone(),
                    found: data.shape.to_vec(),
                });
            }
            // Float tensors are converted and written in blocks (memory: the tensor as stored
            // plus one block, no second converted copy); integer weights and scales as they are.
            let out_dtype = if float { float_dtype } else { data.dtype };
            written += write_converted(&mut w, &data, out_dtype).map_err(io)?;
            if float {
                drop(data);
                source.release(name);
            }
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

/// Converts a float checkpoint (see [`open_checkpoint`]) into a quantized safetensors file at
/// `output/model.safetensors` (`output` is created; a `config.json` next to the input is copied):
/// the four linears of every layer become `.weight` (I8 / packed int4) + `.weight_scale` (F16),
/// every other tensor is converted to `float_dtype` (F16 like the original checkpoints, or F32).
///
/// Streams one tensor at a time, one block of rows at a time from a safetensors input (memory:
/// tens of MB; a SAT folder is read a whole tensor at a time), writes the header first, through
/// [`write_atomic_with`](crate::weights::write_atomic_with) (a temporary file renamed at the end).
/// The config is written atomically too; a stale `output/config.json` is removed when the input
/// has none. An output folder that is the input's own folder (compared as canonical paths, so
/// `m` and `./m` or a symlink are the same) is refused: the float checkpoint would be replaced.
/// `progress` is called after every tensor.
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

/// Elements converted per block by [`write_converted`].
const CONVERT_BLOCK: usize = 1 << 22;

/// Writes the matrix `name` of `source` a block of about [`CONVERT_BLOCK`] elements (whole rows)
/// at a time, read with [`WeightSource::load_rows`]: quantized with `quantize = (scheme, shards)`
/// (rows are quantized independently, so block by block is the whole matrix's quantization), or
/// converted to `float_dtype`. A writer thread writes block `k` while block `k + 1` is drawn and
/// quantized. Returns the bytes written and, when quantized, the scales (`[out]` or
/// `[shards, out]`, F16); `None` when the source cannot read row blocks of `name` or `name` is not
/// a matrix (nothing was written: the caller loads it whole).
fn write_streamed(
    source: &dyn WeightSource,
    name: &str,
    quantize: Option<(QuantScheme, usize)>,
    float_dtype: DType,
    w: &mut (impl Write + Send),
    path: &Path,
) -> Result<Option<(u64, Option<TensorData>)>> {
    let Some([rows, cols]) = source
        .shape(name)
        .as_deref()
        .and_then(|s| <[usize; 2]>::try_from(s).ok())
    else {
        return Ok(None);
    };
    let per_block = (CONVERT_BLOCK / cols.max(1)).clamp(1, rows.max(1));
    let shards = quantize.map_or(0, |(_, s)| s);
    let mut scales = vec![half::f16::ZERO; shards.saturating_mul(rows)];
    // One block, ready to write.
    enum Ready {
        Quantized(QuantizedMatrix),
        Float(TensorData),
    }
    let block = |r0: usize, r1: usize| -> Result<Option<Ready>> {
        let block = match source.load_rows(name, r0..r1) {
            Some(block) => block?,
            None if r0 == 0 => return Ok(None),
            None => {
                return Err(Error::InvalidInput(format!(
                    "{}: tensor `{name}`: rows from {r0} could not be read",
                    source.location().display()
                )))
            }
        };
        if block.shape.to_vec() != [r1 - r0, cols] {
            return Err(Error::ShapeMismatch {
                file: source.location().to_path_buf(),
                tensor: name.to_string(),
                expected: vec![r1 - r0, cols],
                found: block.shape.to_vec(),
            });
        }
        Ok(Some(match quantize {
            Some((scheme, shards)) => Ready::Quantized(
                QuantizedMatrix::quantize(name, &block, shards, scheme)
                    .map_err(|e| match e {
                        // The block's row 0 is the tensor's row r0.
                        glm_quant::QuantError::NonFinite {
                            tensor,
                            row,
                            col,
                            value,
                        } => glm_quant::QuantError::NonFinite {
                            tensor,
                            row: row + r0,
                            col,
                            value,
                        },
                        e => e,
                    })
                    .map_err(quant_err)?,
            ),
            None if is_float(block.dtype) => Ready::Float(block.convert_dtype(float_dtype)),
            None => {
                return Err(Error::UnsupportedDtype {
                    file: source.location().to_path_buf(),
                    tensor: name.to_string(),
                    dtype: format!("{:?}", block.dtype),
                })
            }
        }))
    };
    // The first block tells whether the source reads row blocks at all.
    let first_end = per_block.min(rows);
    let Some(first) = block(0, first_end)? else {
        return Ok(None);
    };
    let written = std::thread::scope(|scope| -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Ready>(1);
        let writer = scope.spawn(move || -> std::io::Result<u64> {
            let mut n = 0u64;
            for ready in rx {
                let bytes = match &ready {
                    Ready::Quantized(m) => m.bytes(),
                    Ready::Float(data) => data.as_bytes(),
                };
                w.write_all(bytes)?;
                n += bytes.len() as u64;
            }
            Ok(n)
        });
        let mut next = Some((first, 0, first_end));
        let mut produced = Ok(());
        while let Some((ready, r0, r1)) = next.take() {
            if let Ready::Quantized(m) = &ready {
                // Block scales are [shards, r1 - r0]: placed at rows r0.. of [shards, rows].
                for (s, part) in m.scales().chunks_exact((r1 - r0).max(1)).enumerate() {
                    if let Some(dst) = scales.get_mut(s * rows + r0..s * rows + r1) {
                        dst.copy_from_slice(part);
                    }
                }
            }
            if tx.send(ready).is_err() {
                break; // the writer failed: its error is reported below
            }
            if r1 < rows {
                let end = (r1 + per_block).min(rows);
                match block(r1, end) {
                    Ok(Some(ready)) => next = Some((ready, r1, end)),
                    Ok(None) => {
                        produced = Err(Error::InvalidInput(format!(
                            "{}: tensor `{name}`: rows from {r1} could not be read",
                            source.location().display()
                        )))
                    }
                    Err(e) => produced = Err(e),
                }
            }
        }
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| Error::InvalidInput(format!("tensor `{name}`: the writer panicked")))?
            .map_err(|e| Error::io(path, e))?;
        produced.map(|()| written)
    })?;
    source.release(name);
    let scale = quantize.map(|(_, shards)| {
        let shape = if shards == 1 {
            vec![rows]
        } else {
            vec![shards, rows]
        };
        TensorData::new(scales, shape)
    });
    Ok(Some((written, scale)))
}

/// Writes `data` converted to `dtype`, [`CONVERT_BLOCK`] elements at a time; the bytes written.
fn write_converted(w: &mut impl Write, data: &TensorData, dtype: DType) -> std::io::Result<u64> {
    let bytes = data.as_bytes();
    if data.dtype == dtype {
        w.write_all(bytes)?;
        return Ok(bytes.len() as u64);
    }
    let size = data.dtype.size().max(1);
    let mut written = 0u64;
    for chunk in bytes.chunks(CONVERT_BLOCK * size) {
        let n = chunk.len() / size;
        let block =
            TensorData::from_bytes_vec(chunk.to_vec(), [n], data.dtype).convert_dtype(dtype);
        w.write_all(block.as_bytes())?;
        written += block.as_bytes().len() as u64;
    }
    Ok(written)
}
