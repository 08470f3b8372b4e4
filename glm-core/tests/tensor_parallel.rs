//! Tensor parallelism against the original: the TP=2 SAT folders loaded per rank reproduce the
//! real two-process run's logits (fp16, int8, int4), every dividing degree reproduces
//! `cases.json`, uneven vocabularies follow `torch.chunk`, and a failing rank stops the group with
//! a typed error instead of a hang. Degrees, sizes and cases come from the fixture files.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use glm_core::parallel::{chunk_range, EmbeddingLayout, TensorParallel, TpLayout};
use glm_core::weights::SatCheckpoint;
use glm_core::{Error, ForwardOptions, GlmConfig, GlmModel, ModelOptions};

fn logits_tolerance() -> f32 {
    read_json("cases.json")["tolerance"]["logits_max_abs"]
        .as_f64()
        .expect("cases.json tolerance.logits_max_abs") as f32
}

/// The degrees from 1 to 4 that the fixture config splits over (vocabulary-parallel).
fn dividing_degrees(config: &GlmConfig) -> Vec<usize> {
    (1..=4)
        .filter(|&n| TpLayout::new(n).check(config).is_ok())
        .collect()
}

#[test]
fn tp2_sat_folders_loaded_per_rank_give_the_two_process_logits() {
    let json = read_json("sat_tp.json");
    let tol = sat_tp_tolerance();
    let input = case_input(&sat_tp_case());
    let cfg = config();
    let device = Default::default();
    let keys: Vec<String> = json["logits"]["keys"]
        .as_object()
        .expect("sat_tp.json logits.keys")
        .keys()
        .filter(|k| k.starts_with("tp2_"))
        .cloned()
        .collect();
    assert!(keys.len() >= 3, "fp16, int8 and int4 TP=2 logits: {keys:?}");
    for key in keys {
        let variant = key.split('.').next().expect("variant");
        let folder = match variant.strip_prefix("tp2_").expect("tp2_") {
            "fp16" => "sat_tp2".to_string(),
            q => format!("sat_tp2_{q}"),
        };
        let ckpt = SatCheckpoint::open(fixtures().join(&folder)).expect("SAT folder");
        let world = ckpt.tensor_parallel();
        assert!(world > 1, "{folder} has {world} shard(s)");
        let group = TensorParallel::<Cpu>::from_source(
            &cfg,
            &ckpt,
            &[device],
            ModelOptions::default(),
            None,
            TpLayout::new(world),
        )
        .expect("load per rank");
        // Each rank holds its own file's embedding rows (no merge).
        for (r, rank) in group.ranks().iter().enumerate() {
            let stored = ckpt
                .load_shard("transformer.word_embeddings.weight", r)
                .expect("stored shard")
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32");
            assert_eq!(
                to_vec(rank.word_embeddings.val()),
                stored,
                "{folder} rank {r} embedding is its mp_rank file's"
            );
        }
        let ours = group_logits(&group, &input);
        let (golden, shape) = tensor_f32("sat_tp.safetensors", &key);
        assert_eq!(shape, vec![input.batch, input.seq, cfg.vocab_size], "{key}");
        let d = max_diff_valid(
            &ours,
            &golden,
            input.batch,
            input.seq,
            cfg.vocab_size,
            &[input.seq],
        );
        assert!(
            d <= tol,
            "{folder} TP={world}: logits differ by {d} > {tol}"
        );
    }
}

#[test]
fn every_dividing_degree_reproduces_the_golden_cases() {
    let cfg = config();
    let tol = logits_tolerance();
    let device = Default::default();
    let cases = read_json("cases.json");
    let degrees = dividing_degrees(&cfg);
    assert!(
        degrees.len() >= 2,
        "the fixture config splits over {degrees:?}"
    );
    let file = model_file();
    for world in degrees {
        for embedding in [EmbeddingLayout::VocabParallel, EmbeddingLayout::Replicated] {
            let layout = TpLayout::new(world).with_embedding(embedding);
            let group = TensorParallel::<Cpu>::from_source(
                &cfg,
                &file,
                &[device],
                ModelOptions::default(),
                None,
                layout,
            )
            .expect("sliced load");
            for case in cases["cases"].as_array().expect("cases") {
                let input = case_input(case);
                let ours = group_logits(&group, &input);
                let key = case["tensors"]["logits"]["key"].as_str().expect("key");
                let (golden, _) = tensor_f32("cases.safetensors", key);
                let valid: Vec<usize> = case["valid_lengths"]
                    .as_array()
                    .expect("valid_lengths")
                    .iter()
                    .map(|v| v.as_u64().expect("length") as usize)
                    .collect();
                let d = max_diff_valid(
                    &ours,
                    &golden,
                    input.batch,
                    input.seq,
                    cfg.vocab_size,
                    &valid,
                );
                assert!(
                    d <= tol,
                    "{} TP={world} {embedding:?}: {d} > {tol}",
                    case["name"]
                );
            }
        }
    }
}

#[test]
fn quantize_on_load_per_rank_equals_the_original_per_shard_scales() {
    // convert_tp.py quantizes each TP shard on its own; ranks quantizing their own slice of the
    // fp16 TP=1 folder must reproduce the quantized TP=2 two-process logits.
    let tol = sat_tp_tolerance();
    let case = sat_tp_case();
    let case_name = case["name"].as_str().expect("name");
    let input = case_input(&case);
    let cfg = config();
    let tp1 = SatCheckpoint::open(fixtures().join("sat_tp1")).expect("sat_tp1");
    let world = SatCheckpoint::open(fixtures().join("sat_tp2"))
        .expect("sat_tp2")
        .tensor_parallel();
    for bits in [8u32, 4] {
        let quant = glm_core::quantized::QuantizeOptions::from_bits(bits).expect("bits");
        let group = TensorParallel::<Cpu>::from_source(
            &cfg,
            &tp1,
            &[Default::default()],
            ModelOptions::default(),
            Some(quant),
            TpLayout::new(world),
        )
        .expect("quantize on load per rank");
        let ours = group_logits(&group, &input);
        let (golden, _) = tensor_f32(
            "sat_tp.safetensors",
            &format!("tp2_int{bits}.{case_name}.logits"),
        );
        let d = max_diff_valid(&ours, &golden, 1, input.seq, cfg.vocab_size, &[input.seq]);
        assert!(d <= tol, "int{bits} quantized per rank: {d} > {tol}");
    }
}

