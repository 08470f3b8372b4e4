//! Kernel tests: pack/unpack round trip (property), the fused CPU kernels against the reference
//! path on random shapes including odd sizes, several shards and prefill-sized inputs — on EVERY
//! instruction set this CPU has (scalar, AVX2, AVX-512, AVX-512 with FP16), selected per call, in the same run; the f32
//! skinny GEMM (`host_f32`) against its plain-loop reference the same way.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use glm_quant::kernels::host::{
    host_dequantize, host_dequantize_with, host_gemv, host_gemv_portable, host_gemv_with,
    HostMatrix, Isa, FUSED_MAX_ROWS,
};
use glm_quant::pack::{pack_int4, unpack_int4};
use glm_quant::{QuantScheme, QuantizedMatrix, QuantizedWeight};
use proptest::prelude::*;

/// Small deterministic generator (no test depends on a particular random sequence).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

proptest! {
    #[test]
    fn int4_pack_unpack_round_trip(rows in 0usize..6, cols in 0usize..40, seed in any::<u64>()) {
        let mut rng = Rng(seed | 1);
        let values: Vec<i8> = (0..rows * cols).map(|_| ((rng.next() + 1.0) * 7.999).floor() as i8 - 8).collect();
        let packed = pack_int4(&values, rows, cols).unwrap();
        prop_assert_eq!(packed.len(), rows * cols.div_ceil(2));
        prop_assert_eq!(unpack_int4(&packed, rows, cols).unwrap(), values);
    }

    #[test]
    fn quantizer_output_is_packed_values(rows in 1usize..5, half_cols in 1usize..20, seed in any::<u64>()) {
        let cols = 2 * half_cols;
        let mut rng = Rng(seed | 1);
        let w = TensorData::new(rng.vec(rows * cols, 3.0), [rows, cols]);
        let m4 = QuantizedMatrix::quantize("w", &w, 1, QuantScheme::Int4).unwrap();
        let m8 = QuantizedMatrix::quantize("w", &w, 1, QuantScheme::Int8).unwrap();
        prop_assert_eq!(pack_int4(&m4.values(), rows, cols).unwrap(), m4.bytes().to_vec());
        prop_assert!(m4.values().iter().all(|v| (-7..=7).contains(v)));
        prop_assert!(m8.values().iter().all(|v| (-127..=127).contains(v)));
        // Every row reaches its extreme value.
        for r in 0..rows {
            prop_assert!(m8.values()[r * cols..(r + 1) * cols].iter().any(|v| v.abs() == 127));
        }
    }
}

/// (out, in, rows of x, shards, scheme)
fn shapes() -> Vec<(usize, usize, usize, usize, QuantScheme)> {
    use QuantScheme::*;
    vec![
        (1, 1, 1, 1, Int8),
        (1, 1, 1, 1, Int4),
        (7, 13, 3, 1, Int8),
        (7, 13, 3, 1, Int4),
        (33, 65, 5, 1, Int4),
        (17, 40, 1, 2, Int8),
        (17, 44, 2, 2, Int4),
        (64, 172, 4, 2, Int4),
        (64, 172, 4, 2, Int8),
        (31, 257, 9, 1, Int8),
        (29, 129, 7, 3, Int8),
        (5, 3, FUSED_MAX_ROWS + 3, 1, Int4),
        (70, 96, FUSED_MAX_ROWS + 1, 2, Int8),
        (3, 1000, 2, 4, Int4),
        (300, 24, 1, 1, Int8),
        // Decode (one row) over whole 16/32-column blocks, tails and shards: the tiled paths.
        (37, 200, 1, 1, Int4),
        (41, 136, 1, 2, Int4),
        (9, 1000, 1, 4, Int4),
        (23, 300, 1, 3, Int8),
        (12, 64, 1, 1, Int4),
        (13, 77, 1, 1, Int4),
        (14, 61, 2, 1, Int8),
        (10, 45, 3, 1, Int4),
    ]
}

