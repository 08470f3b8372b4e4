//! Nothing lost, nothing silent on resume (issue 10, defect 2): `--resume` without a valid
//! checkpoint is a typed error that lists what it found and leaves `metrics.jsonl` byte for byte;
//! an edited `meta.json` is rejected by the checksum; a damaged later checkpoint folder never gets
//! the newest valid one deleted by pruning; a changed corpus is a typed error, not an index panic.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use common::{tiny_config, tmpdir, write_corpus};
use glm_train::checkpoint;
use glm_train::{Error, TrainConfig, Trainer};

type B = Autodiff<Flex>;

/// A tiny config: `steps` steps, a checkpoint every 2, no validation.
fn config(corpus: &Path, steps: u64, keep: usize) -> TrainConfig {
    let mut c = tiny_config(corpus);
    c.steps = steps;
    c.checkpoint_every = 2;
    c.keep_checkpoints = keep;
    c.validate_every = 0;
    c
}

fn train(config: TrainConfig, out: &Path, resume: bool) {
    Trainer::<B>::new(config, out, &Default::default(), resume)
        .expect("trainer")
        .run()
        .expect("run");
}

fn resume_err(config: TrainConfig, out: &Path) -> Error {
    match Trainer::<B>::new(config, out, &Default::default(), true) {
        Ok(_) => panic!("resume was accepted"),
        Err(e) => e,
    }
}

fn step_folder(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

fn metrics(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("metrics.jsonl")).expect("metrics.jsonl")
}

/// Steps of the complete lines of `metrics.jsonl`.
fn metric_steps(out: &Path) -> Vec<u64> {
    glm_train::trainer::read_metrics(&out.join("metrics.jsonl"))
        .expect("metrics")
        .iter()
        .map(|l| l.step)
        .collect()
}

