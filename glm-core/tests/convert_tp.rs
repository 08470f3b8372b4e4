//! SAT folders written at any tensor-parallel degree (`write_sat_checkpoint`, GLM-130B
//! `tools/convert_tp.py`): the fixtures' `sat_tp1`, `sat_tp2`, `sat_tp2_int8` and `sat_tp2_int4`
//! reproduced tensor for tensor from `model.safetensors`, conversions between degrees and formats
//! that round-trip bit for bit, and typed errors for what cannot be converted. Folders, degrees
//! and iterations are read from the fixtures (`sat_tp.json`).

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use glm_core::parallel::TpLayout;
use glm_core::quantized::{source_scheme, QuantScheme};
use glm_core::weights::convert::stream_safetensors;
use glm_core::weights::tp_convert::{write_sat_checkpoint, SatWriteOptions};
use glm_core::weights::{SafetensorsFile, SatCheckpoint, TorchShard, WeightSource};
use glm_core::Error;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-convert-tp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp folder");
    d
}

/// The fixture SAT folders named by sat_tp.json.
fn fixture_folders() -> Vec<String> {
    let json = read_json("sat_tp.json");
    let folders: Vec<String> = json["folders"]
        .as_object()
        .expect("sat_tp.json folders")
        .keys()
        .cloned()
        .collect();
    assert!(folders.len() >= 4, "{folders:?}");
    folders
}

/// Asserts that two SAT folders hold the same ranks, keys (in order) and tensors, byte for byte.
fn assert_same_sat(ours: &Path, theirs: &Path) {
    let a = SatCheckpoint::open(ours).expect("ours");
    let b = SatCheckpoint::open(theirs).expect("theirs");
    assert_eq!(a.iteration(), b.iteration(), "{}", ours.display());
    assert_eq!(
        a.tensor_parallel(),
        b.tensor_parallel(),
        "{}",
        ours.display()
    );
    for rank in 0..b.tensor_parallel() {
        let file = |dir: &Path, it: &str| {
            TorchShard::open(
                dir.join(it)
                    .join(format!("mp_rank_{rank:02}_model_states.pt")),
                Some("module"),
            )
            .expect("shard")
        };
        let (sa, sb) = (file(ours, a.iteration()), file(theirs, b.iteration()));
        assert_eq!(
            sa.names(),
            sb.names(),
            "rank {rank} keys of {}",
            ours.display()
        );
        for name in sb.names() {
            let (x, y) = (
                sa.load(&name).expect("ours"),
                sb.load(&name).expect("theirs"),
            );
            assert_eq!(x.dtype, y.dtype, "{name} rank {rank}");
            assert_eq!(x.shape, y.shape, "{name} rank {rank}");
            assert!(
                x.as_bytes() == y.as_bytes(),
                "{name} rank {rank}: bytes differ ({})",
                ours.display()
            );
        }
        sa.verify().expect("our zip CRCs");
    }
}

fn options_like(folder: &Path) -> SatWriteOptions {
    let ckpt = SatCheckpoint::open(folder).expect("fixture folder");
    SatWriteOptions {
        tensor_parallel: ckpt.tensor_parallel(),
        quantization: source_scheme(&ckpt, &config()).expect("scheme"),
        float_dtype: DType::F16,
        iteration: Some(ckpt.iteration().to_string()),
    }
}

