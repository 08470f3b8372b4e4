//! Kernels for `y = x · Wᵀ` with a quantized `W`:
//! - [`reference`]: dequantize with generic tensor ops, then matmul (every backend);
//! - [`host`]: the fused dequantize-GEMV on host slices (SIMD: AVX-512 or AVX2+FMA+F16C when the CPU
//!   has it, portable scalar code otherwise, detected or chosen per call with
//!   [`host::Isa`]; multi-threaded with rayon), usable without burn;
//! - `cpu` (feature `flex`): runs [`host`] in place on `Flex` tensors;
//! - `cube` (feature `cubecl`): one CubeCL kernel for wgpu and CUDA.
//!
//! Every kernel reproduces the dequantized weight `f16(q · scale)` exactly; only the summation
//! order differs from the reference.

pub mod host;
pub mod reference;

#[cfg(feature = "flex")]
pub(crate) mod cpu;

#[cfg(feature = "cubecl")]
pub mod cube;

/// `value` as a `T` when it is one: how the backend-specific paths recognise their tensor
/// primitives behind burn's generic `Backend` types.
#[cfg(any(feature = "flex", feature = "cubecl"))]
fn downcast<T: 'static>(value: impl std::any::Any) -> Option<T> {
    (Box::new(value) as Box<dyn std::any::Any>)
        .downcast::<T>()
        .ok()
        .map(|b| *b)
}
