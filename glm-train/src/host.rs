//! The CPU training step on host memory: the forward pass with every activation the backward
//! needs kept, and the backward pass written out by hand, for `Autodiff<Flex>` models in f32
//! without dropout — the quickstart's and the benches' case.
//!
//! burn's autodiff runs each op of the graph as its own pass: the GEMMs in the `gemm` crate's
//! AVX2 kernel (40–80 GFLOP/s on the 2 development cores), and LayerNorm, GeGLU, rotary, softmax
//! and their backward passes as separate single-threaded passes with a fresh buffer each (58 %
//! of a glm-small step in GEMMs, most of the rest in strided copies). Here every product goes
//! through glm-quant's own GEMM ([`gemm_f32`]: weights read in place, AVX-512, multi-threaded),
//! the backward products as the same `x · Wᵀ` form on transposed operands, and every
//! element-wise pass is one multi-threaded loop per row.
//!
//! The math is the model's ([`glm_core::GlmModel::forward_train`] + the tied LM head + the summed
//! cross-entropy of [`crate::step::loss_sum`]), op for op in the same order where rounding shows:
//! LayerNorm `(x − μ) / √(σ² + ε) · γ + β`, DeepNorm `x·α + f(x)`, rotary `x·cos + rot(x)·sin`,
//! scores `(q / (√d·c)) · kᵀ`, masked to −10000, times `c`, f32 softmax. Two approximations
//! differ from the generic path by far less than the fixtures' tolerances: `erf` in GELU is
//! glm-quant's rational approximation (within 5·10⁻⁷ of libm), `exp` in the softmaxes is its
//! vectorizable polynomial (within 4·10⁻⁷ relative; 0 below −87.3, where libm gives subnormals).
//! The test `host_step_matches_autodiff` compares loss and every gradient with burn's autodiff
//! on odd shapes; the training golden test compares both with the original.
//!
//! Products and passes split over rayon's pool; the result does not depend on the thread count
//! (every sum runs in a fixed order).

use std::any::TypeId;

use burn::backend::Flex;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use glm_core::GlmModel;
use glm_quant::kernels::flex_host::HostF32;
use glm_quant::kernels::host_attn::exp_f32;
use glm_quant::kernels::host_elem::{erf_f32, geglu_f32};
use glm_quant::kernels::host_gemm::{gemm_f32, gemm_f32_stored, Stored};
use rayon::prelude::*;

use crate::batch::Batch;
use crate::params::{param_infos, param_values};
use crate::step::ForwardConfig;

/// Internal failures of the host step (shapes it built itself); the caller falls back to the
/// generic path.
type HostResult<T> = std::result::Result<T, String>;

/// Whether the host step is switched off for this process (`GLM_TRAIN_GENERIC` set: every step
/// runs burn's autodiff, for comparisons).
fn switched_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("GLM_TRAIN_GENERIC").is_some())
}

/// Sizes of one step.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    inner: usize,
    vocab: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.batch * self.seq
    }
    /// Attention width `heads · head_dim`.
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// One layer's parameters (indices into the flat parameter list) and constants.
#[derive(Debug, Clone, Copy)]
struct LayerIdx {
    ln1_w: usize,
    ln1_b: usize,
    qkv_w: usize,
    qkv_b: usize,
    dense_w: usize,
    dense_b: usize,
    ln2_w: usize,
    ln2_b: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    alpha: f32,
    /// `c = layer_id + 1` of the attention scaling.
    coeff: f32,
    eps1: f32,
    eps2: f32,
}

/// Everything a layer's backward reads, kept from its forward.
struct Saved {
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    a: Vec<f32>,
    /// Rotated queries, `[batch, heads, seq, d]` (unscaled).
    q: Vec<f32>,
    /// Rotated keys, `[batch, heads, seq, d]`.
    k: Vec<f32>,
    /// Values, `[batch, heads, seq, d]`.
    v: Vec<f32>,
    /// Softmax probabilities, `[batch, heads, seq, seq]`.
    probs: Vec<f32>,
    /// Attention context, `[rows, width]`.
    ctx: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    m: Vec<f32>,
    /// `dense_h_to_4h` output, `[rows, 2·inner]`.
    u: Vec<f32>,
    /// GeGLU gate, `[rows, inner]`.
    g: Vec<f32>,
}

/// The step's read-only inputs.
struct Ctx<'a> {
    dims: Dims,
    params: &'a [&'a [f32]],
    cos: &'a [f32],
    sin: &'a [f32],
    positions: &'a [u32],
    /// `[batch, seq, seq]`, `true` = blocked.
    mask: &'a [bool],
}

