//! f32 GEMM on host memory for many activation rows (prefill): `y = x · Wᵀ (+ b)` with `W` in
//! its own row-major `[n, k]` layout, never repacked.
//!
//! A blocked GEMM (OpenBLAS, MKL) first copies every weight into its kernel's panel layout; at
//! prefill sizes (`m` a few hundred rows) that copy reads and writes the whole weight once per
//! call and cost about as much CPU time as the multiplications (OpenBLAS's `sgemm_incopy`: 24 %
//! of a glm-small prefill against 33 % for its kernel). Here the activations are packed instead
//! (they are the small operand: `m·k` against `n·k`), in panels of [`MR`] rows, column by column
//! (`[k][MR]`); the kernel runs along `k`, loading one activation column of the panel (two
//! AVX-512 vectors) and broadcasting one value from each of [`NR`] weight rows read side by side,
//! straight from their row-major storage: `MR × NR` accumulators (24 vectors). The weight rows of
//! a tile stay in L1 across all panels; columns go in chunks of [`KC`] so a panel's chunk stays
//! in L1 too. The products land transposed (`[rows][m]`, one vector store per 16 activation rows)
//! and are written into `y` (plus the bias) at the end of each task.
//!
//! Rows of `W` are split across rayon's pool in blocks of [`NR`]-row tiles; each task owns its
//! output columns. A quantized weight goes through the same kernel: each task dequantizes its own
//! block of rows into a per-thread buffer first ([`gemm_f32_rows_with`]), so no dequantized copy
//! of the whole weight exists and the dequantization runs on every thread.
//!
//! AVX-512 runs the kernel above; AVX2 the same loop nest on 256-bit vectors (16-row half
//! panels against 6-row tiles: 12 accumulators in the 16 registers) with the same fused
//! multiply-adds in the same order, so both give the same bits; the portable path runs the loop
//! nest in plain code. The reference is
//! [`gemv_f32_reference`](super::host_f32::gemv_f32_reference); summation order differs (each
//! output sums its columns in order, chunk after chunk, as the reference does, but with fused
//! multiply-adds), so results match it within f32 rounding.

use rayon::prelude::*;

use super::host::Isa;
use super::host_f32::check_shapes;
use super::SharedOut;
use crate::error::{QuantError, Result};

/// Activation rows per packed panel (two AVX-512 vectors).
pub const MR: usize = 32;

/// Weight rows per tile (24 accumulators with [`MR`]).
pub const NR: usize = 12;

/// Columns per chunk: a panel's chunk (32 KiB) and a tile's rows (12 KiB) stay in L1.
pub const KC: usize = 256;

/// Tiles per task (rows of `W` per rayon task: `NR · TILES_PER_TASK`).
const TILES_PER_TASK: usize = 4;

/// How an operand of [`gemm_f32_stored`] is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// As its shape says, row-major (`x`: `[m, k]`, `w`: `[n, k]`).
    AsIs,
    /// As its transpose, row-major (`x`: `[k, m]`, `w`: `[k, n]`): the backward products of a
    /// linear (`dy · W` reads `W` this way, `dyᵀ · x` both operands) without a transposed copy.
    Transposed,
}

/// Where the weight rows come from.
enum Rows<'a> {
    /// Row-major f32 `[n, k]`, or `[k, n]` (the transpose of `W`) when [`Stored::Transposed`].
    Dense(&'a [f32], Stored),
    /// Rows written into the given buffer (`[rows, k]`) on demand, starting at the given row.
    Fill(&'a (dyn Fn(usize, &mut [f32]) -> Result<()> + Sync)),
}

/// [`gemm_f32_with`] on the detected instruction set ([`Isa::detect`]).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// As [`gemm_f32_with`].
pub fn gemm_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    gemm_f32_with(Isa::detect(), x, w, bias, m, n, k)
}

/// The multi-threaded `y = x · Wᵀ + b` on instruction set `isa`, for any `m` (meant for more
/// rows than [`F32_GEMV_MAX_ROWS`](super::host_f32::F32_GEMV_MAX_ROWS)).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; [`QuantError::ShapeMismatch`]
/// when a slice does not have its shape.
pub fn gemm_f32_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_shapes(x, w, bias, m, n, k)?;
    run(
        isa,
        x,
        Stored::AsIs,
        Rows::Dense(w, Stored::AsIs),
        bias,
        m,
        n,
        k,
    )
}

/// [`gemm_f32_stored_with`] on the detected instruction set ([`Isa::detect`]).
///
/// # Shapes
/// - `x`: `[m, k]` (or `[k, m]`), `w`: `[n, k]` (or `[k, n]`), `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// As [`gemm_f32_stored_with`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_stored(
    x: &[f32],
    xs: Stored,
    w: &[f32],
    ws: Stored,
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    gemm_f32_stored_with(Isa::detect(), x, xs, w, ws, bias, m, n, k)
}

