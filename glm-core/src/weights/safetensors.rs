//! Memory-mapped safetensors reading and atomic writing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};

use super::{write_atomic, WeightSource};
use crate::error::{Error, Result};

/// A safetensors file mapped into memory; tensors are copied out one at a time on [`load`](WeightSource::load).
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
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
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The stored dtype of `name`.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.info(name).and_then(|i| to_burn_dtype(i.dtype))
    }
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
        let (start, end) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| {
                Error::corrupt(&self.path, format!("tensor `{name}` lies outside the file"))
            })?;
        Ok(TensorData::from_bytes_vec(
            bytes.to_vec(),
            info.shape.clone(),
            dtype,
        ))
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
