//! Weights under the ORIGINAL parameter names (`transformer.layers.N.attention.query_key_value.weight`,
//! ...): safetensors files (memory-mapped) and original SAT checkpoint folders with tensor-parallel
//! shards (spec §6), plus atomic saving.
//!
//! Every failure is a typed [`Error`](crate::Error) naming the file and the tensor.

mod names;
mod safetensors;
mod sat;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};

pub use self::names::{is_ignored_name, param_specs, ParamKind, ParamSpec};
pub use self::safetensors::{save_safetensors, SafetensorsFile};
pub use self::sat::{merge_tp_shards, split_rule, SatCheckpoint, SplitRule, TorchShard};
use crate::error::{Error, Result};

/// A checkpoint that can hand out tensors by their original name.
pub trait WeightSource {
    /// The file or folder, for error messages.
    fn location(&self) -> &Path;
    /// Every tensor name in the checkpoint.
    fn names(&self) -> Vec<String>;
    /// Shape of `name`, if present (no data is read).
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads `name` (native dtype, host memory). Missing → [`Error::MissingTensor`].
    fn load(&self, name: &str) -> Result<TensorData>;
}

/// Float dtypes a model can be built in.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Checks that the source holds exactly the tensors `specs` describes (plus ignorable buffers such
/// as rotary `inv_freq`, and `extra` allowed names), that the layer count matches and that every shape is right.
pub fn check_source(
    source: &dyn WeightSource,
    specs: &[ParamSpec],
    num_layers: usize,
    extra: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let file = source.location().to_path_buf();
    let names = source.names();
    if let Some(found) = layer_count(&names) {
        if found != num_layers {
            return Err(Error::ConfigMismatch {
                file,
                reason: format!(
                    "checkpoint has {found} layers, config says num_layers = {num_layers}"
                ),
            });
        }
    }
    let expected: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in &names {
        if !expected.contains(name.as_str()) && !is_ignored_name(name) && !extra(name) {
            return Err(Error::UnexpectedTensor {
                file,
                tensor: name.clone(),
            });
        }
    }
    for spec in specs {
        match source.shape(&spec.name) {
            None => {
                return Err(Error::MissingTensor {
                    file,
                    tensor: spec.name.clone(),
                })
            }
            Some(found) if found != spec.shape => {
                return Err(Error::ShapeMismatch {
                    file,
                    tensor: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Loads a float tensor and converts it to `dtype` (checks the stored dtype).
pub fn load_float(source: &dyn WeightSource, name: &str, dtype: DType) -> Result<TensorData> {
    let data = source.load(name)?;
    if !is_float(data.dtype) {
        return Err(Error::UnsupportedDtype {
            file: source.location().to_path_buf(),
            tensor: name.to_string(),
            dtype: format!("{:?}", data.dtype),
        });
    }
    Ok(if data.dtype == dtype {
        data
    } else {
        data.convert_dtype(dtype)
    })
}

/// `max(layer index) + 1` over names `transformer.layers.<i>.…`, or `None` when there are none.
fn layer_count(names: &[String]) -> Option<usize> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix("transformer.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
