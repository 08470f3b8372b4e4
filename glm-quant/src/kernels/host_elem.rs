//! Element-wise CPU kernels of the forward pass on host slices: GELU's `erf` vectorized, the
//! GeGLU gate `u₁ · gelu(u₂)` fused into one pass over the `dense_h_to_4h` output, and the split of
//! the fused per-head QKV projection with rotary applied to q and k in the same pass
//! ([`qkv_rotary_f32`]).
//!
//! The generic path (burn's `Flex`) evaluates GELU with libm's scalar `erff` over a strided view,
//! then multiplies in a second pass. Here [`erf_f32`] is a rational approximation evaluated with
//! SIMD (AVX-512 / AVX2+FMA, runtime dispatch through [`Isa`]; portable scalar code otherwise).
//!
//! **Error against libm** (`libm::erff`, itself within 1 ulp of the true value), measured by the
//! test `erf_matches_libm_within_the_documented_bound` over every 97th f32 in `[-5, 5]` and on
//! every instruction-set path: at most [`ERF_MAX_ABS_ERROR`] absolute. A GELU output differs from
//! the libm-based one by at most `0.5·|x|·ERF_MAX_ABS_ERROR` plus one rounding of the product;
//! the golden fixtures' tolerances are four orders of magnitude wider.

use rayon::prelude::*;

use super::host::Isa;
use crate::error::{QuantError, Result};

/// Largest absolute difference between [`erf_f32`] and `libm::erff` on any input (tested).
pub const ERF_MAX_ABS_ERROR: f32 = 5.0e-7;

/// Beyond this magnitude `erf` is ±1 in f32 (`1 − erf(3.92) < 2⁻²⁵`).
const ERF_CLAMP: f32 = 3.92;

/// `erf(x) ≈ x · P(x²) / Q(x²)` on `[0, ERF_CLAMP]`, coefficients lowest degree first, fitted
/// for relative error by Loeb's iteration (weighted least squares) against mpmath's `erf`.
const ERF_P: [f32; 7] = [
    // The fit returns 2/√π (erf's slope at 0) to f32 precision.
    std::f32::consts::FRAC_2_SQRT_PI,
    0.185_071_77,
    0.054_214_433,
    0.003_833_377_3,
    3.757_842_4e-4,
    4.583_813_3e-6,
    -1.265_859_5e-8,
];
const ERF_Q: [f32; 6] = [
    1.0,
    0.497_349,
    0.113_828_81,
    0.015_416_026,
    0.001_299_168_6,
    6.216_202e-5,
];

/// libm's `erff`: the reference the generic path uses.
pub fn erf_f32_reference(x: f32) -> f32 {
    libm::erff(x)
}

/// The rational approximation of `erf` (scalar code of the SIMD paths' formula).
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let c = x.clamp(-ERF_CLAMP, ERF_CLAMP);
    let t = c * c;
    let mut p = ERF_P[6];
    for &k in ERF_P[..6].iter().rev() {
        p = p.mul_add(t, k);
    }
    let mut q = ERF_Q[5];
    for &k in ERF_Q[..5].iter().rev() {
        q = q.mul_add(t, k);
    }
    (c * p / q).clamp(-1.0, 1.0)
}

/// The GeGLU gate exactly as the generic path computes it: `u₁ · (0.5·g·(1 + erf(g / √2)))` with
/// `g = u₂` and libm's `erff`, element by element.
///
/// # Shapes
/// - `u`: `[rows, 2·inner]` (row-major, `[u₁ | u₂]` per row) → `[rows, inner]`
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `u` does not hold `rows · 2·inner` values.
pub fn geglu_f32_reference(u: &[f32], rows: usize, inner: usize) -> Result<Vec<f32>> {
    check(u, rows, inner)?;
    let mut out = Vec::with_capacity(rows * inner);
    for row in u.chunks_exact(2 * inner) {
        let (u1, u2) = row.split_at(inner);
        out.extend(u1.iter().zip(u2).map(|(&a, &g)| {
            a * (0.5 * g * (1.0 + erf_f32_reference(g / std::f32::consts::SQRT_2)))
        }));
    }
    Ok(out)
}

