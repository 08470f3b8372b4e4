//! Attention on host slices: GLM-130B's scaled, masked, f32-softmax attention over the KV cache,
//! one task per (batch row, head), reading the cache where it lies (any row stride, e.g. a
//! narrowed view of a buffer with room to grow) and writing the context in
//! `[batch, seq, heads·head_dim]` order. Up to [`ATTENTION_MAX_QUERY_ROWS`] query rows (decode)
//! go one at a time with dot products; more (prefill) against the head's transposed keys in
//! register blocks, with a vectorized [`exp_f32`].
//!
//! Per query row `q` and head, as `SelfAttentionWithFP32SoftmaxMixin.attention_fn` computes it:
//! `s_j = (q / (√d · c)) · k_j`, masked positions set to −10000, `s_j · c`, softmax in f32,
//! `out = Σ_j p_j v_j`, with `c` the layer's coefficient (`layer_id + 1`). Only the order of the
//! sums differs from the generic path's matmuls.

use rayon::prelude::*;

use super::host::Isa;
use crate::error::{QuantError, Result};

/// Most query rows the kernel takes one at a time with dot products along the head (decode
/// steps); more rows (prefill) go through its blocked path: the head's keys transposed once,
/// the score rows accumulated column by column in register blocks.
pub const ATTENTION_MAX_QUERY_ROWS: usize = 8;

/// Score given to blocked positions before the coefficient is applied (the original's −10000).
pub const MASK_FILL: f32 = -10000.0;

/// Where one of the cache tensors `[batch, heads, len, head_dim]` lies in `data`: element
/// `(b, h, j, t)` at `offset + b·batch_stride + h·head_stride + j·row_stride + t`.
#[derive(Debug, Clone, Copy)]
pub struct CacheView<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Index of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Distance between batch rows.
    pub batch_stride: usize,
    /// Distance between heads.
    pub head_stride: usize,
    /// Distance between positions (≥ `head_dim`).
    pub row_stride: usize,
}

impl CacheView<'_> {
    fn row(&self, b: usize, h: usize, j: usize, d: usize) -> Option<&[f32]> {
        let start =
            self.offset + b * self.batch_stride + h * self.head_stride + j * self.row_stride;
        self.data.get(start..start.checked_add(d)?)
    }
}

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch rows.
    pub batch: usize,
    /// Query rows per batch row.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Keys (cached + new).
    pub keys: usize,
}

/// Checks every index the kernels read before they run.
fn check(
    shape: AttentionShape,
    q: &[f32],
    k: &CacheView<'_>,
    v: &CacheView<'_>,
    mask: &[bool],
    mask_batch: usize,
) -> Result<()> {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: d,
        keys,
    } = shape;
    let bad = |tensor: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
        tensor: tensor.into(),
        expected,
        found: vec![found],
    };
    let q_len = batch
        .checked_mul(seq)
        .and_then(|n| n.checked_mul(heads))
        .and_then(|n| n.checked_mul(d));
    if q_len != Some(q.len()) {
        return Err(bad("query", vec![batch, seq, heads, d], q.len()));
    }
    if !(mask_batch == 1 || mask_batch == batch)
        || mask_batch
            .checked_mul(seq)
            .and_then(|n| n.checked_mul(keys))
            != Some(mask.len())
    {
        return Err(bad("mask", vec![mask_batch, seq, keys], mask.len()));
    }
    for (name, view) in [("keys", k), ("values", v)] {
        if batch > 0
            && heads > 0
            && keys > 0
            && view.row(batch - 1, heads - 1, keys - 1, d).is_none()
        {
            return Err(bad(name, vec![batch, heads, keys, d], view.data.len()));
        }
    }
    Ok(())
}