#[test]
fn resume_with_nothing_valid_is_an_error_that_lists_what_it_found() {
    let dir = tmpdir("ri-nothing");
    let corpus = write_corpus(&dir);

    // An empty folder: nothing to resume, and nothing is created.
    let empty = dir.join("empty");
    match resume_err(config(&corpus, 4, 2), &empty) {
        Error::NothingToResume { found, .. } => assert!(found.is_empty(), "{found:?}"),
        e => panic!("expected NothingToResume, got {e}"),
    }
    assert!(!empty.join("metrics.jsonl").exists());

    // A run whose every checkpoint is damaged.
    let out = dir.join("out");
    train(config(&corpus, 4, 2), &out, false);
    assert_eq!(metric_steps(&out), vec![1, 2, 3, 4]);
    // A killed run leaves a torn last line; it must survive the refused resume as well.
    let mut before = metrics(&out);
    before.extend_from_slice(b"{\"step\": 5, \"lo");
    std::fs::write(out.join("metrics.jsonl"), &before).expect("torn line");
    let (s2, s4) = (step_folder(&out, 2), step_folder(&out, 4));
    let state = std::fs::read(s4.join("state.safetensors")).expect("state");
    std::fs::write(s4.join("state.safetensors"), &state[..state.len() / 2]).expect("truncate");
    let mut meta = std::fs::read(s2.join("meta.json")).expect("meta");
    let last = meta.len() - 3;
    meta[last] ^= 0x20;
    std::fs::write(s2.join("meta.json"), &meta).expect("flip");
    let e = resume_err(config(&corpus, 4, 2), &out);
    let text = e.to_string();
    match &e {
        Error::NothingToResume { found, .. } => {
            let dirs: Vec<&PathBuf> = found.iter().map(|(p, _)| p).collect();
            assert_eq!(dirs, vec![&s4, &s2], "{text}");
        }
        e => panic!("expected NothingToResume, got {e}"),
    }
    assert!(
        text.contains("step-00000004") && text.contains("step-00000002"),
        "{text}"
    );
    assert_eq!(
        metrics(&out),
        before,
        "metrics.jsonl changed by a refused resume"
    );
    assert!(
        s2.exists() && s4.exists(),
        "damaged checkpoints are kept for inspection"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_edited_meta_json_is_rejected() {
    let dir = tmpdir("ri-meta");
    let corpus = write_corpus(&dir);
    let out = dir.join("out");
    train(config(&corpus, 4, 2), &out, false);
    let s4 = step_folder(&out, 4);
    let meta = checkpoint::load_dir(&s4).expect("intact").meta;
    assert_eq!(meta.step, 4);
    // Valid JSON, one number changed: the data position.
    let text = std::fs::read_to_string(s4.join("meta.json")).expect("meta");
    let field = format!("\"sequences\": {}", meta.data.sequences);
    assert!(text.contains(&field), "{text}");
    let edited = text.replacen(
        &field,
        &format!("\"sequences\": {}", meta.data.sequences + 1),
        1,
    );
    std::fs::write(s4.join("meta.json"), edited).expect("edit");
    let e = checkpoint::load_dir(&s4).expect_err("edited meta.json accepted");
    assert!(e.to_string().contains("meta.json checksum"), "{e}");
    // A resume falls back to the older intact checkpoint and says nothing is lost.
    let scan = checkpoint::scan(&out.join("checkpoints"));
    assert_eq!(scan.checkpoint.expect("older checkpoint").meta.step, 2);
    assert_eq!(scan.rejected.len(), 1);
    assert_eq!(scan.rejected[0].0, s4);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_damaged_later_folder_never_gets_the_new_checkpoint_pruned() {
    let dir = tmpdir("ri-prune");
    let corpus = write_corpus(&dir);
    let out = dir.join("out");
    train(config(&corpus, 2, 1), &out, false);
    let s2 = step_folder(&out, 2);
    // A stale, damaged folder of a later step, and a damaged folder of the step to be rewritten.
    let stale = step_folder(&out, 9);
    let redo = step_folder(&out, 4);
    for d in [&stale, &redo] {
        std::fs::create_dir_all(d).expect("dir");
        std::fs::copy(s2.join("meta.json"), d.join("meta.json")).expect("meta");
        std::fs::write(d.join("state.safetensors"), b"torn").expect("state");
    }
    train(config(&corpus, 4, 1), &out, true);
    let c = checkpoint::load_dir(&redo).expect("the checkpoint just written is kept and valid");
    assert_eq!(c.meta.step, 4);
    assert_eq!(
        checkpoint::load_latest(&out.join("checkpoints"))
            .expect("latest")
            .meta
            .step,
        4
    );
    assert!(
        !s2.exists(),
        "keep_checkpoints = 1 prunes the older valid one"
    );
    assert!(stale.exists(), "a damaged folder is not deleted by pruning");
    let leftovers: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(metric_steps(&out), vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resume_on_a_changed_corpus_is_a_typed_error() {
    let dir = tmpdir("ri-corpus");
    let corpus = write_corpus(&dir);
    let out = dir.join("out");
    train(config(&corpus, 2, 2), &out, false);
    let before = metrics(&out);
    let original = std::fs::read_to_string(&corpus).expect("corpus");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() > 10);
    // Documents removed, then documents added.
    let fewer = lines[..lines.len() / 2].join("\n") + "\n";
    let more = format!("{original}{}", lines[..5].join("\n") + "\n");
    for changed in [fewer, more] {
        std::fs::write(&corpus, &changed).expect("change corpus");
        match resume_err(config(&corpus, 4, 2), &out) {
            Error::CorpusChanged { path, reason } => {
                assert_eq!(path, step_folder(&out, 2));
                assert!(reason.contains("documents"), "{reason}");
            }
            e => panic!("expected CorpusChanged, got {e}"),
        }
        assert_eq!(metrics(&out), before);
    }
    // The original corpus resumes.
    std::fs::write(&corpus, &original).expect("restore corpus");
    train(config(&corpus, 4, 2), &out, true);
    assert_eq!(metric_steps(&out), vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(dir);
}