/// [`geglu_f32_with`] on the detected instruction set.
///
/// # Shapes
/// - `u`: `[rows, 2·inner]` → `[rows, inner]`
///
/// # Errors
/// As [`geglu_f32_with`].
pub fn geglu_f32(u: &[f32], rows: usize, inner: usize) -> Result<Vec<f32>> {
    geglu_f32_with(Isa::detect(), u, rows, inner)
}

/// The fused GeGLU gate `u₁ · gelu(u₂)` with the vectorized [`erf_f32`], one pass, rows split
/// across rayon's pool when the tensor is large.
///
/// # Shapes
/// - `u`: `[rows, 2·inner]` (row-major, `[u₁ | u₂]` per row) → `[rows, inner]`
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; [`QuantError::ShapeMismatch`]
/// when `u` does not hold `rows · 2·inner` values.
pub fn geglu_f32_with(isa: Isa, u: &[f32], rows: usize, inner: usize) -> Result<Vec<f32>> {
    if !isa.is_supported() {
        return Err(QuantError::UnsupportedIsa(isa.name()));
    }
    check(u, rows, inner)?;
    let mut out = vec![0f32; rows * inner];
    if inner == 0 {
        return Ok(out);
    }
    let gate_rows = |(o, row): (&mut [f32], &[f32])| {
        for (o, row) in o.chunks_exact_mut(inner).zip(row.chunks_exact(2 * inner)) {
            let (u1, u2) = row.split_at(inner);
            gate(isa, u1, u2, o);
        }
    };
    // ≥ 16 Ki outputs per task; small (decode) inputs stay on the calling thread.
    let per_task = (16 * 1024 / inner).max(1);
    if rows * inner >= 64 * 1024 {
        out.par_chunks_mut(per_task * inner)
            .zip(u.par_chunks(per_task * 2 * inner))
            .for_each(gate_rows);
    } else {
        gate_rows((&mut out, u));
    }
    Ok(out)
}

fn check(u: &[f32], rows: usize, inner: usize) -> Result<()> {
    let width = inner.checked_mul(2);
    if width.and_then(|w| w.checked_mul(rows)) != Some(u.len()) {
        return Err(QuantError::ShapeMismatch {
            tensor: "geglu input".into(),
            expected: vec![rows, width.unwrap_or(usize::MAX)],
            found: vec![u.len()],
        });
    }
    Ok(())
}

