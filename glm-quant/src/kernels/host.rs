//! Fused dequantize-GEMV on host memory.
//!
//! The weight is read once, each value dequantized in registers to exactly `f16(q · scale)` and
//! multiplied into up to four activation rows at a time: INT8 through a `vcvtps2ph`/`vcvtph2ps`
//! round trip (F16C) or one half-precision multiply (AVX512-FP16), INT4 through a per-row table
//! of its 16 values (AVX-512), `half` in the scalar code. Decode (one activation row) reads 8
//! weight rows side by side. Rows of the weight are split across rayon's thread pool.
//!
//! The layout is the device layout of [`QuantizedWeight`](crate::QuantizedWeight): row `r` starts at
//! byte `r · row_stride` and holds the checkpoint bytes of that row (int8 values, or int4 pairs with
//! the even column in the high nibble).
//!
//! (Over 400 lines: the fused INT8 / INT4 CPU kernels for every instruction set (AVX-512 with FP16, AVX-512, AVX2, scalar) side by side, each beside the same reference.)

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::pack::unpack_pair;
use crate::scheme::QuantScheme;
use crate::weight::QuantLayout;

/// Above this many activation rows the CPU path dequantizes the matrix once and calls the
/// backend's GEMM instead of the fused GEMV (re-reading a row from L1 per activation row stops
/// paying off; a blocked GEMM wins for prefill).
pub const FUSED_MAX_ROWS: usize = 16;

/// Host view of a quantized matrix in the device layout.
#[derive(Debug, Clone, Copy)]
pub struct HostMatrix<'a> {
    /// Scheme and sizes.
    pub layout: QuantLayout,
    /// Row-major bytes, `out_features * row_stride` (at least).
    pub bytes: &'a [u8],
    /// Bytes from one row to the next (≥ `layout.row_bytes()`).
    pub row_stride: usize,
    /// Scales as f32 (fp16 values), `[shards, out]`.
    pub scales: &'a [f32],
}

impl HostMatrix<'_> {
    /// Checks that the slices are large enough for the layout.
    pub fn validate(&self) -> Result<()> {
        let l = self.layout;
        let bad = |what: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
            tensor: what.to_string(),
            expected,
            found: vec![found],
        };
        if self.row_stride < l.row_bytes() || self.bytes.len() < l.out_features * self.row_stride {
            return Err(bad(
                "packed weight",
                vec![l.out_features, self.row_stride],
                self.bytes.len(),
            ));
        }
        if self.scales.len() != l.shards * l.out_features {
            return Err(bad(
                "scales",
                vec![l.shards, l.out_features],
                self.scales.len(),
            ));
        }
        if l.shards == 0 || !l.in_features.is_multiple_of(l.shards) {
            return Err(QuantError::BadShards {
                tensor: "packed weight".into(),
                in_features: l.in_features,
                shards: l.shards,
                extra: String::new(),
            });
        }
        if l.scheme == QuantScheme::Int4 && l.shards > 1 && !l.cols_per_shard().is_multiple_of(2) {
            return Err(QuantError::BadShards {
                tensor: "packed weight".into(),
                in_features: l.in_features,
                shards: l.shards,
                extra: " (int4 needs an even number of columns per shard)".into(),
            });
        }
        Ok(())
    }
}

/// An instruction set the host kernels can run on. [`host_gemv`] and [`host_dequantize`] use
/// [`Isa::detect`]; [`host_gemv_with`] and [`host_dequantize_with`] take one explicitly (tests run
/// every path the machine has, whatever it would pick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code: every CPU.
    Scalar,
    /// AVX2 + FMA + F16C, 8 columns per step (x86-64).
    Avx2,
    /// AVX-512 F/BW/VL + FMA + F16C, 16 columns per step (x86-64).
    Avx512,
    /// [`Isa::Avx512`] plus AVX512-FP16 (Sapphire Rapids and later): INT8 values are scaled in
    /// half precision (`vmulph`, one rounding: the same `f16(q · scale)`), 32 columns per step.
    /// Every other kernel runs its AVX-512 code.
    Avx512Fp16,
}

impl Isa {
    /// Every instruction set, fastest last.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Fp16];

    /// Whether this CPU can run the path (checked at run time).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Fp16 => Isa::Avx512.is_supported() && is_x86_feature_detected!("avx512fp16"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Fp16 => false,
        }
    }

    /// The fastest supported path (cached). Operators may cap it for a whole process:
    /// `GLM_QUANT_NO_FP16` stops at AVX-512, `GLM_QUANT_NO_AVX512` at AVX2, `GLM_QUANT_NO_SIMD`
    /// forces the scalar code.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let no_simd = std::env::var_os("GLM_QUANT_NO_SIMD").is_some();
            let no_avx512 = std::env::var_os("GLM_QUANT_NO_AVX512").is_some();
            let no_fp16 = std::env::var_os("GLM_QUANT_NO_FP16").is_some();
            let allowed = |isa: Isa| match isa {
                Isa::Scalar => true,
                Isa::Avx2 => !no_simd,
                Isa::Avx512 => !no_simd && !no_avx512,
                Isa::Avx512Fp16 => !no_simd && !no_avx512 && !no_fp16,
            };
            Isa::ALL
                .into_iter()
                .rev()
                .find(|&i| allowed(i) && i.is_supported())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// Short name (`"scalar"`, `"avx2+fma+f16c"`, `"avx512"`, `"avx512+fp16"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512 => "avx512",
            Isa::Avx512Fp16 => "avx512+fp16",
        }
    }

    /// `Ok` when the CPU supports the path, a typed error otherwise (running it would be undefined).
    fn check(self) -> Result<()> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(QuantError::UnsupportedIsa(self.name()))
        }
    }
}

/// The instruction set the fused kernel uses on this machine: [`Isa::detect`]'s name.
pub fn simd_level() -> &'static str {
    Isa::detect().name()
}

