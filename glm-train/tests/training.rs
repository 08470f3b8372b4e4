//! Training runs on tiny configs: the loss falls, data parallelism (burn-collective all-reduce)
//! and gradient accumulation match one big batch, f16 with loss scaling trains and skips
//! overflowing steps, bf16 trains on f32 master weights, torn checkpoints are never loaded.
//!
//! The tests run on libtest's worker threads, concurrently: several trainings (one of them data
//! parallel, itself on several threads) share the process, as they would in a user's program.

mod common;

use burn::backend::{Autodiff, Flex};
use common::{tiny_config, tmpdir, write_corpus};
use glm_train::checkpoint;
use glm_train::config::Precision;
use glm_train::Trainer;

type B = Autodiff<Flex>;

fn losses(config: glm_train::TrainConfig, dir: &std::path::Path) -> Vec<f64> {
    common::losses::<B>(config, dir, &[Default::default()])
}

#[test]
fn a_short_run_learns() {
    let dir = tmpdir("learn");
    let config = tiny_config(&write_corpus(&dir));
    let mut t =
        Trainer::<B>::new(config, &dir.join("out"), &Default::default(), false).expect("trainer");
    let lines = t.run().expect("run");
    assert_eq!(lines.len(), 150);
    let first = lines[0].loss;
    let last: f64 = lines[140..].iter().map(|l| l.loss).sum::<f64>() / 10.0;
    eprintln!("loss {first} -> {last}");
    assert!(first > 6.0, "starts near ln(1024): {first}");
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    let val: Vec<f64> = lines.iter().filter_map(|l| l.val_loss).collect();
    assert_eq!(val.len(), 3);
    assert!(val[2] < val[0], "validation loss falls: {val:?}");
    assert!(
        dir.join("out/model.safetensors").is_file() && dir.join("out/checkpoints/latest").is_file()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn data_parallel_and_accumulation_match_one_big_batch() {
    let dir = tmpdir("dp");
    let corpus = write_corpus(&dir);
    let mut base = tiny_config(&corpus);
    base.steps = 4;
    base.validate_every = 0;
    base.dropout.hidden = 0.1;
    base.dropout.attention = 0.1;
    let mut big = base.clone();
    big.batch_size = 4;
    let mut dp2 = base.clone();
    dp2.batch_size = 2;
    dp2.data_parallel = 2;
    let mut dp4 = base.clone();
    dp4.batch_size = 1;
    dp4.data_parallel = 4;
    let mut acc = base.clone();
    acc.batch_size = 1;
    acc.grad_accumulation = 4;
    let mut mixed = base.clone();
    mixed.batch_size = 1;
    mixed.data_parallel = 2;
    mixed.grad_accumulation = 2;
    let reference = losses(big, &dir.join("big"));
    let runs = [
        ("2 replicas", losses(dp2.clone(), &dir.join("dp2"))),
        ("4 replicas", losses(dp4, &dir.join("dp4"))),
        ("accumulation", losses(acc, &dir.join("acc"))),
        (
            "2 replicas x 2 accumulated",
            losses(mixed, &dir.join("mixed")),
        ),
    ];
    assert_eq!(reference.len(), 4);
    for (what, run) in &runs {
        assert_eq!(run.len(), reference.len(), "{what}");
        for (x, y) in reference.iter().zip(run) {
            assert!((x - y).abs() < 1e-4 * x.abs(), "{what}: {y} vs {x}");
        }
    }
    // Two replicas sum a + b: the run repeats bit for bit.
    assert_eq!(losses(dp2, &dir.join("dp2-again")), runs[0].1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn f16_with_loss_scaling_trains_and_skips_overflows() {
    let dir = tmpdir("f16");
    let mut config = tiny_config(&write_corpus(&dir));
    config.precision = Precision::F16;
    config.steps = 16;
    config.validate_every = 0;
    // A scale far too high: the first steps overflow in f16, are skipped and lower the scale.
    config.loss_scale.initial_scale = 2f64.powi(24);
    config.loss_scale.hysteresis = 1;
    config.loss_scale.window = 4;
    let mut t =
        Trainer::<B>::new(config, &dir.join("out"), &Default::default(), false).expect("trainer");
    let lines = t.run().expect("run");
    assert!(lines[0].skipped && lines[0].grad_norm.is_none());
    assert!(lines[1].loss_scale < lines[0].loss_scale);
    let applied: Vec<_> = lines.iter().filter(|l| !l.skipped).collect();
    assert!(
        applied.len() >= 3,
        "some steps are applied once the scale is low enough"
    );
    assert!(applied
        .iter()
        .all(|l| l.loss.is_finite() && l.grad_norm.is_some_and(f64::is_finite)));
    assert_eq!(
        lines.last().map(|l| l.skipped_total),
        Some(lines.iter().filter(|l| l.skipped).count() as u64)
    );
    // After a window of good steps the scale goes up again.
    let raised = lines
        .windows(2)
        .any(|w| !w[0].skipped && w[1].loss_scale > w[0].loss_scale);
    assert!(raised, "scale raised after a window");
    assert!(t.state.model.word_embeddings.val().dtype() == burn::tensor::DType::F16);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bf16_trains_with_f32_master_weights() {
    let dir = tmpdir("bf16");
    let mut config = tiny_config(&write_corpus(&dir));
    config.precision = Precision::Bf16;
    config.steps = 100;
    config.validate_every = 0;
    let mut t =
        Trainer::<B>::new(config, &dir.join("out"), &Default::default(), false).expect("trainer");
    let lines = t.run().expect("run");
    // bf16 has f32's exponent range: at the default scale no gradient overflows.
    assert!(lines.iter().all(|l| !l.skipped && l.loss.is_finite()));
    let first = lines[0].loss;
    let last: f64 = lines[90..].iter().map(|l| l.loss).sum::<f64>() / 10.0;
    assert!(first > 6.0, "starts near ln(1024): {first}");
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    // Compute in bf16, master weights and optimizer state in f32.
    assert_eq!(
        t.state.model.word_embeddings.val().dtype(),
        burn::tensor::DType::BF16
    );
    assert!(t
        .state
        .optim
        .master
        .iter()
        .all(|m| m.dtype() == burn::tensor::DType::F32));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn torn_checkpoints_are_never_loaded() {
    let dir = tmpdir("torn");
    let mut config = tiny_config(&write_corpus(&dir));
    config.steps = 4;
    config.checkpoint_every = 2;
    config.validate_every = 0;
    let out = dir.join("out");
    Trainer::<B>::new(config, &out, &Default::default(), false)
        .expect("trainer")
        .run()
        .expect("run");
    let root = out.join("checkpoints");
    assert_eq!(
        checkpoint::load_latest(&root)
            .expect("checkpoint")
            .meta
            .step,
        4
    );
    // A newer checkpoint whose state was torn, and a half-written temporary folder.
    let src = root.join("step-00000004");
    let torn = root.join("step-00000006");
    std::fs::create_dir_all(&torn).expect("dir");
    std::fs::copy(src.join("meta.json"), torn.join("meta.json")).expect("copy");
    let bytes = std::fs::read(src.join("state.safetensors")).expect("state");
    std::fs::write(torn.join("state.safetensors"), &bytes[..bytes.len() / 2]).expect("write");
    std::fs::create_dir_all(root.join(".tmp-step-00000008-1")).expect("tmp");
    std::fs::write(root.join("latest"), "step-00000006").expect("latest");
    let c = checkpoint::load_latest(&root).expect("falls back");
    assert_eq!(c.meta.step, 4);
    // A flipped byte is caught by the checksum too.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(src.join("state.safetensors"), flipped).expect("write");
    assert!(checkpoint::load_dir(&src).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
