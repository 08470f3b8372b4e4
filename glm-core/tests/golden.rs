//! Golden tests against the ORIGINAL implementation (SAT 0.2.12 `GLM130B` + GLM-130B repo):
//! every case of `cases.json`, rotary tables, KV-cache steps and the blank-infilling builder.

mod common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::*;
use glm_core::blank::{BlankInput, GlmInput};
use glm_core::rotary::{RotaryPrecision, RotaryTables};
use glm_core::{ForwardOptions, GlmModel, ModelOptions};
use serde_json::Value;

struct Case {
    name: String,
    batch: usize,
    seq: usize,
    input: GlmInput,
    valid: Vec<usize>,
    json: Value,
}

fn cases() -> (Vec<Case>, Value) {
    let json = read_json("cases.json");
    let mut out = Vec::new();
    for c in json["cases"].as_array().expect("cases") {
        let tokens = ints2(&c["tokens"]);
        let batch = tokens.len();
        let seq = tokens[0].len();
        out.push(Case {
            name: c["name"].as_str().unwrap().to_string(),
            batch,
            seq,
            input: GlmInput {
                batch,
                seq,
                tokens: tokens.concat(),
                position_ids: ints2(&c["position_ids"]).concat(),
                mask: mask4(&c["attention_mask"]),
            },
            valid: ints(&c["valid_lengths"])
                .iter()
                .map(|&v| v as usize)
                .collect(),
            json: c.clone(),
        });
    }
    (out, json)
}

fn tolerance(json: &Value, key: &str) -> f32 {
    json["tolerance"][key].as_f64().expect("tolerance") as f32
}

fn tensor_key(case: &Case, name: &str) -> String {
    case.json["tensors"][name]["key"]
        .as_str()
        .expect("tensor key")
        .to_string()
}

#[test]
fn every_case_matches_logits_and_hidden_states_on_cpu() {
    let device = Default::default();
    let model: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let (cases, json) = cases();
    assert!(!cases.is_empty());
    let (tol_logits, tol_hidden) = (
        tolerance(&json, "logits_max_abs"),
        tolerance(&json, "hidden_max_abs"),
    );
    let cfg = model.config().clone();
    for case in &cases {
        let (tokens, positions, mask) = case.input.to_tensors::<Cpu>(&device);
        let out = model
            .forward_with(
                tokens,
                positions,
                mask,
                None,
                ForwardOptions {
                    hidden_states: true,
                    last_only: false,
                },
            )
            .expect("forward");
        let (golden, shape) = tensor_f32("cases.safetensors", &tensor_key(case, "logits"));
        assert_eq!(shape, vec![case.batch, case.seq, cfg.vocab_size]);
        let d = max_diff_valid(
            &to_vec(out.logits),
            &golden,
            case.batch,
            case.seq,
            cfg.vocab_size,
            &case.valid,
        );
        assert!(
            d <= tol_logits,
            "{}: logits max diff {d} > {tol_logits}",
            case.name
        );
        // One hidden state per layer, as many as the fixture recorded (`hidden_layer0..`).
        let recorded = case.json["tensors"]
            .as_object()
            .expect("tensors")
            .keys()
            .filter(|k| k.starts_with("hidden_layer"))
            .count();
        assert_eq!(
            recorded, cfg.num_layers,
            "{}: hidden states in the fixture",
            case.name
        );
        assert_eq!(
            out.hidden_states.len(),
            cfg.num_layers,
            "{}: hidden states returned",
            case.name
        );
        for (l, hidden) in out.hidden_states.into_iter().enumerate() {
            let (golden, _) = tensor_f32(
                "cases.safetensors",
                &tensor_key(case, &format!("hidden_layer{l}")),
            );
            let d = max_diff_valid(
                &to_vec(hidden),
                &golden,
                case.batch,
                case.seq,
                cfg.hidden_size,
                &case.valid,
            );
            assert!(
                d <= tol_hidden,
                "{}: hidden layer {l} max diff {d} > {tol_hidden}",
                case.name
            );
        }
    }
}

