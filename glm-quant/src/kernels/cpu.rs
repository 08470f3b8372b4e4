//! The fused CPU path on burn's `Flex` backend: the packed weight, scales and activations are read
//! in place from the `Flex` tensors (no copy of the weight), the fused kernel of
//! [`host`](super::host) runs on them, and the result is wrapped back into a burn tensor.
//!
//! Dispatch is by type: the path is taken only when the backend *is* `Flex` (so `Autodiff<Flex>`
//! and every other backend fall back to the reference).

use std::any::TypeId;

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::downcast;
use super::host::{host_dequantize, host_gemv, HostMatrix, FUSED_MAX_ROWS};
use super::host_f32::{gemv_f32, F32_GEMV_MAX_ROWS};
use crate::weight::QuantLayout;

fn flex_float<B: Backend>(t: Tensor<B, 2>) -> Option<FlexTensor> {
    match t.cast(DType::F32).into_primitive() {
        TensorPrimitive::Float(p) => downcast::<FlexTensor>(p),
        TensorPrimitive::QFloat(_) => None,
    }
}

fn flex_int<B: Backend>(t: Tensor<B, 2, Int>) -> Option<FlexTensor> {
    downcast::<FlexTensor>(t.into_primitive())
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

fn to_backend<B: Backend>(data: TensorData) -> Option<Tensor<B, 2>> {
    let prim = downcast::<B::FloatTensorPrimitive>(FlexTensor::from_data(data))?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
}

/// Runs the fused kernel when `B` is `Flex`; gives `x` back otherwise.
pub(crate) fn try_forward<B: Backend>(
    packed: &Param<Tensor<B, 2, Int>>,
    scales: &Param<Tensor<B, 2>>,
    layout: QuantLayout,
    x: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(x);
    }
    let [m, k] = x.dims();
    if k != layout.in_features {
        return Err(x);
    }
    let dtype = x.dtype();
    match run::<B>(packed, scales, layout, x.clone(), m) {
        Some(y) if y.dtype() == dtype => Ok(y),
        Some(y) => Ok(y.cast(dtype)),
        None => Err(x),
    }
}

fn run<B: Backend>(
    packed: &Param<Tensor<B, 2, Int>>,
    scales: &Param<Tensor<B, 2>>,
    layout: QuantLayout,
    x: Tensor<B, 2>,
    m: usize,
) -> Option<Tensor<B, 2>> {
    let words = contiguous(flex_int::<B>(packed.val())?);
    let scale_t = contiguous(flex_float::<B>(scales.val())?);
    let words: &[i32] = words.as_slice::<i32>()?;
    let matrix = HostMatrix {
        layout,
        bytes: bytemuck::cast_slice(words),
        row_stride: 4 * layout.words_per_row(),
        scales: scale_t.as_slice::<f32>()?,
    };
    let out = layout.out_features;
    if m <= FUSED_MAX_ROWS {
        let xt = contiguous(flex_float::<B>(x)?);
        let mut y = vec![0f32; m * out];
        host_gemv(&matrix, xt.as_slice::<f32>()?, m, &mut y).ok()?;
        to_backend::<B>(TensorData::new(y, [m, out]))
    } else {
        // Prefill: dequantize once (fast, exact), then the backend's blocked GEMM.
        let mut w = vec![0f32; out * layout.in_features];
        host_dequantize(&matrix, &mut w).ok()?;
        let w = to_backend::<B>(TensorData::new(w, [out, layout.in_features]))?;
        Some(x.cast(DType::F32).matmul(w.transpose()))
    }
}

/// Runs the f32 skinny GEMM of [`host_f32`](super::host_f32) when `B` is `Flex`, `x` and `w` are
/// f32 and `x` has at most [`F32_GEMV_MAX_ROWS`] rows; gives `x` back otherwise.
pub(crate) fn try_linear_f32<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err(x);
    }
    let [m, k] = x.dims();
    let [n, kw] = w.dims();
    let f32_only = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [n]);
    if m == 0 || m > F32_GEMV_MAX_ROWS || k != kw || !f32_only {
        return Err(x);
    }
    match run_f32::<B>(x.clone(), w, bias, m, n, k) {
        Some(y) => Ok(y),
        None => Err(x),
    }
}

fn run_f32<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    m: usize,
    n: usize,
    k: usize,
) -> Option<Tensor<B, 2>> {
    let xt = contiguous(flex_float::<B>(x)?);
    let wt = contiguous(flex_float::<B>(w.clone())?);
    let bt = match bias {
        Some(b) => Some(contiguous(flex_float::<B>(b.clone().unsqueeze::<2>())?)),
        None => None,
    };
    let b = match &bt {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let y = gemv_f32(xt.as_slice::<f32>()?, wt.as_slice::<f32>()?, b, m, n, k).ok()?;
    to_backend::<B>(TensorData::new(y, [m, n]))
}