/// Loss sum and gradients (times `factor`, flat, in the model's visiting order) of `batch`
/// through the host step, or `None` when the model is not an f32 `Autodiff<Flex>` model of the
/// plain GLM layout, the forward uses dropout, `GLM_TRAIN_GENERIC` is set, or the batch has no
/// loss row: the caller then runs burn's autodiff. `batch` must have passed
/// [`check_batch`](crate::step::check_batch).
pub fn loss_and_grads<B: AutodiffBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    factor: f64,
    forward: &ForwardConfig,
) -> Option<(f64, Vec<Tensor<B::InnerBackend, 1>>)> {
    if switched_off()
        || TypeId::of::<B::InnerBackend>() != TypeId::of::<Flex>()
        || forward.hidden_dropout > 0.0
        || forward.attention_dropout > 0.0
        || batch.num_targets() == 0
        || model.tensor_parallel_rank().is_some()
    {
        return None;
    }
    let infos = param_infos::<B, _>(model);
    let values: Vec<HostF32> = param_values::<B, _>(model)
        .into_iter()
        .map(|t| HostF32::from_tensor(t.inner()).ok())
        .collect::<Option<_>>()?;
    let slices: Vec<&[f32]> = values.iter().map(HostF32::as_slice).collect();
    let index = |name: String| infos.iter().position(|i| i.name == name);
    let shape = |i: usize| infos.get(i).map(|p| p.shape.clone()).unwrap_or_default();

    let config = model.config();
    let emb = index("transformer.word_embeddings.weight".into())?;
    let [vocab, hidden] = shape(emb)[..] else {
        return None;
    };
    let first = model.layers.first()?;
    let heads = first.attention.num_heads;
    let width = first.attention.query_key_value.d_out() / 3;
    let head_dim = width / heads.max(1);
    let (cos, sin) = model.rotary().tables();
    let (cos, sin) = (
        HostF32::from_tensor(cos.inner()).ok()?,
        HostF32::from_tensor(sin.inner()).ok()?,
    );
    let dims = Dims {
        batch: batch.input.batch,
        seq: batch.input.seq,
        hidden,
        heads,
        head_dim,
        inner: config.inner_size(),
        vocab,
    };
    // The tables hold whole rows of `head_dim` (their positions cover every position id: the
    // batch passed `check_batch`).
    if heads == 0
        || head_dim == 0
        || head_dim % 2 != 0
        || width != heads * head_dim
        || cos.as_slice().len() % head_dim != 0
        || sin.as_slice().len() != cos.as_slice().len()
    {
        return None;
    }
    let mut layers = Vec::with_capacity(model.layers.len());
    for (l, layer) in model.layers.iter().enumerate() {
        let p = |s: &str| index(format!("transformer.layers.{l}.{s}"));
        let idx = LayerIdx {
            ln1_w: p("input_layernorm.weight")?,
            ln1_b: p("input_layernorm.bias")?,
            qkv_w: p("attention.query_key_value.weight")?,
            qkv_b: p("attention.query_key_value.bias")?,
            dense_w: p("attention.dense.weight")?,
            dense_b: p("attention.dense.bias")?,
            ln2_w: p("post_attention_layernorm.weight")?,
            ln2_b: p("post_attention_layernorm.bias")?,
            w1: p("mlp.dense_h_to_4h.weight")?,
            b1: p("mlp.dense_h_to_4h.bias")?,
            w2: p("mlp.dense_4h_to_h.weight")?,
            b2: p("mlp.dense_4h_to_h.bias")?,
            alpha: layer.deepnorm_alpha as f32,
            coeff: (layer.attention.layer_id + 1) as f32,
            eps1: layer.input_layernorm.epsilon as f32,
            eps2: layer.post_attention_layernorm.epsilon as f32,
        };
        if layer.attention.num_heads != heads {
            return None;
        }
        let (h, w, i2) = (hidden, width, 2 * dims.inner);
        let expect = [
            (idx.ln1_w, vec![h]),
            (idx.ln1_b, vec![h]),
            (idx.qkv_w, vec![3 * w, h]),
            (idx.qkv_b, vec![3 * w]),
            (idx.dense_w, vec![h, w]),
            (idx.dense_b, vec![h]),
            (idx.ln2_w, vec![h]),
            (idx.ln2_b, vec![h]),
            (idx.w1, vec![i2, h]),
            (idx.b1, vec![i2]),
            (idx.w2, vec![h, dims.inner]),
            (idx.b2, vec![h]),
        ];
        if expect.iter().any(|(i, s)| shape(*i) != *s) {
            return None;
        }
        layers.push(idx);
    }
    let lnf_w = index("transformer.final_layernorm.weight".into())?;
    let lnf_b = index("transformer.final_layernorm.bias".into())?;
    if shape(lnf_w) != [hidden] || shape(lnf_b) != [hidden] {
        return None;
    }
    let ctx = Ctx {
        dims,
        params: &slices,
        cos: cos.as_slice(),
        sin: sin.as_slice(),
        positions: &batch.input.position_ids,
        mask: &batch.input.mask,
    };
    let head = Head {
        emb,
        lnf_w,
        lnf_b,
        eps: model.final_layernorm.epsilon as f32,
        shrink: forward.shrink_alpha,
    };
    let (loss, grads) = step(&ctx, &layers, &head, batch, factor as f32).ok()?;
    let tensors = grads
        .into_iter()
        .map(|g| {
            let n = g.len();
            HostF32::tensor_from_vec::<B::InnerBackend, 1>(g, [n])
        })
        .collect::<Option<Vec<_>>>()?;
    Some((loss, tensors))
}

