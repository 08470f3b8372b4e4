//! Golden tests against the ORIGINAL GLM-130B quantizer (fixtures `quant_*.safetensors`,
//! `sat_tp.safetensors`): int8 values, packed int4 bytes and fp16 scales must be bit-exact.

mod common;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use common::*;
use glm_quant::quantize::{dequantize_value, quantize_value, row_scale};
use glm_quant::{QuantScheme, QuantizedMatrix, QuantizedWeight};
use half::f16;

const SINGLE: &str = "single";

fn model() -> Fixture {
    Fixture::open("model.safetensors")
}

#[test]
fn single_linear_walkthrough_is_bit_exact() {
    let extra = Fixture::open("quant_extra.safetensors");
    let w32 = extra.get(&format!("{SINGLE}.weight_fp32"));
    let [out, inp] = [w32.shape[0], w32.shape[1]];
    // fp16 cast of the weight (the original runs model.half() before quantize()).
    let w16: Vec<f16> = w32
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let expected16 = f16_bits(&extra.get(&format!("{SINGLE}.weight_fp16")));
    assert_eq!(
        w16.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        expected16
    );

    for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
        let p = format!("{SINGLE}.{}", scheme.marker());
        let m = QuantizedMatrix::quantize("single", &w32, 1, scheme).unwrap();
        // Scales.
        let scales: Vec<u16> = m.scales().iter().map(|s| s.to_bits()).collect();
        assert_eq!(
            scales,
            f16_bits(&extra.get(&format!("{p}.weight_scale"))),
            "{scheme} scales"
        );
        // The fp16 quotient before rounding, recomputed with the public per-value helpers.
        let quotient = extra.f32s(&format!("{p}.quotient_fp16"));
        for r in 0..out {
            let s = row_scale(&w16[r * inp..(r + 1) * inp], scheme);
            assert_eq!(s, m.scales()[r]);
            for j in 0..inp {
                let q = f16::from_f32(w16[r * inp + j].to_f32() / s.to_f32()).to_f32();
                assert_eq!(
                    q.to_bits(),
                    quotient[r * inp + j].to_bits(),
                    "{scheme} quotient [{r}, {j}]"
                );
                assert_eq!(
                    quantize_value(w16[r * inp + j], s) as f32,
                    q.round_ties_even()
                );
            }
        }
        // Integer values (int4: unpacked) and the stored tensor (int4: packed).
        let values_key = match scheme {
            QuantScheme::Int8 => format!("{p}.weight"),
            QuantScheme::Int4 => format!("{p}.values"),
        };
        assert_eq!(m.values(), i8s(&extra.get(&values_key)), "{scheme} values");
        let stored = extra.get(&format!("{p}.weight"));
        assert_eq!(m.weight_data().shape, stored.shape, "{scheme} stored shape");
        assert_eq!(
            m.weight_data().as_bytes(),
            stored.as_bytes(),
            "{scheme} stored bytes"
        );
        // Dequantized weight, host and device reference.
        let deq = extra.f32s(&format!("{p}.dequant"));
        let host = m.dequantize();
        assert_eq!(
            host.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            deq.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let device = Default::default();
        let qw = QuantizedWeight::<Flex>::from_matrix(&m, &device);
        let dev: Vec<f32> = qw.dequantize().into_data().to_vec().unwrap();
        assert_eq!(dev, deq, "{scheme} device dequantize");
        // y = x @ dequant^T + bias, through the fused kernel and the reference.
        let x = extra.get(&format!("{SINGLE}.x"));
        let rows = x.shape[0];
        let bias = model().f32s("transformer.layers.0.attention.query_key_value.bias");
        let expected_y = extra.f32s(&format!("{p}.y"));
        let xt = Tensor::<Flex, 2>::from_data(x, &device);
        let b =
            Tensor::<Flex, 1>::from_data(TensorData::new(bias, [out]), &device).unsqueeze::<2>();
        for (path, y) in [
            (
                "fused",
                qw.forward_fused(xt.clone())
                    .expect("Flex has a fused kernel"),
            ),
            ("reference", qw.forward_reference(xt.clone())),
        ] {
            let y: Vec<f32> = (y + b.clone()).into_data().to_vec().unwrap();
            assert_eq!(y.len(), rows * out);
            let diff = y
                .iter()
                .zip(&expected_y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{scheme} {path}: max |y diff| {diff}");
        }
        // Round trip through the device.
        assert_eq!(qw.to_matrix("single").unwrap(), m);
    }
}

/// Every quantized linear of the model vs `quant_int8/int4.safetensors` (the tensors of a SAT
/// quantized checkpoint).
#[test]
fn every_layer_matches_the_original_checkpoint() {
    let model = model();
    for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
        let file = Fixture::open(&format!("quant_{}.safetensors", scheme.marker()));
        let linears = quantized_linears(&file);
        for linear in &linears {
            let w = model.get(&format!("{linear}.weight"));
            let m = QuantizedMatrix::quantize(linear, &w, 1, scheme).unwrap();
            let stored = file.get(&format!("{linear}.weight"));
            assert_eq!(m.weight_data().shape, stored.shape, "{linear} {scheme}");
            assert_eq!(
                m.weight_data().as_bytes(),
                stored.as_bytes(),
                "{linear} {scheme} bytes"
            );
            let scale = file.get(&format!("{linear}.weight_scale"));
            assert_eq!(m.scale_data().shape, scale.shape);
            assert_eq!(
                m.scale_data().as_bytes(),
                scale.as_bytes(),
                "{linear} {scheme} scales"
            );
            // Loading the checkpoint tensors gives the same matrix back.
            let loaded =
                QuantizedMatrix::from_checkpoint(linear, &stored, &scale, scheme, w.shape[1])
                    .unwrap();
            assert_eq!(loaded, m);
        }
        // Exactly the four linears of every layer are quantized.
        let layers = linears.len() / 4;
        assert_eq!(linears.len(), 4 * layers);
        for suffix in [
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        ] {
            assert_eq!(
                linears.iter().filter(|l| l.ends_with(suffix)).count(),
                layers,
                "{suffix}"
            );
        }
    }
}