/// Plain-loop reference: the original's formula in index order, one score row at a time.
///
/// # Shapes
/// - `q`: `[batch, seq, heads, head_dim]` (post-rotary queries, contiguous)
/// - `k`, `v`: `[batch, heads, keys, head_dim]` through their [`CacheView`]s
/// - `mask`: `[mask_batch, seq, keys]`, `true` = blocked, `mask_batch` 1 or `batch`
/// - → `[batch, seq, heads·head_dim]`
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice is too short for its shape.
pub fn attention_f32_reference(
    shape: AttentionShape,
    q: &[f32],
    k: CacheView<'_>,
    v: CacheView<'_>,
    mask: &[bool],
    mask_batch: usize,
    coeff: f32,
) -> Result<Vec<f32>> {
    check(shape, q, &k, &v, mask, mask_batch)?;
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: d,
        keys,
    } = shape;
    let norm = (d as f32).sqrt() * coeff;
    let mut out = vec![0f32; batch * seq * heads * d];
    let mut scores = vec![0f32; keys];
    for b in 0..batch {
        for i in 0..seq {
            let mrow = &mask[((b % mask_batch) * seq + i) * keys..][..keys];
            for h in 0..heads {
                let qrow = &q[((b * seq + i) * heads + h) * d..][..d];
                for (j, s) in scores.iter_mut().enumerate() {
                    let krow = k.row(b, h, j, d).unwrap_or(&[]);
                    let mut acc = 0f32;
                    for (x, y) in qrow.iter().zip(krow) {
                        acc += (x / norm) * y;
                    }
                    *s = if mrow[j] { MASK_FILL } else { acc } * coeff;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[((b * seq + i) * heads + h) * d..][..d];
                for (j, s) in scores.iter().enumerate() {
                    let vrow = v.row(b, h, j, d).unwrap_or(&[]);
                    for (o, y) in o.iter_mut().zip(vrow) {
                        *o += (s / sum) * y;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The decode kernel: one rayon task per (batch row, head), scores and weighted sum with eight
/// independent partial sums per dot product (vectorized by the compiler for the detected
/// instruction set, [`Isa::detect`]), the softmax normalisation applied once to the output row.
///
/// # Shapes
/// As [`attention_f32_reference`].
///
/// # Errors
/// As [`attention_f32_reference`].
pub fn attention_f32(
    shape: AttentionShape,
    q: &[f32],
    k: CacheView<'_>,
    v: CacheView<'_>,
    mask: &[bool],
    mask_batch: usize,
    coeff: f32,
) -> Result<Vec<f32>> {
    attention_f32_with(Isa::detect(), shape, q, k, v, mask, mask_batch, coeff)
}

/// [`attention_f32`] compiled for instruction set `isa` (the same operations in the same order
/// on every one: identical results).
///
/// # Shapes
/// As [`attention_f32_reference`].
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; otherwise as
/// [`attention_f32_reference`].
#[allow(clippy::too_many_arguments)]
pub fn attention_f32_with(
    isa: Isa,
    shape: AttentionShape,
    q: &[f32],
    k: CacheView<'_>,
    v: CacheView<'_>,
    mask: &[bool],
    mask_batch: usize,
    coeff: f32,
) -> Result<Vec<f32>> {
    if !isa.is_supported() {
        return Err(QuantError::UnsupportedIsa(isa.name()));
    }
    check(shape, q, &k, &v, mask, mask_batch)?;
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: d,
        keys,
    } = shape;
    let mut out = vec![0f32; batch * seq * heads * d];
    if d == 0 || keys == 0 {
        return Ok(out);
    }
    let norm = (d as f32).sqrt() * coeff;
    let task = HeadTask {
        shape,
        q,
        k,
        v,
        mask,
        mask_batch,
        coeff,
        norm,
    };
    // Output rows of one (b, h) pair are strided by `heads·d`: collect per task, then scatter.
    let per_task: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| task.run_on(isa, bh / heads, bh % heads))
        .collect();
    for (bh, ctx) in per_task.iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for i in 0..seq {
            out[((b * seq + i) * heads + h) * d..][..d].copy_from_slice(&ctx[i * d..(i + 1) * d]);
        }
    }
    Ok(out)
}

/// The inputs of one [`attention_f32`] call, shared by its (batch row, head) tasks.
struct HeadTask<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    k: CacheView<'a>,
    v: CacheView<'a>,
    mask: &'a [bool],
    mask_batch: usize,
    coeff: f32,
    norm: f32,
}

impl HeadTask<'_> {
    /// [`body`](Self::body) compiled for `isa` (the same operations in the same order on every
    /// instruction set, so the same results: the compiler only widens the loops, and fused
    /// multiply-adds are explicit `mul_add`s everywhere).
    fn run_on(&self, isa: Isa, b: usize, h: usize) -> Vec<f32> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is the detected instruction set, so the CPU has these features.
            Isa::Avx512 | Isa::Avx512Fp16 => unsafe { self.run_avx512(b, h) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(b, h) },
            _ => self.body(b, h),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, b: usize, h: usize) -> Vec<f32> {
        self.body(b, h)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, b: usize, h: usize) -> Vec<f32> {
        self.body(b, h)
    }

    /// Decode rows one at a time ([`run`](Self::run)), more through
    /// [`run_prefill`](Self::run_prefill).
    #[inline(always)]
    fn body(&self, b: usize, h: usize) -> Vec<f32> {
        if self.shape.seq > ATTENTION_MAX_QUERY_ROWS {
            self.run_prefill(b, h)
        } else {
            self.run(b, h)
        }
    }

    /// The context rows of batch row `b`, head `h` for many query rows, in chunks of
    /// [`PREFILL_ROWS`] rows taken two at a time: the keys are transposed once (`[head_dim,
    /// keys]`), the score rows accumulated column by column (`s += q_t · kᵀ_t` over blocks of
    /// 64 keys held in registers, fused multiply-adds), the softmax exponentials are
    /// [`exp_f32`] (vectorized; within [`EXP_MAX_REL_ERROR`] of libm's), the probabilities
    /// normalised, and the context summed over blocks of keys into blocks of 64 output columns
    /// held in registers.
    #[inline(always)]
    fn run_prefill(&self, b: usize, h: usize) -> Vec<f32> {
        let AttentionShape {
            seq,
            heads,
            head_dim: d,
            keys,
            ..
        } = self.shape;
        let (k, v, coeff) = (&self.k, &self.v, self.coeff);
        // Rows of the transposed keys padded by one cache line (no set aliasing between them).
        let ks = keys + 16;
        let mut kt = vec![0f32; d * ks];
        for j in 0..keys {
            for (t, &x) in k.row(b, h, j, d).unwrap_or(&[]).iter().enumerate() {
                kt[t * ks + j] = x;
            }
        }
        // The head's value rows, contiguous `[keys, d]`.
        let mut vs = vec![0f32; keys * d];
        for (j, dst) in vs.chunks_exact_mut(d).enumerate() {
            // `check` verified every row exists; a missing one would stay zero.
            if let Some(row) = v.row(b, h, j, d) {
                dst.copy_from_slice(row);
            }
        }
        let mut ctx = vec![0f32; seq * d];
        let mut qs = vec![0f32; PREFILL_ROWS * d];
        let mut scores = vec![0f32; PREFILL_ROWS * keys];
        for i0 in (0..seq).step_by(PREFILL_ROWS) {
            let rows = (seq - i0).min(PREFILL_ROWS);
            for r in 0..rows {
                let qrow = &self.q[((b * seq + i0 + r) * heads + h) * d..][..d];
                for (s, x) in qs[r * d..(r + 1) * d].iter_mut().zip(qrow) {
                    *s = x / self.norm;
                }
            }
            scores_into(
                &qs[..rows * d],
                d,
                &kt,
                ks,
                keys,
                &mut scores[..rows * keys],
            );
            for r in 0..rows {
                let mrow = &self.mask[((b % self.mask_batch) * seq + i0 + r) * keys..][..keys];
                softmax_row(&mut scores[r * keys..(r + 1) * keys], mrow, coeff);
            }
            context_into(
                &scores[..rows * keys],
                keys,
                &vs,
                d,
                &mut ctx[i0 * d..(i0 + rows) * d],
            );
        }
        ctx
    }

    /// The context rows `[seq, head_dim]` of batch row `b`, head `h`. A blocked key's score is
    /// the fill value whatever its dot product, so that product is skipped.
    #[inline(always)]
    fn run(&self, b: usize, h: usize) -> Vec<f32> {
        let AttentionShape {
            seq,
            heads,
            head_dim: d,
            keys,
            ..
        } = self.shape;
        let (k, v, coeff) = (&self.k, &self.v, self.coeff);
        let mut ctx = vec![0f32; seq * d];
        let mut scores = vec![0f32; keys];
        let mut qs = vec![0f32; d];
        for i in 0..seq {
            let mrow = &self.mask[((b % self.mask_batch) * seq + i) * keys..][..keys];
            let qrow = &self.q[((b * seq + i) * heads + h) * d..][..d];
            for (s, x) in qs.iter_mut().zip(qrow) {
                *s = x / self.norm;
            }
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                *s = if mrow[j] {
                    MASK_FILL
                } else {
                    dot8(&qs, k.row(b, h, j, d).unwrap_or(&[]))
                } * coeff;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut ctx[i * d..(i + 1) * d];
            for (j, &p) in scores.iter().enumerate() {
                axpy(p, v.row(b, h, j, d).unwrap_or(&[]), o);
            }
            let inv = 1.0 / sum;
            for x in o.iter_mut() {
                *x *= inv;
            }
        }
        ctx
    }
}