/// `y = x · Wᵀ + b` as [`gemm_f32_with`], with either operand stored transposed ([`Stored`]):
/// a transposed `x` is read straight into the kernel's panels (as cheap as the plain layout), a
/// transposed `W` is broadcast from its rows of `n` values (a tile's values for one column sit
/// side by side). The same kernel and summation order as [`gemm_f32_with`], so the result is
/// the same to the bit whatever the layouts.
///
/// # Shapes
/// - `x`: `[m, k]` (or `[k, m]`), `w`: `[n, k]` (or `[k, n]`), `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// As [`gemm_f32_with`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_stored_with(
    isa: Isa,
    x: &[f32],
    xs: Stored,
    w: &[f32],
    ws: Stored,
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_shapes(x, w, bias, m, n, k)?;
    run(isa, x, xs, Rows::Dense(w, ws), bias, m, n, k)
}

/// [`gemm_f32_with`] with weight rows produced on demand: `fill(first, dst)` writes rows
/// `first .. first + dst.len() / k` of `W` into `dst` (`[rows, k]`), e.g. dequantizing them.
/// Each task fills its own block of rows into a buffer reused by its thread.
///
/// # Shapes
/// - `x`: `[m, k]`, `W`: `[n, k]`, `bias`: `[n]` → `[m, n]`
///
/// # Errors
/// As [`gemm_f32_with`], and the first error `fill` returns.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_rows_with(
    isa: Isa,
    x: &[f32],
    fill: &(dyn Fn(usize, &mut [f32]) -> Result<()> + Sync),
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    let bad = |tensor: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
        tensor: tensor.into(),
        expected,
        found: vec![found],
    };
    if m.checked_mul(k) != Some(x.len()) {
        return Err(bad("x", vec![m, k], x.len()));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(bad("bias", vec![n], b.len()));
        }
    }
    run(isa, x, Stored::AsIs, Rows::Fill(fill), bias, m, n, k)
}

/// `x` (`[m, k]`) as panels of [`MR`] rows, rows past `m` zero, written into `packed`
/// (resized; every element written, so a reused buffer needs no clearing). Each panel is
/// `[k][MR]` (column by column), or, when `halves`, two sub-panels `[k][MR / 2]` one after the
/// other (the AVX2 kernel runs a panel in two halves of 16 rows: with whole 32-row columns a
/// half's columns sit 128 bytes apart and fill half of L1's sets twice over, evicting
/// themselves and the weights; a half as its own 64-byte columns is contiguous).
fn pack_panels(x: &[f32], xs: Stored, m: usize, k: usize, halves: bool, packed: &mut Vec<f32>) {
    let panels = m.div_ceil(MR);
    packed.resize(panels * k * MR, 0.0);
    let width = if halves { MR / 2 } else { MR };
    packed
        .par_chunks_mut((k * width).max(1))
        .enumerate()
        .for_each(|(s, sub)| {
            // Sub-panel s holds rows first .. first + rows (zero past them).
            let first = (s * width).min(m);
            let rows = (m - first).min(width);
            match xs {
                Stored::AsIs => {
                    let xs = &x[first * k..(first + rows) * k];
                    // Column by column: contiguous writes, the panel's rows read side by side.
                    for (j, col) in sub.chunks_exact_mut(width).enumerate() {
                        for (i, v) in col.iter_mut().enumerate().take(rows) {
                            *v = xs[i * k + j];
                        }
                        col[rows..].fill(0.0);
                    }
                }
                Stored::Transposed => {
                    // Column j of the sub-panel is a contiguous run of row j of xᵀ.
                    for (j, col) in sub.chunks_exact_mut(width).enumerate() {
                        col[..rows].copy_from_slice(&x[j * m + first..j * m + first + rows]);
                        col[rows..].fill(0.0);
                    }
                }
            }
        });
}

