//! Fixture access for glm-quant's golden tests: `GLM_FIXTURES` (relative values are taken from the
//! workspace root), else `shared/fixtures` next to the workspace. A missing folder FAILS the test.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{DType, TensorData};
use safetensors::SafeTensors;

pub fn fixtures() -> PathBuf {
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let path = match std::env::var("GLM_FIXTURES") {
        Ok(v) if PathBuf::from(&v).is_absolute() => PathBuf::from(v),
        Ok(v) => workspace.join(v),
        Err(_) => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures"
        )),
    };
    assert!(
        path.is_dir(),
        "fixture folder {} not found (set GLM_FIXTURES)",
        path.display()
    );
    path
}

/// A whole safetensors fixture file, tensors converted to burn `TensorData`.
pub struct Fixture {
    pub bytes: Vec<u8>,
    pub name: String,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let path = fixtures().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self {
            bytes,
            name: name.to_string(),
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .st()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        n.sort();
        n
    }

    pub fn get(&self, key: &str) -> TensorData {
        let st = self.st();
        let view = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: tensor `{key}`: {e}", self.name));
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::I8 => DType::I8,
            other => panic!("{}: `{key}` has dtype {other:?}", self.name),
        };
        TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype)
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        self.get(key).convert::<f32>().to_vec::<f32>().unwrap()
    }
}

pub fn i8s(d: &TensorData) -> Vec<i8> {
    bytemuck::cast_slice(d.as_bytes()).to_vec()
}

pub fn f16_bits(d: &TensorData) -> Vec<u16> {
    assert_eq!(d.dtype, DType::F16);
    bytemuck::cast_slice(d.as_bytes()).to_vec()
}

/// The quantized linears under a prefix, taken from a fixture's `*.weight_scale` names.
pub fn quantized_linears(file: &Fixture) -> Vec<String> {
    let linears: Vec<String> = file
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(".weight_scale").map(str::to_string))
        .collect();
    assert!(
        !linears.is_empty(),
        "{} has no *.weight_scale tensors",
        file.name
    );
    linears
}
