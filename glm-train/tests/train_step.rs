//! Golden test against `train_step.json` (fixtures README §8.5): one fp32 training step of the
//! fixture model — loss on the generated rows, gradients with the embedding shrink, the pre-clip
//! global norm and the parameters after one clipped AdamW step.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{activation, DType, Int, Tensor, TensorData};
use glm_core::blank::GlmInput;
use glm_core::dropout::Dropout;
use glm_core::weights::{SafetensorsFile, WeightSource};
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_train::batch::Batch;
use glm_train::optim::AdamWConfig;
use glm_train::schedule::LossScaler;
use glm_train::step::{ForwardConfig, TrainState};
use serde_json::Value;

type B = Autodiff<Flex>;

fn fixtures() -> std::path::PathBuf {
    glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").expect("fixture folder")
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u32)
        .collect()
}

fn flat2(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().flat_map(ints).collect()
}

fn host(t: burn::tensor::Tensor<Flex, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

fn golden(file: &SafetensorsFile, key: &str) -> Vec<f32> {
    let d: TensorData = file.load(key).unwrap_or_else(|e| panic!("{e}"));
    d.convert::<f32>().to_vec::<f32>().expect("f32")
}

/// Cross entropy of every position of `batch` against its target (before the loss mask), in
/// row order `[batch, seq]`, with the inference forward (no dropout, no shrink).
fn token_losses(model: &GlmModel<B>, batch: &Batch) -> Vec<f32> {
    let device = Default::default();
    let (tokens, positions, mask) = batch.input.to_tensors::<B>(&device);
    let hidden = model.forward_train(tokens, positions, mask, 1.0, &mut Dropout::disabled());
    let [b, s, _] = hidden.dims();
    let logits = model.logits(hidden);
    let v = logits.dims()[2];
    let logp = activation::log_softmax(logits.reshape([b * s, v]).cast(DType::F32), 1);
    assert_eq!(batch.targets.len(), b * s);
    let targets: Vec<i64> = batch.targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [b * s]), &device);
    logp.gather(1, targets.reshape([b * s, 1]))
        .neg()
        .reshape([b * s])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32")
}

fn state(json: &Value) -> (TrainState<B>, Batch) {
    let dir = fixtures();
    let config = GlmConfig::from_file(dir.join("config.json")).expect("config.json");
    let source = SafetensorsFile::open(dir.join("model.safetensors")).expect("model.safetensors");
    let device = Default::default();
    let model = GlmModel::<B>::from_source(&config, &source, &device, ModelOptions::default())
        .expect("model");
    let opt = &json["optimizer"];
    let betas = opt["betas"].as_array().expect("betas");
    let adam = AdamWConfig {
        beta1: betas[0].as_f64().expect("b1"),
        beta2: betas[1].as_f64().expect("b2"),
        eps: opt["eps"].as_f64().expect("eps"),
        weight_decay: opt["weight_decay"].as_f64().expect("wd"),
        no_decay_bias_and_norm: false,
        clip_grad: json["clipping"]["max_norm"].as_f64().expect("max_norm"),
    };
    let b = &json["batch"];
    let tokens = flat2(&b["tokens"]);
    let batch_size = b["tokens"].as_array().expect("tokens").len();
    let seq = tokens.len() / batch_size;
    let mut mask = Vec::new();
    for sample in b["attention_mask"].as_array().expect("mask") {
        for row in sample[0].as_array().expect("rows") {
            mask.extend(ints(row).into_iter().map(|x| x != 0));
        }
    }
    let batch = Batch {
        input: GlmInput {
            batch: batch_size,
            seq,
            tokens,
            position_ids: flat2(&b["position_ids"]),
            mask,
        },
        targets: flat2(&b["targets"]),
        loss_mask: flat2(&b["loss_mask"]).into_iter().map(|x| x != 0).collect(),
        dropout_seeds: vec![0; batch_size],
    };
    (
        TrainState::new(model, DType::F32, adam, LossScaler::fixed()),
        batch,
    )
}

