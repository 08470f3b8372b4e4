//! [`QuantizedWeight`]: a quantized `[out, in]` weight living on a burn device, with
//! `y = x · Wᵀ` computed by the fastest kernel available for the backend (fused CPU SIMD on
//! `Flex`, a CubeCL kernel on wgpu / CUDA) or by the generic dequantize-then-matmul reference.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use half::f16;

use crate::error::{QuantError, Result};
use crate::kernels;
use crate::quantize::QuantizedMatrix;
use crate::scheme::QuantScheme;

/// Shape and scheme of a quantized weight (what the device tensors alone do not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantLayout {
    /// INT8 or INT4.
    pub scheme: QuantScheme,
    /// Output features (rows).
    pub out_features: usize,
    /// Input features (columns).
    pub in_features: usize,
    /// Column groups with their own scales (tensor-parallel shards of a row-parallel layer).
    pub shards: usize,
}

impl QuantLayout {
    /// Bytes per row in the checkpoint layout (`in`, or `ceil(in/2)` for int4).
    pub fn row_bytes(&self) -> usize {
        self.scheme.row_bytes(self.in_features)
    }

    /// 32-bit words per row on the device (row bytes padded with zeros to a multiple of 4).
    pub fn words_per_row(&self) -> usize {
        self.row_bytes().div_ceil(4)
    }

    /// Input columns per shard.
    pub fn cols_per_shard(&self) -> usize {
        self.in_features / self.shards.max(1)
    }
}

/// A quantized linear weight on a burn device.
///
/// The bytes of the checkpoint layout (int8 values, or packed int4 with the even column in the
/// high nibble) are stored little-endian in 32-bit words, each row padded to whole words, so the
/// same tensor feeds every backend (WGSL has no 8-bit storage). Scales are fp16 values kept in an
/// f32 tensor.
///
/// # Shapes
/// - `packed`: `[out, words_per_row]` (I32)
/// - `scales`: `[shards, out]` (f32 holding fp16 values)
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// Packed bytes as little-endian 32-bit words, `[out, words_per_row]`.
    pub packed: Param<Tensor<B, 2, Int>>,
    /// Row scales per shard, `[shards, out]`.
    pub scales: Param<Tensor<B, 2>>,
    #[module(skip)]
    layout: QuantLayout,
}

impl<B: Backend> QuantizedWeight<B> {
    /// Uploads a host matrix to `device`.
    pub fn from_matrix(matrix: &QuantizedMatrix, device: &B::Device) -> Self {
        let layout = QuantLayout {
            scheme: matrix.scheme(),
            out_features: matrix.out_features(),
            in_features: matrix.in_features(),
            shards: matrix.shards(),
        };
        let row_bytes = layout.row_bytes();
        let words = layout.words_per_row();
        let mut padded = vec![0u8; layout.out_features * words * 4];
        if row_bytes > 0 {
            for (dst, src) in padded
                .chunks_exact_mut(words * 4)
                .zip(matrix.bytes().chunks_exact(row_bytes))
            {
                dst[..row_bytes].copy_from_slice(src);
            }
        }
        let words_i32: Vec<i32> = padded
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let packed = Tensor::<B, 2, Int>::from_data(
            TensorData::new(words_i32, [layout.out_features, words]),
            (device, DType::I32),
        );
        let scales: Vec<f32> = matrix.scales().iter().map(|s| s.to_f32()).collect();
        let scales = Tensor::<B, 2>::from_data(
            TensorData::new(scales, [layout.shards, layout.out_features]),
            (device, DType::F32),
        );
        Self {
            packed: Param::initialized(ParamId::new(), packed),
            scales: Param::from_tensor(scales),
            layout,
        }
    }

