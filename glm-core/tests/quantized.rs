//! Quantized GLM models against the ORIGINAL GLM-130B quantization (fixtures `quant_*`,
//! `sat_tp2_int8/`, `sat_tp2_int4/`, `sat_tp.safetensors`): logits within the README tolerance
//! (with the original biases, not the zero-bias bug), checkpoints bit-exact, per-shard scales.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use common::*;
use glm_core::blank::GlmInput;
use glm_core::quantized::{
    convert_checkpoint, is_row_parallel, open_checkpoint, read_quantization_marker, source_scheme,
    QuantizeOptions, QUANTIZED_LINEARS,
};
use glm_core::weights::{SafetensorsFile, SatCheckpoint, WeightSource};
use glm_core::{Error, GlmModel, ModelOptions};
use glm_quant::QuantScheme;

const SCHEMES: [QuantScheme; 2] = [QuantScheme::Int8, QuantScheme::Int4];

fn tolerance() -> f32 {
    read_json("cases.json")["tolerance"]["logits_max_abs"]
        .as_f64()
        .expect("tolerance") as f32
}

/// Case `a_gmask` of cases.json (the case the quantized logits were produced for).
fn case_a() -> GlmInput {
    let json = read_json("cases.json");
    let c = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "a_gmask")
        .expect("a_gmask case")
        .clone();
    let tokens = ints2(&c["tokens"]);
    GlmInput {
        batch: tokens.len(),
        seq: tokens[0].len(),
        tokens: tokens.concat(),
        position_ids: ints2(&c["position_ids"]).concat(),
        mask: mask4(&c["attention_mask"]),
    }
}