/// Embedding, final LayerNorm and shrink settings.
struct Head {
    emb: usize,
    lnf_w: usize,
    lnf_b: usize,
    eps: f32,
    shrink: f64,
}

/// Forward, loss and backward of one batch.
fn step(
    ctx: &Ctx<'_>,
    layers: &[LayerIdx],
    head: &Head,
    batch: &Batch,
    factor: f32,
) -> HostResult<(f64, Vec<Vec<f32>>)> {
    let d = ctx.dims;
    let (rows, h) = (d.rows(), d.hidden);
    let emb = ctx.params[head.emb];
    // Embedding lookup (ids checked against the vocabulary by `check_batch`).
    let mut x = vec![0f32; rows * h];
    for (row, &t) in x.chunks_exact_mut(h).zip(&batch.input.tokens) {
        let t = t as usize;
        row.copy_from_slice(emb.get(t * h..(t + 1) * h).ok_or("token id")?);
    }
    if head.shrink != 1.0 {
        // `x·α + detach(x)·(1 − α)`: the value as the generic path rounds it.
        let (a, b) = (head.shrink as f32, (1.0 - head.shrink) as f32);
        x.par_iter_mut().for_each(|v| *v = *v * a + *v * b);
    }
    let mut saved = Vec::with_capacity(layers.len());
    for l in layers {
        let (out, s) = layer_forward(ctx, l, &x)?;
        saved.push(s);
        x = out;
    }
    let (y, xhatf, rstdf) = layernorm(
        &x,
        ctx.params[head.lnf_w],
        ctx.params[head.lnf_b],
        h,
        head.eps,
    );
    drop(x);

    // The loss rows, their logits through the tied head, the summed cross-entropy and its
    // gradient `factor · (softmax − onehot)`.
    let picked: Vec<(usize, usize)> = batch
        .loss_mask
        .iter()
        .zip(&batch.targets)
        .enumerate()
        .filter(|(_, (&m, _))| m)
        .map(|(r, (_, &t))| (r, t as usize))
        .collect();
    let n = picked.len();
    let mut yp = vec![0f32; n * h];
    for (dst, &(r, _)) in yp.chunks_exact_mut(h).zip(&picked) {
        dst.copy_from_slice(&y[r * h..(r + 1) * h]);
    }
    let mut dlogits = gemm(&yp, emb, None, n, d.vocab, h)?;
    let losses: Vec<f64> = dlogits
        .par_chunks_mut(d.vocab)
        .zip(picked.par_iter())
        .map(|(row, &(_, target))| cross_entropy_backward(row, target, factor))
        .collect();
    let loss: f64 = losses.iter().sum();

    // Every gradient is written whole below (checked at the end); none is zeroed first.
    let mut grads: Vec<Vec<f32>> = vec![Vec::new(); ctx.params.len()];
    // Head: dE = dlogitsᵀ · yp, dyp = dlogits · E.
    let de_head = gemm_tn(&dlogits, &yp, n, d.vocab, h)?;
    let dyp = gemm_nn(&dlogits, emb, n, d.vocab, h)?;
    drop(dlogits);
    let mut dy = vec![0f32; rows * h];
    for (src, &(r, _)) in dyp.chunks_exact(h).zip(&picked) {
        dy[r * h..(r + 1) * h].copy_from_slice(src);
    }
    let (mut dx, dgw, dgb) = layernorm_backward(&dy, &xhatf, &rstdf, ctx.params[head.lnf_w], h);
    grads[head.lnf_w] = dgw;
    grads[head.lnf_b] = dgb;
    drop((dy, y, xhatf, rstdf));

    for (l, s) in layers.iter().zip(saved).rev() {
        dx = layer_backward(ctx, l, s, &dx, &mut grads)?;
    }

    // Embedding: the head's gradient plus the lookup's, scaled by the shrink factor.
    let mut de = de_head;
    let shrink = head.shrink as f32;
    for (row, &t) in dx.chunks_exact(h).zip(&batch.input.tokens) {
        let t = t as usize;
        let dst = de.get_mut(t * h..(t + 1) * h).ok_or("token id")?;
        if head.shrink == 1.0 {
            dst.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        } else {
            dst.iter_mut().zip(row).for_each(|(a, b)| *a += b * shrink);
        }
    }
    grads[head.emb] = de;
    if let Some(i) = grads
        .iter()
        .zip(ctx.params)
        .position(|(g, p)| g.len() != p.len())
    {
        return Err(format!("gradient {i} was not computed"));
    }
    Ok((loss, grads))
}