#[test]
fn rotary_tables_are_bit_exact() {
    let cfg = config();
    let json = read_json("cases.json");
    let keys = &json["rotary_tables"]["keys"];
    let t = RotaryTables::new(
        cfg.head_dim(),
        cfg.max_sequence_length,
        cfg.rotary_base,
        RotaryPrecision::Fp16Sat,
    )
    .expect("rotary tables of the fixture config");
    let (cos, cos_shape) = tensor_f32("cases.safetensors", keys[0].as_str().unwrap());
    let (sin, _) = tensor_f32("cases.safetensors", keys[1].as_str().unwrap());
    let (inv, _) = tensor_f32("cases.safetensors", keys[2].as_str().unwrap());
    assert_eq!(cos_shape, vec![cfg.max_sequence_length, cfg.head_dim()]);
    assert_eq!(sin.len(), cos.len(), "sin table size");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&t.inv_freq), bits(&inv), "inv_freq");
    for (name, ours, golden) in [("cos", &t.cos, &cos), ("sin", &t.sin, &sin)] {
        assert_eq!(ours.len(), golden.len(), "{name}: table size");
        let bad = ours
            .iter()
            .zip(golden.iter())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(bad, 0, "{name}: {bad} entries differ");
    }
}

#[test]
fn fp32_sat_buffer_rotary_option_reproduces_the_diagnostic_variant() {
    // The fixtures' diagnostic = the original after `model.float()`: fp16 inv_freq, fp32 angles.
    let device = Default::default();
    let options = ModelOptions {
        rotary: RotaryPrecision::Fp32SatBuffer,
        ..Default::default()
    };
    let model: GlmModel<Cpu> = load_model(&device, options);
    let (cases, json) = cases();
    let case = cases
        .iter()
        .find(|c| {
            c.json["tensors"]
                .get("logits_variant_rotary_fp32")
                .is_some()
        })
        .expect("variant case");
    let (tokens, positions, mask) = case.input.to_tensors::<Cpu>(&device);
    let ours = to_vec(model.forward(tokens, positions, mask).expect("forward"));
    let (golden, _) = tensor_f32(
        "cases.safetensors",
        &tensor_key(case, "logits_variant_rotary_fp32"),
    );
    let d = max_diff_valid(
        &ours,
        &golden,
        case.batch,
        case.seq,
        model.config().vocab_size,
        &case.valid,
    );
    let tol = tolerance(&json, "logits_max_abs");
    assert!(d <= tol, "fp32-rotary variant diff {d}");
    // ...and the table precision really matters: the exact-fp32 option is farther off.
    let exact: GlmModel<Cpu> = load_model(
        &device,
        ModelOptions {
            rotary: RotaryPrecision::Fp32,
            ..Default::default()
        },
    );
    let (tokens, positions, mask) = case.input.to_tensors::<Cpu>(&device);
    let (reference, _) = tensor_f32("cases.safetensors", &tensor_key(case, "logits"));
    let d = max_diff_valid(
        &to_vec(exact.forward(tokens, positions, mask).expect("forward")),
        &reference,
        case.batch,
        case.seq,
        model.config().vocab_size,
        &case.valid,
    );
    assert!(
        d > tol,
        "fp32 tables should move the logits beyond {tol}, moved {d}"
    );
}