#[allow(clippy::too_many_arguments)]
fn run(
    isa: Isa,
    x: &[f32],
    xs: Stored,
    rows: Rows<'_>,
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    if !isa.is_supported() {
        return Err(QuantError::UnsupportedIsa(isa.name()));
    }
    let size = m.checked_mul(n).ok_or_else(|| QuantError::ShapeMismatch {
        tensor: "y".into(),
        expected: vec![m, n],
        found: vec![usize::MAX],
    })?;
    if m == 0 || n == 0 || k == 0 {
        let mut y = vec![0f32; size];
        if let Some(b) = bias {
            y.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b));
        }
        return Ok(y);
    }
    // Every element is written exactly once below (each task writes all `m` rows of its
    // columns) before the length is set.
    let mut y: Vec<f32> = Vec::with_capacity(size);
    thread_local! {
        static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // The calling thread's packing buffer, taken out for this call (a nested call on this
    // thread while the pool works finds none and allocates its own).
    let mut packed = PACKED.with(|cell| cell.take());
    pack_panels(x, xs, m, k, isa == Isa::Avx2, &mut packed);
    let mp = m.div_ceil(MR) * MR;
    let per_task = NR * TILES_PER_TASK;
    // Each task writes its own columns of the output.
    let out = SharedOut(y.as_mut_ptr());
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    (0..n.div_ceil(per_task))
        .into_par_iter()
        .try_for_each(|t| -> Result<()> {
            let first = t * per_task;
            let count = per_task.min(n - first);
            // The thread's buffers are taken out while the task runs (and put back after), so a
            // task this thread picks up while `fill` waits on the pool finds none borrowed.
            let (mut ct, mut wbuf) = SCRATCH.with(|cell| cell.take());
            // Written by the first column chunk before anything reads it.
            if ct.len() < count * mp {
                ct.resize(count * mp, 0.0);
            }
            let result = (|| -> Result<()> {
                // The task's weight rows and how they are laid out.
                let (wrows, ws): (&[f32], WStride) = match &rows {
                    Rows::Dense(w, Stored::AsIs) => {
                        (&w[first * k..(first + count) * k], WStride::Rows(k))
                    }
                    // Columns first .. first + count of every row of Wᵀ.
                    Rows::Dense(w, Stored::Transposed) => (&w[first..], WStride::Columns(n)),
                    Rows::Fill(fill) => {
                        wbuf.resize(count * k, 0.0);
                        fill(first, &mut wbuf[..count * k])?;
                        (&wbuf[..count * k], WStride::Rows(k))
                    }
                };
                let dest = Dest {
                    out,
                    n,
                    m,
                    first,
                    bias,
                };
                // SAFETY: this task alone writes columns first .. first + count of the
                // [m, n] output.
                unsafe {
                    block(
                        isa,
                        &packed,
                        mp,
                        k,
                        wrows,
                        ws,
                        count,
                        &mut ct[..count * mp],
                        dest,
                    )
                };
                Ok(())
            })();
            SCRATCH.with(|cell| cell.replace((ct, wbuf)));
            result
        })?;
    // SAFETY: the tasks wrote all `m·n` elements (every task covers its columns for every row,
    // and the tasks cover every column); capacity is `m·n`.
    unsafe { y.set_len(size) };
    PACKED.with(|cell| cell.set(packed));
    Ok(y)
}

/// How a task's weight rows `r < count`, columns `j < k` sit in its slice.
#[derive(Clone, Copy, Debug)]
enum WStride {
    /// Element `(r, j)` at `r·stride + j` (rows of `W`).
    Rows(usize),
    /// Element `(r, j)` at `j·stride + r` (rows of `Wᵀ`).
    Columns(usize),
}

impl WStride {
    fn at(self, r: usize, j: usize) -> usize {
        match self {
            WStride::Rows(s) => r * s + j,
            WStride::Columns(s) => j * s + r,
        }
    }

    /// Whether a slice of `len` elements holds `count` rows of `k` columns.
    fn fits(self, len: usize, count: usize, k: usize) -> bool {
        count == 0 || k == 0 || self.at(count - 1, k - 1) < len
    }
}

/// Where a task's products go: columns `first ..` of the `[m, n]` output, plus the bias.
#[derive(Clone, Copy)]
struct Dest<'a> {
    out: SharedOut,
    n: usize,
    m: usize,
    first: usize,
    bias: Option<&'a [f32]>,
}

/// `y[i, first + r] = ct[r·mp + i] + bias[first + r]` for `r < count`, `lo ≤ i < hi`.
///
/// # Safety
/// `dest.out` points at the `[m, n]` output, `first + count ≤ n`, `ct.len() == count·mp`,
/// `lo` a multiple of 16, `hi ≤ m ≤ mp`, and no other thread writes columns
/// `first .. first + count`.
unsafe fn write_out(
    isa: Isa,
    ct: &[f32],
    mp: usize,
    [lo, hi]: [usize; 2],
    count: usize,
    dest: Dest<'_>,
) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Fp16) {
        // SAFETY: the CPU supports AVX-512 (checked in `run`); bounds as documented.
        done = unsafe { avx512::write_out(ct, mp, [lo, hi], count, dest) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the CPU supports AVX2 (checked in `run`); bounds as documented.
        done = unsafe { avx2::write_out(ct, mp, [lo, hi], count, dest) };
    }
    let _ = isa;
    let Dest {
        out,
        n,
        first,
        bias,
        ..
    } = dest;
    for r in done..count {
        let b = bias.map_or(0.0, |b| b[first + r]);
        for (i, v) in ct[r * mp..r * mp + hi].iter().enumerate().skip(lo) {
            // SAFETY: i < m and first + r < n: inside the output, in this task's columns.
            unsafe { *out.at(i * n + first + r) = v + b };
        }
    }
}