/// One layer forward: `a = LN₁(x)`, `h = a·α + attention(a)`, `m = LN₂(h)`, `m·α + mlp(m)`.
fn layer_forward(ctx: &Ctx<'_>, l: &LayerIdx, x: &[f32]) -> HostResult<(Vec<f32>, Saved)> {
    let d = ctx.dims;
    let (rows, h, w) = (d.rows(), d.hidden, d.width());
    let p = ctx.params;
    let (a, xhat1, rstd1) = layernorm(x, p[l.ln1_w], p[l.ln1_b], h, l.eps1);
    let qkv = gemm(&a, p[l.qkv_w], Some(p[l.qkv_b]), rows, 3 * w, h)?;
    let (q, k, v) = split_rotate(ctx, &qkv);
    drop(qkv);
    let (probs, ctx_heads) = attention_forward(ctx, l.coeff, &q, &k, &v)?;
    let context = merge_heads(&d, &ctx_heads);
    drop(ctx_heads);
    let attn = gemm(&context, p[l.dense_w], Some(p[l.dense_b]), rows, h, w)?;
    let alpha = l.alpha;
    let hsum: Vec<f32> = a
        .par_iter()
        .zip(attn.par_iter())
        .map(|(&a, &o)| a * alpha + o)
        .collect();
    drop(attn);
    let (m, xhat2, rstd2) = layernorm(&hsum, p[l.ln2_w], p[l.ln2_b], h, l.eps2);
    drop(hsum);
    let u = gemm(&m, p[l.w1], Some(p[l.b1]), rows, 2 * d.inner, h)?;
    let g = geglu_f32(&u, rows, d.inner).map_err(|e| e.to_string())?;
    let f = gemm(&g, p[l.w2], Some(p[l.b2]), rows, h, d.inner)?;
    let out: Vec<f32> = m
        .par_iter()
        .zip(f.par_iter())
        .map(|(&m, &f)| m * alpha + f)
        .collect();
    let saved = Saved {
        xhat1,
        rstd1,
        a,
        q,
        k,
        v,
        probs,
        ctx: context,
        xhat2,
        rstd2,
        m,
        u,
        g,
    };
    Ok((out, saved))
}

/// One layer backward from `dout` (the gradient of its output): accumulates the layer's
/// parameter gradients into `grads`, returns the gradient of its input.
fn layer_backward(
    ctx: &Ctx<'_>,
    l: &LayerIdx,
    s: Saved,
    dout: &[f32],
    grads: &mut [Vec<f32>],
) -> HostResult<Vec<f32>> {
    let d = ctx.dims;
    let (rows, h, w, inner) = (d.rows(), d.hidden, d.width(), d.inner);
    let p = ctx.params;
    let alpha = l.alpha;

    // MLP: out = m·α + g·W₂ᵀ + b₂, g = u₁ · gelu(u₂), u = m·W₁ᵀ + b₁.
    let dg = linear_backward(dout, &s.g, p[l.w2], [rows, h, inner], [l.w2, l.b2], grads)?;
    let du = geglu_backward(&s.u, &dg, inner);
    drop(dg);
    let dm = linear_backward(
        &du,
        &s.m,
        p[l.w1],
        [rows, 2 * inner, h],
        [l.w1, l.b1],
        grads,
    )?;
    drop(du);
    let ln2 = [l.ln2_w, l.ln2_b];
    let dh = residual_layernorm_backward(dm, dout, alpha, &s.xhat2, &s.rstd2, p, ln2, grads);

    // Attention: h = a·α + context·Wdᵀ + bd.
    let dense = [l.dense_w, l.dense_b];
    let dctx = linear_backward(&dh, &s.ctx, p[l.dense_w], [rows, h, w], dense, grads)?;
    let dqkv = attention_backward(ctx, l.coeff, &s, &dctx)?;
    drop(dctx);
    let qkv = [l.qkv_w, l.qkv_b];
    let da = linear_backward(&dqkv, &s.a, p[l.qkv_w], [rows, 3 * w, h], qkv, grads)?;
    drop(dqkv);
    let ln1 = [l.ln1_w, l.ln1_b];
    Ok(residual_layernorm_backward(
        da, &dh, alpha, &s.xhat1, &s.rstd1, p, ln1, grads,
    ))
}