#[test]
fn kv_cache_steps_equal_the_original_loop_and_full_recompute() {
    let device = Default::default();
    let model: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let cfg = model.config().clone();
    let (cases, json) = cases();
    let tol = tolerance(&json, "logits_max_abs");
    let incremental: Vec<&Case> = cases
        .iter()
        .filter(|c| c.json.get("context_length").is_some())
        .collect();
    assert!(!incremental.is_empty(), "no incremental case in cases.json");
    for case in incremental {
        let ctx = case.json["context_length"].as_u64().unwrap() as usize;
        let n = case.seq;
        let input = &case.input;
        let mut cache = model.new_cache();
        // The context pass: rows/cols [0, ctx).
        let sub = |rows: std::ops::Range<usize>,
                   keys: usize|
         -> (
            Tensor<Cpu, 2, Int>,
            Tensor<Cpu, 2, Int>,
            Tensor<Cpu, 4, burn::tensor::Bool>,
        ) {
            let t: Vec<i64> = input.tokens[rows.clone()]
                .iter()
                .map(|&x| x as i64)
                .collect();
            let p: Vec<i64> = input.position_ids[rows.clone()]
                .iter()
                .map(|&x| x as i64)
                .collect();
            let mut m = Vec::new();
            for i in rows.clone() {
                m.extend_from_slice(&input.mask[i * n..i * n + keys]);
            }
            let len = rows.len();
            (
                Tensor::from_data(TensorData::new(t, [1, len]), &device),
                Tensor::from_data(TensorData::new(p, [1, len]), &device),
                Tensor::from_data(TensorData::new(m, [1, 1, len, keys]), &device),
            )
        };
        let (t, p, m) = sub(0..ctx, ctx);
        let first = model.forward_cached(t, p, m, &mut cache).expect("forward");
        let mut steps = vec![to_vec(first.narrow(1, ctx - 1, 1))];
        let (mem, _) = tensor_f32(
            "cases.safetensors",
            &tensor_key(case, "context_mem_kv_layer0"),
        );
        let ours_mem = to_vec(cache.sat_mem_kv(0).expect("layer 0 cached"));
        assert_eq!(
            ours_mem.len(),
            mem.len(),
            "{}: context mem_kv size",
            case.name
        );
        let d = ours_mem
            .iter()
            .zip(&mem)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d <= tol,
            "{}: context mem_kv layer 0 differs by {d}",
            case.name
        );
        for i in ctx..n {
            let (t, p, m) = sub(i..i + 1, i + 1);
            steps.push(to_vec(
                model.forward_cached(t, p, m, &mut cache).expect("forward"),
            ));
        }
        let (golden_steps, shape) =
            tensor_f32("cases.safetensors", &tensor_key(case, "step_logits"));
        assert_eq!(shape[0], steps.len(), "{}: step count", case.name);
        let (t, p, m) = input.to_tensors::<Cpu>(&device);
        let full = to_vec(model.forward(t, p, m).expect("forward"));
        let v = cfg.vocab_size;
        assert_eq!(
            golden_steps.len(),
            steps.len() * v,
            "{}: step logits size",
            case.name
        );
        assert_eq!(full.len(), n * v, "{}: full logits size", case.name);
        assert!(!steps.is_empty(), "{}: no step", case.name);
        for (s, ours) in steps.iter().enumerate() {
            assert_eq!(ours.len(), v, "{} step {s}: logits size", case.name);
            let g = &golden_steps[s * v..(s + 1) * v];
            let f = &full[(ctx - 1 + s) * v..(ctx + s) * v];
            let d_orig = ours
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let d_full = ours
                .iter()
                .zip(f)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                d_orig <= tol,
                "{} step {s}: vs original loop {d_orig}",
                case.name
            );
            assert!(
                d_full <= tol,
                "{} step {s}: vs full recompute {d_full}",
                case.name
            );
        }
    }
}

#[test]
fn blank_builder_reproduces_the_original_layouts() {
    let cfg = config();
    let specials = cfg.special_tokens;
    let (cases, _) = cases();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.batch == 1) {
        let n = case.seq;
        let ctx = case
            .json
            .get("context_length")
            .and_then(|v| v.as_u64())
            .map_or(n, |v| v as usize);
        let context = &case.input.tokens[..ctx - 1];
        let blank = BlankInput::from_context(context, &specials).expect("mask in context");
        assert_eq!(
            blank.tokens[..],
            case.input.tokens[..ctx],
            "{}: tokens",
            case.name
        );
        assert_eq!(
            blank.mask_position as u64,
            case.json["mask_position"].as_u64().unwrap(),
            "{}",
            case.name
        );
        assert_eq!(
            blank.position_ids(n),
            case.input.position_ids,
            "{}: position ids",
            case.name
        );
        assert_eq!(
            blank.attention_mask(n),
            case.input.mask,
            "{}: attention mask",
            case.name
        );
        checked += 1;
    }
    assert!(checked > 0, "no single-sample case in cases.json");
}