#[test]
fn one_training_step_matches_the_original() {
    let dir = fixtures();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_step.json")).expect("json"))
            .expect("json");
    let tensors =
        SafetensorsFile::open(dir.join("train_step.safetensors")).expect("train_step.safetensors");
    let (mut st, batch) = state(&json);
    let alpha = json["embedding_gradient_shrink"]["alpha"]
        .as_f64()
        .expect("alpha");
    let forward = ForwardConfig {
        shrink_alpha: alpha,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
    };
    let g = st
        .grads(std::slice::from_ref(&batch), &forward, &[])
        .expect("grads");

    // Loss: mean over the target tokens.
    let want_loss = json["loss"]["value"].as_f64().expect("loss");
    assert_eq!(
        g.targets,
        json["loss"]["num_target_tokens"].as_u64().expect("n") as usize
    );
    assert!(
        (g.loss - want_loss).abs() <= 1e-5,
        "loss {} vs {want_loss}",
        g.loss
    );

    // Per-token cross entropy before the loss mask (`loss_per_token`, [batch, seq]); the loss is
    // its mean over the loss mask (README §8.5). The README's tolerance is the loss's, 1e-5
    // absolute; it holds for the masked mean (below). A single token's value (up to ~20 here)
    // carries the f32 rounding of its own log-softmax, so each is held to 1e-5 relative to
    // max(1, |value|): the loss tolerance at unit scale.
    let want_tokens = golden(&tensors, "loss_per_token");
    assert_eq!(
        tensors.shape("loss_per_token"),
        Some(vec![batch.input.batch, batch.input.seq])
    );
    let got_tokens = token_losses(&st.model, &batch);
    assert_eq!(got_tokens.len(), want_tokens.len());
    assert_eq!(batch.loss_mask.len(), want_tokens.len());
    for (i, (g, w)) in got_tokens.iter().zip(&want_tokens).enumerate() {
        assert!(
            ((g - w).abs() as f64) <= 1e-5 * (w.abs() as f64).max(1.0),
            "loss_per_token[{}][{}]: {g} vs {w}",
            i / batch.input.seq,
            i % batch.input.seq
        );
    }
    let masked_mean = |values: &[f32]| -> (usize, f64) {
        let masked: Vec<f64> = values
            .iter()
            .zip(&batch.loss_mask)
            .filter(|(_, &m)| m)
            .map(|(&l, _)| l as f64)
            .collect();
        (
            masked.len(),
            masked.iter().sum::<f64>() / masked.len().max(1) as f64,
        )
    };
    for (what, values) in [("fixture", &want_tokens), ("ours", &got_tokens)] {
        let (n, mean) = masked_mean(values);
        assert_eq!(n, g.targets, "{what}");
        assert!(
            (mean - want_loss).abs() <= 1e-5,
            "{what}: mean of loss_per_token over the loss mask {mean} vs loss {want_loss}"
        );
    }

    // Gradients (pre-clip) with the embedding shrink.
    let names: Vec<String> = st.optim.infos.iter().map(|i| i.name.clone()).collect();
    let index = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no param {name}"))
    };
    for key in [
        "transformer.word_embeddings.weight",
        "transformer.layers.0.attention.query_key_value.weight",
    ] {
        let got = host(g.grads[index(key)].clone());
        let want = golden(&tensors, &format!("grad.{key}"));
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * max,
            "grad {key}: max diff {diff} > 1e-4 * {max}"
        );
    }
    // Every parameter's gradient norm.
    for (name, want) in json["grad_norms_per_parameter"].as_object().expect("norms") {
        let want = want.as_f64().expect("norm");
        let got: f64 = host(g.grads[index(name)].clone())
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (got - want).abs() <= 1e-4 * want.max(1e-3),
            "grad norm {name}: {got} vs {want}"
        );
    }

    // Without the shrink the embedding gradient is the other golden tensor.
    let plain = st
        .grads(std::slice::from_ref(&batch), &ForwardConfig::eval(), &[])
        .expect("grads");
    let key = "transformer.word_embeddings.weight";
    let got = host(plain.grads[index(key)].clone());
    let want = golden(&tensors, &format!("grad_no_shrink.{key}"));
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4 * max, "grad_no_shrink: {diff}");

    // Clipping + one AdamW step.
    let pre_clip: Vec<Vec<f32>> = g.grads.iter().map(|t| host(t.clone())).collect();
    let lr = json["optimizer"]["lr"].as_f64().expect("lr");
    let report = st.apply(g, lr);
    let want_norm = json["clipping"]["global_grad_norm_pre_clip"]
        .as_f64()
        .expect("norm");
    assert!(
        ((report.grad_norm - want_norm) / want_norm).abs() <= 1e-5,
        "norm {} vs {want_norm}",
        report.grad_norm
    );
    let want_coef = json["clipping"]["clip_coef"].as_f64().expect("coef");
    assert!(((report.clip_coef - want_coef) / want_coef).abs() <= 1e-5);
    assert!(!report.skipped);
    for (i, name) in names.iter().enumerate() {
        let got = host(st.optim.master[i].clone());
        let want = golden(&tensors, &format!("param_after.{name}"));
        assert_eq!(got.len(), want.len(), "{name}");
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            let clipped = (pre_clip[i][j] as f64 * report.clip_coef).abs();
            let tol = if clipped >= 1e-6 { 1e-6 } else { 2.0 * lr };
            assert!(
                ((a - b).abs() as f64) <= tol,
                "{name}[{j}]: {a} vs {b} (|g_c| = {clipped:e})"
            );
        }
    }
    // The model now holds the updated weights.
    let emb = st
        .model
        .word_embeddings
        .val()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32");
    assert_eq!(emb, host(st.optim.master[index(key)].clone()));
}