/// Backward of a linear `y = x·Wᵀ + b` from `dy`: `dW = dyᵀ·x` and `db = Σ dy` into
/// `grads[w_index]`, `grads[b_index]`; returns `dx = dy·W`.
///
/// # Shapes
/// - `dy`: `[rows, n]`, `x`: `[rows, k]`, `w`: `[n, k]` → `[rows, k]`
fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    [rows, n, k]: [usize; 3],
    [wi, bi]: [usize; 2],
    grads: &mut [Vec<f32>],
) -> HostResult<Vec<f32>> {
    grads[wi] = gemm_tn(dy, x, rows, n, k)?;
    grads[bi] = column_sums(dy, n);
    gemm_nn(dy, w, rows, n, k)
}

/// Backward of DeepNorm's `LN(x)·α + f(LN(x))` at the LayerNorm: `d` (the gradient through `f`)
/// plus `α·skip` (through the residual), then the LayerNorm's backward with its `γ`/`β`
/// gradients into `grads[ln[0]]`, `grads[ln[1]]`; returns the LayerNorm input's gradient.
#[allow(clippy::too_many_arguments)]
fn residual_layernorm_backward(
    mut d: Vec<f32>,
    skip: &[f32],
    alpha: f32,
    xhat: &[f32],
    rstd: &[f32],
    p: &[&[f32]],
    ln: [usize; 2],
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    d.par_iter_mut()
        .zip(skip.par_iter())
        .for_each(|(g, &o)| *g += o * alpha);
    let h = p[ln[0]].len();
    let (dx, dgw, dgb) = layernorm_backward(&d, xhat, rstd, p[ln[0]], h);
    grads[ln[0]] = dgw;
    grads[ln[1]] = dgb;
    dx
}