#[test]
fn batch_padding_matches_the_collate_function() {
    let cfg = config();
    let (cases, _) = cases();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.batch > 1) {
        let seq = case.seq;
        let ctx = ints(&case.json["context_lengths"]);
        assert_eq!(ctx.len(), case.batch, "{}: context lengths", case.name);
        let samples: Vec<GlmInput> = (0..case.batch)
            .map(|b| {
                let n = ctx[b] as usize;
                let row = |v: &[u32]| v[b * seq..b * seq + n].to_vec();
                let mut mask = Vec::new();
                for i in 0..n {
                    let o = (b * seq + i) * seq;
                    mask.extend_from_slice(&case.input.mask[o..o + n]);
                }
                GlmInput {
                    batch: 1,
                    seq: n,
                    tokens: row(&case.input.tokens),
                    position_ids: row(&case.input.position_ids),
                    mask,
                }
            })
            .collect();
        let padded = GlmInput::pad_batch(&samples, 32, cfg.special_tokens.pad).unwrap();
        assert_eq!(padded, case.input, "{}", case.name);
        checked += 1;
    }
    assert!(checked > 0, "no batch case in cases.json");
}

#[test]
fn f16_and_bf16_models_run_close_to_f32() {
    let device = Default::default();
    let (cases, _) = cases();
    // Any case will do (f16/bf16 vs f32 on the same input): the first one.
    let case = cases.first().expect("a case in cases.json");
    let reference: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let (t, p, m) = case.input.to_tensors::<Cpu>(&device);
    let want = to_vec(reference.forward(t, p, m).expect("forward"));
    for (dtype, tol) in [(DType::F16, 0.1f32), (DType::BF16, 0.6)] {
        let model: GlmModel<Cpu> = load_model(
            &device,
            ModelOptions {
                dtype,
                ..Default::default()
            },
        );
        assert_eq!(model.dtype(), dtype);
        let (t, p, m) = case.input.to_tensors::<Cpu>(&device);
        let logits = model.forward(t, p, m).expect("forward");
        assert_eq!(logits.dtype(), dtype);
        let got = to_vec(logits);
        let d = max_diff_valid(
            &got,
            &want,
            case.batch,
            case.seq,
            model.config().vocab_size,
            &case.valid,
        );
        assert!(d < tol, "{dtype:?}: max diff {d}");
    }
}