fn logits(model: &GlmModel<Cpu>) -> Vec<f32> {
    let (tokens, positions, mask) = case_a().to_tensors::<Cpu>(&Default::default());
    to_vec(model.forward(tokens, positions, mask).expect("forward"))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn quantize_on_load(source: &dyn WeightSource, quant: QuantizeOptions) -> GlmModel<Cpu> {
    GlmModel::from_source_quantized(
        &config(),
        source,
        &Default::default(),
        ModelOptions::default(),
        Some(quant),
    )
    .expect("quantized model")
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("glm-core-quantized-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `model.safetensors` with the linear weights replaced by another file's tensors (+ scales).
struct Overlay {
    base: SafetensorsFile,
    over: SafetensorsFile,
}

impl WeightSource for Overlay {
    fn location(&self) -> &Path {
        self.over.location()
    }
    fn names(&self) -> Vec<String> {
        let mut n = self.over.names();
        n.extend(
            self.base
                .names()
                .into_iter()
                .filter(|b| self.over.shape(b).is_none()),
        );
        n.sort();
        n
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.over.shape(name).or_else(|| self.base.shape(name))
    }
    fn load(&self, name: &str) -> glm_core::Result<TensorData> {
        if self.over.shape(name).is_some() {
            self.over.load(name)
        } else {
            self.base.load(name)
        }
    }
}

fn exported_linears(model: &GlmModel<Cpu>) -> BTreeMap<String, TensorData> {
    model
        .named_tensors()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.ends_with(".weight") || k.ends_with(".weight_scale"))
        .filter(|(k, _)| QUANTIZED_LINEARS.iter().any(|l| k.contains(l)))
        .collect()
}

#[test]
fn quantized_logits_match_the_original_with_biases() {
    let tol = tolerance();
    let file = model_file();
    for scheme in SCHEMES {
        let model = quantize_on_load(
            &file,
            QuantizeOptions {
                scheme,
                tensor_parallel: None,
            },
        );
        assert_eq!(model.quantization(), Some((scheme, 1)));
        let ours = logits(&model);
        let (golden, shape) = tensor_f32(
            "quant_extra.safetensors",
            &format!("a_gmask.logits_{}", scheme.marker()),
        );
        assert_eq!(shape.iter().product::<usize>(), ours.len());
        let d = max_diff(&ours, &golden);
        assert!(d <= tol, "{scheme}: max |logits diff| {d} > {tol}");
        // The bug-compatible zero-bias variant is NOT what we compute.
        let (zero_bias, _) = tensor_f32(
            "quant_extra.safetensors",
            &format!("a_gmask.logits_{}_zero_bias", scheme.marker()),
        );
        assert!(
            max_diff(&ours, &zero_bias) > 100.0 * tol,
            "{scheme}: matches the zero-bias bug variant"
        );
        // Only the four linears are quantized: embedding, LayerNorms and biases stay F32.
        let mut quantized_weights = 0;
        for (name, t) in model.named_tensors().unwrap() {
            let quantized_weight = QUANTIZED_LINEARS
                .iter()
                .any(|l| name.ends_with(&format!("{l}.weight")));
            if quantized_weight {
                assert_eq!(t.dtype, DType::I8, "{name}");
                quantized_weights += 1;
            } else if !name.ends_with("_scale") {
                assert_eq!(t.dtype, DType::F32, "{name}");
            }
        }
        assert_eq!(
            quantized_weights,
            QUANTIZED_LINEARS.len() * config().num_layers,
            "{scheme}: quantized weights"
        );
    }
}

#[test]
fn quantized_checkpoints_load_and_save_bit_exact() {
    let tol = tolerance();
    let dir = tmp_dir("roundtrip");
    for scheme in SCHEMES {
        let fixture = fixtures().join(format!("quant_{}.safetensors", scheme.marker()));
        let source = Overlay {
            base: model_file(),
            over: SafetensorsFile::open(&fixture).expect("quant fixture"),
        };
        assert_eq!(source_scheme(&source, &config()).unwrap(), Some(scheme));
        let device = Default::default();
        let model: GlmModel<Cpu> = GlmModel::from_source_quantized(
            &config(),
            &source,
            &device,
            ModelOptions::default(),
            None,
        )
        .unwrap();
        let (golden, _) = tensor_f32(
            "quant_extra.safetensors",
            &format!("a_gmask.logits_{}", scheme.marker()),
        );
        let d = max_diff(&logits(&model), &golden);
        assert!(d <= tol, "{scheme} loaded checkpoint: {d}");
        // Quantizing on load gives the very same tensors as the original's checkpoint.
        let on_load = quantize_on_load(
            &model_file(),
            QuantizeOptions {
                scheme,
                tensor_parallel: None,
            },
        );
        let expected = exported_linears(&model);
        assert_eq!(expected.len(), 8 * config().num_layers);
        let got = exported_linears(&on_load);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{scheme}: quantized tensors on load vs checkpoint"
        );
        for (k, v) in got {
            assert_eq!(v.as_bytes(), expected[&k].as_bytes(), "{k}");
            assert_eq!(
                v.as_bytes(),
                source.over.load(&k).unwrap().as_bytes(),
                "{k} vs fixture"
            );
        }
        // Save with the marker, reload, same logits.
        let path = dir.join(format!("{}.safetensors", scheme.marker()));
        model.save_quantized_safetensors(&path, DType::F32).unwrap();
        assert_eq!(read_quantization_marker(&path).unwrap(), Some((scheme, 1)));
        let reloaded: GlmModel<Cpu> = GlmModel::from_source_quantized(
            &config(),
            &SafetensorsFile::open(&path).unwrap(),
            &device,
            ModelOptions::default(),
            Some(QuantizeOptions {
                scheme,
                tensor_parallel: None,
            }),
        )
        .unwrap();
        assert_eq!(max_diff(&logits(&reloaded), &logits(&model)), 0.0);
        // Asking for the other scheme is an error, not a silent re-quantization.
        let other = if scheme == QuantScheme::Int8 {
            QuantScheme::Int4
        } else {
            QuantScheme::Int8
        };
        let err = GlmModel::<Cpu>::from_source_quantized(
            &config(),
            &source,
            &device,
            ModelOptions::default(),
            Some(QuantizeOptions {
                scheme: other,
                tensor_parallel: None,
            }),
        )
        .unwrap_err();
        assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The TP=2 quantized SAT folders (`convert_tp.py --target-tp 2 --quantization-bit-width b`):
/// our per-shard quantization equals every shard bit for bit, and the merged checkpoint gives the
/// 2-process run's logits.
#[test]
fn tp2_quantized_checkpoints_are_bit_exact_and_give_the_original_logits() {
    let tol = tolerance();
    let tp_file = SafetensorsFile::open(fixtures().join("sat_tp.safetensors")).unwrap();
    for scheme in SCHEMES {
        let ckpt =
            SatCheckpoint::open(fixtures().join(format!("sat_tp2_{}", scheme.marker()))).unwrap();
        let tp = ckpt.tensor_parallel();
        assert!(tp >= 2);
        let ours = quantize_on_load(
            &model_file(),
            QuantizeOptions {
                scheme,
                tensor_parallel: Some(tp),
            },
        );
        assert_eq!(ours.quantization(), Some((scheme, tp)));
        let exported = exported_linears(&ours);
        assert_eq!(
            exported.len(),
            2 * QUANTIZED_LINEARS.len() * config().num_layers,
            "{scheme}: weights + scales"
        );
        let mut row_parallel_scales = 0;
        for (name, data) in &exported {
            // Merged tensors equal.
            let merged = ckpt.load(name).unwrap();
            assert_eq!(merged.shape, data.shape, "{name}");
            assert_eq!(merged.as_bytes(), data.as_bytes(), "{name} merged");
            // Per shard: row-parallel scales are `[tp, out]`, row r = rank r's own scales.
            let prefix = name.trim_end_matches("_scale").trim_end_matches(".weight");
            if name.ends_with("_scale") && is_row_parallel(prefix) {
                let out = data.shape[1];
                for r in 0..tp {
                    let shard = ckpt.load_shard(name, r).unwrap();
                    assert_eq!(
                        shard.as_bytes(),
                        &data.as_bytes()[r * out * 2..(r + 1) * out * 2],
                        "{name} rank {r}"
                    );
                    let (expected, _) = tensor_f32(
                        "sat_tp.safetensors",
                        &format!("tp2_{}.{name}.rank{r}", scheme.marker()),
                    );
                    let got: Vec<f32> = shard.convert::<f32>().to_vec().unwrap();
                    assert_eq!(got, expected, "{name} rank {r} vs sat_tp.safetensors");
                }
                row_parallel_scales += 1;
            }
        }
        assert_eq!(row_parallel_scales, 2 * config().num_layers);
        // The merged quantized checkpoint reproduces the 2-process run.
        let device = Default::default();
        let loaded: GlmModel<Cpu> = GlmModel::from_source_quantized(
            &config(),
            &ckpt,
            &device,
            ModelOptions::default(),
            None,
        )
        .unwrap();
        let golden = tp_file
            .load(&format!("tp2_{}.a_gmask.logits", scheme.marker()))
            .unwrap();
        let golden: Vec<f32> = golden.convert::<f32>().to_vec().unwrap();
        let d = max_diff(&logits(&loaded), &golden);
        assert!(d <= tol, "{scheme} TP=2 checkpoint logits: {d} > {tol}");
        // Quantizing the fp16 TP=2 folder on load uses its degree by default: same logits.
        let fp16 = SatCheckpoint::open(fixtures().join("sat_tp2")).unwrap();
        let from_fp16 = quantize_on_load(
            &fp16,
            QuantizeOptions {
                scheme,
                tensor_parallel: None,
            },
        );
        let d = max_diff(&logits(&from_fp16), &golden);
        assert!(
            d <= tol,
            "{scheme} quantized from sat_tp2 on load: {d} > {tol}"
        );
        // ...and TP=1 scales would not reproduce it (the per-shard effect is real).
        let tp1 = quantize_on_load(
            &fp16,
            QuantizeOptions {
                scheme,
                tensor_parallel: Some(1),
            },
        );
        assert!(
            max_diff(&logits(&tp1), &golden) > tol,
            "{scheme}: TP=1 scales match TP=2 logits"
        );
    }
}

#[test]
fn quantizing_a_float_model_equals_quantizing_on_load() {
    let device = Default::default();
    let float: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    assert_eq!(float.quantization(), None);
    let float_bytes = float.weight_bytes();
    for scheme in SCHEMES {
        let quant = QuantizeOptions {
            scheme,
            tensor_parallel: Some(2),
        };
        let q = load_model::<Cpu>(&device, ModelOptions::default())
            .quantize(quant)
            .unwrap();
        let on_load = quantize_on_load(&model_file(), quant);
        let (from_float, loaded) = (exported_linears(&q), exported_linears(&on_load));
        assert_eq!(from_float.len(), loaded.len(), "{scheme}: tensor counts");
        assert!(!from_float.is_empty());
        for ((ka, a), (kb, b)) in from_float.iter().zip(loaded.iter()) {
            assert_eq!(ka, kb);
            assert_eq!(a.as_bytes(), b.as_bytes(), "{ka}");
        }
        // Fewer bytes: linear weights at 1 or 1/2 byte per value (+ scales) instead of 4.
        let bytes = q.weight_bytes();
        assert!(bytes < float_bytes, "{scheme}: {bytes} >= {float_bytes}");
    }
}

/// The prefix in one pass, then one token at a time through the KV cache (the fused GEMV path with
/// one activation row), equals the full-sequence forward of the same quantized model.
#[test]
fn quantized_decoding_through_the_cache_matches_the_full_forward() {
    let tol = tolerance();
    let device = Default::default();
    let json = read_json("cases.json");
    let case = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "d_incremental_gmask")
        .expect("incremental case")
        .clone();
    let tokens = ints2(&case["tokens"]).concat();
    let positions = ints2(&case["position_ids"]).concat();
    let mask = mask4(&case["attention_mask"]);
    let seq = tokens.len();
    let prefix = case["context_length"].as_u64().expect("context_length") as usize - 1;
    let sub = |rows: std::ops::Range<usize>, keys: usize| GlmInput {
        batch: 1,
        seq: rows.len(),
        tokens: tokens[rows.clone()].to_vec(),
        position_ids: positions[rows.clone()].to_vec(),
        mask: rows
            .flat_map(|i| mask[i * seq..i * seq + keys].to_vec())
            .collect(),
    };
    let model = quantize_on_load(
        &model_file(),
        QuantizeOptions {
            scheme: QuantScheme::Int4,
            tensor_parallel: None,
        },
    );
    let vocab = config().vocab_size;
    let (t, p, m) = sub(0..seq, seq).to_tensors::<Cpu>(&device);
    let full = to_vec(model.forward(t, p, m).expect("forward"));
    let mut cache = model.new_cache();
    // Prefix (bidirectional block): keys = the prefix itself.
    let (t, p, m) = sub(0..prefix, prefix).to_tensors::<Cpu>(&device);
    let out = to_vec(model.forward_cached(t, p, m, &mut cache).expect("forward"));
    let d = max_diff(&out, &full[..prefix * vocab]);
    assert!(d <= tol, "prefix: {d}");
    for s in prefix..seq {
        // One row attending to keys 0..=s.
        let step = GlmInput {
            batch: 1,
            seq: 1,
            tokens: vec![tokens[s]],
            position_ids: vec![positions[s]],
            mask: vec![false],
        };
        let (t, p, _) = step.to_tensors::<Cpu>(&device);
        let m = burn::tensor::Tensor::<Cpu, 4, burn::tensor::Bool>::from_data(
            TensorData::new(mask[s * seq..s * seq + s + 1].to_vec(), [1, 1, 1, s + 1]),
            &device,
        );
        let out = to_vec(model.forward_cached(t, p, m, &mut cache).expect("forward"));
        let d = max_diff(&out, &full[s * vocab..(s + 1) * vocab]);
        assert!(d <= tol, "step {s}: {d}");
    }
}

#[test]
fn convert_checkpoint_writes_a_loadable_quantized_folder() {
    let tol = tolerance();
    let dir = tmp_dir("convert");
    // From the fixtures folder's model.safetensors (config.json is copied along).
    let input = dir.join("float");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        fixtures().join("model.safetensors"),
        input.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(fixtures().join("config.json"), input.join("config.json")).unwrap();
    for scheme in SCHEMES {
        let output = dir.join(format!("out_{}", scheme.marker()));
        let mut calls = 0;
        let report = convert_checkpoint(
            &input,
            &output,
            QuantizeOptions {
                scheme,
                tensor_parallel: None,
            },
            DType::F32,
            &mut |p| {
                calls += 1;
                assert_eq!(p.done, calls);
            },
        )
        .unwrap();
        assert_eq!(calls, report.tensors);
        assert_eq!(report.quantized, 4 * config().num_layers);
        assert!(output.join("config.json").is_file());
        assert_eq!(
            read_quantization_marker(&report.path).unwrap(),
            Some((scheme, 1))
        );
        let source = open_checkpoint(&output).unwrap();
        let model: GlmModel<Cpu> = GlmModel::from_source_quantized(
            &config(),
            source.as_ref(),
            &Default::default(),
            ModelOptions::default(),
            None,
        )
        .unwrap();
        let (golden, _) = tensor_f32(
            "quant_extra.safetensors",
            &format!("a_gmask.logits_{}", scheme.marker()),
        );
        let d = max_diff(&logits(&model), &golden);
        assert!(d <= tol, "{scheme} converted: {d}");
        // Converting the quantized output again is refused.
        let again = convert_checkpoint(
            &output,
            dir.join("again"),
            QuantizeOptions {
                scheme,
                tensor_parallel: None,
            },
            DType::F16,
            &mut |_| {},
        );
        assert!(again.is_err());
    }
    // From the fp16 TP=2 SAT folder: per-shard scales by default, equal to convert_tp.py's output.
    let output = dir.join("from_sat");
    let report = convert_checkpoint(
        fixtures().join("sat_tp2"),
        &output,
        QuantizeOptions {
            scheme: QuantScheme::Int4,
            tensor_parallel: None,
        },
        DType::F16,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.tensor_parallel, 2);
    let ours = SafetensorsFile::open(&report.path).unwrap();
    let original = SatCheckpoint::open(fixtures().join("sat_tp2_int4")).unwrap();
    // Every tensor of convert_tp.py's output (but the rotary buffer SAT never loads) is ours too.
    let wanted: Vec<String> = original
        .names()
        .into_iter()
        .filter(|n| !glm_core::weights::is_ignored_name(n))
        .collect();
    assert!(!wanted.is_empty());
    assert_eq!(ours.names(), wanted, "tensor names vs sat_tp2_int4");
    for name in ours.names() {
        assert_eq!(
            ours.load(&name).unwrap().as_bytes(),
            original.load(&name).unwrap().as_bytes(),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_are_typed_errors() {
    assert!(QuantizeOptions::from_bits(3).is_err());
    assert_eq!(
        QuantizeOptions::from_bits(4).unwrap().scheme,
        QuantScheme::Int4
    );
    // A shard count that does not divide the row-parallel input features.
    let err = GlmModel::<Cpu>::from_source_quantized(
        &config(),
        &model_file(),
        &Default::default(),
        ModelOptions::default(),
        Some(QuantizeOptions {
            scheme: QuantScheme::Int8,
            tensor_parallel: Some(7),
        }),
    )
    .unwrap_err();
    assert!(err.to_string().contains("shards"), "{err}");
}

/// The INT4 model on wgpu (CubeCL kernels inside the model) gives the original's logits, within the
/// 1e-3 the float model gets on wgpu (tests/wgpu.rs: lavapipe's transcendental functions differ).
#[cfg(feature = "wgpu")]
#[test]
fn int4_model_on_wgpu_matches_the_original() {
    use burn::backend::Wgpu;
    std::env::set_var(
        "XDG_RUNTIME_DIR",
        std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()),
    );
    let device = Default::default();
    let model: GlmModel<Wgpu> = GlmModel::from_source_quantized(
        &config(),
        &model_file(),
        &device,
        ModelOptions::default(),
        Some(QuantizeOptions {
            scheme: QuantScheme::Int4,
            tensor_parallel: None,
        }),
    )
    .unwrap();
    let (tokens, positions, mask) = case_a().to_tensors::<Wgpu>(&device);
    let ours: Vec<f32> = model
        .forward(tokens, positions, mask)
        .expect("forward")
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let (golden, _) = tensor_f32("quant_extra.safetensors", "a_gmask.logits_int4");
    let d = max_diff(&ours, &golden);
    assert!(d <= 10.0 * tolerance(), "wgpu int4 logits: {d}");
}
