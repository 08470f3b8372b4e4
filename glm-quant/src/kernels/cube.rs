//! One CubeCL kernel pair for every cubecl backend (wgpu, CUDA): a fused dequantize-GEMV (one
//! cube per output row and activation row, threads stride over the row's packed words, shared
//! memory reduction) for decode, and a dequantize kernel feeding burn's matmul for larger inputs.
//!
//! The dequantized weight is exactly `f16(q · scale)`: `q · scale` is exact in f32 and is rounded
//! to fp16 precision with integer operations (round-half-to-even on the mantissa), so no fp16
//! support is needed on the device.
//!
//! Dispatch is by type: the path is taken when `B`'s float primitive is a `CubeTensor` of the wgpu
//! or CUDA runtime (`CubeBackend<R, ..>`, i.e. without burn's `fusion` feature); other backends fall
//! back to the reference.

use std::any::TypeId;

use burn::module::Param;
use burn::tensor::{backend::Backend, DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::downcast;
use crate::scheme::QuantScheme;
use crate::weight::QuantLayout;

/// Threads per cube of the GEMV kernel (a power of two ≤ every backend's limit).
const CUBE_SIZE: u32 = 64;
/// Largest grid dimension used (WebGPU's guaranteed minimum is 65535).
const MAX_GRID: usize = 65535;
/// Above this many activation rows: dequantize once, then burn's matmul.
pub const FUSED_MAX_ROWS: usize = 8;

/// `f16(p)` as f32 for `p = q · scale` (q integer, scale an fp16 value): rounds the mantissa to
/// 10 bits, ties to even; overflow → ±inf. Below the fp16 normal range `p` is a multiple of
/// 2^-24 with fewer than 11 significant bits, hence already exact.
#[cube]
fn round_to_f16(p: f32) -> f32 {
    let bits = u32::reinterpret(p);
    let sign = bits & 0x8000_0000u32;
    let abs = bits & 0x7FFF_FFFFu32;
    let mut out = bits;
    if abs >= 0x3880_0000u32 {
        let rounded = (abs + 0x0FFFu32 + ((abs >> 13u32) & 1u32)) & 0xFFFF_E000u32;
        if rounded >= 0x4780_0000u32 {
            out = sign | 0x7F80_0000u32;
        } else {
            out = sign | rounded;
        }
    }
    f32::reinterpret(out)
}

/// Value `n` (`0..4` int8 bytes, `0..8` int4 nibbles, even column = high nibble) of a packed word.
#[cube]
fn unpack(word: i32, n: u32, #[comptime] int4: bool) -> f32 {
    if int4 {
        // Byte n/2 of the little-endian word; even n → high nibble.
        let shift = 8u32 * (n / 2u32) + 4u32 * (1u32 - (n % 2u32));
        let v = (word >> i32::cast_from(shift)) & 0xF;
        f32::cast_from(v - 16 * (v >> 3))
    } else {
        let v = (word >> i32::cast_from(8u32 * n)) & 0xFF;
        f32::cast_from(v - 256 * (v >> 7))
    }
}

/// `y[i, r] = Σ_c x[i, c] · f16(q[r, c] · scale[shard(c), r])`: cube (x, z) → row
/// `z·count_x + x`, cube y → activation row `i`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qgemv_kernel(
    packed: &Array<i32>,
    scales: &Array<f32>,
    x: &Array<f32>,
    y: &mut Array<f32>,
    words: u32,
    in_features: u32,
    out_features: u32,
    cols_per_shard: u32,
    #[comptime] int4: bool,
    #[comptime] cube_size: u32,
) {
    let r = CUBE_POS_Z * CUBE_COUNT_X + CUBE_POS_X;
    let i = CUBE_POS_Y;
    let per_word = if int4 { 8u32 } else { 4u32 };
    let mut acc = 0.0f32;
    if r < out_features {
        let mut k = UNIT_POS_X;
        while k < words {
            let word = packed[(r * words + k) as usize];
            #[unroll]
            for n in 0..per_word {
                let col = k * per_word + n;
                if col < in_features {
                    let q = unpack(word, n, int4);
                    let s = scales[((col / cols_per_shard) * out_features + r) as usize];
                    acc += round_to_f16(q * s) * x[(i * in_features + col) as usize];
                }
            }
            k += cube_size;
        }
    }
    let mut partial = SharedMemory::<f32>::new(cube_size as usize);
    partial[UNIT_POS_X as usize] = acc;
    sync_cube();
    let mut stride = CUBE_DIM_X / 2u32;
    while stride > 0u32 {
        if UNIT_POS_X < stride {
            let other = partial[(UNIT_POS_X + stride) as usize];
            partial[UNIT_POS_X as usize] += other;
        }
        sync_cube();
        stride /= 2u32;
    }
    if UNIT_POS_X == 0u32 && r < out_features {
        y[(i * out_features + r) as usize] = partial[0];
    }
}

