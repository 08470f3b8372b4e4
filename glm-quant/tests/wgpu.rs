//! The CubeCL kernels on wgpu (lavapipe in CI) against the reference path and the exact host
//! dequantization. Few and tiny: every first kernel launch compiles a shader.
#![cfg(feature = "wgpu")]

use burn::backend::Wgpu;
use burn::tensor::{Tensor, TensorData};
use glm_quant::kernels::cube::FUSED_MAX_ROWS;
use glm_quant::{QuantScheme, QuantizedMatrix, QuantizedWeight};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn naive(x: &[f32], w: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    for i in 0..rows {
        for r in 0..out {
            y[i * out + r] = (0..inp)
                .map(|j| x[i * inp + j] as f64 * w[r * inp + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

#[test]
fn cubecl_kernels_match_reference_on_wgpu() {
    std::env::set_var(
        "XDG_RUNTIME_DIR",
        std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()),
    );
    let device = Default::default();
    // (out, in, rows, shards, scheme): odd sizes, per-shard scales, GEMV and dequantize+matmul paths.
    let shapes = [
        (7, 13, 1, 1, QuantScheme::Int8),
        (9, 28, 3, 2, QuantScheme::Int4),
        (5, 17, FUSED_MAX_ROWS + 2, 1, QuantScheme::Int4),
        (6, 24, FUSED_MAX_ROWS + 1, 3, QuantScheme::Int8),
    ];
    let mut checked = 0;
    for (k, &(out, inp, rows, shards, scheme)) in shapes.iter().enumerate() {
        let w = TensorData::new(values(out * inp, 11 + k as u32), [out, inp]);
        let m = QuantizedMatrix::quantize("w", &w, shards, scheme).unwrap();
        let deq = m.dequantize();
        let q = QuantizedWeight::<Wgpu>::from_matrix(&m, &device);
        let x = values(rows * inp, 97 + k as u32);
        let xt = Tensor::<Wgpu, 2>::from_data(TensorData::new(x.clone(), [rows, inp]), &device);
        let fused = q
            .forward_fused(xt.clone())
            .expect("wgpu has a CubeCL kernel");
        let fused: Vec<f32> = fused.into_data().to_vec().unwrap();
        let expected = naive(&x, &deq, rows, out, inp);
        assert_eq!(
            fused.len(),
            expected.len(),
            "{scheme} {out}x{inp} rows {rows}: output size"
        );
        let d = fused
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-5,
            "{scheme} {out}x{inp} rows {rows} shards {shards}: {d}"
        );
        if k == 1 {
            // The generic reference path on the same device, and its exact dequantization.
            let reference: Vec<f32> = q.forward_reference(xt).into_data().to_vec().unwrap();
            assert_eq!(reference.len(), fused.len(), "reference output size");
            let d = reference
                .iter()
                .zip(&fused)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "fused vs reference: {d}");
            let dev_deq: Vec<f32> = q.dequantize().into_data().to_vec().unwrap();
            assert_eq!(dev_deq, deq, "device dequantize");
        }
        checked += 1;
    }
    assert_eq!(checked, shapes.len());
}