/// `x · Wᵀ (+ b)` through glm-quant's GEMM.
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]` → `[m, n]`
fn gemm(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> HostResult<Vec<f32>> {
    if m == 0 || n == 0 {
        return Ok(vec![0f32; m * n]);
    }
    gemm_f32(x, w, bias, m, n, k).map_err(|e| e.to_string())
}

/// `dy · W`: the input gradient of a linear (`W` read as the kernel's transposed operand).
///
/// # Shapes
/// - `dy`: `[m, n]`, `w`: `[n, k]` → `[m, k]`
fn gemm_nn(dy: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> HostResult<Vec<f32>> {
    if m == 0 || k == 0 {
        return Ok(vec![0f32; m * k]);
    }
    gemm_f32_stored(dy, Stored::AsIs, w, Stored::Transposed, None, m, k, n)
        .map_err(|e| e.to_string())
}

/// `dyᵀ · x`: the weight gradient of a linear (both operands read transposed).
///
/// # Shapes
/// - `dy`: `[m, n]`, `x`: `[m, k]` → `[n, k]`
fn gemm_tn(dy: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> HostResult<Vec<f32>> {
    if n == 0 || k == 0 {
        return Ok(vec![0f32; n * k]);
    }
    gemm_f32_stored(dy, Stored::Transposed, x, Stored::Transposed, None, n, k, m)
        .map_err(|e| e.to_string())
}

/// Column sums of a row-major `[rows, cols]` matrix (rows in order, per column).
fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols];
    if cols == 0 {
        return out;
    }
    const CHUNK: usize = 64;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, dst)| {
        let (c0, len) = (ci * CHUNK, dst.len());
        for row in x.chunks_exact(cols) {
            for (o, &v) in dst.iter_mut().zip(&row[c0..c0 + len]) {
                *o += v;
            }
        }
    });
    out
}

/// Column sums of the element-wise product of two `[rows, cols]` matrices.
fn column_dot(a: &[f32], b: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols];
    if cols == 0 {
        return out;
    }
    const CHUNK: usize = 64;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, dst)| {
        let c0 = ci * CHUNK;
        let c1 = c0 + dst.len();
        for (ra, rb) in a.chunks_exact(cols).zip(b.chunks_exact(cols)) {
            for ((o, &x), &y) in dst.iter_mut().zip(&ra[c0..c1]).zip(&rb[c0..c1]) {
                *o += x * y;
            }
        }
    });
    out
}

/// LayerNorm over rows of width `h`: `(x − μ) / √(σ² + ε) · γ + β` (biased variance), returning
/// the output, the normalized `x̂` and `1 / √(σ² + ε)` per row.
fn layernorm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    h: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / h.max(1);
    let mut y = vec![0f32; rows * h];
    let mut xhat = vec![0f32; rows * h];
    let mut rstd = vec![0f32; rows];
    y.par_chunks_mut(h)
        .zip(xhat.par_chunks_mut(h))
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(h))
        .for_each(|(((y, xh), r), x)| {
            let mean = x.iter().sum::<f32>() / h as f32;
            let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let std = (var + eps).sqrt();
            *r = 1.0 / std;
            for (xo, &v) in xh.iter_mut().zip(x) {
                *xo = (v - mean) / std;
            }
            for (((yo, &xo), &g), &b) in y.iter_mut().zip(xh.iter()).zip(gamma).zip(beta) {
                *yo = xo * g + b;
            }
        });
    (y, xhat, rstd)
}

/// LayerNorm backward: `(dx, dγ, dβ)` from `dy`, the forward's `x̂` and `1/σ`.
fn layernorm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    h: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; dy.len()];
    dx.par_chunks_mut(h)
        .zip(dy.par_chunks(h))
        .zip(xhat.par_chunks(h))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), xh), &r)| {
            let (mut s1, mut s2) = (0f32, 0f32);
            for ((&g, &d), &x) in gamma.iter().zip(dy).zip(xh) {
                let dxh = d * g;
                s1 += dxh;
                s2 += dxh * x;
            }
            let (m1, m2) = (s1 / h as f32, s2 / h as f32);
            for (((o, &g), &d), &x) in dx.iter_mut().zip(gamma).zip(dy).zip(xh) {
                *o = r * (d * g - m1 - x * m2);
            }
        });
    let dgamma = column_dot(dy, xhat, h);
    let dbeta = column_sums(dy, h);
    (dx, dgamma, dbeta)
}

/// `gelu(x)` and `gelu'(x)` with the exact (erf) GELU.
#[inline(always)]
fn gelu_and_slope(x: f32) -> (f32, f32) {
    const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    // 1 / √(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf_f32(x * INV_SQRT2));
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    (x * cdf, cdf + x * pdf)
}

/// GeGLU backward: `du₁ = dg · gelu(u₂)`, `du₂ = dg · u₁ · gelu'(u₂)`.
///
/// # Shapes
/// - `u`: `[rows, 2·inner]`, `dg`: `[rows, inner]` → `[rows, 2·inner]`
fn geglu_backward(u: &[f32], dg: &[f32], inner: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let mut du = vec![0f32; u.len()];
    du.par_chunks_mut(2 * inner)
        .zip(u.par_chunks(2 * inner))
        .zip(dg.par_chunks(inner))
        .for_each(|((du, u), dg)| {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { geglu_backward_row_fma(du, u, dg, inner) };
                return;
            }
            geglu_backward_row(du, u, dg, inner);
        });
    du
}

/// One row of [`geglu_backward`] compiled with FMA (erf's polynomial in fused multiply-adds
/// instead of calls to libm's `fmaf`).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_backward_row_fma(du: &mut [f32], u: &[f32], dg: &[f32], inner: usize) {
    geglu_backward_row(du, u, dg, inner)
}

#[inline(always)]
fn geglu_backward_row(du: &mut [f32], u: &[f32], dg: &[f32], inner: usize) {
    let (du1, du2) = du.split_at_mut(inner);
    let (u1, u2) = u.split_at(inner);
    for ((((d1, d2), &a), &b), &g) in du1.iter_mut().zip(du2).zip(u1).zip(u2).zip(dg) {
        let (gelu, slope) = gelu_and_slope(b);
        *d1 = g * gelu;
        *d2 = g * a * slope;
    }
}

/// The row's summed cross-entropy against `target`, and the row turned into its gradient
/// `factor · (softmax − onehot)`.
fn cross_entropy_backward(row: &mut [f32], target: usize, factor: f32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let picked = row.get(target).copied().unwrap_or(0.0);
    // −log softmax[target] = log Σ − log e^{x_t − max}
    let loss = f64::from(sum).ln() - f64::from(picked.max(f32::MIN_POSITIVE)).ln();
    let scale = factor / sum;
    for v in row.iter_mut() {
        *v *= scale;
    }
    if let Some(v) = row.get_mut(target) {
        *v -= factor;
    }
    loss
}

