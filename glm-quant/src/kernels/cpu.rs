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
use super::host::{host_dequantize_rows_with, Isa};
use super::host_attn::{attention_f32, AttentionShape, CacheView};
use super::host_elem::{geglu_f32, qkv_rotary_f32};
use super::host_f32::{gemv_f32, F32_GEMV_MAX_ROWS};
use super::host_gemm::{gemm_f32, gemm_f32_rows_with};
use crate::weight::QuantLayout;

/// The `Flex` tensor behind a float tensor of any rank (`None` for another backend or a
/// quantized tensor).
fn flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => downcast::<FlexTensor>(p),
        TensorPrimitive::QFloat(_) => None,
    }
}

fn flex_float<B: Backend>(t: Tensor<B, 2>) -> Option<FlexTensor> {
    flex(t.cast(DType::F32))
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

/// A `Flex` tensor as `B`'s float tensor (`None` when `B` is not `Flex`).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    let prim = downcast::<B::FloatTensorPrimitive>(t)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
}

fn to_backend<B: Backend, const D: usize>(data: TensorData) -> Option<Tensor<B, D>> {
    from_flex(FlexTensor::from_data(data))
}

/// Most rows a product runs through glm-quant's own GEMM when OpenBLAS is there too: up to here
/// skipping OpenBLAS's copy of the weight wins (glm-small, 128 rows: prefill 56–59 against
/// 61–63 ms), from 512 rows on its kernel is faster (205–215 against 228–240 ms).
pub const OWN_GEMM_MAX_ROWS_WITH_BLAS: usize = 256;

/// Whether a product of `m` rows (more than the skinny kernels take) runs glm-quant's own GEMM
/// ([`host_gemm`](super::host_gemm), weights read in place): on AVX-512 CPUs, for every `m`
/// without the `openblas` feature and up to [`OWN_GEMM_MAX_ROWS_WITH_BLAS`] with it, unless
/// `GLM_PREFILL_GEMM=openblas` (read once per process, for comparisons). Otherwise OpenBLAS with
/// the `openblas` feature, the backend's GEMM without.
pub(crate) fn own_prefill_gemm(m: usize) -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let own = *OWN.get_or_init(|| {
        matches!(Isa::detect(), Isa::Avx512 | Isa::Avx512Fp16)
            && std::env::var("GLM_PREFILL_GEMM").as_deref() != Ok("openblas")
    });
    own && (!cfg!(feature = "openblas") || m <= OWN_GEMM_MAX_ROWS_WITH_BLAS)
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
        to_backend::<B, 2>(TensorData::new(y, [m, out]))
    } else if own_prefill_gemm(m) {
        // Prefill: each task of the GEMM dequantizes its block of rows into a reused buffer.
        let xt = contiguous(flex_float::<B>(x)?);
        let fill = |first: usize, dst: &mut [f32]| {
            host_dequantize_rows_with(Isa::detect(), &matrix, first, dst)
        };
        let k = layout.in_features;
        let y = gemm_f32_rows_with(Isa::detect(), xt.as_slice::<f32>()?, &fill, None, m, out, k);
        to_backend::<B, 2>(TensorData::new(y.ok()?, [m, out]))
    } else if cfg!(feature = "openblas") {
        // Prefill: blocks of rows dequantized into one reused buffer, multiplied by OpenBLAS.
        let xt = contiguous(flex_float::<B>(x)?);
        let y = blocked_dequant_gemm(&matrix, xt.as_slice::<f32>()?, m)?;
        to_backend::<B, 2>(TensorData::new(y, [m, out]))
    } else {
        // Prefill: dequantize once (fast, exact), then the backend's blocked GEMM.
        let mut w = vec![0f32; out * layout.in_features];
        host_dequantize(&matrix, &mut w).ok()?;
        let w = to_backend::<B, 2>(TensorData::new(w, [out, layout.in_features]))?;
        Some(x.cast(DType::F32).matmul(w.transpose()))
    }
}

