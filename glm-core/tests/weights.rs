//! Weight loading: original SAT checkpoints (TP=1 and TP=2 merged), safetensors round trip, and one
//! test per kind of bad input (each must be a typed error naming the file and tensor).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{DType, TensorData};
use common::*;
use glm_core::weights::{save_safetensors, SafetensorsFile, SatCheckpoint, WeightSource};
use glm_core::{Error, GlmConfig, GlmModel, ModelOptions};

/// A fresh folder for `tag` under cargo's per-target temporary folder: emptied when made, so runs
/// never pile folders up in the system's temporary directory (tests that fail keep theirs to look
/// at until the next run).
fn tmp_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("glm-core-test-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn all_tensors(src: &dyn WeightSource) -> BTreeMap<String, TensorData> {
    src.names()
        .into_iter()
        .map(|n| {
            let d = src.load(&n).unwrap();
            (n, d)
        })
        .collect()
}

fn load_err(cfg: &GlmConfig, src: &dyn WeightSource) -> Error {
    match GlmModel::<Cpu>::from_source(cfg, src, &Default::default(), ModelOptions::default()) {
        Ok(_) => panic!("bad checkpoint accepted"),
        Err(e) => e,
    }
}

#[test]
fn sat_tp1_and_tp2_load_identical_fp16_weights() {
    let reference = model_file();
    let tp1 = SatCheckpoint::open(fixtures().join("sat_tp1")).unwrap();
    let tp2 = SatCheckpoint::open(fixtures().join("sat_tp2")).unwrap();
    assert_eq!(tp1.tensor_parallel(), 1);
    assert_eq!(tp2.tensor_parallel(), 2);
    let cfg = config();
    let specs = glm_core::weights::param_specs(&cfg);
    assert!(!specs.is_empty());
    for spec in specs {
        let a = tp1.load(&spec.name).unwrap();
        let b = tp2.load(&spec.name).unwrap();
        assert_eq!(a.dtype, DType::F16, "{}", spec.name);
        assert_eq!(a.shape.to_vec(), spec.shape, "{}", spec.name);
        assert_eq!(b.shape.to_vec(), spec.shape, "{}", spec.name);
        assert_eq!(
            a.as_bytes(),
            b.as_bytes(),
            "{}: tp2 merge differs from tp1",
            spec.name
        );
        let want = reference
            .load(&spec.name)
            .unwrap()
            .convert_dtype(DType::F16);
        assert_eq!(
            a.as_bytes(),
            want.as_bytes(),
            "{}: not f16(model.safetensors)",
            spec.name
        );
    }
}

#[test]
fn sat_checkpoints_give_the_recorded_logits() {
    let device = Default::default();
    let cfg = config();
    let tol = sat_tp_tolerance();
    let cases = read_json("cases.json");
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "a_gmask")
        .expect("a_gmask");
    let tokens = ints2(&case["tokens"]);
    let input = glm_core::blank::GlmInput {
        batch: 1,
        seq: tokens[0].len(),
        tokens: tokens.concat(),
        position_ids: ints2(&case["position_ids"]).concat(),
        mask: mask4(&case["attention_mask"]),
    };
    for (folder, key) in [
        ("sat_tp1", "tp1_fp16.a_gmask.logits"),
        ("sat_tp2", "tp2_fp16.a_gmask.logits"),
    ] {
        let src = SatCheckpoint::open(fixtures().join(folder)).unwrap();
        let model =
            GlmModel::<Cpu>::from_source(&cfg, &src, &device, ModelOptions::default()).unwrap();
        let (t, p, m) = input.to_tensors::<Cpu>(&device);
        let ours = to_vec(model.forward(t, p, m).expect("forward"));
        let (golden, shape) = tensor_f32("sat_tp.safetensors", key);
        assert_eq!(shape, vec![1, input.seq, cfg.vocab_size], "{key}");
        assert_eq!(ours.len(), golden.len(), "{folder}: logits size");
        let d = ours
            .iter()
            .zip(&golden)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= tol, "{folder}: logits differ by {d} > {tol}");
    }
}

