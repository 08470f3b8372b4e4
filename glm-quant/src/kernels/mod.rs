//! Kernels for `y = x · Wᵀ` with a quantized `W`:
//! - [`reference`](mod@reference): dequantize with generic tensor ops, then matmul (every backend);
//! - [`host`]: the fused dequantize-GEMV on host slices (SIMD: AVX-512 or AVX2+FMA+F16C when the CPU
//!   has it, portable scalar code otherwise, detected or chosen per call with
//!   [`host::Isa`]; multi-threaded with rayon), usable without burn;
//! - [`host_f32`]: the f32 skinny GEMM for decode (same ISA dispatch and threading as [`host`]);
//! - [`host_gemm`]: the f32 GEMM for prefill, weights read in place (activations packed instead);
//! - `blas` (feature `openblas`): the prefill GEMM through the system OpenBLAS (products of more
//!   rows than [`host_gemm`] takes);
//! - [`host_attn`]: attention over the KV cache, decode and prefill (one task per batch row and head);
//! - [`host_elem`]: element-wise kernels of the forward pass (vectorized `erf`, the fused GeGLU gate);
//! - `cpu` (feature `flex`): runs [`host`] and [`host_f32`] in place on `Flex` tensors
//!   ([`try_linear_f32`] for float linears);
//! - `flex_host` (feature `flex`): f32 `Flex` tensors as host slices, for host code elsewhere;
//! - `cube` (feature `cubecl`): one CubeCL kernel for wgpu and CUDA.
//!
//! Every kernel reproduces the dequantized weight `f16(q · scale)` exactly; only the summation
//! order differs from the reference.

#[cfg(feature = "openblas")]
pub mod blas;
pub mod host;
pub mod host_attn;
pub mod host_elem;
pub mod host_f32;
pub mod host_gemm;
pub mod reference;

#[cfg(feature = "flex")]
pub(crate) mod cpu;
#[cfg(feature = "flex")]
pub mod flex_host;

/// Operands `x` (`[m, k]`), `w` (`[n, k]`) and a bias (`[n]`) whose products are multiples of
/// 1/8 and whose sums stay far below 2²⁰ for the tests' sizes, so every summation order gives
/// the same f32: GEMM kernels can be compared with the reference exactly.
#[cfg(test)]
pub(crate) fn exact_operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25)
        .collect();
    let w = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5)
        .collect();
    let b = (0..n).map(|i| i as f32 - 3.0).collect();
    (x, w, b)
}

/// An output buffer shared by the threads of one product, each writing its own disjoint columns
/// (the OpenBLAS split in `blas`, the tasks of [`host_gemm`]).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every user writes disjoint elements of the output from each thread (its own columns)
// and reads none of another thread's.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `i` places after the start.
    ///
    /// # Safety
    /// `i` lies within the output.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(i) }
    }
}

#[cfg(feature = "cubecl")]
pub mod cube;

/// `y = x · Wᵀ (+ b)` through the f32 skinny GEMM of [`host_f32`] when the backend is `Flex`, every
/// tensor is f32 and `x` has at most [`host_f32::F32_GEMV_MAX_ROWS`] rows (decode), or for more
/// rows (prefill) through [`host_gemm`] on AVX-512 CPUs (up to 256 rows with the
/// `openblas` feature, every row count without it) or OpenBLAS's `sgemm`; `Err(x)` (the
/// caller runs its generic path) otherwise, and always when the environment variable
/// `GLM_NO_FAST_GEMV` is set (read once per process, to compare against the generic path).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]`
pub fn try_linear_f32<B: burn::tensor::backend::Backend>(
    x: burn::tensor::Tensor<B, 2>,
    w: &burn::tensor::Tensor<B, 2>,
    bias: Option<&burn::tensor::Tensor<B, 1>>,
) -> Result<burn::tensor::Tensor<B, 2>, burn::tensor::Tensor<B, 2>> {
    if fast_paths_off() {
        return Err(x);
    }
    #[cfg(feature = "flex")]
    return cpu::try_linear_f32::<B>(x, w, bias);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (w, bias);
        Err(x)
    }
}

/// The GeGLU gate `u₁ · gelu(u₂)` through the fused kernel of [`host_elem`] when the backend is
/// `Flex` and `u` is f32; `Err(u)` (the caller runs its generic path) otherwise, and always when
/// `GLM_NO_FAST_GEMV` is set.
///
/// # Shapes
/// - `u`: `[rows, 2·inner]` → `[rows, inner]`
pub fn try_geglu_f32<B: burn::tensor::backend::Backend>(
    u: burn::tensor::Tensor<B, 2>,
) -> Result<burn::tensor::Tensor<B, 2>, burn::tensor::Tensor<B, 2>> {
    if fast_paths_off() {
        return Err(u);
    }
    #[cfg(feature = "flex")]
    return cpu::try_geglu_f32::<B>(u);
    #[cfg(not(feature = "flex"))]
    Err(u)
}