/// `ct[r·mp + i] = Σ_j w[r, j] · x[i, j]` for the `count` rows of `w` (laid out as `ws` says)
/// and every packed activation row `i < mp`, each finished panel written out to `dest`
/// ([`write_out`]).
///
/// # Safety
/// As [`write_out`] for every row `i < m`; the CPU supports `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    isa: Isa,
    packed: &[f32],
    mp: usize,
    k: usize,
    w: &[f32],
    ws: WStride,
    count: usize,
    ct: &mut [f32],
    dest: Dest<'_>,
) {
    debug_assert!(packed.len() == mp * k && ws.fits(w.len(), count, k) && ct.len() == count * mp);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Fp16 => {
            // SAFETY: `run` checked that the CPU supports `isa`; the slices have the shapes
            // above; the output as the caller promises.
            unsafe {
                match ws {
                    WStride::Rows(s) => {
                        avx512::block::<false>(packed, mp, k, w, s, count, ct, dest)
                    }
                    WStride::Columns(s) => {
                        avx512::block::<true>(packed, mp, k, w, s, count, ct, dest)
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: as above.
            unsafe {
                match ws {
                    WStride::Rows(s) => avx2::block::<false>(packed, mp, k, w, s, count, ct, dest),
                    WStride::Columns(s) => {
                        avx2::block::<true>(packed, mp, k, w, s, count, ct, dest)
                    }
                }
            }
        }
        _ => {
            portable(packed, mp, k, w, ws, count, ct);
            // SAFETY: as the caller promises.
            unsafe { write_out(isa, ct, mp, [0, dest.m], count, dest) };
        }
    }
}

/// The loop nest of the AVX-512 kernel in plain code: chunks of [`KC`] columns, tiles of 4
/// weight rows, one panel at a time.
#[inline(always)]
fn portable(
    packed: &[f32],
    mp: usize,
    k: usize,
    w: &[f32],
    ws: WStride,
    count: usize,
    ct: &mut [f32],
) {
    const R: usize = 4;
    let mut j0 = 0;
    while j0 < k {
        let j1 = (j0 + KC).min(k);
        let mut r0 = 0;
        while r0 < count {
            let rn = R.min(count - r0);
            for p in 0..mp / MR {
                let panel = &packed[p * k * MR..(p + 1) * k * MR];
                let mut acc = [[0f32; MR]; R];
                if j0 > 0 {
                    for (rr, a) in acc.iter_mut().enumerate().take(rn) {
                        a.copy_from_slice(&ct[(r0 + rr) * mp + p * MR..][..MR]);
                    }
                }
                for j in j0..j1 {
                    let xc = &panel[j * MR..(j + 1) * MR];
                    for (rr, a) in acc.iter_mut().enumerate().take(rn) {
                        let wv = w[ws.at(r0 + rr, j)];
                        for (a, xv) in a.iter_mut().zip(xc) {
                            *a += xv * wv;
                        }
                    }
                }
                for (rr, a) in acc.iter().enumerate().take(rn) {
                    ct[(r0 + rr) * mp + p * MR..][..MR].copy_from_slice(a);
                }
            }
            r0 += rn;
        }
        j0 = j1;
    }
}

/// The weight tile to fetch into L2 while this one computes, when `on`: the tile's rows from
/// `next` (never dereferenced), one cache line per row every 16 columns.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Prefetch {
    next: *const f32,
    on: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Dest, Isa, Prefetch, KC, MR, NR};

    /// `MR × R` products over columns `j0..j1`: panel chunk `xp` (`[j1 − j0][MR]`), weight rows
    /// at `w` (starting at column `j0`; element `(r, j)` at `r·k + j`, or at `j·k + r` when `T`,
    /// the rows of `Wᵀ` with `k` their length), accumulated into `c` (`[R][ldc]`, `MR` values
    /// per row) when `accumulate`, written otherwise.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; `xp` holds `len·MR` floats, `w` the `R × len` weights at
    /// those offsets, and `c` `R` rows of `MR` floats at stride `ldc`.
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const R: usize, const T: bool>(
        xp: *const f32,
        w: *const f32,
        k: usize,
        len: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        prefetch: Prefetch,
    ) {
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        // SAFETY: every access stays within the ranges the caller guarantees; prefetch
        // addresses use wrapping arithmetic and are never dereferenced.
        unsafe {
            if accumulate {
                for r in 0..R {
                    a0[r] = _mm512_loadu_ps(c.add(r * ldc));
                    a1[r] = _mm512_loadu_ps(c.add(r * ldc + 16));
                }
            }
            for j in 0..len {
                let x0 = _mm512_loadu_ps(xp.add(j * MR));
                let x1 = _mm512_loadu_ps(xp.add(j * MR + 16));
                if prefetch.on && T {
                    // The next tile's values of column j sit side by side.
                    let p = prefetch.next.wrapping_add(j * k);
                    _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                } else if prefetch.on && j % 16 == 0 {
                    for r in 0..NR {
                        let p = prefetch.next.wrapping_add(r * k + j);
                        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                    }
                }
                for r in 0..R {
                    let b = _mm512_set1_ps(*w.add(if T { j * k + r } else { r * k + j }));
                    a0[r] = _mm512_fmadd_ps(x0, b, a0[r]);
                    a1[r] = _mm512_fmadd_ps(x1, b, a1[r]);
                }
            }
            for r in 0..R {
                _mm512_storeu_ps(c.add(r * ldc), a0[r]);
                _mm512_storeu_ps(c.add(r * ldc + 16), a1[r]);
            }
        }
    }

    /// Transposes the 16 vectors `v` (rows) in registers: afterwards `v[c]` holds column `c`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(v: &mut [__m512; 16]) {
        // Pairs of rows interleaved, then quads, within each 128-bit lane: `u[4g + p]` holds,
        // in lane L, column 4L + p of rows 4g .. 4g + 4.
        let mut t = [_mm512_setzero_ps(); 16];
        for a in 0..8 {
            t[2 * a] = _mm512_unpacklo_ps(v[2 * a], v[2 * a + 1]);
            t[2 * a + 1] = _mm512_unpackhi_ps(v[2 * a], v[2 * a + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let q = &t[4 * g..4 * g + 4];
            u[4 * g] = _mm512_shuffle_ps::<0x44>(q[0], q[2]);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(q[0], q[2]);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(q[1], q[3]);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(q[1], q[3]);
        }
        // Lane L of the four groups' vectors for phase p gathered into column 4L + p.
        for p in 0..4 {
            let (u0, u1, u2, u3) = (u[p], u[4 + p], u[8 + p], u[12 + p]);
            let v0 = _mm512_shuffle_f32x4::<0x88>(u0, u1);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(u0, u1);
            let v2 = _mm512_shuffle_f32x4::<0x88>(u2, u3);
            let v3 = _mm512_shuffle_f32x4::<0xDD>(u2, u3);
            v[p] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
            v[4 + p] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
            v[8 + p] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
            v[12 + p] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
        }
    }

    /// [`super::write_out`] for the first `count − count mod 16` rows, 16 × 16 blocks
    /// transposed in registers; returns the rows written.
    ///
    /// # Safety
    /// As [`super::write_out`], and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn write_out(
        ct: &[f32],
        mp: usize,
        [lo, hi]: [usize; 2],
        count: usize,
        dest: Dest<'_>,
    ) -> usize {
        let Dest {
            out,
            n,
            first,
            bias,
            ..
        } = dest;
        let full = count - count % 16;
        let cp = ct.as_ptr();
        // SAFETY: rows r0 .. r0 + 16 ≤ count of `ct` hold `mp` ≥ i0 + 16 values (mp is a
        // multiple of 16, so is i0); stores go to rows i < hi ≤ m and columns
        // first + r0 .. + 16 ≤ n.
        unsafe {
            for r0 in (0..full).step_by(16) {
                let b = match bias {
                    Some(b) => _mm512_loadu_ps(b.as_ptr().add(first + r0)),
                    None => _mm512_setzero_ps(),
                };
                for i0 in (lo..hi).step_by(16) {
                    let mut v = [_mm512_setzero_ps(); 16];
                    for (rr, x) in v.iter_mut().enumerate() {
                        *x = _mm512_loadu_ps(cp.add((r0 + rr) * mp + i0));
                    }
                    transpose16(&mut v);
                    for (c, x) in v.iter().enumerate().take(hi - i0) {
                        let at = out.at((i0 + c) * n + first + r0);
                        _mm512_storeu_ps(at, _mm512_add_ps(*x, b));
                    }
                }
            }
        }
        full
    }

    /// As [`super::portable`], with [`NR`]-row tiles through [`micro`]; each panel is written
    /// out as soon as its last chunk is done, so the output's stores drain while the next panel
    /// computes.
    ///
    /// `w` holds the task's `count` weight rows: element `(r, j)` at `r·s + j`, or at `j·s + r`
    /// when `T` (rows of `Wᵀ`).
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; `packed.len() == mp·k`, `w` holds every element above,
    /// `ct.len() == count·mp`, `mp` a multiple of [`MR`]; `dest` as [`super::write_out`].
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<const T: bool>(
        packed: &[f32],
        mp: usize,
        k: usize,
        w: &[f32],
        s: usize,
        count: usize,
        ct: &mut [f32],
        dest: Dest<'_>,
    ) {
        let (xp, wp) = (packed.as_ptr(), w.as_ptr());
        let panels = mp / MR;
        let mut j0 = 0;
        // SAFETY: tiles stay within the `count` rows of `w`, chunks within `0..k`, panels
        // within `packed`, outputs within `ct`.
        unsafe {
            while j0 < k {
                let len = KC.min(k - j0);
                // Panel by panel (its chunk stays in L1), the tiles of this task's rows in turn
                // (all of them in L2 after the first panel, which fetches them from memory and
                // prefetches each next tile while it computes one).
                for p in 0..panels {
                    let x = xp.add(p * k * MR + j0 * MR);
                    let cp = ct.as_mut_ptr();
                    let mut r0 = 0;
                    while r0 < count {
                        let rn = NR.min(count - r0);
                        let at = |r: usize, j: usize| if T { j * s + r } else { r * s + j };
                        let wt = wp.add(at(r0, j0));
                        let c = cp.add(r0 * mp + p * MR);
                        let acc = j0 > 0;
                        // The next tile of this chunk, or the first tile of the next chunk.
                        let next = if r0 + NR < count {
                            wp.wrapping_add(at(r0 + NR, j0))
                        } else {
                            wp.wrapping_add(at(0, j0 + KC))
                        };
                        let pf = Prefetch { next, on: p == 0 };
                        macro_rules! go {
                            ($r:literal) => {
                                micro::<$r, T>(x, wt, s, len, c, mp, acc, pf)
                            };
                        }
                        match rn {
                            12 => go!(12),
                            11 => go!(11),
                            10 => go!(10),
                            9 => go!(9),
                            8 => go!(8),
                            7 => go!(7),
                            6 => go!(6),
                            5 => go!(5),
                            4 => go!(4),
                            3 => go!(3),
                            2 => go!(2),
                            _ => go!(1),
                        }
                        r0 += rn;
                    }
                    if j0 + len == k {
                        let rows = [p * MR, ((p + 1) * MR).min(dest.m)];
                        if rows[0] < rows[1] {
                            super::write_out(Isa::Avx512, ct, mp, rows, count, dest);
                        }
                    }
                }
                j0 += len;
            }
        }
    }
}