/// `w[r, c] = f16(q[r, c] · scale[shard(c), r])`, one unit per packed word.
#[cube(launch)]
fn dequantize_kernel(
    packed: &Array<i32>,
    scales: &Array<f32>,
    w: &mut Array<f32>,
    words: u32,
    in_features: u32,
    out_features: u32,
    cols_per_shard: u32,
    #[comptime] int4: bool,
) {
    let id = ABSOLUTE_POS as u32;
    if id < words * out_features {
        let r = id / words;
        let k = id % words;
        let per_word = if int4 { 8u32 } else { 4u32 };
        let word = packed[id as usize];
        #[unroll]
        for n in 0..per_word {
            let col = k * per_word + n;
            if col < in_features {
                let q = unpack(word, n, int4);
                let s = scales[((col / cols_per_shard) * out_features + r) as usize];
                w[(r * in_features + col) as usize] = round_to_f16(q * s);
            }
        }
    }
}

fn float_prim<B: Backend, R: CubeRuntime>(t: Tensor<B, 2>) -> Option<CubeTensor<R>> {
    match t.cast(DType::F32).into_primitive() {
        TensorPrimitive::Float(p) => downcast::<CubeTensor<R>>(p).map(into_contiguous),
        TensorPrimitive::QFloat(_) => None,
    }
}

fn to_tensor<B: Backend, R: CubeRuntime>(t: CubeTensor<R>) -> Option<Tensor<B, 2>> {
    let prim = downcast::<B::FloatTensorPrimitive>(t)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
}

/// Grid covering `rows` with at most [`MAX_GRID`] cubes per dimension: `(x, z)` with `x·z ≥ rows`.
fn row_grid(rows: usize) -> (u32, u32) {
    let z = rows.div_ceil(MAX_GRID).max(1);
    (rows.div_ceil(z).max(1) as u32, z as u32)
}

/// Runs the kernels on runtime `R` when `B`'s tensors are `CubeTensor<R>`.
fn run<B: Backend, R: CubeRuntime>(
    packed: &Param<Tensor<B, 2, Int>>,
    scales: &Param<Tensor<B, 2>>,
    layout: QuantLayout,
    x: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B::FloatTensorPrimitive>() != TypeId::of::<CubeTensor<R>>()
        || TypeId::of::<B::IntTensorPrimitive>() != TypeId::of::<CubeTensor<R>>()
    {
        return None;
    }
    let [m, k] = x.dims();
    let (out, inp) = (layout.out_features, layout.in_features);
    if k != inp
        || m == 0
        || out == 0
        || inp == 0
        || u32::try_from(out * layout.words_per_row().max(inp)).is_err()
    {
        return None;
    }
    let words = downcast::<CubeTensor<R>>(packed.val().into_primitive()).map(into_contiguous)?;
    let scale_t = float_prim::<B, R>(scales.val())?;
    let client = words.client.clone();
    let device = words.device.clone();
    let int4 = layout.scheme == QuantScheme::Int4;
    let wpr = layout.words_per_row() as u32;
    let cols = layout.cols_per_shard() as u32;
    if m <= FUSED_MAX_ROWS {
        let xt = float_prim::<B, R>(x.clone())?;
        let y = empty_device_dtype::<R>(client.clone(), device, Shape::new([m, out]), DType::F32);
        let (gx, gz) = row_grid(out);
        qgemv_kernel::launch::<R>(
            &client,
            CubeCount::Static(gx, m as u32, gz),
            CubeDim::new_1d(CUBE_SIZE),
            words.into_array_arg(),
            scale_t.into_array_arg(),
            xt.into_array_arg(),
            y.clone().into_array_arg(),
            wpr,
            inp as u32,
            out as u32,
            cols,
            int4,
            CUBE_SIZE,
        );
        to_tensor::<B, R>(y)
    } else {
        let w = empty_device_dtype::<R>(client.clone(), device, Shape::new([out, inp]), DType::F32);
        let units = out * layout.words_per_row();
        let cube_dim = CubeDim::new_1d(CUBE_SIZE);
        let cubes = units.div_ceil(CUBE_SIZE as usize);
        let (gx, gz) = row_grid(cubes);
        if gz > 1 {
            // ABSOLUTE_POS spans x only in this kernel: keep to one grid dimension.
            return None;
        }
        dequantize_kernel::launch::<R>(
            &client,
            CubeCount::Static(gx, 1, 1),
            cube_dim,
            words.into_array_arg(),
            scale_t.into_array_arg(),
            w.clone().into_array_arg(),
            wpr,
            inp as u32,
            out as u32,
            cols,
            int4,
        );
        let w = to_tensor::<B, R>(w)?;
        Some(x.clone().cast(DType::F32).matmul(w.transpose()))
    }
}

/// Runs the CubeCL kernels when `B` is a cubecl backend of an enabled runtime; gives `x` back
/// otherwise. The output has the dtype of `x`.
pub(crate) fn try_forward<B: Backend>(
    packed: &Param<Tensor<B, 2, Int>>,
    scales: &Param<Tensor<B, 2>>,
    layout: QuantLayout,
    x: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let dtype = x.dtype();
    #[allow(unused_mut)]
    let mut y: Option<Tensor<B, 2>> = None;
    #[cfg(feature = "wgpu")]
    if y.is_none() {
        y = run::<B, cubecl::wgpu::WgpuRuntime>(packed, scales, layout, &x);
    }
    #[cfg(feature = "cuda")]
    if y.is_none() {
        y = run::<B, cubecl::cuda::CudaRuntime>(packed, scales, layout, &x);
    }
    match y {
        Some(y) if y.dtype() == dtype => Ok(y),
        Some(y) => Ok(y.cast(dtype)),
        None => Err(x),
    }
}