/// GLM-130B's attention (scaled by `1/(√d·coeff)`, masked to −10000, times `coeff`, f32 softmax,
/// weighted sum of values) through the kernel of [`host_attn`] (one task per batch row and head;
/// decode rows one at a time, prefill rows against the head's transposed keys) when the backend
/// is `Flex` and everything is f32; `None` (the caller runs its generic path) otherwise, and
/// always when `GLM_NO_FAST_GEMV` is set.
///
/// # Shapes
/// - `q`: `[batch, seq, heads, head_dim]`; `k`, `v`: `[batch, heads, keys, head_dim]` (views of
///   the cache are read in place); `mask`: `[1 or batch, 1, seq, keys]`, `true` = blocked
/// - → `[batch, seq, heads·head_dim]`
pub fn try_attention_f32<B: burn::tensor::backend::Backend>(
    q: &burn::tensor::Tensor<B, 4>,
    k: &burn::tensor::Tensor<B, 4>,
    v: &burn::tensor::Tensor<B, 4>,
    mask: &burn::tensor::Tensor<B, 4, burn::tensor::Bool>,
    coeff: f32,
) -> Option<burn::tensor::Tensor<B, 3>> {
    if fast_paths_off() {
        return None;
    }
    #[cfg(feature = "flex")]
    return cpu::try_attention_f32::<B>(q, k, v, mask, coeff);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (q, k, v, mask, coeff);
        None
    }
}

/// Writes `block` into batch rows `row..row + n` and positions `at..at + new` of a KV-cache
/// `buffer` in place when the backend is `Flex`, the buffer is contiguous and uniquely owned and
/// both share a float dtype; gives both back otherwise (the caller then uses `slice_assign`,
/// which on `Flex` copies the whole buffer).
///
/// # Shapes
/// - `buffer`: `[batch, heads, capacity, head_dim]`, `block`: `[n, heads, new, head_dim]`
#[allow(clippy::type_complexity)]
pub fn try_write_block<B: burn::tensor::backend::Backend>(
    buffer: burn::tensor::Tensor<B, 4>,
    row: usize,
    at: usize,
    block: burn::tensor::Tensor<B, 4>,
) -> Result<burn::tensor::Tensor<B, 4>, (burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>)> {
    #[cfg(feature = "flex")]
    return cpu::try_write_block::<B>(buffer, row, at, block);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (row, at);
        Err((buffer, block))
    }
}

/// Runs `edit` on the bytes of `buffer` in place (row-major `dims()`, the element size in bytes
/// passed along) when the backend is `Flex` and the tensor is a uniquely owned, contiguous float
/// tensor; gives it back untouched otherwise (the caller then uses the generic tensor ops). For
/// moves within a KV-cache buffer, which burn-flex 0.21's `slice_assign` / `select` would copy
/// whole.
pub fn try_edit_bytes<B: burn::tensor::backend::Backend, const D: usize>(
    buffer: burn::tensor::Tensor<B, D>,
    edit: impl FnOnce(&mut [u8], usize),
) -> Result<burn::tensor::Tensor<B, D>, burn::tensor::Tensor<B, D>> {
    #[cfg(feature = "flex")]
    return cpu::try_edit_bytes::<B, D>(buffer, edit);
    #[cfg(not(feature = "flex"))]
    {
        let _ = edit;
        Err(buffer)
    }
}

/// The fused per-head QKV projection split into q, k, v with rotary applied to q and k in one
/// pass ([`host_elem::qkv_rotary_f32`], identical results to the generic ops) when the backend is
/// `Flex` and everything is f32; `None` otherwise, and always when `GLM_NO_FAST_GEMV` is set.
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads·3·head_dim]`; `cos`, `sin`: `[batch, seq, heads, head_dim]`
/// - → q `[batch, seq, heads, head_dim]`, k and v `[batch, heads, seq, head_dim]`
#[allow(clippy::type_complexity)]
pub fn try_qkv_rotary_f32<B: burn::tensor::backend::Backend>(
    qkv: &burn::tensor::Tensor<B, 3>,
    heads: usize,
    cos: &burn::tensor::Tensor<B, 4>,
    sin: &burn::tensor::Tensor<B, 4>,
) -> Option<(
    burn::tensor::Tensor<B, 4>,
    burn::tensor::Tensor<B, 4>,
    burn::tensor::Tensor<B, 4>,
)> {
    if fast_paths_off() {
        return None;
    }
    #[cfg(feature = "flex")]
    return cpu::try_qkv_rotary_f32::<B>(qkv, heads, cos, sin);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (qkv, heads, cos, sin);
        None
    }
}

/// Whether `GLM_NO_FAST_GEMV` is set (read once per process): every fast CPU path then gives its
/// input back, to compare against the generic path.
fn fast_paths_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("GLM_NO_FAST_GEMV").is_some())
}

/// `value` as a `T` when it is one: how the backend-specific paths recognise their tensor
/// primitives behind burn's generic `Backend` types.
#[cfg(any(feature = "flex", feature = "cubecl"))]
fn downcast<T: 'static>(value: impl std::any::Any) -> Option<T> {
    (Box::new(value) as Box<dyn std::any::Any>)
        .downcast::<T>()
        .ok()
        .map(|b| *b)
}