/// Largest relative error of [`exp_f32`] against libm's `expf` on `[−87.3, 0]` (measured by
/// the test `exp_matches_libm_within_the_documented_bound`, with margin).
pub const EXP_MAX_REL_ERROR: f32 = 4e-7;

/// `eˣ` for `x ≤ 0` (softmax arguments after subtracting the maximum) in plain arithmetic that
/// vectorizes: `x = n·ln 2 + r` (Cody–Waite, `|r| ≤ ln 2 / 2`), a degree-6 Taylor polynomial for
/// `eʳ`, `2ⁿ` built from its exponent bits. Below −87.3, where `eˣ` leaves f32's normal range,
/// the result is 0 (libm gives a subnormal or 0 there): no subnormal ever reaches the weighted sum,
/// where each one would cost a microcode assist per multiply (the masked keys' weights, with
/// the original's fill value −10000, all land there).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const LOWEST: f32 = -87.3;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LOWEST, 0.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n ∈ [−126, 0] sits in the low bits of `t` (t = 1.5·2²³ + n exactly): 2ⁿ's exponent field
    // is n + 127 ∈ [1, 127] (integer arithmetic only, no float-to-int conversion).
    let bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    let e = p * f32::from_bits(bits);
    if x < LOWEST {
        0.0
    } else {
        e
    }
}

