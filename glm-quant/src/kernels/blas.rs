//! `y = x · Wᵀ (+ b)` through the system OpenBLAS (`cblas_sgemm`, feature `openblas`): the
//! prefill GEMMs on the CPU. Debian's `libopenblas-dev` provides the library; `cblas-sys` the
//! declarations. On the 2-core development machine OpenBLAS runs the prefill shapes at
//! 215–280 GFLOP/s (as the original's MKL), the `gemm` crate behind burn-flex at about half.
//!
//! Threads: OpenBLAS's own pool is set to one thread and each product is split by columns
//! (weight rows) over rayon's pool, every worker calling single-threaded `sgemm` on its share.
//! With OpenBLAS's threads, a prefill had one more busy thread than cores: its worker spun in
//! `sched_yield` through every non-GEMM pass of the forward (LayerNorm, attention, element-wise
//! work on rayon's workers) and took the core from them. `GLM_BLAS_THREADS=openblas` keeps
//! OpenBLAS's threading instead (read once per process, for comparisons).
//!
//! The reference is [`gemv_f32_reference`](super::host_f32::gemv_f32_reference) (plain loops);
//! the test `blas_gemm_matches_the_reference_on_odd_shapes` compares them.

use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};

use super::host_f32::check_shapes;
use crate::error::{QuantError, Result};

#[link(name = "openblas")]
unsafe extern "C" {
    fn openblas_set_num_threads(num_threads: std::ffi::c_int);
}

/// Whether products split over rayon's pool with OpenBLAS single-threaded (the default), set up
/// once per process (`GLM_BLAS_THREADS=openblas`: OpenBLAS's own threads).
fn split_over_rayon() -> bool {
    static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SPLIT.get_or_init(|| {
        let split = std::env::var("GLM_BLAS_THREADS").as_deref() != Ok("openblas");
        if split {
            // SAFETY: plain setter of OpenBLAS's thread count, called once before any product.
            unsafe { openblas_set_num_threads(1) };
        }
        split
    })
}

/// Fewest weight rows one worker's share of a split product gets (smaller products run whole).
const MIN_SPLIT_COLUMNS: usize = 64;

/// `y = x · Wᵀ + b` with one `cblas_sgemm` call (the bias is the initial `y`, `β = 1`).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `bias`: `[n]` → `[m, n]` (all row-major)
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice does not have its shape or a size exceeds the
/// BLAS integer range.
pub fn sgemm_nt(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_shapes(x, w, bias, m, n, k)?;
    let mut y = match bias {
        Some(b) => b.repeat(m),
        None => vec![0f32; m * n],
    };
    gemm_block(x, w, m, n, k, &mut y, n, 0, bias.is_some())?;
    Ok(y)
}

/// `y[:, first .. first + n] = x · Wᵀ` for a block `W` of `n` weight rows, into the `[m, ldy]`
/// output `y` (the other columns untouched).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[n, k]`, `y`: `[m, ldy]` with `first + n ≤ ldy`
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when a slice does not have its shape or a size exceeds the
/// BLAS integer range.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_nt_into(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    ldy: usize,
    first: usize,
) -> Result<()> {
    check_shapes(x, w, None, m, n, k)?;
    gemm_block(x, w, m, n, k, y, ldy, first, false)
}