#[test]
fn safetensors_save_load_round_trip_in_every_dtype() {
    let device = Default::default();
    let model: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let dir = tmp_dir("roundtrip");
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let path = dir.join(format!("m-{dtype:?}.safetensors"));
        model.save_safetensors(&path, dtype).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(
            file.dtype("transformer.word_embeddings.weight"),
            Some(dtype)
        );
        // load the converted file into an f32 model: equal to the original rounded to `dtype`.
        let back =
            GlmModel::<Cpu>::from_source(model.config(), &file, &device, ModelOptions::default())
                .unwrap();
        let tensors = back.named_tensors().unwrap();
        assert_eq!(
            tensors.len(),
            model_file().names().len(),
            "{dtype:?}: tensors loaded back"
        );
        for (name, data) in tensors {
            let want = model_file()
                .load(&name)
                .unwrap()
                .convert_dtype(dtype)
                .convert_dtype(DType::F32);
            assert_eq!(data.as_bytes(), want.as_bytes(), "{name} via {dtype:?}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes the fixture model with `edit` applied to its tensor map.
fn write_variant(tag: &str, edit: impl FnOnce(&mut BTreeMap<String, TensorData>)) -> PathBuf {
    let mut tensors = all_tensors(&model_file());
    edit(&mut tensors);
    let path = tmp_dir(tag).join("model.safetensors");
    save_safetensors(&path, &tensors, None).unwrap();
    path
}

#[test]
fn missing_tensor_is_named() {
    let cfg = config();
    let path = write_variant("missing", |t| {
        t.remove("transformer.layers.1.mlp.dense_4h_to_h.bias");
    });
    let e = load_err(&cfg, &SafetensorsFile::open(&path).unwrap());
    assert!(
        matches!(&e, Error::MissingTensor { tensor, file } if tensor == "transformer.layers.1.mlp.dense_4h_to_h.bias" && file == &path),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"));
}

#[test]
fn unexpected_tensor_is_named() {
    let cfg = config();
    let path = write_variant("unexpected", |t| {
        t.insert(
            "transformer.extra.weight".into(),
            TensorData::new(vec![0f32; 4], [4]),
        );
    });
    let e = load_err(&cfg, &SafetensorsFile::open(&path).unwrap());
    assert!(
        matches!(&e, Error::UnexpectedTensor { tensor, .. } if tensor == "transformer.extra.weight"),
        "{e}"
    );
}

#[test]
fn inv_freq_buffers_are_ignored() {
    let cfg = config();
    let path = write_variant("invfreq", |t| {
        t.insert(
            "transformer.layers.0.attention.rotary_emb.inv_freq".into(),
            TensorData::new(vec![0f32; 4], [4]),
        );
    });
    GlmModel::<Cpu>::from_source(
        &cfg,
        &SafetensorsFile::open(&path).unwrap(),
        &Default::default(),
        ModelOptions::default(),
    )
    .unwrap();
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let cfg = config();
    let name = "transformer.layers.0.attention.dense.weight";
    let path = write_variant("shape", |t| {
        t.insert(name.into(), TensorData::new(vec![0f32; 6], [2, 3]));
    });
    let e = load_err(&cfg, &SafetensorsFile::open(&path).unwrap());
    match &e {
        Error::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, name);
            assert_eq!(expected, &vec![cfg.hidden_size, cfg.hidden_size]);
            assert_eq!(found, &vec![2, 3]);
        }
        other => panic!("wrong error {other}"),
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let cfg = config();
    let name = "transformer.final_layernorm.bias";
    let path = write_variant("dtype", |t| {
        t.insert(
            name.into(),
            TensorData::new(vec![0i32; cfg.hidden_size], [cfg.hidden_size]),
        );
    });
    let e = load_err(&cfg, &SafetensorsFile::open(&path).unwrap());
    assert!(
        matches!(&e, Error::UnsupportedDtype { tensor, .. } if tensor == name),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_files_are_rejected() {
    let src = std::fs::read(fixtures().join("model.safetensors")).unwrap();
    let dir = tmp_dir("corrupt");
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &src[..src.len() / 2]).unwrap();
    assert!(
        matches!(SafetensorsFile::open(&truncated), Err(Error::CorruptFile { file, .. }) if file == truncated)
    );
    let garbage = dir.join("garbage.safetensors");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, bytes).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&garbage),
        Err(Error::CorruptFile { .. })
    ));
    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, [1u8, 2, 3]).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&tiny),
        Err(Error::CorruptFile { .. })
    ));
    assert!(matches!(
        SafetensorsFile::open(dir.join("absent.safetensors")),
        Err(Error::Io { .. })
    ));
    // A corrupt torch shard in a SAT folder.
    let sat = dir.join("sat");
    std::fs::create_dir_all(sat.join("7")).unwrap();
    std::fs::write(sat.join("latest"), "7\n").unwrap();
    std::fs::write(sat.join("7/mp_rank_00_model_states.pt"), &src[..1000]).unwrap();
    let e = SatCheckpoint::open(&sat).unwrap_err();
    assert!(
        matches!(&e, Error::CorruptFile { file, .. } if file.ends_with("mp_rank_00_model_states.pt")),
        "{e}"
    );
    std::fs::remove_file(sat.join("7/mp_rank_00_model_states.pt")).unwrap();
    assert!(matches!(SatCheckpoint::open(&sat), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_weights_mismatch_is_reported() {
    let mut cfg = config();
    cfg.num_layers += 1;
    let e = load_err(&cfg, &model_file());
    assert!(
        matches!(&e, Error::ConfigMismatch { reason, .. } if reason.contains("layers")),
        "{e}"
    );
    let mut cfg = config();
    cfg.vocab_size += 8;
    let e = load_err(&cfg, &model_file());
    assert!(
        matches!(&e, Error::ShapeMismatch { tensor, .. } if tensor == "transformer.word_embeddings.weight"),
        "{e}"
    );
}

#[test]
fn bad_config_files_are_typed_errors() {
    let dir = tmp_dir("cfg");
    let p = dir.join("config.json");
    std::fs::write(&p, "{\"num_layers\": 2, \"hidden_size\": 64").unwrap();
    assert!(matches!(
        GlmConfig::from_file(&p),
        Err(Error::ConfigJson { .. })
    ));
    std::fs::write(&p, r#"{"num_layers":2,"hidden_size":64,"num_attention_heads":5,"vocab_size":10,"max_sequence_length":8}"#).unwrap();
    assert!(matches!(
        GlmConfig::from_file(&p),
        Err(Error::InvalidConfig {
            field: "num_attention_heads",
            ..
        })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn glm_130b_parameter_count_matches_the_spec() {
    // Spec §1.1: "Total 128,697,794,560"; linear weights alone 126,835,752,960.
    let c = GlmConfig::glm_130b();
    assert_eq!(c.num_parameters(), 128_697_794_560);
    let linear: u64 = glm_core::weights::param_specs(&c)
        .iter()
        .filter(|s| s.kind == glm_core::weights::ParamKind::LinearWeight)
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(linear, 126_835_752_960);
}

/// `glm init-random` and `glm quantize` stream matrices a block of rows at a time
/// (`WeightSource::load_rows`); the file must be exactly what quantizing / converting each whole
/// tensor gives, for matrices of several row blocks and a tensor-parallel degree of 2.
#[test]
fn streamed_writes_equal_whole_tensor_quantization_and_conversion() {
    use glm_core::quantized::{is_row_parallel, QuantizeOptions};
    use glm_core::weights::convert::stream_safetensors;
    use glm_core::weights::RandomSource;
    use glm_quant::{QuantScheme, QuantizedMatrix};

    // Linears of 5–16 M elements: each is written in several row blocks of 4 M elements with a
    // partial last one.
    let mut cfg = GlmConfig::small();
    cfg.num_layers = 1;
    cfg.hidden_size = 2304;
    cfg.num_attention_heads = 12;
    cfg.inner_hidden_size = Some(3000);
    let src = RandomSource::new(&cfg, 3).unwrap();
    let dir = tmp_dir("streamed");
    for scheme in [QuantScheme::Int4, QuantScheme::Int8] {
        let quant = QuantizeOptions {
            scheme,
            tensor_parallel: Some(2),
        };
        let from_random = dir.join(format!("random-{scheme}.safetensors"));
        stream_safetensors(&src, &from_random, Some(quant), DType::F16, &mut |_| {}).unwrap();
        // The same weights through a float file (streamed from its memory map) give the same file.
        let float = dir.join("float.safetensors");
        stream_safetensors(&src, &float, None, DType::F32, &mut |_| {}).unwrap();
        let from_file = dir.join(format!("file-{scheme}.safetensors"));
        let float_src = SafetensorsFile::open(&float).unwrap();
        stream_safetensors(&float_src, &from_file, Some(quant), DType::F16, &mut |_| {}).unwrap();
        assert!(
            std::fs::read(&from_random).unwrap() == std::fs::read(&from_file).unwrap(),
            "{scheme}: random source and float file quantize differently"
        );
        let file = SafetensorsFile::open(&from_random).unwrap();
        let mut linears = 0;
        for name in src.names() {
            let whole = src.load(&name).unwrap();
            let Some(prefix) = name.strip_suffix(".weight").filter(|p| {
                glm_core::quantized::QUANTIZED_LINEARS
                    .iter()
                    .any(|l| p.ends_with(l))
            }) else {
                // Float tensors: the whole tensor converted to f16.
                let want = whole.convert_dtype(DType::F16);
                assert_eq!(
                    file.load(&name).unwrap().as_bytes(),
                    want.as_bytes(),
                    "{name}"
                );
                continue;
            };
            let shards = if is_row_parallel(prefix) { 2 } else { 1 };
            let m = QuantizedMatrix::quantize(&name, &whole, shards, scheme).unwrap();
            assert!(whole.num_elements() > (1 << 22), "{name} fits one block");
            assert_eq!(file.load(&name).unwrap().as_bytes(), m.bytes(), "{name}");
            let scale = file
                .load(&format!("{name}{}", glm_quant::scheme::SCALE_SUFFIX))
                .unwrap();
            assert_eq!(scale.as_bytes(), m.scale_data().as_bytes(), "{name} scales");
            linears += 1;
        }
        assert_eq!(linears, 4 * cfg.num_layers);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