/// Runs the f32 skinny GEMM of [`host_f32`](super::host_f32) when `B` is `Flex`, `x` and `w` are
/// f32 and `x` has at most [`F32_GEMV_MAX_ROWS`] rows; more rows through the own GEMM
/// ([`own_prefill_gemm`]) or OpenBLAS with the `openblas` feature; gives `x` back otherwise.
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
    if m == 0 || k != kw || !f32_only {
        return Err(x);
    }
    if m > F32_GEMV_MAX_ROWS && !cfg!(feature = "openblas") && !own_prefill_gemm(m) {
        return Err(x);
    }
    match run_f32::<B>(x.clone(), w, bias, m, n, k) {
        Some(y) => Ok(y),
        None => Err(x),
    }
}

/// `x`, `w` and the bias as contiguous host tensors (no copy when they already are).
fn linear_operands<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<(FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let xt = contiguous(flex_float::<B>(x)?);
    let wt = contiguous(flex_float::<B>(w.clone())?);
    let bt = match bias {
        Some(b) => Some(contiguous(flex_float::<B>(b.clone().unsqueeze::<2>())?)),
        None => None,
    };
    Some((xt, wt, bt))
}

/// The skinny GEMM (decode) or, for more than [`F32_GEMV_MAX_ROWS`] rows (prefill), the own GEMM
/// ([`own_prefill_gemm`]) or OpenBLAS.
fn run_f32<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    m: usize,
    n: usize,
    k: usize,
) -> Option<Tensor<B, 2>> {
    let (xt, wt, bt) = linear_operands::<B>(x, w, bias)?;
    let b = match &bt {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let (xs, ws) = (xt.as_slice::<f32>()?, wt.as_slice::<f32>()?);
    let y = if m <= F32_GEMV_MAX_ROWS {
        gemv_f32(xs, ws, b, m, n, k)
    } else if own_prefill_gemm(m) {
        gemm_f32(xs, ws, b, m, n, k)
    } else {
        #[cfg(feature = "openblas")]
        let y = super::blas::sgemm_nt(xs, ws, b, m, n, k);
        #[cfg(not(feature = "openblas"))]
        let y = gemv_f32(xs, ws, b, m, n, k);
        y
    };
    to_backend::<B, 2>(TensorData::new(y.ok()?, [m, n]))
}

/// Runs the fused GeGLU gate of [`host_elem`](super::host_elem) when `B` is `Flex` and `u` is f32
/// with an even width; gives `u` back otherwise.
pub(crate) fn try_geglu_f32<B: Backend>(u: Tensor<B, 2>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let [rows, width] = u.dims();
    if TypeId::of::<B>() != TypeId::of::<Flex>() || u.dtype() != DType::F32 || width % 2 != 0 {
        return Err(u);
    }
    let run = || {
        let t = contiguous(flex_float::<B>(u.clone())?);
        let y = geglu_f32(t.as_slice::<f32>()?, rows, width / 2).ok()?;
        to_backend::<B, 2>(TensorData::new(y, [rows, width / 2]))
    };
    run().ok_or(u)
}

/// Runs the attention kernel of [`host_attn`](super::host_attn) (decode and prefill) when `B` is
/// `Flex`, everything is f32, and the cache views have unit stride along the head dimension;
/// `None` otherwise.
pub(crate) fn try_attention_f32<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, burn::tensor::Bool>,
    coeff: f32,
) -> Option<Tensor<B, 3>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return None;
    }
    let [batch, seq, heads, d] = q.dims();
    let [kb, kh, keys, kd] = k.dims();
    let [mb, mh, ms, mk] = mask.dims();
    let f32_only = [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|&t| t == DType::F32);
    if !f32_only
        || seq == 0
        || [kb, kh, kd] != [batch, heads, d]
        || v.dims() != k.dims()
        || !(mb == 1 || mb == batch)
        || [mh, ms, mk] != [1, seq, keys]
    {
        return None;
    }
    let qt = contiguous(flex::<B, 4>(q.clone())?);
    let (kt, vt) = (flex::<B, 4>(k.clone())?, flex::<B, 4>(v.clone())?);
    let mt = contiguous(downcast::<FlexTensor>(mask.clone().into_primitive())?);
    let mask: Vec<bool> = mt.storage::<u8>().iter().map(|&m| m != 0).collect();
    let shape = AttentionShape {
        batch,
        seq,
        heads,
        head_dim: d,
        keys,
    };
    let out = attention_f32(
        shape,
        qt.as_slice::<f32>()?,
        cache_view(&kt, d)?,
        cache_view(&vt, d)?,
        &mask,
        mb,
        coeff,
    )
    .ok()?;
    to_backend::<B, 3>(TensorData::new(out, [batch, seq, heads * d]))
}