/// Sequences of different lengths prefilled together, padded at the end
/// ([`GlmModel::forward_last_at`], as `glm serve` admits prompts), give each sequence's logits
/// and KV-cache entries as a prefill of that sequence alone, within the fixtures' logits
/// tolerance (the padded keys are blocked; the two runs differ only by the GEMM kernels their row
/// counts select). Every row of every `cases.json` case is one sequence (its valid part).
#[test]
fn sequences_prefilled_together_equal_each_prefilled_alone() {
    let device = Default::default();
    let model: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let (cases, json) = cases();
    let tol = tolerance(&json, "logits_max_abs");
    let close = |a: &[f32], b: &[f32], what: String| {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{what}: max abs difference {worst} > {tol}");
    };
    // (tokens, positions, mask [v × v]) of every valid row.
    let mut seqs: Vec<(Vec<i64>, Vec<i64>, Vec<bool>)> = Vec::new();
    for c in &cases {
        let mask_batch = c.input.mask.len() / (c.seq * c.seq);
        for (r, &v) in c.valid.iter().enumerate() {
            let row = |all: &[u32]| -> Vec<i64> {
                all[r * c.seq..r * c.seq + v]
                    .iter()
                    .map(|&x| i64::from(x))
                    .collect()
            };
            let m0 = if mask_batch == 1 { 0 } else { r };
            let mut mask = Vec::with_capacity(v * v);
            for q in 0..v {
                let at = (m0 * c.seq + q) * c.seq;
                mask.extend_from_slice(&c.input.mask[at..at + v]);
            }
            seqs.push((row(&c.input.tokens), row(&c.input.position_ids), mask));
        }
    }
    let lens: Vec<usize> = seqs.iter().map(|s| s.0.len()).collect();
    assert!(
        lens.len() >= 2 && lens.iter().any(|&l| l != lens[0]),
        "sequences of different lengths: {lens:?}"
    );
    let layers = model.config().num_layers;
    // Each alone.
    let mut alone = Vec::new();
    for (tok, pos, mask) in &seqs {
        let v = tok.len();
        let mut cache = model.new_cache();
        let out = model
            .forward_with(
                Tensor::<Cpu, 2, Int>::from_data(TensorData::new(tok.clone(), [1, v]), &device),
                Tensor::<Cpu, 2, Int>::from_data(TensorData::new(pos.clone(), [1, v]), &device),
                Tensor::from_data(TensorData::new(mask.clone(), [1, 1, v, v]), &device),
                Some(&mut cache),
                ForwardOptions {
                    hidden_states: false,
                    last_only: true,
                },
            )
            .expect("alone");
        alone.push((to_vec(out.logits), cache));
    }
    // Together, padded at the end to the longest.
    let (n, p) = (seqs.len(), lens.iter().copied().max().unwrap_or(0));
    let (mut tok, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for (t, q, m) in &seqs {
        let v = t.len();
        tok.extend(t.iter().copied().chain(std::iter::repeat_n(0, p - v)));
        pos.extend(q.iter().copied().chain(std::iter::repeat_n(0, p - v)));
        for qi in 0..p {
            for k in 0..p {
                mask.push(if qi < v && k < v {
                    m[qi * v + k]
                } else {
                    // Padded keys blocked; a padded query sees itself only.
                    !(qi >= v && k == qi)
                });
            }
        }
    }
    let last: Vec<usize> = lens.iter().map(|&v| v - 1).collect();
    let mut cache = model.new_cache();
    let logits = model
        .forward_last_at(
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(tok, [n, p]), &device),
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(pos, [n, p]), &device),
            Tensor::from_data(TensorData::new(mask, [n, 1, p, p]), &device),
            Some(&mut cache),
            &last,
        )
        .expect("together");
    let vocab = model.config().vocab_size;
    assert_eq!(logits.dims(), [n, 1, vocab]);
    let logits = to_vec(logits);
    for (i, (want, single)) in alone.iter().enumerate() {
        let v = lens[i];
        close(
            &logits[i * vocab..(i + 1) * vocab],
            want,
            format!("sequence {i} (length {v}): logits"),
        );
        for layer in 0..layers {
            let (a, b) = (
                cache.layer(layer).expect("batch"),
                single.layer(layer).expect("alone"),
            );
            let row = |t: Tensor<Cpu, 4>| to_vec(t.narrow(0, i, 1).narrow(2, 0, v));
            close(
                &row(a.k),
                &to_vec(b.k),
                format!("sequence {i} layer {layer}: keys"),
            );
            close(
                &row(a.v),
                &to_vec(b.v),
                format!("sequence {i} layer {layer}: values"),
            );
        }
    }
    // A wrong list of last positions is a typed error.
    let bad = model.forward_last_at(
        Tensor::<Cpu, 2, Int>::zeros([1, 2], &device),
        Tensor::<Cpu, 2, Int>::zeros([1, 2], &device),
        Tensor::from_data(TensorData::new(vec![false; 4], [1, 1, 2, 2]), &device),
        None,
        &[2],
    );
    assert!(bad.is_err());
}