/// `f16(q · scale)` as f32 (scale holds an fp16 value).
#[inline]
fn deq(q: i8, scale: f32) -> f32 {
    half::f16::from_f32(q as f32 * scale).to_f32()
}

/// Value of column `j` of a row.
#[inline]
fn value_at(row: &[u8], j: usize, int4: bool) -> i8 {
    if int4 {
        let (even, odd) = unpack_pair(row[j / 2]);
        if j.is_multiple_of(2) {
            even
        } else {
            odd
        }
    } else {
        row[j] as i8
    }
}

/// Scalar dot of columns `[c0, c0+n)` of `row` with `mb` activation rows (`x[m·x_stride + c]`),
/// accumulated into `acc[..mb]`.
#[allow(clippy::too_many_arguments)]
fn dot_scalar(
    row: &[u8],
    c0: usize,
    n: usize,
    scale: f32,
    int4: bool,
    x: &[f32],
    x_stride: usize,
    acc: &mut [f32],
) {
    for (m, a) in acc.iter_mut().enumerate() {
        let xr = &x[m * x_stride + c0..m * x_stride + c0 + n];
        let mut s = 0f32;
        for (j, &xv) in xr.iter().enumerate() {
            s += deq(value_at(row, c0 + j, int4), scale) * xv;
        }
        *a += s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Dequantizes 8 int8 values starting at byte `at`: exact `f16(q · scale)`.
    ///
    /// # Safety
    /// `at + 8 <= row.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8_i8(row: &[u8], at: usize, scale: __m256) -> __m256 {
        debug_assert!(at + 8 <= row.len());
        // SAFETY: the caller guarantees 8 readable bytes at `at`; loadl is unaligned.
        let b = unsafe { _mm_loadl_epi64(row.as_ptr().add(at) as *const __m128i) };
        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
            f, scale,
        )))
    }

    /// Dequantizes 8 int4 values (4 bytes from byte `at`, even column high nibble).
    ///
    /// # Safety
    /// `at + 4 <= row.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8_i4(row: &[u8], at: usize, scale: __m256) -> __m256 {
        debug_assert!(at + 4 <= row.len());
        // SAFETY: the caller guarantees 4 readable bytes at `at`; read_unaligned has no alignment need.
        let w = unsafe { (row.as_ptr().add(at) as *const i32).read_unaligned() };
        // Lane k takes nibble k: even k = high nibble of byte k/2, odd k = low nibble.
        let shifts = _mm256_setr_epi32(24, 28, 16, 20, 8, 12, 0, 4);
        let v = _mm256_srai_epi32::<28>(_mm256_sllv_epi32(_mm256_set1_epi32(w), shifts));
        let f = _mm256_cvtepi32_ps(v);
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
            f, scale,
        )))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<const INT4: bool>(row: &[u8], col: usize, scale: __m256) -> __m256 {
        // SAFETY: forwarded precondition (8 columns from `col` lie inside the row).
        unsafe {
            if INT4 {
                load8_i4(row, col / 2, scale)
            } else {
                load8_i8(row, col, scale)
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Fused dot of columns `[c0, c0 + n)` with `MB` activation rows; returns the index of the
    /// first column NOT processed (a multiple of 8 past `c0`); the caller does the tail.
    ///
    /// # Safety
    /// `row` holds at least the bytes of columns `< c0 + n`; `x` holds `(MB-1)·x_stride + c0 + n`
    /// values; for int4, `c0` is even.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot<const MB: usize, const INT4: bool>(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        x: &[f32],
        x_stride: usize,
        acc: &mut [f32],
    ) -> usize {
        let sv = _mm256_set1_ps(scale);
        let mut a0 = [_mm256_setzero_ps(); MB];
        let mut a1 = [_mm256_setzero_ps(); MB];
        let xp = x.as_ptr();
        let mut j = 0;
        // SAFETY (whole block): every load stays below column c0 + n of the row and of each x row.
        unsafe {
            while j + 16 <= n {
                let w0 = load8::<INT4>(row, c0 + j, sv);
                let w1 = load8::<INT4>(row, c0 + j + 8, sv);
                for m in 0..MB {
                    let p = xp.add(m * x_stride + c0 + j);
                    a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p), a0[m]);
                    a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), a1[m]);
                }
                j += 16;
            }
            if j + 8 <= n {
                let w0 = load8::<INT4>(row, c0 + j, sv);
                for (m, a) in a0.iter_mut().enumerate() {
                    let p = xp.add(m * x_stride + c0 + j);
                    *a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p), *a);
                }
                j += 8;
            }
        }
        for m in 0..MB {
            acc[m] += hsum(_mm256_add_ps(a0[m], a1[m]));
        }
        j
    }

    /// Dequantizes columns `[0, n)` of a row into `dst` (8 at a time); returns the first column
    /// not written.
    ///
    /// # Safety
    /// `row` holds the bytes of columns `< n`, `dst.len() >= n`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequant_row<const INT4: bool>(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        dst: &mut [f32],
    ) -> usize {
        let sv = _mm256_set1_ps(scale);
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: columns c0+j .. c0+j+8 are inside the row and dst.
            unsafe {
                let w = load8::<INT4>(row, c0 + j, sv);
                _mm256_storeu_ps(dst.as_mut_ptr().add(c0 + j), w);
            }
            j += 8;
        }
        j
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// The 16 exact dequantized int4 values of a row, indexed by the UNSIGNED nibble
    /// (`u < 8 → u`, else `u - 16`): `f16(v · scale)` as f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    fn int4_lut(scale: __m512) -> __m512 {
        let v = _mm512_setr_ps(
            0., 1., 2., 3., 4., 5., 6., 7., -8., -7., -6., -5., -4., -3., -2., -1.,
        );
        _mm512_cvtph_ps(_mm512_cvtps_ph::<ROUND>(_mm512_mul_ps(v, scale)))
    }

    /// 16 dequantized values from column `col`.
    ///
    /// # Safety
    /// The 16 columns from `col` lie inside `row` (int8: 16 bytes; int4: 8 bytes from `col/2`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16<const INT4: bool>(
        row: &[u8],
        col: usize,
        scale: __m512,
        lut: __m512,
    ) -> __m512 {
        if INT4 {
            debug_assert!(col / 2 + 8 <= row.len());
            // SAFETY: 8 readable bytes at col/2 (caller); loadl is unaligned.
            let b = unsafe { _mm_loadl_epi64(row.as_ptr().add(col / 2) as *const __m128i) };
            // [b0 b0 b1 b1 ...]: lane 2i takes the high nibble of byte i, lane 2i+1 the low one.
            let dup = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
            let shifts = _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
            // vpermps reads only the low 4 bits of each index: the nibble.
            _mm512_permutexvar_ps(_mm512_srlv_epi32(dup, shifts), lut)
        } else {
            debug_assert!(col + 16 <= row.len());
            // SAFETY: 16 readable bytes at col (caller); loadu is unaligned.
            let b = unsafe { _mm_loadu_si128(row.as_ptr().add(col) as *const __m128i) };
            let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            _mm512_cvtph_ps(_mm512_cvtps_ph::<ROUND>(_mm512_mul_ps(f, scale)))
        }
    }

    /// [`load16`] for the last `t` (1..=15) columns of a range: bytes past them are not read
    /// (masked loads never touch masked-off memory); lanes `≥ t` hold finite values that the
    /// caller multiplies by zeros ([`load_x`]).
    ///
    /// # Safety
    /// The `t` columns from `col` lie inside `row`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    unsafe fn load16_tail<const INT4: bool>(
        row: &[u8],
        col: usize,
        t: usize,
        scale: __m512,
        lut: __m512,
    ) -> __m512 {
        debug_assert!(t < 16);
        if INT4 {
            let bytes = t.div_ceil(2);
            debug_assert!(col / 2 + bytes <= row.len());
            let k = ((1u32 << bytes) - 1) as __mmask16;
            // SAFETY: only the `bytes` bytes from col/2 are read (masked load).
            let b = unsafe { _mm_maskz_loadu_epi8(k, row.as_ptr().add(col / 2) as *const i8) };
            let dup = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
            let shifts = _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
            _mm512_permutexvar_ps(_mm512_srlv_epi32(dup, shifts), lut)
        } else {
            debug_assert!(col + t <= row.len());
            let k = ((1u32 << t) - 1) as __mmask16;
            // SAFETY: only the `t` bytes from col are read (masked load).
            let b = unsafe { _mm_maskz_loadu_epi8(k, row.as_ptr().add(col) as *const i8) };
            let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            _mm512_cvtph_ps(_mm512_cvtps_ph::<ROUND>(_mm512_mul_ps(f, scale)))
        }
    }

    /// `t` (≤ 16) floats from `p`, zeros in the other lanes (nothing past them is read).
    ///
    /// # Safety
    /// `t` floats are readable at `p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    pub(super) unsafe fn load_x(p: *const f32, t: usize) -> __m512 {
        debug_assert!(t <= 16);
        let k = ((1u32 << t) - 1) as __mmask16;
        // SAFETY: only `t` floats are read (masked load).
        unsafe { _mm512_maskz_loadu_ps(k, p) }
    }

    /// As [`super::avx2::dot`] with 16-wide vectors (int4 dequantized by a 16-entry table lookup).
    ///
    /// # Safety
    /// As [`super::avx2::dot`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot<const MB: usize, const INT4: bool>(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        x: &[f32],
        x_stride: usize,
        acc: &mut [f32],
    ) -> usize {
        let sv = _mm512_set1_ps(scale);
        let lut = int4_lut(sv);
        let mut a0 = [_mm512_setzero_ps(); MB];
        let mut a1 = [_mm512_setzero_ps(); MB];
        let xp = x.as_ptr();
        let mut j = 0;
        // SAFETY (whole block): every load stays below column c0 + n of the row and of each x row.
        unsafe {
            while j + 32 <= n {
                let w0 = load16::<INT4>(row, c0 + j, sv, lut);
                let w1 = load16::<INT4>(row, c0 + j + 16, sv, lut);
                for m in 0..MB {
                    let p = xp.add(m * x_stride + c0 + j);
                    a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), a0[m]);
                    a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p.add(16)), a1[m]);
                }
                j += 32;
            }
            if j + 16 <= n {
                let w0 = load16::<INT4>(row, c0 + j, sv, lut);
                for (m, a) in a0.iter_mut().enumerate() {
                    let p = xp.add(m * x_stride + c0 + j);
                    *a = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), *a);
                }
                j += 16;
            }
            if j < n {
                let t = n - j;
                let w0 = load16_tail::<INT4>(row, c0 + j, t, sv, lut);
                for (m, a) in a1.iter_mut().enumerate() {
                    let p = xp.add(m * x_stride + c0 + j);
                    *a = _mm512_fmadd_ps(w0, load_x(p, t), *a);
                }
                j = n;
            }
        }
        for m in 0..MB {
            acc[m] += _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
        }
        j
    }

    /// One activation row against `R` weight rows read side by side (`R` memory streams):
    /// `acc[r] += Σ_{j<n} x[c0 + j] · W[r, c0 + j]` with row `r`'s scale. Each row also
    /// prefetches, into L2, the bytes `next` further on at the same column (the same row of the
    /// next tile: a whole tile ahead, far enough to cover the memory latency; into L2 measured
    /// 10–20 % faster than into L1 on a Sapphire Rapids-class VM). Returns the first column
    /// offset (from `c0`) not processed.
    ///
    /// # Safety
    /// As [`dot`] for each of the `R` rows (`x` holds the row at `c0..c0 + n`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(super) unsafe fn dot_tile<const R: usize, const INT4: bool>(
        rows: [&[u8]; R],
        c0: usize,
        n: usize,
        next: usize,
        scales: [f32; R],
        x: &[f32],
        acc: &mut [f32; R],
    ) -> usize {
        let sv = scales.map(|s| _mm512_set1_ps(s));
        let lut = sv.map(|v| int4_lut(v));
        let mut a = [_mm512_setzero_ps(); R];
        // Bytes per 16 columns.
        let step_bytes = if INT4 { 8 } else { 16 };
        let xp = x.as_ptr();
        let mut j = 0;
        // SAFETY (whole block): every load stays below column c0 + n of each row and of x;
        // prefetch addresses use wrapping arithmetic and are never dereferenced.
        unsafe {
            while j + 16 <= n {
                let xv = _mm512_loadu_ps(xp.add(c0 + j));
                let at = (c0 + j) / 16 * step_bytes;
                for r in 0..R {
                    if at.is_multiple_of(64) {
                        let p = rows[r].as_ptr().wrapping_add(at + next);
                        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                    }
                    let w = load16::<INT4>(rows[r], c0 + j, sv[r], lut[r]);
                    a[r] = _mm512_fmadd_ps(w, xv, a[r]);
                }
                j += 16;
            }
            if j < n {
                let t = n - j;
                let xv = load_x(xp.add(c0 + j), t);
                for r in 0..R {
                    let w = load16_tail::<INT4>(rows[r], c0 + j, t, sv[r], lut[r]);
                    a[r] = _mm512_fmadd_ps(w, xv, a[r]);
                }
                j = n;
            }
        }
        for r in 0..R {
            acc[r] += _mm512_reduce_add_ps(a[r]);
        }
        j
    }

    /// The 32 weights of 16 int4 bytes (even columns from the high nibbles, odd from the low),
    /// looked up in the row's table: `(even, odd)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    #[inline]
    fn nibble_pairs(bytes: __m128i, lut: __m512) -> (__m512, __m512) {
        let d = _mm512_cvtepu8_epi32(bytes);
        // vpermps reads the low 4 bits of each index: the low nibble as it is, the high nibble
        // after a shift.
        (
            _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(d), lut),
            _mm512_permutexvar_ps(d, lut),
        )
    }

    /// Columns per block of [`permute_int4_x`].
    pub(super) const I4_BLOCK: usize = 32;

    /// `x` reordered for [`dot_tile_int4`]: per block of 32 columns, the 16 even columns, then
    /// the 16 odd ones (the high and the low nibbles of the block's 16 bytes); a last partial
    /// block is padded with zeros. `dst.len()` is `⌈n / 32⌉ · 32`.
    pub(super) fn permute_int4_x(x: &[f32], dst: &mut Vec<f32>) {
        dst.clear();
        for block in x.chunks(I4_BLOCK) {
            let mut padded = [0f32; I4_BLOCK];
            padded[..block.len()].copy_from_slice(block);
            dst.extend(padded.iter().step_by(2));
            dst.extend(padded.iter().skip(1).step_by(2));
        }
    }

    /// INT4, one activation row against `R` weight rows, 32 columns per step: the 16 bytes of a
    /// block are widened once and both nibbles looked up in the row's 16-entry table (even
    /// columns from the high nibbles, odd from the low), multiplied by `xperm`
    /// ([`permute_int4_x`] of the row's columns from `c0`). Prefetching as [`dot_tile`]. A last
    /// partial block reads only its own bytes (masked load; the zero padding of `xperm` cancels
    /// the nibbles past `n`). Returns `n`.
    ///
    /// # Safety
    /// Each row holds the bytes of columns `< c0 + n`, `c0` is even, `xperm.len() ≥ ⌈n / 32⌉ · 32`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(super) unsafe fn dot_tile_int4<const R: usize>(
        rows: [&[u8]; R],
        c0: usize,
        n: usize,
        next: usize,
        scales: [f32; R],
        xperm: &[f32],
        acc: &mut [f32; R],
    ) -> usize {
        debug_assert!(c0.is_multiple_of(2) && xperm.len() >= n.div_ceil(I4_BLOCK) * I4_BLOCK);
        let lut = scales.map(|s| int4_lut(_mm512_set1_ps(s)));
        let mut even = [_mm512_setzero_ps(); R];
        let mut odd = [_mm512_setzero_ps(); R];
        let xp = xperm.as_ptr();
        let b0 = c0 / 2;
        let mut j = 0;
        // SAFETY (whole block): the 16 bytes at b0 + j/2 hold columns c0 + j .. c0 + j + 32 < c0 + n
        // of each row; xperm holds j + 32 values; prefetches are never dereferenced.
        unsafe {
            while j + I4_BLOCK <= n {
                let xe = _mm512_loadu_ps(xp.add(j));
                let xo = _mm512_loadu_ps(xp.add(j + 16));
                let at = b0 + j / 2;
                for r in 0..R {
                    if at.is_multiple_of(64) {
                        let p = rows[r].as_ptr().wrapping_add(at + next);
                        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                    }
                    let bytes = _mm_loadu_si128(rows[r].as_ptr().add(at) as *const __m128i);
                    let (we, wo) = nibble_pairs(bytes, lut[r]);
                    even[r] = _mm512_fmadd_ps(we, xe, even[r]);
                    odd[r] = _mm512_fmadd_ps(wo, xo, odd[r]);
                }
                j += I4_BLOCK;
            }
            if j < n {
                let xe = _mm512_loadu_ps(xp.add(j));
                let xo = _mm512_loadu_ps(xp.add(j + 16));
                let k = ((1u32 << (n - j).div_ceil(2)) - 1) as __mmask16;
                let at = b0 + j / 2;
                for r in 0..R {
                    let bytes = _mm_maskz_loadu_epi8(k, rows[r].as_ptr().add(at) as *const i8);
                    let (we, wo) = nibble_pairs(bytes, lut[r]);
                    even[r] = _mm512_fmadd_ps(we, xe, even[r]);
                    odd[r] = _mm512_fmadd_ps(wo, xo, odd[r]);
                }
                j = n;
            }
        }
        for r in 0..R {
            acc[r] += _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r]));
        }
        j
    }

    /// As [`super::avx2::dequant_row`], 16 columns at a time.
    ///
    /// # Safety
    /// As [`super::avx2::dequant_row`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
    pub(super) unsafe fn dequant_row<const INT4: bool>(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        dst: &mut [f32],
    ) -> usize {
        let sv = _mm512_set1_ps(scale);
        let lut = int4_lut(sv);
        let mut j = 0;
        while j + 16 <= n {
            // SAFETY: columns c0+j .. c0+j+16 are inside the row and dst.
            unsafe {
                let w = load16::<INT4>(row, c0 + j, sv, lut);
                _mm512_storeu_ps(dst.as_mut_ptr().add(c0 + j), w);
            }
            j += 16;
        }
        if j < n {
            let t = n - j;
            // SAFETY: the t columns from c0+j are inside the row and dst (masked load / store).
            unsafe {
                let w = load16_tail::<INT4>(row, c0 + j, t, sv, lut);
                _mm512_mask_storeu_ps(
                    dst.as_mut_ptr().add(c0 + j),
                    ((1u32 << t) - 1) as __mmask16,
                    w,
                );
            }
            j = n;
        }
        j
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512fp16 {
    use std::arch::x86_64::*;

    /// The row's fp16 scale broadcast to 32 half lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    #[inline]
    fn scale_h(scale: f32) -> __m512h {
        _mm512_castsi512_ph(_mm512_set1_epi16(
            half::f16::from_f32(scale).to_bits() as i16
        ))
    }

    /// 32 int8 values from byte `at`, dequantized to exactly `f16(q · scale)`: `q` converts to
    /// half exactly (|q| ≤ 128), one half-precision multiply rounds once to nearest-even, as the
    /// f32 product (exact: 8 × 11 significant bits) rounded to half; widened to f32 as two
    /// vectors (columns `at..at+16`, `at+16..at+32`).
    ///
    /// # Safety
    /// `at + 32 <= row.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    #[inline]
    unsafe fn load32(row: &[u8], at: usize, scale: __m512h) -> (__m512, __m512) {
        debug_assert!(at + 32 <= row.len());
        // SAFETY: 32 readable bytes at `at` (caller); loadu is unaligned.
        let b = unsafe { _mm256_loadu_si256(row.as_ptr().add(at) as *const __m256i) };
        scale32(b, scale)
    }

    /// 32 int8 values `f16(q · scale)` as two f32 vectors (see [`load32`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    #[inline]
    fn scale32(b: __m256i, scale: __m512h) -> (__m512, __m512) {
        let h = _mm512_mul_ph(_mm512_cvtepi16_ph(_mm512_cvtepi8_epi16(b)), scale);
        let bits = _mm512_castph_si512(h);
        (
            _mm512_cvtph_ps(_mm512_castsi512_si256(bits)),
            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(bits)),
        )
    }

    /// [`load32`] for the last `t` (1..=31) columns of a range: only their bytes are read; the
    /// other lanes hold zeros.
    ///
    /// # Safety
    /// `at + t <= row.len()`, `t < 32`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    #[inline]
    unsafe fn load32_tail(row: &[u8], at: usize, t: usize, scale: __m512h) -> (__m512, __m512) {
        debug_assert!(t < 32 && at + t <= row.len());
        let k = ((1u64 << t) - 1) as __mmask32;
        // SAFETY: only the t bytes from `at` are read (masked load).
        let b = unsafe { _mm256_maskz_loadu_epi8(k, row.as_ptr().add(at) as *const i8) };
        scale32(b, scale)
    }

    /// The `t` (< 32) floats from `p` as two vectors, zeros past them (nothing more is read).
    ///
    /// # Safety
    /// `t` floats are readable at `p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    #[inline]
    unsafe fn load_x32(p: *const f32, t: usize) -> (__m512, __m512) {
        // SAFETY: forwarded (each half reads only its own valid lanes).
        unsafe {
            (
                super::avx512::load_x(p, t.min(16)),
                super::avx512::load_x(p.wrapping_add(16), t.saturating_sub(16)),
            )
        }
    }

    /// INT8 as [`super::avx512::dot_tile`], 32 columns per step, a last partial step with
    /// masked loads. Returns `n`.
    ///
    /// # Safety
    /// As [`super::avx512::dot_tile`], and the CPU has AVX512-FP16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    pub(super) unsafe fn dot_tile<const R: usize>(
        rows: [&[u8]; R],
        c0: usize,
        n: usize,
        next: usize,
        scales: [f32; R],
        x: &[f32],
        acc: &mut [f32; R],
    ) -> usize {
        let sh = scales.map(|s| scale_h(s));
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let xp = x.as_ptr();
        let mut j = 0;
        // SAFETY (whole block): every load stays below column c0 + n of each row and of x;
        // prefetch addresses use wrapping arithmetic and are never dereferenced.
        unsafe {
            while j + 32 <= n {
                let x0 = _mm512_loadu_ps(xp.add(c0 + j));
                let x1 = _mm512_loadu_ps(xp.add(c0 + j + 16));
                let at = c0 + j;
                for r in 0..R {
                    if at.is_multiple_of(64) {
                        let p = rows[r].as_ptr().wrapping_add(at + next);
                        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                    }
                    let (w0, w1) = load32(rows[r], at, sh[r]);
                    lo[r] = _mm512_fmadd_ps(w0, x0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(w1, x1, hi[r]);
                }
                j += 32;
            }
            if j < n {
                let t = n - j;
                let (x0, x1) = load_x32(xp.add(c0 + j), t);
                for r in 0..R {
                    let (w0, w1) = load32_tail(rows[r], c0 + j, t, sh[r]);
                    lo[r] = _mm512_fmadd_ps(w0, x0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(w1, x1, hi[r]);
                }
                j = n;
            }
        }
        for r in 0..R {
            acc[r] += _mm512_reduce_add_ps(_mm512_add_ps(lo[r], hi[r]));
        }
        j
    }

    /// INT8 as [`super::avx512::dot`] (one weight row, `MB` activation rows), 32 columns per
    /// step, a last partial step with masked loads; returns `n`.
    ///
    /// # Safety
    /// As [`super::avx2::dot`], and the CPU has AVX512-FP16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    pub(super) unsafe fn dot<const MB: usize>(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        x: &[f32],
        x_stride: usize,
        acc: &mut [f32],
    ) -> usize {
        let sh = scale_h(scale);
        let mut lo = [_mm512_setzero_ps(); MB];
        let mut hi = [_mm512_setzero_ps(); MB];
        let xp = x.as_ptr();
        let mut j = 0;
        // SAFETY (whole block): every load stays below column c0 + n of the row and of each x row.
        unsafe {
            while j + 32 <= n {
                let (w0, w1) = load32(row, c0 + j, sh);
                for m in 0..MB {
                    let p = xp.add(m * x_stride + c0 + j);
                    lo[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), lo[m]);
                    hi[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p.add(16)), hi[m]);
                }
                j += 32;
            }
            if j < n {
                let t = n - j;
                let (w0, w1) = load32_tail(row, c0 + j, t, sh);
                for m in 0..MB {
                    let (x0, x1) = load_x32(xp.add(m * x_stride + c0 + j), t);
                    lo[m] = _mm512_fmadd_ps(w0, x0, lo[m]);
                    hi[m] = _mm512_fmadd_ps(w1, x1, hi[m]);
                }
                j = n;
            }
        }
        for m in 0..MB {
            acc[m] += _mm512_reduce_add_ps(_mm512_add_ps(lo[m], hi[m]));
        }
        j
    }

    /// INT8 as [`super::avx2::dequant_row`], 32 columns at a time.
    ///
    /// # Safety
    /// As [`super::avx2::dequant_row`], and the CPU has AVX512-FP16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16,fma,f16c")]
    pub(super) unsafe fn dequant_row(
        row: &[u8],
        c0: usize,
        n: usize,
        scale: f32,
        dst: &mut [f32],
    ) -> usize {
        let sh = scale_h(scale);
        let mut j = 0;
        while j + 32 <= n {
            // SAFETY: columns c0+j .. c0+j+32 are inside the row and dst.
            unsafe {
                let (w0, w1) = load32(row, c0 + j, sh);
                _mm512_storeu_ps(dst.as_mut_ptr().add(c0 + j), w0);
                _mm512_storeu_ps(dst.as_mut_ptr().add(c0 + j + 16), w1);
            }
            j += 32;
        }
        if j < n {
            let t = n - j;
            let k = (1u64 << t) - 1;
            // SAFETY: the t columns from c0+j are inside the row and dst (masked load / stores).
            unsafe {
                let (w0, w1) = load32_tail(row, c0 + j, t, sh);
                let p = dst.as_mut_ptr().add(c0 + j);
                _mm512_mask_storeu_ps(p, (k & 0xFFFF) as __mmask16, w0);
                _mm512_mask_storeu_ps(p.wrapping_add(16), (k >> 16) as __mmask16, w1);
            }
            j = n;
        }
        j
    }
}

