//! Weights under the ORIGINAL parameter names (`transformer.layers.N.attention.query_key_value.weight`,
//! ...): safetensors files (memory-mapped) and original SAT checkpoint folders with tensor-parallel
//! shards (spec §6), plus atomic saving.
//!
//! Every failure is a typed [`crate::Error`] naming the file and the tensor.

pub mod convert;
mod names;
mod random;
mod safetensors;
mod sat;
pub mod tp_convert;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};

pub use self::names::{is_ignored_name, param_specs, param_specs_for, ParamKind, ParamSpec};
pub use self::random::{deepnorm_std, RandomSource};
pub use self::safetensors::{save_safetensors, SafetensorsFile};
pub use self::sat::{
    merge_tp_shards, split_rule, write_torch_shard, SatCheckpoint, SplitRule, TorchEntry,
    TorchShard,
};
use crate::error::{Error, Result};

/// A checkpoint that can hand out tensors by their original name.
pub trait WeightSource {
    /// The file or folder, for error messages.
    fn location(&self) -> &Path;
    /// Every tensor name in the checkpoint.
    fn names(&self) -> Vec<String>;
    /// Shape of `name`, if present (no data is read).
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads `name` (native dtype, host memory). Missing → [`Error::MissingTensor`]. The data
    /// may borrow the source's memory map (see [`SafetensorsFile`]).
    fn load(&self, name: &str) -> Result<TensorData>;
    /// A hint that the caller has made its own copy of `name` and will not read the loaded data
    /// again soon: a memory-mapped source gives the pages back to the OS (they are read again
    /// from the file if touched). The default does nothing.
    fn release(&self, _name: &str) {}
    /// Rows `rows` of the matrix `name` (`[rows.len(), cols]`, native dtype), the same values as
    /// the rows of [`load`](Self::load): what lets a writer stream a tensor larger than memory
    /// (`glm init-random`, `glm quantize`) a block of rows at a time. `None` (the default) when the
    /// source cannot read part of `name` (the caller loads it whole).
    fn load_rows(&self, _name: &str, _rows: std::ops::Range<usize>) -> Option<Result<TensorData>> {
        None
    }
    /// A hint that `name` will be loaded soon: a memory-mapped source asks the OS to start reading
    /// its pages from disk in the background (`madvise(WILLNEED)`), so the read overlaps whatever
    /// the caller computes meanwhile. Does not wait for the data and never fails; the default
    /// does nothing.
    fn prefetch(&self, _name: &str) {}
    /// `name` exactly as tensor-parallel rank `rank` of `world` stores it, when this source is
    /// made of such shards (a SAT folder of `world` ranks): read from the rank's own file, no
    /// merge. `None` (the default) when the source does not store that split.
    fn stored_shard(&self, _name: &str, _rank: usize, _world: usize) -> Option<Result<TensorData>> {
        None
    }
    /// The shape of [`stored_shard`](Self::stored_shard), without reading data.
    fn stored_shard_shape(&self, _name: &str, _rank: usize, _world: usize) -> Option<Vec<usize>> {
        None
    }
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
        let converted = data.convert_dtype(dtype);
        source.release(name);
        converted
    })
}

/// `max(layer index) + 1` over names `transformer.layers.<i>.…`, or `None` when there are none
/// (saturating: an index of `usize::MAX` in a damaged file is a mismatch, not an overflow).
fn layer_count(names: &[String]) -> Option<usize> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix("transformer.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m.saturating_add(1))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename, fsync
/// of the folder. A crash leaves either the old file or the new one, never a torn one; on any
/// error the temporary file is removed and `path` is untouched. Safe to call from several threads
/// and processes at once (each call has its own temporary name); the last rename wins.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Counter that makes the temporary names of [`write_atomic_with`] unique within a process.
static ATOMIC_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes the temporary file on drop unless [`TempFile::keep`] was called (errors and panics
/// in the writer never leave it behind).
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Like [`write_atomic`], streaming: `write` fills the new file through a buffered writer (for
/// files too large to build in memory) and may return a value. If `write` fails (or panics) the
/// temporary file is removed and `path` keeps its old contents. `write` reports its own errors
/// (an I/O error of the writer is best named after `path`); failures of the temporary file, the
/// fsync or the rename come back as [`Error::Io`] converted into `E`.
pub fn write_atomic_with<T, E, F>(path: &Path, write: F) -> std::result::Result<T, E>
where
    F: FnOnce(&mut (dyn Write + Send)) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    // A fresh name per call (process id + counter); `create_new` never reuses an existing file.
    let mut attempt = 0;
    let (tmp, file) = loop {
        let n = ATOMIC_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => {
                break (
                    TempFile {
                        path: tmp,
                        armed: true,
                    },
                    f,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(Error::io(&tmp, e).into()),
        }
    };
    let mut writer = std::io::BufWriter::new(file);
    let value = write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(&tmp.path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp.path, e))?;
    drop(file);
    std::fs::rename(&tmp.path, path).map_err(|e| Error::io(path, e))?;
    tmp.keep();
    sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(value)
}

/// fsyncs a folder so a rename inside it is durable (a no-op where folders cannot be opened or
/// synced, e.g. on Windows or file systems that refuse it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir)?;
        match d.sync_all() {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_count_of_a_huge_index_saturates() {
        let names = |i: &str| vec![format!("transformer.layers.{i}.mlp.dense_4h_to_h.weight")];
        assert_eq!(layer_count(&names("3")), Some(4));
        assert_eq!(
            layer_count(&names(&usize::MAX.to_string())),
            Some(usize::MAX)
        );
        assert_eq!(layer_count(&names("x")), None);
    }
}