#[test]
fn an_odd_vocabulary_splits_as_torch_chunk_and_matches_one_device() {
    let mut cfg = config();
    // One more row than the fixture vocabulary when it is even: an odd size that 2 does not divide.
    if cfg.vocab_size.is_multiple_of(2) {
        cfg.vocab_size += 1;
    }
    let world = 2;
    let device = Default::default();
    let single = GlmModel::<Cpu>::random(&cfg, &device, ModelOptions::default(), 3).expect("model");
    let group = TensorParallel::<Cpu>::random(
        &cfg,
        &[device],
        ModelOptions::default(),
        3,
        TpLayout::new(world),
    )
    .expect("group");
    for (r, rank) in group.ranks().iter().enumerate() {
        let rows = chunk_range(cfg.vocab_size, world, r).expect("chunk");
        assert_eq!(rank.word_embeddings.val().dims()[0], rows.len(), "rank {r}");
    }
    let cases = read_json("cases.json");
    let input = case_input(&cases["cases"][0]);
    let want = to_vec(
        single
            .forward_input(&input, ForwardOptions::default())
            .expect("forward")
            .logits,
    );
    let ours = group_logits(&group, &input);
    let d = max_diff_valid(
        &ours,
        &want,
        input.batch,
        input.seq,
        cfg.vocab_size,
        &[input.seq],
    );
    assert!(
        d <= logits_tolerance(),
        "odd vocabulary TP=2 vs one device: {d}"
    );
}

#[test]
fn degrees_that_do_not_divide_are_typed_errors() {
    let cfg = config();
    let heads = cfg.num_attention_heads;
    let err = TensorParallel::<Cpu>::from_source(
        &cfg,
        &model_file(),
        &[Default::default()],
        ModelOptions::default(),
        None,
        TpLayout::new(heads + 1),
    )
    .expect_err("more ranks than heads");
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if *field == "num_attention_heads"),
        "{err}"
    );
    let err = TpLayout::new(0).check(&cfg).expect_err("degree 0");
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    // A SAT folder of one degree loaded at another: the scales of a quantized folder were computed
    // per shard for its own degree.
    let int8 = SatCheckpoint::open(fixtures().join("sat_tp2_int8")).expect("sat_tp2_int8");
    if let Some(&other) = dividing_degrees(&cfg)
        .iter()
        .find(|&&n| n > 1 && n != int8.tensor_parallel())
    {
        let err = TensorParallel::<Cpu>::from_source(
            &cfg,
            &int8,
            &[Default::default()],
            ModelOptions::default(),
            None,
            TpLayout::new(other),
        )
        .expect_err("per-shard scales of another degree");
        assert!(err.to_string().contains("weight_scale"), "{err}");
    }
}

/// Runs `f` on a helper thread and fails the test if it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the tensor-parallel group hung instead of failing")
}

#[test]
fn a_failing_rank_stops_every_rank_with_a_typed_error() {
    let cfg = config();
    let cases = read_json("cases.json");
    let input = case_input(&cases["cases"][0]);
    let world = *dividing_degrees(&cfg).last().expect("a degree");
    assert!(world > 1);
    let group = std::sync::Arc::new(
        TensorParallel::<Cpu>::from_source(
            &cfg,
            &model_file(),
            &[Default::default()],
            ModelOptions::default(),
            None,
            TpLayout::new(world),
        )
        .expect("group"),
    );
    let failing = world - 1;
    for panics in [true, false] {
        let (g, inp) = (group.clone(), input.clone());
        let result = within(Duration::from_secs(120), move || {
            g.run(
                |rank0| {
                    // Rank 0 keeps going: its second forward waits on the failed rank.
                    for _ in 0..3 {
                        rank0.forward_input(&inp, ForwardOptions::default())?;
                    }
                    Ok(())
                },
                |rank| {
                    rank.forward_input(&inp, ForwardOptions::default())?;
                    let r = rank.tensor_parallel_rank().expect("rank").dims().rank;
                    if r == failing {
                        if panics {
                            panic!("injected failure on rank {r}");
                        }
                        return Err(Error::Device(format!("injected device error on rank {r}")));
                    }
                    for _ in 0..2 {
                        rank.forward_input(&inp, ForwardOptions::default())?;
                    }
                    Ok(())
                },
            )
        });
        match result {
            Err(Error::TensorParallel { rank, reason }) => {
                assert_eq!(rank, failing, "{reason}");
                assert!(reason.contains("injected"), "{reason}");
            }
            other => panic!("expected a tensor-parallel error, got {other:?}"),
        }
        // The group works again afterwards.
        let (g, inp) = (group.clone(), input.clone());
        let ok = within(Duration::from_secs(120), move || {
            g.run(
                |rank0| {
                    rank0
                        .forward_input(&inp, ForwardOptions::default())
                        .map(drop)
                },
                |rank| {
                    rank.forward_input(&inp, ForwardOptions::default())
                        .map(drop)
                },
            )
        });
        assert!(ok.is_ok(), "{ok:?}");
    }
}