#[test]
fn model_safetensors_converts_to_every_fixture_folder() {
    let work = tmp("from-st");
    let cfg = config();
    for folder in fixture_folders() {
        let theirs = fixtures().join(&folder);
        let ours = work.join(&folder);
        let report = write_sat_checkpoint(
            &model_file(),
            &cfg,
            &ours,
            &options_like(&theirs),
            &mut |_| {},
        )
        .expect("convert");
        assert_eq!(report.shards.len(), options_like(&theirs).tensor_parallel);
        assert_same_sat(&ours, &theirs);
    }
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn sat_folders_convert_between_degrees_bit_for_bit() {
    let work = tmp("between");
    let cfg = config();
    let tp1 = fixtures().join("sat_tp1");
    let tp2 = fixtures().join("sat_tp2");
    let degree = |p: &Path| SatCheckpoint::open(p).expect("folder").tensor_parallel();
    // Merge and split: 2 -> 1 and 1 -> 2 give the other fixture.
    for (from, to) in [(&tp2, &tp1), (&tp1, &tp2)] {
        let out = work.join(format!("{}-to-{}", degree(from), degree(to)));
        let src = SatCheckpoint::open(from).expect("source");
        write_sat_checkpoint(&src, &cfg, &out, &options_like(to), &mut |_| {}).expect("convert");
        assert_same_sat(&out, to);
    }
    // N -> M -> N for every other degree the config divides.
    for m in (1..=4).filter(|&m| TpLayout::new(m).check(&cfg).is_ok() && m != degree(&tp2)) {
        let mid = work.join(format!("mid-{m}"));
        let src = SatCheckpoint::open(&tp2).expect("source");
        let mut options = options_like(&tp2);
        options.tensor_parallel = m;
        write_sat_checkpoint(&src, &cfg, &mid, &options, &mut |_| {}).expect("to M");
        assert_eq!(degree(&mid), m);
        let back = work.join(format!("back-{m}"));
        let mid_src = SatCheckpoint::open(&mid).expect("mid");
        write_sat_checkpoint(&mid_src, &cfg, &back, &options_like(&tp2), &mut |_| {})
            .expect("back to N");
        assert_same_sat(&back, &tp2);
    }
    // A quantized folder at its own degree is copied as it is.
    for folder in fixture_folders() {
        let theirs = fixtures().join(&folder);
        let src = SatCheckpoint::open(&theirs).expect("source");
        if source_scheme(&src, &cfg).expect("scheme").is_none() {
            continue;
        }
        let out = work.join(format!("copy-{folder}"));
        write_sat_checkpoint(&src, &cfg, &out, &options_like(&theirs), &mut |_| {}).expect("copy");
        assert_same_sat(&out, &theirs);
    }
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn sat_and_safetensors_round_trip() {
    let work = tmp("formats");
    let cfg = config();
    // SAT (f16, TP=2) -> safetensors -> SAT: the original folder again.
    let tp2 = fixtures().join("sat_tp2");
    let st = work.join("model.safetensors");
    stream_safetensors(
        &SatCheckpoint::open(&tp2).expect("sat_tp2"),
        &st,
        None,
        DType::F16,
        &mut |_| {},
    )
    .expect("to safetensors");
    let back = work.join("sat");
    write_sat_checkpoint(
        &SafetensorsFile::open(&st).expect("written file"),
        &cfg,
        &back,
        &options_like(&tp2),
        &mut |_| {},
    )
    .expect("to SAT");
    assert_same_sat(&back, &tp2);
    // safetensors (f32) -> SAT f32 at every dividing degree -> safetensors: the same tensors.
    let original = model_file();
    for m in (1..=4).filter(|&m| TpLayout::new(m).check(&cfg).is_ok()) {
        let sat = work.join(format!("f32-tp{m}"));
        let options = SatWriteOptions {
            tensor_parallel: m,
            quantization: None,
            float_dtype: DType::F32,
            iteration: None,
        };
        write_sat_checkpoint(&original, &cfg, &sat, &options, &mut |_| {}).expect("to SAT");
        let sat = SatCheckpoint::open(&sat).expect("written folder");
        assert_eq!(sat.iteration(), "release");
        let again = work.join(format!("again-{m}.safetensors"));
        stream_safetensors(&sat, &again, None, DType::F32, &mut |_| {}).expect("back");
        let again = SafetensorsFile::open(&again).expect("file");
        let names = original.names();
        assert_eq!(again.names().len(), names.len(), "TP={m}");
        for name in names {
            let (x, y) = (
                original.load(&name).expect("x"),
                again.load(&name).expect("y"),
            );
            assert_eq!(x.shape, y.shape, "{name} TP={m}");
            assert!(x.as_bytes() == y.as_bytes(), "{name} TP={m}");
        }
    }
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn what_cannot_be_converted_is_a_typed_error_and_folders_never_mix() {
    let work = tmp("errors");
    let cfg = config();
    let float = |tp: usize| SatWriteOptions {
        tensor_parallel: tp,
        quantization: None,
        float_dtype: DType::F16,
        iteration: None,
    };
    let err = write_sat_checkpoint(
        &model_file(),
        &cfg,
        &work.join("x"),
        &float(cfg.num_attention_heads + 1),
        &mut |_| {},
    )
    .expect_err("heads do not split");
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    // A quantized folder: not as float, not as the other scheme, not at another degree.
    let int8 = SatCheckpoint::open(fixtures().join("sat_tp2_int8")).expect("int8");
    let err = write_sat_checkpoint(
        &int8,
        &cfg,
        &work.join("y"),
        &float(int8.tensor_parallel()),
        &mut |_| {},
    )
    .expect_err("dequantizing");
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    let mut int4 = float(int8.tensor_parallel());
    int4.quantization = Some(QuantScheme::Int4);
    let err = write_sat_checkpoint(&int8, &cfg, &work.join("z"), &int4, &mut |_| {})
        .expect_err("other scheme");
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    let mut other = float(1);
    other.quantization = Some(QuantScheme::Int8);
    let err = write_sat_checkpoint(&int8, &cfg, &work.join("w"), &other, &mut |_| {})
        .expect_err("per-shard scales of another degree");
    assert!(err.to_string().contains("weight_scale"), "{err}");
    // Writing a smaller degree into a folder of a larger one leaves no stale rank behind.
    let out = work.join("reused");
    let degrees: Vec<usize> = (1..=4)
        .filter(|&m| TpLayout::new(m).check(&cfg).is_ok())
        .collect();
    let (small, large) = (degrees[0], *degrees.last().expect("degrees"));
    assert!(large > small);
    for m in [large, small] {
        write_sat_checkpoint(&model_file(), &cfg, &out, &float(m), &mut |_| {}).expect("write");
    }
    let reused = SatCheckpoint::open(&out).expect("reused folder");
    assert_eq!(reused.tensor_parallel(), small);
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn an_odd_vocabulary_is_written_merged_and_run_per_rank() {
    use glm_core::parallel::{chunk_range, TensorParallel};
    use glm_core::{ForwardOptions, GlmModel, ModelOptions};
    let work = tmp("odd");
    let mut cfg = config();
    if cfg.vocab_size.is_multiple_of(2) {
        cfg.vocab_size += 1;
    }
    let world = 2;
    let source = glm_core::weights::RandomSource::new(&cfg, 5).expect("random");
    let options = SatWriteOptions {
        tensor_parallel: world,
        quantization: None,
        float_dtype: DType::F32,
        iteration: None,
    };
    write_sat_checkpoint(&source, &cfg, &work, &options, &mut |_| {}).expect("write");
    let ckpt = SatCheckpoint::open(&work).expect("folder");
    let name = "transformer.word_embeddings.weight";
    for rank in 0..world {
        let rows = ckpt.load_shard(name, rank).expect("shard").shape[0];
        assert_eq!(
            Some(rows),
            chunk_range(cfg.vocab_size, world, rank).map(|r| r.len())
        );
    }
    // Merged: the drawn embedding again.
    assert_eq!(ckpt.shape(name), source.shape(name));
    assert!(
        ckpt.load(name).expect("merged").as_bytes() == source.load(name).expect("drawn").as_bytes()
    );
    // Per rank and merged on one device: the same logits.
    let device = Default::default();
    let single = GlmModel::<Cpu>::from_source(&cfg, &ckpt, &device, ModelOptions::default())
        .expect("merged");
    let group = TensorParallel::<Cpu>::from_source(
        &cfg,
        &ckpt,
        &[device],
        ModelOptions::default(),
        None,
        TpLayout::new(world),
    )
    .expect("per rank");
    let cases = read_json("cases.json");
    let input = case_input(&cases["cases"][0]);
    let want = to_vec(
        single
            .forward_input(&input, ForwardOptions::default())
            .expect("f")
            .logits,
    );
    let got = group_logits(&group, &input);
    let tol = cases["tolerance"]["logits_max_abs"].as_f64().expect("tol") as f32;
    let d = max_diff_valid(&got, &want, 1, input.seq, cfg.vocab_size, &[input.seq]);
    assert!(d <= tol, "{d}");
    std::fs::remove_dir_all(&work).ok();
}

/// A quantized SAT folder to safetensors (integer weights, per-shard scales and the marker as
/// stored) and back: the same folder, byte for byte; the safetensors file loads as the same model.
#[test]
fn quantized_sat_folders_round_trip_through_safetensors() {
    use glm_core::{ForwardOptions, GlmModel, ModelOptions};
    let work = tmp("quant-st");
    let cfg = config();
    for folder in fixture_folders() {
        let theirs = fixtures().join(&folder);
        let sat = SatCheckpoint::open(&theirs).expect("folder");
        let Some(scheme) = source_scheme(&sat, &cfg).expect("scheme") else {
            continue;
        };
        let st = work.join(format!("{folder}.safetensors"));
        stream_safetensors(&sat, &st, None, DType::F16, &mut |_| {}).expect("to safetensors");
        let marker = glm_core::weights::convert::read_quantization_marker(&st).expect("marker");
        assert_eq!(marker, Some((scheme, sat.tensor_parallel())), "{folder}");
        let file = SafetensorsFile::open(&st).expect("file");
        let back = work.join(format!("{folder}-back"));
        write_sat_checkpoint(&file, &cfg, &back, &options_like(&theirs), &mut |_| {})
            .expect("back to SAT");
        assert_same_sat(&back, &theirs);
        // Loaded from either, the same logits.
        let device = Default::default();
        let input = case_input(&sat_tp_case());
        let logits = |src: &dyn WeightSource| {
            let m = GlmModel::<Cpu>::from_source_quantized(
                &cfg,
                src,
                &device,
                ModelOptions::default(),
                None,
            )
            .expect("load");
            to_vec(
                m.forward_input(&input, ForwardOptions::default())
                    .expect("forward")
                    .logits,
            )
        };
        assert_eq!(logits(&sat), logits(&file), "{folder}");
    }
    std::fs::remove_dir_all(&work).ok();
}
