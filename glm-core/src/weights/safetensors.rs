//! Memory-mapped safetensors reading and atomic writing.
//!
//! Loading is zero-copy where it can be: a tensor whose bytes in the mapping are aligned for its
//! dtype becomes a [`TensorData`] that *borrows the mapping* (burn's shared, copy-on-write
//! [`Bytes`]), so a CPU model built from it holds no second copy of its weights: the resident set
//! is the mapped file pages the model touches. A tensor that must be converted or repacked (a
//! dtype change, quantize-on-load, a misaligned offset) is copied, and the caller hands its
//! pages back with [`WeightSource::release`] once the copy is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};

use super::{write_atomic, WeightSource};
use crate::error::{Error, Result};

/// A safetensors file mapped into memory; tensors are copied out one at a time on [`load`](WeightSource::load).
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.metadata.tensors().len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and parses its header (validates offsets against the file length).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is
        // outside what any mmap-based loader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::corrupt(&path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            path,
            mmap: Arc::new(mmap),
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The header's `__metadata__` map (string → string; empty when there is none).
    pub fn user_metadata(&self) -> std::collections::HashMap<String, String> {
        self.metadata.metadata().clone().unwrap_or_default()
    }

    /// The stored dtype of `name`.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.info(name).and_then(|i| to_burn_dtype(i.dtype))
    }

    /// The bytes of `name` in the mapping, `None` for an unknown or out-of-file tensor (for the
    /// page hints, which never fail).
    fn mapped_range(&self, name: &str) -> Option<std::ops::Range<usize>> {
        self.range(name, self.info(name)?).ok()
    }

    /// The byte range of `name` inside the mapping (checked against the file length).
    fn range(&self, name: &str, info: &TensorInfo) -> Result<std::ops::Range<usize>> {
        let (start, end) = info.data_offsets;
        let range = self
            .data_start
            .checked_add(start)
            .zip(self.data_start.checked_add(end))
            .map(|(a, b)| a..b)
            .filter(|r| r.start <= r.end && r.end <= self.mmap.len())
            .ok_or_else(|| {
                Error::corrupt(&self.path, format!("tensor `{name}` lies outside the file"))
            })?;
        Ok(range)
    }
}

/// A window of the shared mapping that owns a reference to it (the owner of a zero-copy tensor).
struct MappedSlice {
    map: Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        // The range was checked against the mapping's length when the slice was made.
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

/// Whether `GLM_NO_MMAP_TENSORS` asks for copies instead of tensors borrowing the mapping (for
/// measuring the difference).
fn zero_copy_enabled() -> bool {
    std::env::var_os("GLM_NO_MMAP_TENSORS").is_none()
}

impl WeightSource for SafetensorsFile {
    fn location(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|i| i.shape.clone())
    }

    fn load(&self, name: &str) -> Result<TensorData> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let dtype = to_burn_dtype(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
            file: self.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let range = self.range(name, info)?;
        let bytes = self.mmap.get(range.clone()).ok_or_else(|| {
            Error::corrupt(&self.path, format!("tensor `{name}` lies outside the file"))
        })?;
        let align = dtype.size().max(1);
        if zero_copy_enabled() && (bytes.as_ptr() as usize).is_multiple_of(align) {
            let shared = bytes::Bytes::from_owner(MappedSlice {
                map: Arc::clone(&self.mmap),
                range,
            });
            return Ok(TensorData::from_bytes(
                Bytes::from_shared(shared, AllocationProperty::File),
                info.shape.clone(),
                dtype,
            ));
        }
        Ok(TensorData::from_bytes_vec(
            bytes.to_vec(),
            info.shape.clone(),
            dtype,
        ))
    }

    fn release(&self, name: &str) {
        let Some(range) = self.mapped_range(name) else {
            return;
        };
        // SAFETY: the mapping is a read-only shared mapping of a regular file: MADV_DONTNEED only
        // drops this process's page-table entries, and a later access (a tensor still borrowing
        // these bytes) faults the same file contents back in. Failure only means the pages stay.
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                range.len(),
            )
        };
    }

    fn load_rows(&self, name: &str, rows: std::ops::Range<usize>) -> Option<Result<TensorData>> {
        let info = self.info(name)?;
        let dtype = to_burn_dtype(info.dtype)?;
        let [nrows, cols] = info.shape[..] else {
            return None;
        };
        Some((|| {
            let range = self.range(name, info)?;
            let bad = || {
                Error::InvalidInput(format!(
                    "{}: tensor `{name}`: rows {rows:?} of {nrows}",
                    self.path.display()
                ))
            };
            if rows.start > rows.end || rows.end > nrows {
                return Err(bad());
            }
            let row_bytes = cols.checked_mul(dtype.size()).ok_or_else(bad)?;
            let from = rows.start.checked_mul(row_bytes).ok_or_else(bad)?;
            let to = rows.end.checked_mul(row_bytes).ok_or_else(bad)?;
            let bytes = (to <= range.len())
                .then(|| self.mmap.get(range.start + from..range.start + to))
                .flatten()
                .ok_or_else(|| {
                    Error::corrupt(&self.path, format!("tensor `{name}` lies outside the file"))
                })?;
            Ok(TensorData::from_bytes_vec(
                bytes.to_vec(),
                vec![rows.len(), cols],
                dtype,
            ))
        })())
    }

    fn prefetch(&self, name: &str) {
        let Some(range) = self.mapped_range(name) else {
            return;
        };
        // Starts the kernel's read-ahead of the range and returns; failure only means no hint.
        let _ = self
            .mmap
            .advise_range(memmap2::Advice::WillNeed, range.start, range.len());
    }
}

fn to_burn_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

fn to_st_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        _ => return None,
    })
}

/// Writes named tensors as a safetensors file, atomically (temp + rename).
/// `metadata` goes into the header's `__metadata__`.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TensorData>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let dtype = to_st_dtype(data.dtype).ok_or_else(|| Error::UnsupportedDtype {
            file: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{:?}", data.dtype),
        })?;
        let view = TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
            .map_err(|e| Error::InvalidInput(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| Error::InvalidInput(format!("{}: cannot serialize: {e}", path.display())))?;
    write_atomic(path, &bytes)
}