    /// Quantizes a float weight `[out, in]` on the host and uploads it (see
    /// [`QuantizedMatrix::quantize`]).
    ///
    /// # Shapes
    /// - `weight`: `[out, in]`
    pub fn quantize(
        name: &str,
        weight: &TensorData,
        shards: usize,
        scheme: QuantScheme,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self::from_matrix(
            &QuantizedMatrix::quantize(name, weight, shards, scheme)?,
            device,
        ))
    }

    /// Downloads the weight back into its host (checkpoint) form.
    pub fn to_matrix(&self, name: &str) -> Result<QuantizedMatrix> {
        let l = self.layout;
        let words = self.packed.val().into_data().convert_dtype(DType::I32);
        let words: &[i32] = words.as_slice().map_err(|e| QuantError::DtypeMismatch {
            tensor: name.to_string(),
            expected: "I32 words".into(),
            found: format!("{e:?}"),
        })?;
        let row_bytes = l.row_bytes();
        let wpr = l.words_per_row();
        let mut data = Vec::with_capacity(l.out_features * row_bytes);
        if wpr > 0 {
            for row in words.chunks_exact(wpr) {
                let bytes: Vec<u8> = row.iter().flat_map(|w| w.to_le_bytes()).collect();
                data.extend_from_slice(&bytes[..row_bytes]);
            }
        }
        let scales = self.scales.val().into_data().convert::<f32>();
        let scales: Vec<f16> = scales
            .as_slice::<f32>()
            .map_err(|e| QuantError::DtypeMismatch {
                tensor: format!("{name}{}", crate::scheme::SCALE_SUFFIX),
                expected: "F32".into(),
                found: format!("{e:?}"),
            })?
            .iter()
            .map(|&s| f16::from_f32(s))
            .collect();
        QuantizedMatrix::from_parts(
            name,
            l.scheme,
            l.out_features,
            l.in_features,
            l.shards,
            data,
            scales,
        )
    }

    /// Scheme, sizes and shard count.
    pub fn layout(&self) -> QuantLayout {
        self.layout
    }

    /// INT8 or INT4.
    pub fn scheme(&self) -> QuantScheme {
        self.layout.scheme
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.layout.out_features
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.layout.in_features
    }

    /// Bytes of quantized data plus fp16 scales (what a checkpoint stores; the device copy adds
    /// at most 3 bytes of row padding per row and keeps scales in f32).
    pub fn storage_bytes(&self) -> usize {
        let l = self.layout;
        l.out_features * l.row_bytes() + 2 * l.shards * l.out_features
    }

    /// The dequantized weight `f16(q · scale)` as f32 `[out, in]`, computed with generic tensor
    /// ops on the device (the reference path).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        kernels::reference::dequantize(self.packed.val(), self.scales.val(), self.layout)
    }

    /// `y = x · Wᵀ` with the best kernel for the backend: fused CPU kernel on `Flex`, CubeCL kernel
    /// on wgpu / CUDA (feature `cubecl`), otherwise [`forward_reference`](Self::forward_reference).
    /// The output has the dtype of `x`.
    ///
    /// # Shapes
    /// - `x`: `[rows, in]` → `[rows, out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.forward_fused(x) {
            Ok(y) => y,
            Err(x) => self.forward_reference(x),
        }
    }

    /// The fused kernel for this backend, or `Err(x)` (the input, untouched) when the backend has
    /// none (e.g. `Autodiff<_>` or a backend without a kernel).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]` → `[rows, out]`
    pub fn forward_fused(
        &self,
        x: Tensor<B, 2>,
    ) -> std::result::Result<Tensor<B, 2>, Tensor<B, 2>> {
        #[cfg(feature = "flex")]
        let x = match kernels::cpu::try_forward::<B>(&self.packed, &self.scales, self.layout, x) {
            Ok(y) => return Ok(y),
            Err(x) => x,
        };
        #[cfg(feature = "cubecl")]
        let x = match kernels::cube::try_forward::<B>(&self.packed, &self.scales, self.layout, x) {
            Ok(y) => return Ok(y),
            Err(x) => x,
        };
        Err(x)
    }

    /// Dequantize-then-matmul with generic tensor ops (runs on every backend).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]` → `[rows, out]`
    pub fn forward_reference(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = x.dtype();
        x.matmul(self.dequantize().cast(dtype).transpose())
    }
}
