//! # glm-quant
//!
//! GLM-130B's weight-only quantization (INT8 / INT4 weights, float activations), bit for bit as the
//! original (`quantization/`, `cuda/quantization.cu`, `tools/convert_tp.py`), on
//! [burn](https://burn.dev), with kernels that make quantized decoding faster than float:
//!
//! - [`QuantScheme`]: INT8 or INT4, marker strings for checkpoint metadata.
//! - [`QuantizedMatrix`]: the bit-exact host quantizer (fp16 row scales, fp16 quotient then
//!   round-half-to-even, per-shard scales for row-parallel layers), checkpoint tensors in and out.
//! - [`pack`]: INT4 packing, even column in the HIGH nibble.
//! - [`QuantizedWeight`]: a quantized weight on a burn device; `forward` picks the fused CPU kernel
//!   on `Flex`, the CubeCL kernel on wgpu / CUDA, or the dequantize-then-matmul reference.
//! - [`kernels`]: the reference, host SIMD and CubeCL kernels.
//!
//! This crate knows nothing about the model: `glm-core` plugs [`QuantizedWeight`] into its linears.
//!
//! # Example
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Tensor, TensorData};
//! use glm_quant::{QuantScheme, QuantizedMatrix, QuantizedWeight};
//!
//! // A [3, 4] weight quantized to int4 with one scale per row.
//! let w = TensorData::new(vec![0.5f32, -1.0, 0.25, 0.0, 2.0, 1.0, -2.0, 0.5, 0.1, 0.2, 0.3, 0.7], [3, 4]);
//! let m = QuantizedMatrix::quantize("example.weight", &w, 1, QuantScheme::Int4).unwrap();
//! assert_eq!(m.values()[..4], [4, -7, 2, 0]);
//!
//! let device = Default::default();
//! let q = QuantizedWeight::<Flex>::from_matrix(&m, &device);
//! let x = Tensor::<Flex, 2>::ones([2, 4], &device);
//! let y = q.forward(x.clone()); // fused kernel on the CPU backend
//! let r = q.forward_reference(x); // dequantize + matmul
//! assert_eq!(y.dims(), [2, 3]);
//! y.into_data().assert_approx_eq::<f32>(&r.into_data(), Default::default());
//! ```

#![warn(missing_docs)]
// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod kernels;
pub mod pack;
pub mod quantize;
pub mod scheme;
pub mod weight;

pub use error::{QuantError, Result};
pub use quantize::QuantizedMatrix;
pub use scheme::QuantScheme;
pub use weight::{QuantLayout, QuantizedWeight};

/// Runs the README's example as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;