/// Query rows per chunk of the prefill path: the chunk's score rows (`PREFILL_ROWS · keys`)
/// and a block of 64 transposed keys stay in L1 while every row pair of the chunk uses them.
const PREFILL_ROWS: usize = 32;

/// Keys per block of the prefill path's weighted sum (a block of value rows stays in L1).
const KEY_BLOCK: usize = 64;

/// `R` rows of a product held in registers: `out[r·ldo + c] (+)= Σ_{i ∈ i0..i1} a[r·lda + i] ·
/// b[i·ldb + c]` for `c < W` (`b` and `out` start at the block's first column), `i` ascending,
/// fused multiply-adds; added to what `out` holds when `accumulate`. The one inner loop of the
/// prefill path's scores (`a` = queries, `b` = transposed keys) and weighted sums (`a` =
/// probabilities, `b` = value rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<const R: usize, const W: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    [i0, i1]: [usize; 2],
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; W]; R];
    if accumulate {
        for (r, ar) in acc.iter_mut().enumerate() {
            ar.copy_from_slice(&out[r * ldo..r * ldo + W]);
        }
    }
    for i in i0..i1 {
        let row = &b[i * ldb..i * ldb + W];
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = a[r * lda + i];
            for (v, &y) in ar.iter_mut().zip(row) {
                *v = x.mul_add(y, *v);
            }
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        out[r * ldo..r * ldo + W].copy_from_slice(ar);
    }
}

/// [`block`] over every row of `a` (`rows = out.len() / ldo` of them), two at a time (eight
/// accumulator chains), the last alone when their number is odd.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_rows<const W: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    span: [usize; 2],
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
) {
    let n = a.len() / lda;
    let mut r = 0;
    while r + 2 <= n {
        block::<2, W>(
            &a[r * lda..],
            lda,
            b,
            ldb,
            span,
            &mut out[r * ldo..],
            ldo,
            accumulate,
        );
        r += 2;
    }
    if r < n {
        block::<1, W>(
            &a[r * lda..],
            lda,
            b,
            ldb,
            span,
            &mut out[r * ldo..],
            ldo,
            accumulate,
        );
    }
}