/// `t` (`[batch, heads, keys, head_dim]`) as a [`CacheView`] when its strides allow one.
fn cache_view(t: &FlexTensor, d: usize) -> Option<CacheView<'_>> {
    let st: Vec<usize> = t
        .layout()
        .strides()
        .iter()
        .map(|&x| usize::try_from(x).ok())
        .collect::<Option<_>>()?;
    if st.len() != 4 || st[3] != 1 || st[2] < d {
        return None;
    }
    Some(CacheView {
        data: t.storage::<f32>(),
        offset: t.layout().start_offset(),
        batch_stride: st[0],
        head_stride: st[1],
        row_stride: st[2],
    })
}

/// Writes `block` (`[n, heads, new, head_dim]`, any layout) into batch rows `row..row + n` and
/// positions `at..at + new` of `buffer` (`[batch, heads, capacity, head_dim]`) in place through
/// [`try_edit_bytes`] when `B` is `Flex`, the buffer is uniquely owned and contiguous and both
/// share a float dtype; gives both back otherwise (burn-flex 0.21's `slice_assign` always copies
/// the whole destination first).
pub(crate) fn try_write_block<B: Backend>(
    buffer: Tensor<B, 4>,
    row: usize,
    at: usize,
    block: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    let [b, h, cap, d] = buffer.dims();
    let [n, bh, new, bd] = block.dims();
    if TypeId::of::<B>() != TypeId::of::<Flex>()
        || block.dtype() != buffer.dtype()
        || row.checked_add(n).is_none_or(|end| end > b)
        || [bh, bd] != [h, d]
        || at.checked_add(new).is_none_or(|end| end > cap)
    {
        return Err((buffer, block));
    }
    let Some(src) = flex::<B, 4>(block.clone()).map(contiguous) else {
        return Err((buffer, block));
    };
    let src: &[u8] = match block.dtype() {
        DType::F32 => src.as_slice::<f32>().map(bytemuck::cast_slice),
        DType::F16 => src.as_slice::<half::f16>().map(bytemuck::cast_slice),
        DType::BF16 => src.as_slice::<half::bf16>().map(bytemuck::cast_slice),
        _ => None,
    }
    .unwrap_or(&[]);
    let mut written = false;
    let edited = try_edit_bytes(buffer, |out, size| {
        // Chunk i of the block is its (row i / h, head i % h): `new` positions of `d` values.
        let chunk = new * d * size;
        if chunk == 0 || src.len() < n * h * chunk {
            return;
        }
        for (i, part) in src.chunks_exact(chunk).take(n * h).enumerate() {
            let start = ((row * h + i) * cap + at) * d * size;
            match out.get_mut(start..start + chunk) {
                Some(dst) => dst.copy_from_slice(part),
                None => return,
            }
        }
        written = true;
    });
    match edited {
        Ok(buffer) if written || n * new * h * d == 0 => Ok(buffer),
        Ok(buffer) | Err(buffer) => Err((buffer, block)),
    }
}

/// Runs `edit` on the bytes of `buffer` in place (row-major, its element size in bytes passed
/// along) when `B` is `Flex`, the tensor is a uniquely owned, contiguous float tensor starting at
/// offset 0; gives it back untouched otherwise.
pub(crate) fn try_edit_bytes<B: Backend, const D: usize>(
    buffer: Tensor<B, D>,
    edit: impl FnOnce(&mut [u8], usize),
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let dtype = buffer.dtype();
    if TypeId::of::<B>() != TypeId::of::<Flex>()
        || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
    {
        return Err(buffer);
    }
    let Some(len) = buffer
        .dims()
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
    else {
        return Err(buffer);
    };
    let back = |t: FlexTensor| -> Tensor<B, D> {
        from_flex(t).unwrap_or_else(|| unreachable!("B is Flex"))
    };
    let Some(mut t) = flex::<B, D>(buffer) else {
        unreachable!("a float tensor of Flex")
    };
    if !t.is_contiguous() || t.layout().start_offset() != 0 {
        return Err(back(t));
    }
    let bytes: Option<&mut [u8]> = match dtype {
        DType::F32 => t.try_storage_mut::<f32>().map(bytemuck::cast_slice_mut),
        DType::F16 => t
            .try_storage_mut::<half::f16>()
            .map(bytemuck::cast_slice_mut),
        _ => t
            .try_storage_mut::<half::bf16>()
            .map(bytemuck::cast_slice_mut),
    };
    match bytes.and_then(|b| b.get_mut(..len)) {
        Some(bytes) => {
            edit(bytes, dtype.size());
            Ok(back(t))
        }
        None => Err(back(t)),
    }
}