/// The one `cblas_sgemm` call: `y[:, first..first + n] = x · Wᵀ (+ y when accumulate)`, operand
/// shapes already checked.
#[allow(clippy::too_many_arguments)]
fn gemm_block(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    ldy: usize,
    first: usize,
    accumulate: bool,
) -> Result<()> {
    let bad = |tensor: &str, expected: Vec<usize>, found: usize| QuantError::ShapeMismatch {
        tensor: tensor.into(),
        expected,
        found: vec![found],
    };
    if first.checked_add(n).is_none_or(|end| end > ldy) || m.checked_mul(ldy) != Some(y.len()) {
        return Err(bad("y", vec![m, ldy], y.len()));
    }
    let int = |v: usize| i32::try_from(v).map_err(|_| bad("BLAS size", vec![i32::MAX as usize], v));
    let (mi, ni, ki, ldi) = (int(m)?, int(n)?, int(k)?, int(ldy)?);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    // The workers write disjoint column ranges of the output.
    let out = super::SharedOut(y.as_mut_ptr());
    // One call on columns `c0..c0 + cn` of the block (weight rows `c0..c0 + cn` of `w`).
    let call = |c0: usize, cn: usize| {
        // SAFETY: x is [m, k] (lda = k), w is [n, k] read transposed (ldb = k) (checked by the
        // callers); rows c0..c0 + cn ≤ n of w start at c0·k; the output block starts at column
        // `first + c0` of the [m, ldy] y (ldc = ldy) and spans cn ≤ ldy − first − c0 columns
        // (checked above); k = 0 leaves y = β·y. Concurrent calls write disjoint columns.
        unsafe {
            cblas_sgemm(
                CBLAS_LAYOUT::CblasRowMajor,
                CBLAS_TRANSPOSE::CblasNoTrans,
                CBLAS_TRANSPOSE::CblasTrans,
                mi,
                cn as i32,
                ki,
                1.0,
                x.as_ptr(),
                ki.max(1),
                w.as_ptr().add(c0 * k),
                ki.max(1),
                beta,
                out.at(first + c0),
                ldi.max(1),
            );
        }
    };
    let workers = rayon::current_num_threads();
    if !split_over_rayon() || workers < 2 || n < 2 * MIN_SPLIT_COLUMNS {
        call(0, ni as usize);
        return Ok(());
    }
    // Shares of whole 16-column groups (the kernels' register width), one per worker.
    let share = n.div_ceil(workers).div_ceil(16) * 16;
    let share = share.max(MIN_SPLIT_COLUMNS);
    rayon::scope(|s| {
        let mut c0 = 0;
        while c0 < n {
            let cn = share.min(n - c0);
            s.spawn(move |_| call(c0, cn));
            c0 += cn;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::exact_operands;
    use crate::kernels::host_f32::gemv_f32_reference;

    #[test]
    fn blas_gemm_matches_the_reference_on_odd_shapes() {
        for (m, n, k) in [
            (1, 1, 1),
            (9, 7, 33),
            (17, 65, 3),
            (130, 31, 257),
            (3, 2, 0),
        ] {
            let (x, w, bias) = exact_operands(m, n, k);
            for b in [None, Some(bias.as_slice())] {
                let want = gemv_f32_reference(&x, &w, b, m, n, k).unwrap();
                let got = sgemm_nt(&x, &w, b, m, n, k).unwrap();
                assert_eq!(got.len(), m * n);
                assert_eq!(got.len(), want.len());
                // Products of these values are exact multiples of 1/8 and sums stay far below
                // 2^20: every order of summation gives the same f32.
                assert_eq!(got, want, "[{m}, {k}] · [{n}, {k}]ᵀ bias {}", b.is_some());
            }
        }
        assert!(sgemm_nt(&[0.0; 3], &[0.0; 4], None, 1, 2, 2).is_err());
    }

    #[test]
    fn blocks_written_into_their_columns_assemble_the_whole_product() {
        let (m, n, k) = (11, 23, 17);
        let (x, w, _) = exact_operands(m, n, k);
        let want = gemv_f32_reference(&x, &w, None, m, n, k).unwrap();
        let mut y = vec![f32::NAN; m * n];
        for (first, rows) in [(0, 5), (5, 9), (14, 9)] {
            let block = &w[first * k..(first + rows) * k];
            sgemm_nt_into(&x, block, m, rows, k, &mut y, n, first).unwrap();
        }
        assert_eq!(y, want);
        assert!(sgemm_nt_into(&x, &w[..5 * k], m, 5, k, &mut y, n, 19).is_err());
    }
}