fn tolerance(x: &[f32], w: &[f32], inp: usize) -> f32 {
    let mx = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mw = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    2e-6 * inp as f32 * mx * mw + 1e-7
}

/// The host view of a quantizer's output (row stride = row bytes: no padding).
fn host_matrix<'a>(m: &'a QuantizedMatrix, scales: &'a [f32]) -> HostMatrix<'a> {
    HostMatrix {
        layout: m.layout(),
        bytes: m.bytes(),
        row_stride: m.layout().row_bytes(),
        scales,
    }
}

/// The instruction sets this CPU runs; a note is printed for each one it lacks.
fn supported_isas() -> Vec<Isa> {
    let mut out = Vec::new();
    for isa in Isa::ALL {
        if isa.is_supported() {
            out.push(isa);
        } else {
            eprintln!(
                "note: this CPU lacks {}: its kernels are not tested here",
                isa.name()
            );
        }
    }
    assert!(out.contains(&Isa::Scalar), "the scalar path always runs");
    assert!(
        out.contains(&Isa::detect()),
        "the detected path is one of them"
    );
    out
}

#[test]
fn fused_cpu_kernel_equals_reference_on_random_shapes() {
    let device = Default::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let isas = supported_isas();
    // (isa, gemv cases, dequantize cases) actually run.
    let mut ran: Vec<(Isa, usize, usize)> = isas.iter().map(|&i| (i, 0, 0)).collect();
    let cases = shapes();
    for &(out, inp, rows, shards, scheme) in &cases {
        let w = rng.vec(out * inp, 0.5);
        let x = rng.vec(rows * inp, 2.0);
        let m = QuantizedMatrix::quantize("w", &TensorData::new(w, [out, inp]), shards, scheme)
            .unwrap();
        let deq = m.dequantize();
        let tol = tolerance(&x, &deq, inp);
        // Naive f64 product with the exact dequantized weight.
        let mut naive = vec![0f32; rows * out];
        for i in 0..rows {
            for r in 0..out {
                naive[i * out + r] = (0..inp)
                    .map(|j| x[i * inp + j] as f64 * deq[r * inp + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        let check = |what: &str, y: &[f32]| {
            assert_eq!(y.len(), naive.len(), "{what}");
            let d = y
                .iter()
                .zip(&naive)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= tol, "{what} {scheme} out={out} in={inp} rows={rows} shards={shards}: max diff {d} > {tol}");
        };
        // Host kernels.
        let scales = m.scales_f32();
        let hm = host_matrix(&m, &scales);
        let mut y = vec![0f32; rows * out];
        host_gemv(&hm, &x, rows, &mut y).unwrap();
        check("host_gemv", &y);
        host_gemv_portable(&hm, &x, rows, &mut y).unwrap();
        check("host_gemv_portable", &y);
        let mut d = vec![0f32; out * inp];
        host_dequantize(&hm, &mut d).unwrap();
        assert_eq!(
            d, deq,
            "host_dequantize {scheme} {out}x{inp} shards {shards}"
        );
        // Every path of this CPU, chosen per call.
        for (isa, gemv_runs, deq_runs) in ran.iter_mut() {
            let mut y = vec![f32::NAN; rows * out];
            host_gemv_with(*isa, &hm, &x, rows, &mut y).unwrap();
            check(&format!("host_gemv_with({})", isa.name()), &y);
            *gemv_runs += 1;
            let mut d = vec![f32::NAN; out * inp];
            host_dequantize_with(*isa, &hm, &mut d).unwrap();
            assert_eq!(
                d,
                deq,
                "host_dequantize_with({}) {scheme} {out}x{inp} shards {shards}",
                isa.name()
            );
            *deq_runs += 1;
        }
        // Through burn: fused (Flex) vs reference.
        let q = QuantizedWeight::<Flex>::from_matrix(&m, &device);
        let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [rows, inp]), &device);
        let fused = q
            .forward_fused(xt.clone())
            .expect("Flex has a fused kernel");
        let reference = q.forward_reference(xt.clone());
        check("fused", &fused.into_data().to_vec::<f32>().unwrap());
        check("reference", &reference.into_data().to_vec::<f32>().unwrap());
        // A non-contiguous input (transposed view) takes the same path.
        let xt_t = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [rows, inp]), &device)
            .transpose()
            .transpose();
        check(
            "fused (view)",
            &q.forward(xt_t).into_data().to_vec::<f32>().unwrap(),
        );
        // f16 activations: output stays f16.
        let y16 = q.forward(xt.cast(DType::F16));
        assert_eq!(y16.dtype(), DType::F16);
    }
    assert!(!cases.is_empty());
    for (isa, gemv_runs, deq_runs) in ran {
        assert_eq!(gemv_runs, cases.len(), "{}: gemv cases run", isa.name());
        assert_eq!(
            deq_runs,
            cases.len(),
            "{}: dequantize cases run",
            isa.name()
        );
        eprintln!(
            "{}: {gemv_runs} gemv + {deq_runs} dequantize cases",
            isa.name()
        );
    }
}