/// Runs [`qkv_rotary_f32`] when `B` is `Flex` and everything is f32; `None` otherwise.
/// `cos` / `sin` are the per-position rows repeated over heads (`[batch, seq, heads, d]`); the
/// kernel reads head 0's.
#[allow(clippy::type_complexity)]
pub(crate) fn try_qkv_rotary_f32<B: Backend>(
    qkv: &Tensor<B, 3>,
    heads: usize,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() || heads == 0 {
        return None;
    }
    let [batch, seq, width] = qkv.dims();
    let d = width / (3 * heads);
    let f32_only = [qkv.dtype(), cos.dtype(), sin.dtype()]
        .iter()
        .all(|&t| t == DType::F32);
    if !f32_only
        || width != 3 * heads * d
        || cos.dims() != [batch, seq, heads, d]
        || sin.dims() != cos.dims()
    {
        return None;
    }
    let rows = |t: &Tensor<B, 4>| -> Option<Vec<f32>> {
        let t = contiguous(flex::<B, 4>(t.clone())?);
        let all = t.as_slice::<f32>()?;
        Some(
            all.chunks_exact(d)
                .step_by(heads)
                .flatten()
                .copied()
                .collect(),
        )
    };
    let (c, s) = (rows(cos)?, rows(sin)?);
    let x = contiguous(flex::<B, 3>(qkv.clone())?);
    let out = qkv_rotary_f32(x.as_slice::<f32>()?, &c, &s, [batch, seq, heads, d]).ok()?;
    Some((
        to_backend(TensorData::new(out.q, [batch, seq, heads, d]))?,
        to_backend(TensorData::new(out.k, [batch, heads, seq, d]))?,
        to_backend(TensorData::new(out.v, [batch, heads, seq, d]))?,
    ))
}

/// Prefill with a quantized weight: blocks of weight rows dequantized (exactly) into one buffer
/// reused across blocks and calls (per thread), each block multiplied by OpenBLAS into its output
/// columns. No dequantized copy of the whole weight is made.
#[cfg(feature = "openblas")]
fn blocked_dequant_gemm(w: &HostMatrix<'_>, x: &[f32], m: usize) -> Option<Vec<f32>> {
    use std::cell::RefCell;
    thread_local! {
        static BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    let (out, k) = (w.layout.out_features, w.layout.in_features);
    if k == 0 || x.len() != m * k {
        return None;
    }
    // ~8 MiB of f32 weight per block (stays in the last-level cache between dequantization and
    // the GEMM; measured faster than 2 MiB blocks on glm-base).
    let rows = ((8 << 20) / (4 * k)).clamp(16, out.max(16));
    let mut y = vec![0f32; m * out];
    // The buffer is taken out while the products run on the pool (and put back after): a call
    // this thread picks up meanwhile finds none borrowed.
    let mut buf = BLOCK.with(|cell| cell.take());
    buf.resize(rows * k, 0.0);
    let result = (|| {
        let mut first = 0;
        while first < out {
            let n = rows.min(out - first);
            let block = &mut buf[..n * k];
            host_dequantize_rows_with(Isa::detect(), w, first, block).ok()?;
            super::blas::sgemm_nt_into(x, block, m, n, k, &mut y, out, first).ok()?;
            first += n;
        }
        Some(())
    })();
    BLOCK.with(|cell| cell.replace(buf));
    result?;
    Some(y)
}

/// Without OpenBLAS there is no blocked prefill (the caller dequantizes once instead).
#[cfg(not(feature = "openblas"))]
fn blocked_dequant_gemm(_: &HostMatrix<'_>, _: &[f32], _: usize) -> Option<Vec<f32>> {
    None
}
