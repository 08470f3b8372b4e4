//! f32 skinny GEMM on host memory: `y = x · Wᵀ (+ b)` for a few activation rows (decode).
//!
//! `W` is `[n, k]` row-major (PyTorch's `Linear` layout, also the tied embedding). Rows of `W` are
//! split across rayon's thread pool in contiguous blocks; each weight row is streamed from memory
//! ONCE for all `m ≤ `[`F32_GEMV_MAX_ROWS`] activation rows, with several independent SIMD
//! accumulators per activation row (FMA latency) and one horizontal sum per output at the end.
//! AVX-512 or AVX2+FMA when the CPU has it (runtime detection through [`Isa`]), portable scalar
//! code otherwise. Summation order differs from a blocked GEMM's, so results match it within f32
//! rounding, not bit for bit.

use rayon::prelude::*;

use super::host::Isa;
use crate::error::{QuantError, Result};

/// Most activation rows the fast kernel takes in one pass over the weight (decode batch sizes).
pub const F32_GEMV_MAX_ROWS: usize = 8;

/// Plain-loop reference for `y = x · Wᵀ + b`, summing in index order in f32.
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]` (all row-major)
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice does not have its shape.
pub fn gemv_f32_reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_shapes(x, w, bias, m, n, k)?;
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for r in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[r * k..(r + 1) * k]);
            let mut s = 0f32;
            for j in 0..k {
                s += xr[j] * wr[j];
            }
            y[i * n + r] = s + bias.map_or(0.0, |b| b[r]);
        }
    }
    Ok(y)
}

/// [`gemv_f32_with`] on the detected instruction set ([`Isa::detect`]).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// As [`gemv_f32_with`].
pub fn gemv_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    gemv_f32_with(Isa::detect(), x, w, bias, m, n, k)
}

/// The multi-threaded SIMD `y = x · Wᵀ + b` on instruction set `isa`. Any `m` works; rows of `x`
/// are taken [`F32_GEMV_MAX_ROWS`] at a time (one pass over `W` per group), so it is meant for
/// `m ≤ F32_GEMV_MAX_ROWS`.
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; [`QuantError::ShapeMismatch`]
/// when a slice does not have its shape.
pub fn gemv_f32_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    if !isa.is_supported() {
        return Err(QuantError::UnsupportedIsa(isa.name()));
    }
    check_shapes(x, w, bias, m, n, k)?;
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let mut yt = vec![0f32; n * m];
    if k > 0 {
        let block = rows_per_task(n, k * 4);
        // yt: [n, m], so every task owns a contiguous block of output rows.
        yt.par_chunks_mut(block * m)
            .enumerate()
            .for_each(|(bi, chunk)| {
                for (i, acc) in chunk.chunks_mut(m).enumerate() {
                    let r = bi * block + i;
                    let row = &w[r * k..(r + 1) * k];
                    for g in (0..m).step_by(F32_GEMV_MAX_ROWS) {
                        let mb = (m - g).min(F32_GEMV_MAX_ROWS);
                        dot_rows(isa, row, &x[g * k..(g + mb) * k], &mut acc[g..g + mb]);
                    }
                }
            });
    }
    for r in 0..n {
        let b = bias.map_or(0.0, |b| b[r]);
        for i in 0..m {
            y[i * n + r] = yt[r * m + i] + b;
        }
    }
    Ok(y)
}

fn check_shapes(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let bad = |what: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
        tensor: what.to_string(),
        expected,
        found: vec![found],
    };
    if m.checked_mul(k) != Some(x.len()) {
        return Err(bad("x", vec![m, k], x.len()));
    }
    if n.checked_mul(k) != Some(w.len()) {
        return Err(bad("w", vec![n, k], w.len()));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(bad("bias", vec![n], b.len()));
        }
    }
    Ok(())
}

fn rows_per_task(n: usize, bytes_per_row: usize) -> usize {
    // ≥ 64 KiB of weight per task and ~8 tasks per thread for load balance.
    let threads = rayon::current_num_threads().max(1);
    let by_balance = n.div_ceil(threads * 8).max(1);
    let by_size = (64 * 1024 / bytes_per_row.max(1)).max(1);
    by_balance.max(by_size.min(n.div_ceil(threads).max(1)))
}

/// `acc[i] = Σ_j row[j] · x[i·k + j]` for the `acc.len() ≤ 8` rows of `x` (`k = row.len()`).
fn dot_rows(isa: Isa, row: &[f32], x: &[f32], acc: &mut [f32]) {
    let k = row.len();
    let mb = acc.len();
    debug_assert!(x.len() == mb * k && mb <= F32_GEMV_MAX_ROWS);
    let done = match isa {
        Isa::Scalar => 0,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `isa` was checked to be supported; `row` has k values, `x` has mb·k.
            unsafe { avx2::dot_rows(row, x, acc) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: as above.
            unsafe { avx512::dot_rows(row, x, acc) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => 0,
    };
    for (i, a) in acc.iter_mut().enumerate() {
        let xr = &x[i * k + done..(i + 1) * k];
        let mut s = 0f32;
        for (wv, xv) in row[done..].iter().zip(xr) {
            s += wv * xv;
        }
        if done == 0 {
            *a = s;
        } else {
            *a += s;
        }
    }
}

/// Generates the AVX2 / AVX-512 modules: `$w` lanes per vector.
macro_rules! simd_module {
    ($name:ident, $feat:literal, $vec:ty, $w:literal, $zero:ident, $load:ident, $fma:ident,
     $add:ident, |$hv:ident| $hsum:block) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            /// Horizontal sum of the lanes.
            #[target_feature(enable = $feat)]
            #[inline]
            fn hsum($hv: $vec) -> f32 $hsum

            /// `U` vectors of columns per step, `MB` activation rows: `MB·U` accumulators.
            /// Writes `acc[..MB]`; returns the first column not processed.
            ///
            /// # Safety
            /// The CPU has the target features; `x.len() >= MB·row.len()`, `acc.len() >= MB`.
            #[target_feature(enable = $feat)]
            unsafe fn dot<const MB: usize, const U: usize>(
                row: &[f32],
                x: &[f32],
                acc: &mut [f32],
            ) -> usize {
                let k = row.len();
                let step = U * $w;
                let mut a = [[$zero(); U]; MB];
                let wp = row.as_ptr();
                let xp = x.as_ptr();
                let mut j = 0;
                // SAFETY (whole block): every load reads columns < k of the row and of each x row.
                unsafe {
                    while j + step <= k {
                        let mut wv = [$zero(); U];
                        for (u, v) in wv.iter_mut().enumerate() {
                            *v = $load(wp.add(j + u * $w));
                        }
                        for (i, ai) in a.iter_mut().enumerate() {
                            let p = xp.add(i * k + j);
                            for (u, au) in ai.iter_mut().enumerate() {
                                *au = $fma(wv[u], $load(p.add(u * $w)), *au);
                            }
                        }
                        j += step;
                    }
                    while j + $w <= k {
                        let wv = $load(wp.add(j));
                        for (i, ai) in a.iter_mut().enumerate() {
                            ai[0] = $fma(wv, $load(xp.add(i * k + j)), ai[0]);
                        }
                        j += $w;
                    }
                }
                for (i, ai) in a.iter().enumerate() {
                    let mut s = ai[0];
                    for v in &ai[1..] {
                        s = $add(s, *v);
                    }
                    acc[i] = hsum(s);
                }
                j
            }

            /// Dispatches on `acc.len()` (1..=8); returns the first column not processed.
            ///
            /// # Safety
            /// The CPU has the target features; `x.len() == acc.len()·row.len()`.
            pub(super) unsafe fn dot_rows(row: &[f32], x: &[f32], acc: &mut [f32]) -> usize {
                // SAFETY: forwarded preconditions.
                unsafe {
                    match acc.len() {
                        1 => dot::<1, 4>(row, x, acc),
                        2 => dot::<2, 4>(row, x, acc),
                        3 => dot::<3, 2>(row, x, acc),
                        4 => dot::<4, 2>(row, x, acc),
                        5 => dot::<5, 2>(row, x, acc),
                        6 => dot::<6, 2>(row, x, acc),
                        7 => dot::<7, 1>(row, x, acc),
                        8 => dot::<8, 1>(row, x, acc),
                        _ => 0,
                    }
                }
            }
        }
    };
}

simd_module!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    |v| {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
);

simd_module!(
    avx512,
    "avx512f,fma",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    |v| { _mm512_reduce_add_ps(v) }
);