/// Rows whose dequantized values fall into fp16's subnormal range (tiny scales) and near its
/// top: every path's dequantization is bit-identical to the reference `f16(q · scale)`, and its
/// products stay within the tolerance.
#[test]
fn dequantization_is_exact_for_subnormal_and_large_scales_on_every_isa() {
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let magnitudes = [1e-6f32, 3e-5, 1e-3, 0.5, 60.0, 2e4];
    let (cols, rows) = (96, magnitudes.len() * 4);
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        w.extend(rng.vec(cols, magnitudes[r % magnitudes.len()]));
    }
    for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
        let m =
            QuantizedMatrix::quantize("w", &TensorData::new(w.clone(), [rows, cols]), 1, scheme)
                .unwrap();
        let deq = m.dequantize();
        assert!(
            deq.iter().any(|&v| v != 0.0 && v.abs() < 6.1e-5),
            "the case must reach fp16 subnormals"
        );
        let scales = m.scales_f32();
        let hm = host_matrix(&m, &scales);
        let x = rng.vec(cols, 1.0);
        let mut ran = 0;
        for isa in supported_isas() {
            let mut d = vec![f32::NAN; rows * cols];
            host_dequantize_with(isa, &hm, &mut d).unwrap();
            let same = d.iter().zip(&deq).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && d.len() == deq.len(),
                "{} {scheme}: not bit-identical",
                isa.name()
            );
            let mut y = vec![f32::NAN; rows];
            host_gemv_with(isa, &hm, &x, 1, &mut y).unwrap();
            assert_eq!(y.len(), rows);
            for (r, got) in y.iter().enumerate() {
                let row = &deq[r * cols..(r + 1) * cols];
                let want: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let tol = tolerance(&x, row, cols);
                assert!(
                    (*got as f64 - want).abs() <= tol as f64,
                    "{} {scheme} row {r}: {got} vs {want}",
                    isa.name()
                );
            }
            ran += 1;
        }
        assert!(ran >= 1);
    }
}