/// Hand-made batches (public fields) are checked before they reach the backend: an id outside the
/// vocabulary, a loss target outside it, or fields of the wrong length are typed errors from
/// `loss_sum`, `eval_loss` and the training step, never a backend panic or garbage.
#[test]
fn hand_made_batches_are_checked_before_the_backend() {
    use glm_train::step::{eval_loss, loss_sum};
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("train_step.json")).expect("train_step.json"),
    )
    .expect("json");
    let (state, good) = state(&json);
    let vocab = state.model.config().vocab_size;
    let forward = ForwardConfig::eval();
    assert!(loss_sum(&state.model, &good, &forward)
        .expect("the fixture batch is valid")
        .is_some());

    let loss_row = good
        .loss_mask
        .iter()
        .position(|&m| m)
        .expect("the fixture batch has a loss row");
    let mut bad_token = good.clone();
    bad_token.input.tokens[0] = vocab as u32;
    let mut bad_target = good.clone();
    bad_target.targets[loss_row] = vocab as u32;
    let mut short_targets = good.clone();
    short_targets.targets.pop();
    let mut short_mask = good.clone();
    short_mask.input.mask.pop();
    let mut bad_position = good.clone();
    bad_position.input.position_ids[0] = state.model.config().max_sequence_length as u32;
    let cases = [
        ("token id = vocab", bad_token, "vocab"),
        ("target id = vocab", bad_target, "vocabulary"),
        ("targets one short", short_targets, "targets"),
        ("mask one short", short_mask, "mask"),
        ("position id = max", bad_position, "position"),
    ];
    for (what, batch, needle) in &cases {
        let e = loss_sum(&state.model, batch, &forward).expect_err(what);
        assert!(e.to_string().contains(needle), "{what}: {e}");
        assert!(
            eval_loss(&state.model, std::slice::from_ref(batch)).is_err(),
            "{what}: eval_loss"
        );
        assert!(
            state
                .grads(std::slice::from_ref(batch), &forward, &[])
                .is_err(),
            "{what}: training step"
        );
    }
}