/// `o = u1 · gelu(u2)` for one row on `isa` (already checked to be supported).
fn gate(isa: Isa, u1: &[f32], u2: &[f32], o: &mut [f32]) {
    let done = match isa {
        Isa::Scalar => 0,
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was checked to be supported; the three slices have one length.
        Isa::Avx2 => unsafe { avx2::gate(u1, u2, o) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 | Isa::Avx512Fp16 => unsafe { avx512::gate(u1, u2, o) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Fp16 => 0,
    };
    for ((o, &a), &g) in o[done..].iter_mut().zip(&u1[done..]).zip(&u2[done..]) {
        *o = a * (0.5 * g * (1.0 + erf_f32(g * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

/// The three outputs of [`qkv_rotary_f32`].
#[derive(Debug, Clone, PartialEq)]
pub struct QkvRotary {
    /// Rotated queries, `[batch, seq, heads, head_dim]`.
    pub q: Vec<f32>,
    /// Rotated keys, `[batch, heads, seq, head_dim]` (the KV cache's layout).
    pub k: Vec<f32>,
    /// Values, `[batch, heads, seq, head_dim]`.
    pub v: Vec<f32>,
}

/// Splits the fused per-head `[heads][q|k|v][head_dim]` projection and rotates q and k,
/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂ | x₁]`: the same three roundings per
/// element as the generic tensor ops (two products, one sum; the sign flip is exact), so the
/// results are identical to them. One task per (batch row, head).
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads·3·head_dim]`
/// - `cos`, `sin`: `[batch, seq, head_dim]` (the rotary rows of each position)
/// - → [`QkvRotary`]
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice does not have its shape or `head_dim` is odd.
pub fn qkv_rotary_f32(
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    [batch, seq, heads, d]: [usize; 4],
) -> Result<QkvRotary> {
    let bad = |tensor: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
        tensor: tensor.into(),
        expected,
        found: vec![found],
    };
    let rows = batch.checked_mul(seq);
    let width = heads.checked_mul(d).and_then(|x| x.checked_mul(3));
    if rows.zip(width).and_then(|(r, w)| r.checked_mul(w)) != Some(qkv.len()) {
        return Err(bad("qkv", vec![batch, seq, width.unwrap_or(0)], qkv.len()));
    }
    let table = rows.and_then(|r| r.checked_mul(d));
    if d % 2 != 0 || table != Some(cos.len()) || table != Some(sin.len()) {
        return Err(bad(
            "rotary rows",
            vec![batch, seq, d],
            cos.len().min(sin.len()),
        ));
    }
    let half = d / 2;
    let rotate = |x: &[f32], c: &[f32], s: &[f32], out: &mut [f32]| {
        for t in 0..d {
            let r = if t < half { -x[t + half] } else { x[t - half] };
            out[t] = x[t] * c[t] + r * s[t];
        }
    };
    // Per (b, h): q rows [seq, d], then k rows, then v rows.
    let parts: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let mut part = vec![0f32; 3 * seq * d];
            let (qp, rest) = part.split_at_mut(seq * d);
            let (kp, vp) = rest.split_at_mut(seq * d);
            for i in 0..seq {
                let row = b * seq + i;
                let base = (row * heads + h) * 3 * d;
                let (c, s) = (&cos[row * d..][..d], &sin[row * d..][..d]);
                rotate(&qkv[base..base + d], c, s, &mut qp[i * d..][..d]);
                rotate(&qkv[base + d..base + 2 * d], c, s, &mut kp[i * d..][..d]);
                vp[i * d..][..d].copy_from_slice(&qkv[base + 2 * d..base + 3 * d]);
            }
            part
        })
        .collect();
    let n = batch * seq * heads * d;
    let (mut q, mut k, mut v) = (vec![0f32; n], Vec::with_capacity(n), Vec::with_capacity(n));
    for (bh, part) in parts.iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for i in 0..seq {
            q[((b * seq + i) * heads + h) * d..][..d].copy_from_slice(&part[i * d..][..d]);
        }
        k.extend_from_slice(&part[seq * d..2 * seq * d]);
        v.extend_from_slice(&part[2 * seq * d..]);
    }
    Ok(QkvRotary { q, k, v })
}

/// Generates the SIMD modules: `$w` lanes per vector.
macro_rules! simd_module {
    ($name:ident, $feat:literal, $vec:ty, $w:literal, $set1:ident, $load:ident, $store:ident,
     $fma:ident, $mul:ident, $div:ident, $add:ident, $min:ident, $max:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::{ERF_CLAMP, ERF_P, ERF_Q};
            use std::arch::x86_64::*;

            #[target_feature(enable = $feat)]
            #[inline]
            fn erf(x: $vec) -> $vec {
                let c = $min($max(x, $set1(-ERF_CLAMP)), $set1(ERF_CLAMP));
                let t = $mul(c, c);
                let mut p = $set1(ERF_P[6]);
                for &k in ERF_P[..6].iter().rev() {
                    p = $fma(p, t, $set1(k));
                }
                let mut q = $set1(ERF_Q[5]);
                for &k in ERF_Q[..5].iter().rev() {
                    q = $fma(q, t, $set1(k));
                }
                let r = $div($mul(c, p), q);
                $min($max(r, $set1(-1.0)), $set1(1.0))
            }

            /// Returns the first index not written.
            ///
            /// # Safety
            /// The CPU has the target features; `u1`, `u2` and `o` have one length.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn gate(u1: &[f32], u2: &[f32], o: &mut [f32]) -> usize {
                let n = o.len().min(u1.len()).min(u2.len());
                let (half, one, inv_sqrt2) = (
                    $set1(0.5),
                    $set1(1.0),
                    $set1(std::f32::consts::FRAC_1_SQRT_2),
                );
                let mut j = 0;
                // SAFETY: every access is below `n`, the shortest slice's length.
                unsafe {
                    while j + $w <= n {
                        let a = $load(u1.as_ptr().add(j));
                        let g = $load(u2.as_ptr().add(j));
                        let e = erf($mul(g, inv_sqrt2));
                        let gelu = $mul($mul(half, g), $add(one, e));
                        $store(o.as_mut_ptr().add(j), $mul(a, gelu));
                        j += $w;
                    }
                }
                j
            }
        }
    };
}