/// The AVX2 kernel: the loop nest of the AVX-512 one on 256-bit vectors. Each panel runs as two
/// halves of [`avx2::MH`] activation rows (two vectors: one cache line per column) against tiles
/// of [`avx2::NR`] weight rows: 12 accumulators, the two activation vectors and the broadcast
/// take 15 of the 16 registers. Same summation order (fused multiply-adds along `k`, chunk after
/// chunk), so the same bits as the AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Dest, Isa, Prefetch, KC, MR};

    /// Weight rows per tile.
    pub(super) const NR: usize = 6;

    /// Activation rows per half panel.
    pub(super) const MH: usize = 16;

    /// `MH × R` products over columns `j0..j1`, as the AVX-512 `micro`: activation columns at
    /// `xp` (stride [`MH`]: a half panel), weight rows at `w` (element `(r, j)` at `r·k + j`, or `j·k + r`
    /// when `T`), accumulated into `c` (`[R][ldc]`, `MH` values per row) when `accumulate`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `xp` holds `len` columns of `MH` floats, `w` the
    /// `R × len` weights at those offsets, and `c` `R` rows of `MH` floats at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const R: usize, const T: bool>(
        xp: *const f32,
        w: *const f32,
        k: usize,
        len: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        prefetch: Prefetch,
    ) {
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        // SAFETY: every access stays within the ranges the caller guarantees; prefetch
        // addresses use wrapping arithmetic and are never dereferenced.
        unsafe {
            if accumulate {
                for r in 0..R {
                    a0[r] = _mm256_loadu_ps(c.add(r * ldc));
                    a1[r] = _mm256_loadu_ps(c.add(r * ldc + 8));
                }
            }
            // One pointer per weight row, advanced by `step` per column: the loop body is the
            // loads, broadcasts and FMAs alone (the front end, not the FMA units, bounded the
            // loop with per-row address arithmetic and a prefetch test per column).
            let rows: [*const f32; R] = std::array::from_fn(|r| w.add(if T { r } else { r * k }));
            let step = if T { k } else { 1 };
            let mut j = 0;
            while j < len {
                let end = (j + 16).min(len);
                if prefetch.on {
                    if T {
                        // The next tile's values of column jj sit side by side.
                        for jj in j..end {
                            let p = prefetch.next.wrapping_add(jj * k);
                            _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                        }
                    } else {
                        for r in 0..NR {
                            let p = prefetch.next.wrapping_add(r * k + j);
                            _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                        }
                    }
                }
                for jj in j..end {
                    let x0 = _mm256_loadu_ps(xp.add(jj * MH));
                    let x1 = _mm256_loadu_ps(xp.add(jj * MH + 8));
                    for r in 0..R {
                        let b = _mm256_set1_ps(*rows[r].add(jj * step));
                        a0[r] = _mm256_fmadd_ps(x0, b, a0[r]);
                        a1[r] = _mm256_fmadd_ps(x1, b, a1[r]);
                    }
                }
                j = end;
            }
            for r in 0..R {
                _mm256_storeu_ps(c.add(r * ldc), a0[r]);
                _mm256_storeu_ps(c.add(r * ldc + 8), a1[r]);
            }
        }
    }

    /// Transposes the 8 vectors `v` (rows) in registers: afterwards `v[c]` holds column `c`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose8(v: &mut [__m256; 8]) {
        // Rows interleaved in pairs, then quads, within each 128-bit lane: `u[4g + c]` holds
        // column c (low lane) and c + 4 (high lane) of rows 4g .. 4g + 4.
        let mut t = [_mm256_setzero_ps(); 8];
        for a in 0..4 {
            t[2 * a] = _mm256_unpacklo_ps(v[2 * a], v[2 * a + 1]);
            t[2 * a + 1] = _mm256_unpackhi_ps(v[2 * a], v[2 * a + 1]);
        }
        let mut u = [_mm256_setzero_ps(); 8];
        for g in 0..2 {
            let q = &t[4 * g..4 * g + 4];
            u[4 * g] = _mm256_shuffle_ps::<0x44>(q[0], q[2]);
            u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(q[0], q[2]);
            u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(q[1], q[3]);
            u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(q[1], q[3]);
        }
        for c in 0..4 {
            v[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
            v[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
        }
    }

    /// [`super::write_out`] for the first `count − count mod 8` rows, 8 × 8 blocks transposed
    /// in registers; returns the rows written.
    ///
    /// # Safety
    /// As [`super::write_out`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn write_out(
        ct: &[f32],
        mp: usize,
        [lo, hi]: [usize; 2],
        count: usize,
        dest: Dest<'_>,
    ) -> usize {
        let Dest {
            out,
            n,
            first,
            bias,
            ..
        } = dest;
        let full = count - count % 8;
        let cp = ct.as_ptr();
        // SAFETY: rows r0 .. r0 + 8 ≤ count of `ct` hold `mp` ≥ i0 + 8 values (mp and i0 are
        // multiples of 8); stores go to rows i < hi ≤ m and columns first + r0 .. + 8 ≤ n.
        unsafe {
            for r0 in (0..full).step_by(8) {
                let b = match bias {
                    Some(b) => _mm256_loadu_ps(b.as_ptr().add(first + r0)),
                    None => _mm256_setzero_ps(),
                };
                for i0 in (lo..hi).step_by(8) {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (rr, x) in v.iter_mut().enumerate() {
                        *x = _mm256_loadu_ps(cp.add((r0 + rr) * mp + i0));
                    }
                    transpose8(&mut v);
                    for (c, x) in v.iter().enumerate().take(hi - i0) {
                        let at = out.at((i0 + c) * n + first + r0);
                        _mm256_storeu_ps(at, _mm256_add_ps(*x, b));
                    }
                }
            }
        }
        full
    }

    /// The AVX-512 `block` on [`micro`]: chunks of [`KC`] columns, panel by panel (each as two
    /// halves), the task's tiles of [`NR`] rows in turn, each panel written out as soon as its
    /// last chunk is done.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `packed.len() == mp·k` (panels as two halves: `pack_panels`
    /// with `halves`), `w` holds every element of the
    /// `count` rows (`(r, j)` at `r·s + j`, or `j·s + r` when `T`), `ct.len() == count·mp`,
    /// `mp` a multiple of [`MR`]; `dest` as [`super::write_out`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<const T: bool>(
        packed: &[f32],
        mp: usize,
        k: usize,
        w: &[f32],
        s: usize,
        count: usize,
        ct: &mut [f32],
        dest: Dest<'_>,
    ) {
        let (xp, wp) = (packed.as_ptr(), w.as_ptr());
        let panels = mp / MR;
        let at = |r: usize, j: usize| if T { j * s + r } else { r * s + j };
        let mut j0 = 0;
        // SAFETY: tiles stay within the `count` rows of `w`, chunks within `0..k`, panels and
        // their halves within `packed`, outputs within `ct`.
        unsafe {
            while j0 < k {
                let len = KC.min(k - j0);
                for p in 0..panels {
                    for h in 0..MR / MH {
                        let x = xp.add(p * k * MR + h * k * MH + j0 * MH);
                        let cp = ct.as_mut_ptr();
                        let mut r0 = 0;
                        while r0 < count {
                            let rn = NR.min(count - r0);
                            let wt = wp.add(at(r0, j0));
                            let c = cp.add(r0 * mp + p * MR + h * MH);
                            let acc = j0 > 0;
                            let next = if r0 + NR < count {
                                wp.wrapping_add(at(r0 + NR, j0))
                            } else {
                                wp.wrapping_add(at(0, j0 + KC))
                            };
                            let pf = Prefetch {
                                next,
                                on: p == 0 && h == 0,
                            };
                            macro_rules! go {
                                ($r:literal) => {
                                    micro::<$r, T>(x, wt, s, len, c, mp, acc, pf)
                                };
                            }
                            match rn {
                                6 => go!(6),
                                5 => go!(5),
                                4 => go!(4),
                                3 => go!(3),
                                2 => go!(2),
                                _ => go!(1),
                            }
                            r0 += rn;
                        }
                    }
                    if j0 + len == k {
                        let rows = [p * MR, ((p + 1) * MR).min(dest.m)];
                        if rows[0] < rows[1] {
                            super::write_out(Isa::Avx2, ct, mp, rows, count, dest);
                        }
                    }
                }
                j0 += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::exact_operands as operands;
    use crate::kernels::host_f32::gemv_f32_reference;

    #[test]
    fn every_isa_matches_the_reference_on_odd_shapes() {
        // Products of these values are multiples of 1/8 and the sums stay far below 2^20, so
        // every summation order gives the same f32: the comparison is exact.
        for (m, n, k) in [
            (1, 1, 1),
            (17, 7, 33),
            (33, 13, 300),
            (64, 25, 257),
            (70, 49, 513),
            (5, 3, 0),
            (40, 100, 16),
        ] {
            let (x, w, b) = operands(m, n, k);
            for bias in [None, Some(b.as_slice())] {
                let want = gemv_f32_reference(&x, &w, bias, m, n, k).unwrap();
                for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
                    let got = gemm_f32_with(isa, &x, &w, bias, m, n, k).unwrap();
                    assert_eq!(got.len(), want.len());
                    assert_eq!(got, want, "{} [{m}, {k}]·[{n}, {k}]ᵀ", isa.name());
                    let fill = |first: usize, dst: &mut [f32]| -> Result<()> {
                        dst.copy_from_slice(&w[first * k..first * k + dst.len()]);
                        Ok(())
                    };
                    let got = gemm_f32_rows_with(isa, &x, &fill, bias, m, n, k).unwrap();
                    assert_eq!(got, want, "{} rows [{m}, {k}]·[{n}, {k}]ᵀ", isa.name());
                    // Either operand stored transposed: the same kernel, the same sums.
                    let (xt, wt) = (transposed(&x, m, k), transposed(&w, n, k));
                    for (xo, xs) in [(&x, Stored::AsIs), (&xt, Stored::Transposed)] {
                        for (wo, ws) in [(&w, Stored::AsIs), (&wt, Stored::Transposed)] {
                            let got =
                                gemm_f32_stored_with(isa, xo, xs, wo, ws, bias, m, n, k).unwrap();
                            assert_eq!(
                                got,
                                want,
                                "{} x {xs:?} w {ws:?} [{m}, {n}, {k}]",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// The row-major transpose of `[rows, cols]` `a`.
    fn transposed(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0f32; a.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = a[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn transposed_operands_are_checked() {
        assert!(gemm_f32_stored(
            &[0.0; 3],
            Stored::Transposed,
            &[0.0; 4],
            Stored::AsIs,
            None,
            1,
            2,
            2
        )
        .is_err());
    }

    #[test]
    fn random_values_agree_with_the_reference_within_rounding() {
        let (m, n, k) = (45, 30, 700);
        let mut s = 1u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let want = gemv_f32_reference(&x, &w, None, m, n, k).unwrap();
        let mut fused: Option<Vec<f32>> = None;
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            let got = gemm_f32_with(isa, &x, &w, None, m, n, k).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!((g - r).abs() <= 1e-4, "{} y[{i}] {g} vs {r}", isa.name());
            }
            // The vector kernels add the same fused products in the same order.
            if isa != Isa::Scalar {
                match &fused {
                    Some(first) => assert_eq!(&got, first, "{} against the first", isa.name()),
                    None => fused = Some(got),
                }
            }
        }
    }

    #[test]
    fn a_fill_that_runs_gemms_itself_does_not_trip_over_the_thread_buffers() {
        // While `fill` runs, its thread may take up other tasks of the pool (here: GEMMs of its
        // own, nested and in parallel); the task's buffers must not be borrowed meanwhile.
        let (m, n, k) = (40, 200, 64);
        let (x, w, _) = operands(m, n, k);
        let want = gemv_f32_reference(&x, &w, None, m, n, k).unwrap();
        let fill = |first: usize, dst: &mut [f32]| -> Result<()> {
            let inner = gemm_f32_with(Isa::Scalar, &x[..17 * k], &w[..5 * k], None, 17, 5, k)?;
            assert_eq!(inner.len(), 17 * 5);
            (0..3).into_par_iter().try_for_each(|_| -> Result<()> {
                let all = gemm_f32(&x, &w, None, m, n, k)?;
                assert_eq!(all.len(), m * n);
                Ok(())
            })?;
            dst.copy_from_slice(&w[first * k..first * k + dst.len()]);
            Ok(())
        };
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            let got = gemm_f32_rows_with(isa, &x, &fill, None, m, n, k).unwrap();
            assert_eq!(got, want, "{}", isa.name());
        }
    }

    #[test]
    fn bad_shapes_and_failing_fills_are_errors() {
        assert!(gemm_f32(&[0.0; 3], &[0.0; 4], None, 1, 2, 2).is_err());
        assert!(gemm_f32(&[0.0; 2], &[0.0; 4], Some(&[0.0]), 1, 2, 2).is_err());
        let fail = |_: usize, _: &mut [f32]| -> Result<()> {
            Err(QuantError::ShapeMismatch {
                tensor: "w".into(),
                expected: vec![1],
                found: vec![0],
            })
        };
        assert!(gemm_f32_rows_with(Isa::Scalar, &[1.0; 4], &fail, None, 2, 2, 2).is_err());
    }
}