/// Row-parallel layers quantized for tensor-parallel degree 2: one scale per row PER SHARD,
/// exactly `tools/convert_tp.py --target-tp 2 --quantization-bit-width b`.
#[test]
fn per_shard_scales_match_the_tp2_conversion() {
    let model = model();
    let tp = Fixture::open("sat_tp.safetensors");
    let mut checked = 0;
    for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
        let prefix = format!("tp2_{}.", scheme.marker());
        let keys: Vec<String> = tp
            .names()
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|k| k.strip_suffix("_scale.rank0"))
                    .map(str::to_string)
            })
            .collect();
        assert!(!keys.is_empty(), "no {prefix}*_scale.rank0 tensors");
        for weight_key in keys {
            let shards = (0..)
                .take_while(|r| {
                    tp.names()
                        .contains(&format!("{prefix}{weight_key}_scale.rank{r}"))
                })
                .count();
            assert!(shards >= 2);
            let w = model.get(&weight_key);
            let m = QuantizedMatrix::quantize(&weight_key, &w, shards, scheme).unwrap();
            let out = m.out_features();
            let mut differs = 0;
            let single = QuantizedMatrix::quantize(&weight_key, &w, 1, scheme).unwrap();
            for r in 0..shards {
                let expected = f16_bits(&tp.get(&format!("{prefix}{weight_key}_scale.rank{r}")));
                let ours: Vec<u16> = m.scales()[r * out..(r + 1) * out]
                    .iter()
                    .map(|s| s.to_bits())
                    .collect();
                assert_eq!(ours, expected, "{weight_key} {scheme} shard {r}");
                differs += ours
                    .iter()
                    .zip(single.scales())
                    .filter(|(a, b)| **a != b.to_bits())
                    .count();
                checked += 1;
            }
            // The shard that lacks a row's absmax gets a smaller scale: per-shard scales matter.
            assert!(
                differs > 0,
                "{weight_key}: per-shard scales equal the TP=1 ones"
            );
            // Dequantization uses each column's own shard scale.
            let deq = m.dequantize();
            let values = m.values();
            let cols = m.in_features() / shards;
            for row in [0, out - 1] {
                for j in [0, cols - 1, cols, m.in_features() - 1] {
                    let s = m.scales()[(j / cols) * out + row];
                    assert_eq!(
                        deq[row * m.in_features() + j],
                        dequantize_value(values[row * m.in_features() + j], s)
                    );
                }
            }
        }
    }
    assert!(checked > 0);
}