simd_module!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_mul_ps,
    _mm256_div_ps,
    _mm256_add_ps,
    _mm256_min_ps,
    _mm256_max_ps
);

simd_module!(
    avx512,
    "avx512f,fma",
    __m512,
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_mul_ps,
    _mm512_div_ps,
    _mm512_add_ps,
    _mm512_min_ps,
    _mm512_max_ps
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm_within_the_documented_bound() {
        let mut worst = (0f32, 0f32);
        let (lo, hi) = ((-5f32).to_bits(), 5f32.to_bits());
        // Every 97th f32 of [0, 5] and of [-5, 0] (bit patterns are monotone on each side).
        let positives = (0..hi).step_by(97).map(f32::from_bits);
        let negatives = (1u32 << 31..lo).step_by(97).map(f32::from_bits);
        for x in positives.chain(negatives) {
            let e = (erf_f32(x) - erf_f32_reference(x)).abs();
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(
            worst.0 <= ERF_MAX_ABS_ERROR,
            "erf error {} at x = {}",
            worst.0,
            worst.1
        );
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(10.0), 1.0);
        assert_eq!(erf_f32(-10.0), -1.0);
    }

    #[test]
    fn fused_gate_matches_the_reference_on_every_path() {
        // Odd widths exercise the SIMD tails; rows × inner ≥ 64 Ki takes the threaded branch.
        for (rows, inner) in [(1, 1), (3, 7), (2, 17), (5, 33), (70, 1000)] {
            let u: Vec<f32> = (0..rows * 2 * inner)
                .map(|i| (i as f32 * 0.7137).sin() * 6.0)
                .collect();
            let reference = geglu_f32_reference(&u, rows, inner).unwrap();
            assert_eq!(reference.len(), rows * inner);
            for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
                let fast = geglu_f32_with(isa, &u, rows, inner).unwrap();
                assert_eq!(fast.len(), reference.len(), "{isa:?}");
                for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
                    let (a, g) = (u[(i / inner) * 2 * inner + i % inner], r.abs());
                    let bound = 0.5
                        * (a * u[(i / inner) * 2 * inner + inner + i % inner]).abs()
                        * ERF_MAX_ABS_ERROR
                        + 2.0 * f32::EPSILON * g.max(a.abs());
                    assert!(
                        (f - r).abs() <= bound,
                        "{isa:?} [{rows}, {inner}] at {i}: {f} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn qkv_split_and_rotary_match_a_plain_reading_of_the_formula() {
        let (batch, seq, heads, d) = (2, 3, 2, 6);
        let qkv: Vec<f32> = (0..batch * seq * heads * 3 * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let cos: Vec<f32> = (0..batch * seq * d)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let sin: Vec<f32> = (0..batch * seq * d)
            .map(|i| (i as f32 * 0.11).sin())
            .collect();
        let out = qkv_rotary_f32(&qkv, &cos, &sin, [batch, seq, heads, d]).unwrap();
        for b in 0..batch {
            for i in 0..seq {
                for h in 0..heads {
                    let at = |part: usize, t: usize| {
                        qkv[((b * seq + i) * heads + h) * 3 * d + part * d + t]
                    };
                    for t in 0..d {
                        let (c, s) = (cos[(b * seq + i) * d + t], sin[(b * seq + i) * d + t]);
                        let rot = |part| {
                            if t < d / 2 {
                                -at(part, t + d / 2)
                            } else {
                                at(part, t - d / 2)
                            }
                        };
                        let q = at(0, t) * c + rot(0) * s;
                        let k = at(1, t) * c + rot(1) * s;
                        assert_eq!(out.q[((b * seq + i) * heads + h) * d + t], q);
                        assert_eq!(out.k[((b * heads + h) * seq + i) * d + t], k);
                        assert_eq!(out.v[((b * heads + h) * seq + i) * d + t], at(2, t));
                    }
                }
            }
        }
        assert!(qkv_rotary_f32(&qkv, &cos, &sin, [batch, seq, heads, d + 1]).is_err());
        assert!(qkv_rotary_f32(&qkv, &cos[1..], &sin, [batch, seq, heads, d]).is_err());
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert!(matches!(
            geglu_f32(&[1.0; 5], 1, 3),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            geglu_f32_reference(&[1.0; 5], 1, 3),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}