/// Accumulates `acc[m] += Σ_{j<n} x[m·x_stride + c0 + j] · W[row, c0 + j]` for `acc.len()` (≤ 4)
/// activation rows.
#[allow(clippy::too_many_arguments)]
fn dot_rows(
    isa: Isa,
    row: &[u8],
    c0: usize,
    n: usize,
    scale: f32,
    int4: bool,
    x: &[f32],
    x_stride: usize,
    acc: &mut [f32],
) {
    let done = match isa {
        Isa::Scalar => 0,
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Fp16 => 0,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Fp16 if !int4 => {
            // SAFETY: AVX-512 and AVX512-FP16 checked by `gemv_impl`; sizes as below.
            unsafe {
                match acc.len() {
                    1 => avx512fp16::dot::<1>(row, c0, n, scale, x, x_stride, acc),
                    2 => avx512fp16::dot::<2>(row, c0, n, scale, x, x_stride, acc),
                    3 => avx512fp16::dot::<3>(row, c0, n, scale, x, x_stride, acc),
                    4 => avx512fp16::dot::<4>(row, c0, n, scale, x, x_stride, acc),
                    _ => 0,
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `gemv_impl` checked that the CPU has AVX2/FMA/F16C (`Isa::check`); `host_gemv` checked the slice sizes
            // (row bytes cover every column, x holds `mb` rows of `x_stride`), and c0 is even for int4.
            unsafe {
                match (acc.len(), int4) {
                    (1, false) => avx2::dot::<1, false>(row, c0, n, scale, x, x_stride, acc),
                    (2, false) => avx2::dot::<2, false>(row, c0, n, scale, x, x_stride, acc),
                    (3, false) => avx2::dot::<3, false>(row, c0, n, scale, x, x_stride, acc),
                    (4, false) => avx2::dot::<4, false>(row, c0, n, scale, x, x_stride, acc),
                    (1, true) => avx2::dot::<1, true>(row, c0, n, scale, x, x_stride, acc),
                    (2, true) => avx2::dot::<2, true>(row, c0, n, scale, x, x_stride, acc),
                    (3, true) => avx2::dot::<3, true>(row, c0, n, scale, x, x_stride, acc),
                    (4, true) => avx2::dot::<4, true>(row, c0, n, scale, x, x_stride, acc),
                    _ => 0,
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Fp16 => {
            // SAFETY: AVX-512F/BW/VL, FMA and F16C checked by `gemv_impl`; sizes as above.
            unsafe {
                match (acc.len(), int4) {
                    (1, false) => avx512::dot::<1, false>(row, c0, n, scale, x, x_stride, acc),
                    (2, false) => avx512::dot::<2, false>(row, c0, n, scale, x, x_stride, acc),
                    (3, false) => avx512::dot::<3, false>(row, c0, n, scale, x, x_stride, acc),
                    (4, false) => avx512::dot::<4, false>(row, c0, n, scale, x, x_stride, acc),
                    (1, true) => avx512::dot::<1, true>(row, c0, n, scale, x, x_stride, acc),
                    (2, true) => avx512::dot::<2, true>(row, c0, n, scale, x, x_stride, acc),
                    (3, true) => avx512::dot::<3, true>(row, c0, n, scale, x, x_stride, acc),
                    (4, true) => avx512::dot::<4, true>(row, c0, n, scale, x, x_stride, acc),
                    _ => 0,
                }
            }
        }
    };
    if done < n {
        dot_scalar(row, c0 + done, n - done, scale, int4, x, x_stride, acc);
    }
}

fn rows_per_task(out: usize, work_per_row: usize) -> usize {
    // Aim at ≥ 64 KiB of weight per task and ~8 tasks per thread for load balance.
    let threads = rayon::current_num_threads().max(1);
    let by_balance = out.div_ceil(threads * 8).max(1);
    let by_size = (64 * 1024 / work_per_row.max(1)).max(1);
    by_balance.max(by_size.min(out.div_ceil(threads).max(1)))
}

/// Fused `y = x · Wᵀ` on the host (any number of rows; the GEMV kernel handles 4 rows of `x` per
/// pass over the weight).
///
/// # Shapes
/// - `x`: `[m, in]` row-major → `y`: `[m, out]` row-major
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice is too small for the layout.
pub fn host_gemv(w: &HostMatrix<'_>, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    gemv_impl(Isa::detect(), w, x, m, y)
}

/// [`host_gemv`] on the instruction set `isa` instead of the detected one.
///
/// # Shapes
/// - `x`: `[m, in]` row-major → `y`: `[m, out]` row-major
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; as [`host_gemv`] otherwise.
pub fn host_gemv_with(
    isa: Isa,
    w: &HostMatrix<'_>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<()> {
    gemv_impl(isa, w, x, m, y)
}

/// [`host_gemv`] forced onto the portable scalar code (what non-x86 CPUs, or x86 CPUs without
/// AVX2/FMA/F16C, run): `host_gemv_with(Isa::Scalar, ..)`.
///
/// # Shapes
/// - `x`: `[m, in]` row-major → `y`: `[m, out]` row-major
pub fn host_gemv_portable(w: &HostMatrix<'_>, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    gemv_impl(Isa::Scalar, w, x, m, y)
}

fn gemv_impl(isa: Isa, w: &HostMatrix<'_>, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    isa.check()?;
    w.validate()?;
    let l = w.layout;
    let (out, inp) = (l.out_features, l.in_features);
    if x.len() != m * inp {
        return Err(QuantError::ShapeMismatch {
            tensor: "x".into(),
            expected: vec![m, inp],
            found: vec![x.len()],
        });
    }
    if y.len() != m * out {
        return Err(QuantError::ShapeMismatch {
            tensor: "y".into(),
            expected: vec![m, out],
            found: vec![y.len()],
        });
    }
    if m == 0 || out == 0 {
        return Ok(());
    }
    let int4 = l.scheme == QuantScheme::Int4;
    let per_shard = l.cols_per_shard();
    let block = rows_per_task(out, l.row_bytes());
    let row_bytes = l.row_bytes();
    // INT4 decode on AVX-512: x reordered once per call, per shard, for `dot_tile_int4`.
    #[cfg(target_arch = "x86_64")]
    let avx512 = matches!(isa, Isa::Avx512 | Isa::Avx512Fp16);
    #[cfg(target_arch = "x86_64")]
    let (xperm, xperm_per_shard) = if m == 1 && int4 && avx512 {
        let mut all = Vec::new();
        let mut one = Vec::new();
        for s in 0..l.shards {
            avx512::permute_int4_x(&x[s * per_shard..(s + 1) * per_shard], &mut one);
            all.extend_from_slice(&one);
        }
        (all, per_shard.div_ceil(avx512::I4_BLOCK) * avx512::I4_BLOCK)
    } else {
        (Vec::new(), 0)
    };
    // yt: [out, m] so that every task owns a contiguous block.
    let mut yt = vec![0f32; out * m];
    yt.par_chunks_mut(block * m)
        .enumerate()
        .for_each(|(bi, chunk)| {
            #[cfg(target_arch = "x86_64")]
            let tiled = if m == 1 && avx512 {
                // Decode: four weight rows side by side (more memory parallelism), each
                // prefetching the same row of the next tile.
                const R: usize = 8;
                let next = R * w.row_stride;
                let first = bi * block;
                let mut i = 0;
                while i + R <= chunk.len() {
                    let rows: [&[u8]; R] = std::array::from_fn(|t| {
                        let r = first + i + t;
                        &w.bytes[r * w.row_stride..r * w.row_stride + row_bytes]
                    });
                    let mut acc = [0f32; R];
                    for s in 0..l.shards {
                        let scales: [f32; R] =
                            std::array::from_fn(|t| w.scales[s * out + first + i + t]);
                        let c0 = s * per_shard;
                        // SAFETY: as `dot_rows` (ISA checked; row bytes cover every column; x is
                        // one row of `inp`; c0 is even for int4; xperm holds each shard's whole
                        // 32-column blocks).
                        let done = unsafe {
                            if int4 {
                                let xp = &xperm[s * xperm_per_shard..(s + 1) * xperm_per_shard];
                                avx512::dot_tile_int4::<R>(
                                    rows, c0, per_shard, next, scales, xp, &mut acc,
                                )
                            } else if isa == Isa::Avx512Fp16 {
                                avx512fp16::dot_tile::<R>(
                                    rows, c0, per_shard, next, scales, x, &mut acc,
                                )
                            } else {
                                avx512::dot_tile::<R, false>(
                                    rows, c0, per_shard, next, scales, x, &mut acc,
                                )
                            }
                        };
                        if done < per_shard {
                            for t in 0..R {
                                dot_scalar(
                                    rows[t],
                                    c0 + done,
                                    per_shard - done,
                                    scales[t],
                                    int4,
                                    x,
                                    inp,
                                    &mut acc[t..t + 1],
                                );
                            }
                        }
                    }
                    chunk[i..i + R].copy_from_slice(&acc);
                    i += R;
                }
                i
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let tiled = 0;
            // The tiled rows (decode only: m = 1) are done; the rest one row at a time.
            for (i, acc_row) in chunk.chunks_mut(m).enumerate().skip(tiled) {
                let r = bi * block + i;
                let row = &w.bytes[r * w.row_stride..r * w.row_stride + row_bytes];
                for s in 0..l.shards {
                    let scale = w.scales[s * out + r];
                    let c0 = s * per_shard;
                    for g in (0..m).step_by(4) {
                        let mb = (m - g).min(4);
                        dot_rows(
                            isa,
                            row,
                            c0,
                            per_shard,
                            scale,
                            int4,
                            &x[g * inp..],
                            inp,
                            &mut acc_row[g..g + mb],
                        );
                    }
                }
            }
        });
    if m == 1 {
        y.copy_from_slice(&yt);
    } else {
        for r in 0..out {
            for i in 0..m {
                y[i * out + r] = yt[r * m + i];
            }
        }
    }
    Ok(())
}

/// Dequantizes the whole matrix to f32 `[out, in]` (exact `f16(q · scale)`), multi-threaded.
///
/// # Shapes
/// - `dst`: `[out, in]` row-major
pub fn host_dequantize(w: &HostMatrix<'_>, dst: &mut [f32]) -> Result<()> {
    host_dequantize_with(Isa::detect(), w, dst)
}

/// [`host_dequantize`] on the instruction set `isa` instead of the detected one.
///
/// # Shapes
/// - `dst`: `[out, in]` row-major
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`; as [`host_dequantize`] otherwise.
pub fn host_dequantize_with(isa: Isa, w: &HostMatrix<'_>, dst: &mut [f32]) -> Result<()> {
    let l = w.layout;
    if dst.len() != l.out_features.saturating_mul(l.in_features) {
        return Err(QuantError::ShapeMismatch {
            tensor: "dequantized".into(),
            expected: vec![l.out_features, l.in_features],
            found: vec![dst.len()],
        });
    }
    host_dequantize_rows_with(isa, w, 0, dst)
}

/// Dequantizes rows `first .. first + dst.len() / in` to f32 (exact `f16(q · scale)`),
/// multi-threaded: a block of the matrix, for a GEMM that runs block by block through one reused
/// buffer.
///
/// # Shapes
/// - `dst`: `[rows, in]` row-major, `first + rows ≤ out`
///
/// # Errors
/// [`QuantError::UnsupportedIsa`] when this CPU cannot run `isa`;
/// [`QuantError::ShapeMismatch`] when the slices do not fit the layout or the rows.
pub fn host_dequantize_rows_with(
    isa: Isa,
    w: &HostMatrix<'_>,
    first: usize,
    dst: &mut [f32],
) -> Result<()> {
    isa.check()?;
    w.validate()?;
    let l = w.layout;
    let (out, inp) = (l.out_features, l.in_features);
    let rows = dst.len().checked_div(inp).unwrap_or(0);
    if dst.len() != rows * inp || first.checked_add(rows).is_none_or(|end| end > out) {
        return Err(QuantError::ShapeMismatch {
            tensor: "dequantized rows".into(),
            expected: vec![out.saturating_sub(first), inp],
            found: vec![dst.len()],
        });
    }
    if rows == 0 {
        return Ok(());
    }
    let int4 = l.scheme == QuantScheme::Int4;
    let per_shard = l.cols_per_shard();
    let row_bytes = l.row_bytes();
    dst.par_chunks_mut(inp).enumerate().for_each(|(local, d)| {
        let r = first + local;
        let row = &w.bytes[r * w.row_stride..r * w.row_stride + row_bytes];
        for s in 0..l.shards {
            let scale = w.scales[s * out + r];
            let c0 = s * per_shard;
            let done = match isa {
                Isa::Scalar => 0,
                #[cfg(not(target_arch = "x86_64"))]
                Isa::Avx2 | Isa::Avx512 | Isa::Avx512Fp16 => 0,
                // SAFETY: AVX-512 and AVX512-FP16 checked above (`Isa::check`); sizes as below.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Fp16 if !int4 => unsafe {
                    avx512fp16::dequant_row(row, c0, per_shard, scale, d)
                },
                // SAFETY: features checked above (`Isa::check`); row covers every column, d has `inp` values.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe {
                    if int4 {
                        avx2::dequant_row::<true>(row, c0, per_shard, scale, d)
                    } else {
                        avx2::dequant_row::<false>(row, c0, per_shard, scale, d)
                    }
                },
                // SAFETY: as above, AVX-512 checked.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Avx512Fp16 => unsafe {
                    if int4 {
                        avx512::dequant_row::<true>(row, c0, per_shard, scale, d)
                    } else {
                        avx512::dequant_row::<false>(row, c0, per_shard, scale, d)
                    }
                },
            };
            for (j, v) in d
                .iter_mut()
                .enumerate()
                .take(c0 + per_shard)
                .skip(c0 + done)
            {
                *v = deq(value_at(row, j, int4), scale);
            }
        }
    });
    Ok(())
}
