//! Decode attention on host slices: GLM-130B's scaled, masked, f32-softmax attention for a few
//! query rows over the KV cache, one task per (batch row, head), reading the cache where it lies
//! (any row stride, e.g. a narrowed view of a buffer with room to grow) and writing the context
//! directly in `[batch, seq, heads·head_dim]` order (no transpose copy).
//!
//! Per query row `q` and head, as `SelfAttentionWithFP32SoftmaxMixin.attention_fn` computes it:
//! `s_j = (q / (√d · c)) · k_j`, masked positions set to −10000, `s_j · c`, softmax in f32,
//! `out = Σ_j p_j v_j`, with `c` the layer's coefficient (`layer_id + 1`). Only the order of the
//! sums differs from the generic path's matmuls.

use rayon::prelude::*;

use super::host::Isa;
use crate::error::{QuantError, Result};

/// Most query rows the kernel is meant for (decode steps); longer inputs take the generic path.
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
    /// [`run`](Self::run) compiled for `isa` (the same operations in the same order on every
    /// instruction set, so the same results: the compiler only widens the loops).
    fn run_on(&self, isa: Isa, b: usize, h: usize) -> Vec<f32> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is the detected instruction set, so the CPU has these features.
            Isa::Avx512 | Isa::Avx512Fp16 => unsafe { self.run_avx512(b, h) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(b, h) },
            _ => self.run(b, h),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, b: usize, h: usize) -> Vec<f32> {
        self.run(b, h)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, b: usize, h: usize) -> Vec<f32> {
        self.run(b, h)
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