/// Splits the fused per-head QKV (`[rows, heads, 3, d]`) into `[batch, heads, seq, d]` queries,
/// keys and values, with rotary applied to queries and keys: `x·cos + rot(x)·sin`,
/// `rot(x) = [−x₂, x₁]`.
fn split_rotate(ctx: &Ctx<'_>, qkv: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = ctx.dims;
    let (seq, hd, heads) = (d.seq, d.head_dim, d.heads);
    let half = hd / 2;
    let n = d.batch * heads * seq * hd;
    let (mut q, mut k, mut v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    q.par_chunks_mut(seq * hd)
        .zip(k.par_chunks_mut(seq * hd))
        .zip(v.par_chunks_mut(seq * hd))
        .enumerate()
        .for_each(|(pair, ((q, k), v))| {
            let (b, head) = (pair / heads, pair % heads);
            for s in 0..seq {
                let t = b * seq + s;
                let pos = ctx.positions[t] as usize;
                let (cos, sin) = (
                    &ctx.cos[pos * hd..(pos + 1) * hd],
                    &ctx.sin[pos * hd..(pos + 1) * hd],
                );
                let src = &qkv[t * 3 * d.width() + head * 3 * hd..][..3 * hd];
                for (part, dst) in [
                    (0, &mut q[s * hd..(s + 1) * hd]),
                    (1, &mut k[s * hd..(s + 1) * hd]),
                ] {
                    let x = &src[part * hd..(part + 1) * hd];
                    for i in 0..hd {
                        let r = if i < half { -x[i + half] } else { x[i - half] };
                        dst[i] = x[i] * cos[i] + r * sin[i];
                    }
                }
                v[s * hd..(s + 1) * hd].copy_from_slice(&src[2 * hd..3 * hd]);
            }
        });
    (q, k, v)
}

/// The divisor of the queries, `√d · c`, as the generic path rounds it.
fn query_scale(head_dim: usize, coeff: f32) -> f32 {
    ((head_dim as f64).sqrt() * f64::from(coeff)) as f32
}

/// Attention forward for every (batch row, head): probabilities `[batch, heads, seq, seq]` and
/// the context per head `[batch, heads, seq, d]`.
fn attention_forward(
    ctx: &Ctx<'_>,
    coeff: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> HostResult<(Vec<f32>, Vec<f32>)> {
    let d = ctx.dims;
    let (seq, hd, heads) = (d.seq, d.head_dim, d.heads);
    let scale = query_scale(hd, coeff);
    let mut probs = vec![0f32; d.batch * heads * seq * seq];
    let mut out = vec![0f32; d.batch * heads * seq * hd];
    probs
        .par_chunks_mut(seq * seq)
        .zip(out.par_chunks_mut(seq * hd))
        .enumerate()
        .try_for_each(|(pair, (p, o))| -> HostResult<()> {
            let b = pair / heads;
            let at = pair * seq * hd;
            let qs: Vec<f32> = q[at..at + seq * hd].iter().map(|&x| x / scale).collect();
            let scores = gemm(&qs, &k[at..at + seq * hd], None, seq, seq, hd)?;
            let mask = &ctx.mask[b * seq * seq..(b + 1) * seq * seq];
            for ((prow, srow), mrow) in p
                .chunks_exact_mut(seq)
                .zip(scores.chunks_exact(seq))
                .zip(mask.chunks_exact(seq))
            {
                softmax_row(prow, srow, mrow, coeff);
            }
            o.copy_from_slice(&gemm_nn(p, &v[at..at + seq * hd], seq, seq, hd)?);
            Ok(())
        })?;
    Ok((probs, out))
}

/// One softmax row: `softmax(c · masked(scores))` with blocked keys at −10000 (before the
/// multiplication by `c`, as the original).
fn softmax_row(p: &mut [f32], scores: &[f32], mask: &[bool], coeff: f32) {
    const MASK_FILL: f32 = glm_core::attention::MASK_FILL as f32;
    for ((o, &s), &blocked) in p.iter_mut().zip(scores).zip(mask) {
        *o = if blocked { MASK_FILL } else { s } * coeff;
    }
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for o in p.iter_mut() {
        *o = exp_f32(*o - max);
        sum += *o;
    }
    for o in p.iter_mut() {
        *o /= sum;
    }
}

/// `[batch, heads, seq, d]` → `[rows, heads·d]`.
fn merge_heads(d: &Dims, x: &[f32]) -> Vec<f32> {
    let (seq, hd, heads) = (d.seq, d.head_dim, d.heads);
    let mut out = vec![0f32; d.rows() * d.width()];
    out.par_chunks_mut(d.width())
        .enumerate()
        .for_each(|(t, row)| {
            let (b, s) = (t / seq, t % seq);
            for head in 0..heads {
                let src = &x[((b * heads + head) * seq + s) * hd..][..hd];
                row[head * hd..(head + 1) * hd].copy_from_slice(src);
            }
        });
    out
}

/// Attention backward from the context gradient `[rows, heads·d]`: the gradient of the fused
/// QKV output `[rows, heads, 3, d]` (through softmax, the scaling and rotary).
fn attention_backward(
    ctx: &Ctx<'_>,
    coeff: f32,
    s: &Saved,
    dcontext: &[f32],
) -> HostResult<Vec<f32>> {
    let d = ctx.dims;
    let (seq, hd, heads, width) = (d.seq, d.head_dim, d.heads, d.width());
    let scale = query_scale(hd, coeff);
    // Per (batch row, head): [dq | dk | dv], each [seq, d], before un-rotating.
    let mut parts = vec![0f32; d.batch * heads * 3 * seq * hd];
    parts
        .par_chunks_mut(3 * seq * hd)
        .enumerate()
        .try_for_each(|(pair, out)| -> HostResult<()> {
            let (b, head) = (pair / heads, pair % heads);
            let at = pair * seq * hd;
            let p = &s.probs[pair * seq * seq..(pair + 1) * seq * seq];
            let (q, k, v) = (
                &s.q[at..at + seq * hd],
                &s.k[at..at + seq * hd],
                &s.v[at..at + seq * hd],
            );
            let mut dc = vec![0f32; seq * hd];
            for (i, row) in dc.chunks_exact_mut(hd).enumerate() {
                let src = &dcontext[(b * seq + i) * width + head * hd..][..hd];
                row.copy_from_slice(src);
            }
            // dP = dC · Vᵀ, dV = Pᵀ · dC.
            let mut dp = gemm(&dc, v, None, seq, seq, hd)?;
            let dv = gemm_tn(p, &dc, seq, seq, hd)?;
            // dS = P ⊙ (dP − Σ dP⊙P), times c (the product of scaled queries and keys was
            // multiplied by c before the softmax).
            for (dr, pr) in dp.chunks_exact_mut(seq).zip(p.chunks_exact(seq)) {
                let dot: f32 = dr.iter().zip(pr).map(|(&a, &b)| a * b).sum();
                for (g, &pv) in dr.iter_mut().zip(pr) {
                    *g = pv * (*g - dot) * coeff;
                }
            }
            // scores = q̃ · kᵀ with q̃ = q / scale: dq = (G · k) / scale, dk = Gᵀ · q̃.
            let dq = gemm_nn(&dp, k, seq, seq, hd)?;
            let qs: Vec<f32> = q.iter().map(|&x| x / scale).collect();
            let dk = gemm_tn(&dp, &qs, seq, seq, hd)?;
            let (oq, rest) = out.split_at_mut(seq * hd);
            let (ok, ov) = rest.split_at_mut(seq * hd);
            for (o, &g) in oq.iter_mut().zip(&dq) {
                *o = g / scale;
            }
            ok.copy_from_slice(&dk);
            ov.copy_from_slice(&dv);
            Ok(())
        })?;
    // Un-rotate and interleave into [rows, heads, 3, d]:
    // dx = dy·cos + rotᵀ(dy·sin), rotᵀ(z) = [z₂, −z₁].
    let half = hd / 2;
    let mut dqkv = vec![0f32; d.rows() * 3 * width];
    dqkv.par_chunks_mut(3 * width)
        .enumerate()
        .for_each(|(t, row)| {
            let (b, si) = (t / seq, t % seq);
            let pos = ctx.positions[t] as usize;
            let (cos, sin) = (
                &ctx.cos[pos * hd..(pos + 1) * hd],
                &ctx.sin[pos * hd..(pos + 1) * hd],
            );
            for head in 0..heads {
                let part = &parts[(b * heads + head) * 3 * seq * hd..][..3 * seq * hd];
                let dst = &mut row[head * 3 * hd..(head + 1) * 3 * hd];
                for which in 0..2 {
                    let dy = &part[which * seq * hd + si * hd..][..hd];
                    for i in 0..hd {
                        let r = if i < half {
                            dy[i + half] * sin[i + half]
                        } else {
                            -(dy[i - half] * sin[i - half])
                        };
                        dst[which * hd + i] = dy[i] * cos[i] + r;
                    }
                }
                dst[2 * hd..].copy_from_slice(&part[2 * seq * hd + si * hd..][..hd]);
            }
        });
    Ok(dqkv)
}
