//! f32 skinny GEMM on host memory: `y = x · Wᵀ (+ b)` for a few activation rows (decode).
//!
//! `W` is `[n, k]` row-major (PyTorch's `Linear` layout, also the tied embedding). Rows of `W` are
//! split across rayon's thread pool in contiguous blocks; each weight row is streamed from memory
//! ONCE for all `m ≤ `[`F32_GEMV_MAX_ROWS`] activation rows. Within a block, a tile of `R` weight
//! rows is read side by side (`R` concurrent memory streams, each with a software prefetch a few
//! cache lines ahead) against the `m` activation rows, `R·m` SIMD accumulators, one horizontal
//! sum per output at the end; from 8 rows on, the rows go in groups of 4 through each tile (its
//! weight rows in L1 after the first group). Up to 16 rows (a serving batch) this beats
//! OpenBLAS, which packs the whole weight first (`gemv_bw`: 57–85 against 55–63 GFLOP/s at 16
//! rows). On the 2-core development machine this streams a 1 GiB weight at
//! 23–24 GB/s at `m = 1` (one row at a time: 12.7 GB/s), the machine's measured read bandwidth.
//! AVX-512 or AVX2+FMA when the CPU has it (runtime detection through [`Isa`]), portable scalar
//! code otherwise. Summation order differs from a blocked GEMM's, so results match it within f32
//! rounding, not bit for bit.

use rayon::prelude::*;

use super::host::Isa;
use crate::error::{QuantError, Result};