/// Every query row `r` of `qs` (`[rows, d]`): `scores[r·keys + j] = Σ_t qs[r, t] ·
/// kt[t·ks + j]` (`kt`: `[d, ks]`, `ks ≥ keys`). Blocks of 64 keys (then 16, then one), each
/// used by every pair of rows in turn, the pair's products accumulated in registers over every
/// `t`.
#[inline(always)]
fn scores_into(qs: &[f32], d: usize, kt: &[f32], ks: usize, keys: usize, scores: &mut [f32]) {
    // Widths as separate loops (not a table of function pointers: those would not inline into
    // the caller's instruction set).
    let mut j0 = 0;
    while j0 + 64 <= keys {
        block_rows::<64>(qs, d, &kt[j0..], ks, [0, d], &mut scores[j0..], keys, false);
        j0 += 64;
    }
    while j0 + 16 <= keys {
        block_rows::<16>(qs, d, &kt[j0..], ks, [0, d], &mut scores[j0..], keys, false);
        j0 += 16;
    }
    while j0 < keys {
        block_rows::<1>(qs, d, &kt[j0..], ks, [0, d], &mut scores[j0..], keys, false);
        j0 += 1;
    }
}

/// One score row turned into probabilities in place: blocked keys set to the fill value, times
/// `coeff`, `exp(s − max)` ([`exp_f32`]), divided by their sum (so the context is a plain
/// weighted sum). Maximum and sum over 16 lanes (vectorized).
#[inline(always)]
fn softmax_row(row: &mut [f32], blocked: &[bool], coeff: f32) {
    let full = row.len() - row.len() % 16;
    let (body, tail) = row.split_at_mut(full);
    let (bbody, btail) = blocked.split_at(full);
    let fill = |s: &mut f32, b: bool| *s = if b { MASK_FILL } else { *s } * coeff;
    let mut lanes = [f32::NEG_INFINITY; 16];
    for (chunk, bl) in body.chunks_exact_mut(16).zip(bbody.chunks_exact(16)) {
        for l in 0..16 {
            fill(&mut chunk[l], bl[l]);
            lanes[l] = if chunk[l] > lanes[l] {
                chunk[l]
            } else {
                lanes[l]
            };
        }
    }
    let mut max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (s, &b) in tail.iter_mut().zip(btail) {
        fill(s, b);
        max = max.max(*s);
    }
    let mut sums = [0f32; 16];
    for chunk in body.chunks_exact_mut(16) {
        for l in 0..16 {
            chunk[l] = exp_f32(chunk[l] - max);
            sums[l] += chunk[l];
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for s in tail.iter_mut() {
        *s = exp_f32(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        // A weight below the normal range is flushed to zero (no subnormal operands below).
        let p = *s * inv;
        *s = if p < f32::MIN_POSITIVE { 0.0 } else { p };
    }
}

/// Every probability row `r` of `p` (`[rows, keys]`): `o[r·d + c] = Σ_j p[r, j] · vs[j·d + c]`.
/// Blocks of 64 output columns (then 16, then one) and of [`KEY_BLOCK`] keys, each block of
/// value rows used by every pair of rows in turn; a pair's sums are held in registers over the
/// block's keys and carried in `o` between blocks (keys summed in ascending order).
#[inline(always)]
fn context_into(p: &[f32], keys: usize, vs: &[f32], d: usize, o: &mut [f32]) {
    let spans = || {
        (0..keys)
            .step_by(KEY_BLOCK)
            .map(|j0| [j0, (j0 + KEY_BLOCK).min(keys)])
    };
    let mut c0 = 0;
    while c0 + 64 <= d {
        for span in spans() {
            block_rows::<64>(p, keys, &vs[c0..], d, span, &mut o[c0..], d, span[0] > 0);
        }
        c0 += 64;
    }
    while c0 + 16 <= d {
        for span in spans() {
            block_rows::<16>(p, keys, &vs[c0..], d, span, &mut o[c0..], d, span[0] > 0);
        }
        c0 += 16;
    }
    while c0 < d {
        for span in spans() {
            block_rows::<1>(p, keys, &vs[c0..], d, span, &mut o[c0..], d, span[0] > 0);
        }
        c0 += 1;
    }
}

/// `Σ a_t b_t` with eight partial sums (lanes) added at the end.
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `o += p · v`.
#[inline(always)]
fn axpy(p: f32, v: &[f32], o: &mut [f32]) {
    for (o, y) in o.iter_mut().zip(v) {
        *o += p * y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.618_034).sin() * 2.0)
            .collect()
    }

    #[test]
    fn kernel_matches_the_reference_on_odd_shapes_and_strided_caches() {
        for (batch, seq, heads, d, keys, cap, mask_batch) in [
            (1, 1, 1, 1, 1, 1, 1),
            (1, 1, 3, 5, 7, 9, 1),
            (2, 3, 2, 17, 11, 16, 2),
            (3, 1, 4, 64, 40, 64, 1),
            // More query rows than decode takes: the prefill path.
            (2, 9, 3, 64, 9, 12, 2),
            (1, 40, 2, 20, 47, 50, 1),
        ] {
            let shape = AttentionShape {
                batch,
                seq,
                heads,
                head_dim: d,
                keys,
            };
            let q = values(batch * seq * heads * d, 1.0);
            // Buffers [batch, heads, cap, d] of which the first `keys` rows are filled.
            let kb = values(batch * heads * cap * d, 2.0);
            let vb = values(batch * heads * cap * d, 3.0);
            let view = |data| CacheView {
                data,
                offset: 0,
                batch_stride: heads * cap * d,
                head_stride: cap * d,
                row_stride: d,
            };
            let mask: Vec<bool> = (0..mask_batch * seq * keys).map(|i| i % 5 == 3).collect();
            let coeff = 3.0;
            let reference =
                attention_f32_reference(shape, &q, view(&kb), view(&vb), &mask, mask_batch, coeff)
                    .unwrap();
            let fast =
                attention_f32(shape, &q, view(&kb), view(&vb), &mask, mask_batch, coeff).unwrap();
            assert_eq!(fast.len(), batch * seq * heads * d);
            assert_eq!(fast.len(), reference.len());
            for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
                assert!(
                    (f - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "[{batch}, {seq}, {heads}, {d}] × {keys} keys at {i}: {f} vs {r}"
                );
            }
            // Every instruction set this CPU has gives the detected one's results exactly.
            let isas = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Fp16];
            let mut ran = 0;
            for isa in isas.into_iter().filter(|i| i.is_supported()) {
                let (kv, vv) = (view(&kb), view(&vb));
                let got =
                    attention_f32_with(isa, shape, &q, kv, vv, &mask, mask_batch, coeff).unwrap();
                assert_eq!(got, fast, "{} against the detected path", isa.name());
                ran += 1;
            }
            assert!(ran >= 1, "at least the scalar path");
        }
    }

    #[test]
    fn exp_matches_libm_within_the_documented_bound() {
        let mut worst = 0f32;
        for i in 0..=872_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_f32(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst <= EXP_MAX_REL_ERROR, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-10000.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(-87.0) >= f32::MIN_POSITIVE);
    }

    #[test]
    fn the_mask_blocks_and_the_coefficient_cancels_on_unmasked_scores() {
        // One head, two keys, the second blocked: the output is the first value row exactly.
        let shape = AttentionShape {
            batch: 1,
            seq: 1,
            heads: 1,
            head_dim: 2,
            keys: 2,
        };
        let view = |data| CacheView {
            data,
            offset: 0,
            batch_stride: 4,
            head_stride: 4,
            row_stride: 2,
        };
        let (k, v) = ([1.0, 0.0, 0.0, 1.0], [5.0, -1.0, 9.0, 9.0]);
        let out = attention_f32(
            shape,
            &[0.3, 0.4],
            view(&k),
            view(&v),
            &[false, true],
            1,
            2.0,
        )
        .unwrap();
        assert_eq!(out, vec![5.0, -1.0]);
    }

    #[test]
    fn short_slices_are_typed_errors() {
        let shape = AttentionShape {
            batch: 1,
            seq: 1,
            heads: 2,
            head_dim: 4,
            keys: 3,
        };
        let short = CacheView {
            data: &[0.0; 10],
            offset: 0,
            batch_stride: 24,
            head_stride: 12,
            row_stride: 4,
        };
        let q = [0.0; 8];
        let mask = [false; 3];
        assert!(matches!(
            attention_f32(shape, &q, short, short, &mask, 1, 1.0),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            attention_f32_reference(shape, &q[..7], short, short, &mask, 1, 1.0),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}