#[test]
fn an_instruction_set_the_cpu_lacks_is_an_error_not_a_fallback() {
    let m = QuantizedMatrix::quantize(
        "w",
        &TensorData::new(vec![0.5f32; 12], [3, 4]),
        1,
        QuantScheme::Int8,
    )
    .unwrap();
    let scales = m.scales_f32();
    let hm = host_matrix(&m, &scales);
    let mut checked = 0;
    for isa in Isa::ALL {
        let mut y = vec![0f32; 3];
        let mut d = vec![0f32; 12];
        let (g, q) = (
            host_gemv_with(isa, &hm, &[1.0; 4], 1, &mut y),
            host_dequantize_with(isa, &hm, &mut d),
        );
        if isa.is_supported() {
            assert!(g.is_ok() && q.is_ok(), "{}", isa.name());
        } else {
            assert!(
                matches!(g, Err(glm_quant::QuantError::UnsupportedIsa(_)))
                    && matches!(q, Err(glm_quant::QuantError::UnsupportedIsa(_))),
                "{}",
                isa.name()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, Isa::ALL.len());
}

#[test]
fn kernels_reject_bad_sizes() {
    let m = QuantizedMatrix::quantize(
        "w",
        &TensorData::new(vec![1f32; 12], [3, 4]),
        1,
        QuantScheme::Int8,
    )
    .unwrap();
    let scales = m.scales_f32();
    let hm = HostMatrix {
        layout: m.layout(),
        bytes: m.bytes(),
        row_stride: 4,
        scales: &scales,
    };
    let mut y = vec![0f32; 3];
    assert!(host_gemv(&hm, &[1.0; 3], 1, &mut y).is_err());
    let short = HostMatrix {
        bytes: &m.bytes()[..5],
        ..hm
    };
    assert!(host_gemv(&short, &[1.0; 4], 1, &mut y).is_err());
    assert!(QuantizedMatrix::quantize(
        "w",
        &TensorData::new(vec![1f32; 12], [3, 4]),
        3,
        QuantScheme::Int8
    )
    .is_err());
    assert!(QuantizedMatrix::quantize(
        "w",
        &TensorData::new(vec![1f32; 18], [3, 6]),
        2,
        QuantScheme::Int4
    )
    .is_err());
    let nan = QuantizedMatrix::quantize(
        "w",
        &TensorData::new(vec![f32::NAN; 4], [2, 2]),
        1,
        QuantScheme::Int8,
    );
    assert!(matches!(nan, Err(glm_quant::QuantError::NonFinite { .. })));
}

/// The f32 skinny GEMM (decode path) equals its plain-loop reference on odd shapes, on every
/// instruction set this CPU has. Both sum in f32 in different orders, so the bound is a rounding
/// bound: each output may differ by `1e-5 · sqrt(k) · Σ_j |x_j|·|w_j|` (about `sqrt(k)` ulps of
/// the absolute-value dot product for random-sign rounding errors, with a 10× margin) plus a tiny
/// absolute floor.
#[test]
fn f32_gemv_equals_reference_on_odd_shapes_every_isa() {
    use glm_quant::kernels::host_f32::{
        gemv_f32, gemv_f32_reference, gemv_f32_with, F32_GEMV_MAX_ROWS,
    };
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let isas = supported_isas();
    let mut ran: Vec<(Isa, usize)> = isas.iter().map(|&i| (i, 0)).collect();
    // 1–7 rows (one group each), 8 and more in groups of 4 plus 1–3 rows, and more rows than
    // one pass takes.
    let ms = [
        1usize,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        11,
        12,
        14,
        16,
        F32_GEMV_MAX_ROWS + 3,
    ];
    let dims = [1usize, 7, 16, 33, 257];
    let mut cases = 0;
    for &m in &ms {
        for &n in &dims {
            for &k in &dims {
                let x = rng.vec(m * k, 2.0);
                let w = rng.vec(n * k, 0.5);
                let bias = rng.vec(n, 1.0);
                let b = if (m + n + k) % 2 == 0 {
                    Some(bias.as_slice())
                } else {
                    None
                };
                let want = gemv_f32_reference(&x, &w, b, m, n, k).unwrap();
                assert_eq!(want.len(), m * n);
                let check = |what: String, y: &[f32]| {
                    assert_eq!(y.len(), want.len(), "{what}");
                    for i in 0..m {
                        for r in 0..n {
                            let absdot: f32 = (0..k)
                                .map(|j| (x[i * k + j] * w[r * k + j]).abs())
                                .sum::<f32>()
                                + b.map_or(0.0, |b| b[r].abs());
                            let tol = 1e-5 * (k as f32).sqrt() * absdot + 1e-6;
                            let (got, exp) = (y[i * n + r], want[i * n + r]);
                            assert!(
                                (got - exp).abs() <= tol,
                                "{what} m={m} n={n} k={k} row {i} col {r}: {got} vs {exp} (tol {tol})"
                            );
                        }
                    }
                };
                for (isa, count) in ran.iter_mut() {
                    let y = gemv_f32_with(*isa, &x, &w, b, m, n, k).unwrap();
                    check(isa.name().to_string(), &y);
                    *count += 1;
                }
                check("detected".into(), &gemv_f32(&x, &w, b, m, n, k).unwrap());
                cases += 1;
            }
        }
    }
    assert_eq!(cases, ms.len() * dims.len() * dims.len());
    for (isa, count) in ran {
        assert_eq!(count, cases, "{} ran on every case", isa.name());
    }
    // Shape errors are typed, never a panic.
    assert!(gemv_f32_reference(&[0.0; 3], &[0.0; 4], None, 1, 2, 2).is_err());
    assert!(gemv_f32_with(Isa::Scalar, &[0.0; 2], &[0.0; 4], Some(&[0.0]), 1, 2, 2).is_err());
}

/// On `Flex`, the dispatching linear gives the generic matmul's result (within f32 rounding) for
/// up to `F32_GEMV_MAX_ROWS` rows (skinny GEMM) and for more rows with the `openblas` feature
/// (glm-quant's own GEMM on AVX-512 up to 256 rows, OpenBLAS above) or on an AVX-512 CPU (own
/// GEMM); otherwise more rows are declined.
#[test]
fn f32_linear_dispatch_on_flex_matches_matmul() {
    use glm_quant::kernels::host_f32::F32_GEMV_MAX_ROWS;
    use glm_quant::kernels::try_linear_f32;
    let most = F32_GEMV_MAX_ROWS + 2;
    let device = Default::default();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (n, k) = (37, 129);
    let w = Tensor::<Flex, 2>::from_data(TensorData::new(rng.vec(n * k, 0.5), [n, k]), &device);
    let b = Tensor::<Flex, 1>::from_data(TensorData::new(rng.vec(n, 1.0), [n]), &device);
    let own = matches!(Isa::detect(), Isa::Avx512 | Isa::Avx512Fp16)
        && std::env::var("GLM_PREFILL_GEMM").as_deref() != Ok("openblas");
    let takes_many = cfg!(feature = "openblas") || own;
    let mut fast = 0;
    let rows: Vec<usize> = (1..=most).chain([300]).collect();
    for &m in &rows {
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(rng.vec(m * k, 2.0), [m, k]), &device);
        let want = x.clone().matmul(w.clone().transpose()) + b.clone().unsqueeze::<2>();
        let want: Vec<f32> = want.into_data().to_vec().unwrap();
        match try_linear_f32(x, &w, Some(&b)) {
            Ok(y) => {
                assert!(m <= F32_GEMV_MAX_ROWS || takes_many, "m={m}");
                assert!(std::env::var_os("GLM_NO_FAST_GEMV").is_none());
                assert_eq!(y.dims(), [m, n]);
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                assert_eq!(y.len(), want.len());
                let d = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d <= 1e-4, "m={m}: max diff {d}");
                fast += 1;
            }
            Err(_) => assert!(
                (m > F32_GEMV_MAX_ROWS && !takes_many)
                    || std::env::var_os("GLM_NO_FAST_GEMV").is_some()
            ),
        }
    }
    if std::env::var_os("GLM_NO_FAST_GEMV").is_none() {
        let expected = if takes_many {
            rows.len()
        } else {
            F32_GEMV_MAX_ROWS
        };
        assert_eq!(fast, expected, "the fast path ran for every m it takes");
    }
}