/// Most activation rows the fast kernel takes in one pass over the weight (decode batch sizes).
pub const F32_GEMV_MAX_ROWS: usize = 16;

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
                let first = bi * block;
                let rows = chunk.len() / m;
                let w_block = &w[first * k..(first + rows) * k];
                for g in (0..m).step_by(F32_GEMV_MAX_ROWS) {
                    let mb = (m - g).min(F32_GEMV_MAX_ROWS);
                    block_rows(isa, w_block, k, &x[g * k..(g + mb) * k], chunk, m, g, mb);
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

/// Checks `x` `[m, k]`, `w` `[n, k]` and `bias` `[n]` (typed errors naming the operand).
pub(crate) fn check_shapes(
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

/// For every row `r` of `w` (`[rows, k]`) and activation row `i < mb` of `x` (`[mb, k]`):
/// `yt[r·m + g + i] = Σ_j w[r, j] · x[i, j]`.
#[allow(clippy::too_many_arguments)]
fn block_rows(
    isa: Isa,
    w: &[f32],
    k: usize,
    x: &[f32],
    yt: &mut [f32],
    m: usize,
    g: usize,
    mb: usize,
) {
    let rows = w.len() / k;
    debug_assert!(x.len() == mb * k && mb <= F32_GEMV_MAX_ROWS && yt.len() == rows * m);
    let done = match isa {
        Isa::Scalar => 0,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `isa` was checked to be supported; the slices have the shapes above.
            unsafe { avx2::block_rows(w, k, x, yt, m, g, mb) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Fp16 => {
            // SAFETY: as above.
            unsafe { avx512::block_rows(w, k, x, yt, m, g, mb) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Fp16 => 0,
    };
    // Columns the SIMD tiles left (k not a multiple of the vector width; all of them for the
    // scalar path), added to what the tiles wrote.
    for r in 0..rows {
        let wr = &w[r * k..(r + 1) * k];
        for i in 0..mb {
            let xr = &x[i * k..(i + 1) * k];
            let mut s = 0f32;
            for (wv, xv) in wr[done..].iter().zip(&xr[done..]) {
                s += wv * xv;
            }
            let out = &mut yt[r * m + g + i];
            *out = if done == 0 { s } else { *out + s };
        }
    }
}

/// Generates the AVX2 / AVX-512 modules: `$w` lanes per vector; the list maps a number of
/// activation rows to the number of weight rows per tile (accumulators `mb·R` within
/// the ISA's register file), and `$big_mb => $big_r` is the group size and tile height for more
/// rows.
macro_rules! simd_module {
    ($name:ident, $feat:literal, $vec:ty, $w:literal, $zero:ident, $load:ident, $fma:ident,
     |$hv:ident| $hsum:block, |$h4:ident| $hsum4:block,
     [$($mb:literal => $r:literal),*], $big_mb:literal => $big_r:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            /// Floats ahead of the current column that each weight row prefetches.
            const PREFETCH: usize = 128;

            /// Horizontal sum of the lanes.
            #[target_feature(enable = $feat)]
            #[inline]
            fn hsum($hv: $vec) -> f32 $hsum

            /// The horizontal sums of four vectors at once (one shuffle tree instead of four).
            #[target_feature(enable = $feat)]
            #[inline]
            fn hsum4($h4: [$vec; 4]) -> [f32; 4] $hsum4

            /// One tile: weight rows `w[0..R]` (row stride `k`) against `MB` activation rows of
            /// `x` (row stride `k`), columns `0..k − k mod $w` in one [`chunk`]; writes
            /// `yt[r·m + g + i]`.
            ///
            /// # Safety
            /// The CPU has the target features; `w` holds `R·k` values, `x` `MB·k`, and
            /// `yt[(R−1)·m + g + MB − 1]` exists; `R·MB ≤ 32`.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn tile<const MB: usize, const R: usize>(
                w: *const f32,
                k: usize,
                x: *const f32,
                yt: &mut [f32],
                m: usize,
                g: usize,
            ) {
                let mut acc = [$zero(); 32];
                let acc = &mut acc[..R * MB];
                // SAFETY: as documented; the chunk covers the whole row.
                unsafe { chunk::<MB, R>(w, k, x, [0, k - k % $w], acc, MB, true) };
                for r in 0..R {
                    for i in 0..MB {
                        yt[r * m + g + i] = hsum(acc[r * MB + i]);
                    }
                }
            }

            /// Every row of `w` (`[rows, k]`) in tiles of `R` rows (the tail one row at a
            /// time) against the `MB` activation rows of `x`.
            ///
            /// # Safety
            /// As [`block_rows`], with `mb == MB`.
            #[target_feature(enable = $feat)]
            #[allow(clippy::int_plus_one)] // `r + R <= rows` reads as "R more rows fit".
            unsafe fn grouped<const MB: usize, const R: usize>(
                w: &[f32],
                k: usize,
                x: &[f32],
                yt: &mut [f32],
                m: usize,
                g: usize,
            ) {
                let rows = w.len() / k;
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                // SAFETY: every tile stays within the rows of `w`, the `MB` rows of `x` and the
                // slots of `yt`.
                unsafe {
                    let mut r = 0;
                    while r + R <= rows {
                        tile::<MB, R>(wp.add(r * k), k, xp, &mut yt[r * m..], m, g);
                        r += R;
                    }
                    while r < rows {
                        tile::<MB, 1>(wp.add(r * k), k, xp, &mut yt[r * m..], m, g);
                        r += 1;
                    }
                }
            }

            /// Columns per chunk of [`blocked`]: a chunk of 16 activation rows (16 KiB) and of
            /// a 6-row weight tile (6 KiB) stay in L1 together.
            const KC: usize = 256;

            /// [`grouped`] for many activation rows, in column chunks of [`KC`]: every group of
            /// `MB` rows runs one chunk of a tile before the next chunk, its `R·MB` accumulators
            /// kept in a buffer between chunks, so the activation rows and the tile's weight rows
            /// are read from L1 (unchunked, `mb` long rows fall out of it: 16 rows of 2048
            /// columns are 128 KiB). Each lane sums its columns in the same order as [`tile`],
            /// so the results are identical.
            ///
            /// # Safety
            /// As [`block_rows`].
            #[target_feature(enable = $feat)]
            unsafe fn blocked<const MB: usize, const R: usize>(
                w: &[f32],
                k: usize,
                x: &[f32],
                yt: &mut [f32],
                m: usize,
                g: usize,
                mb: usize,
            ) {
                let rows = w.len() / k;
                let kfull = k - k % $w;
                let groups = mb.div_ceil(MB);
                let mut acc = vec![$zero(); groups * R * MB];
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let mut r = 0;
                // SAFETY: tiles stay within the rows of `w`, groups within the `mb` rows of `x`,
                // chunks within `0..kfull`, and the outputs within `yt`.
                unsafe {
                    while r < rows {
                        let tile_rows = if r + R <= rows { R } else { 1 };
                        acc.fill($zero());
                        let mut j0 = 0;
                        while j0 < kfull {
                            let j1 = (j0 + KC).min(kfull);
                            for q in 0..groups {
                                let n = (mb - q * MB).min(MB);
                                let a = &mut acc[q * R * MB..(q + 1) * R * MB];
                                let (wt, xq) = (wp.add(r * k), xp.add(q * MB * k));
                                macro_rules! chunk {
                                    ($n:literal) => {
                                        if tile_rows == R {
                                            chunk::<$n, R>(wt, k, xq, [j0, j1], a, MB, q == 0)
                                        } else {
                                            chunk::<$n, 1>(wt, k, xq, [j0, j1], a, MB, q == 0)
                                        }
                                    };
                                }
                                match n {
                                    1 => chunk!(1),
                                    2 => chunk!(2),
                                    3 => chunk!(3),
                                    _ => chunk!(4),
                                }
                            }
                            j0 = j1;
                        }
                        for q in 0..groups {
                            let n = (mb - q * MB).min(MB);
                            for rr in 0..tile_rows {
                                let at = q * R * MB + rr * MB;
                                let out = (r + rr) * m + g + q * MB;
                                if n == 4 {
                                    let v = [acc[at], acc[at + 1], acc[at + 2], acc[at + 3]];
                                    yt[out..out + 4].copy_from_slice(&hsum4(v));
                                } else {
                                    for i in 0..n {
                                        yt[out + i] = hsum(acc[at + i]);
                                    }
                                }
                            }
                        }
                        r += tile_rows;
                    }
                }
            }

            /// Columns `j0..j1` of weight rows `w[0..R]` against `N` activation rows of `x`,
            /// added to the accumulators `acc[rr·stride + i]`; the weight rows prefetch ahead
            /// when `prefetch` (the first group of a chunk).
            ///
            /// # Safety
            /// The CPU has the target features; `w` holds `R` rows and `x` `N` rows of stride
            /// `k`; `j0..j1` are columns (multiples of the vector width, `j1 ≤ k`); `acc` holds
            /// `(R − 1)·stride + N` vectors.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn chunk<const N: usize, const R: usize>(
                w: *const f32,
                k: usize,
                x: *const f32,
                [j0, j1]: [usize; 2],
                acc: &mut [$vec],
                stride: usize,
                prefetch: bool,
            ) {
                let mut a = [[$zero(); N]; R];
                for (rr, ar) in a.iter_mut().enumerate() {
                    ar.copy_from_slice(&acc[rr * stride..rr * stride + N]);
                }
                let mut j = j0;
                // SAFETY: loads read columns `j0..j1` of the R weight rows and N activation
                // rows; prefetch addresses are computed with wrapping arithmetic and never
                // dereferenced.
                unsafe {
                    while j < j1 {
                        let mut xv = [$zero(); N];
                        for (i, v) in xv.iter_mut().enumerate() {
                            *v = $load(x.add(i * k + j));
                        }
                        for (rr, ar) in a.iter_mut().enumerate() {
                            let p = w.add(rr * k + j);
                            if prefetch {
                                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                            }
                            let wv = $load(p);
                            for (acc, xi) in ar.iter_mut().zip(&xv) {
                                *acc = $fma(wv, *xi, *acc);
                            }
                        }
                        j += $w;
                    }
                }
                for (rr, ar) in a.iter().enumerate() {
                    acc[rr * stride..rr * stride + N].copy_from_slice(ar);
                }
            }

            /// Every row of `w` (`[rows, k]`) against the `mb` activation rows of `x`; returns
            /// the first column not processed (`k − k mod $w`). A row count in the list runs as one
            /// group with the tile height for that many accumulators; more rows run in groups of
            /// `$big_mb` over tiles of `$big_r` weight rows.
            ///
            /// # Safety
            /// The CPU has the target features; `x.len() == mb·k`,
            /// `mb ≤ `[`F32_GEMV_MAX_ROWS`](super::F32_GEMV_MAX_ROWS), `yt.len() == rows·m`,
            /// `g + mb ≤ m`.
            pub(super) unsafe fn block_rows(
                w: &[f32],
                k: usize,
                x: &[f32],
                yt: &mut [f32],
                m: usize,
                g: usize,
                mb: usize,
            ) -> usize {
                // SAFETY: as documented above; `grouped` keeps within the same bounds.
                unsafe {
                    match mb {
                        $($mb => grouped::<$mb, $r>(w, k, x, yt, m, g),)*
                        0 => return 0,
                        _ => blocked::<$big_mb, $big_r>(w, k, x, yt, m, g, mb),
                    }
                }
                k - k % $w
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
    |v| {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    },
    |v| {
        // Pairwise sums inside each 128-bit half, then the halves: [Σa, Σb, Σc, Σd].
        let t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        let mut out = [0f32; 4];
        // SAFETY: `out` holds four floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), s) };
        out
    },
    [1 => 8, 2 => 4, 3 => 3, 4 => 2, 5 => 2, 6 => 1, 7 => 1, 8 => 1],
    4 => 2
);

simd_module!(
    avx512,
    "avx512f,fma",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    |v| { _mm512_reduce_add_ps(v) },
    |v| {
        // 256-bit halves of a with b and c with d, then 128-bit quarters: the quarters of
        // `q` hold four partial sums of a, b, c and d; two in-lane rotations finish them.
        let ab = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
        );
        let q = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
        );
        let t = _mm512_add_ps(q, _mm512_permute_ps::<0b01_00_11_10>(q));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
        let firsts = _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            t,
        );
        let mut out = [0f32; 4];
        // SAFETY: `out` holds four floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(firsts)) };
        out
    },
    // mb·R accumulators + mb activation vectors + 1 weight vector ≤ 32 zmm registers.
    [1 => 8, 2 => 8, 3 => 6, 4 => 6, 5 => 4, 6 => 4, 7 => 3],
    // 8 rows and more: groups of 4 over 6-row weight tiles (24 accumulators, 10 loads per 24
    // FMAs; at 8 rows 15–50 % faster than one group of 8 over 2-row tiles, which loads 10 per
    // 16), the tile's weight rows read from memory once for all groups.
    4 => 6
);
