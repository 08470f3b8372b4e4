//! Kill-and-resume: the `glm-train` binary on `examples/configs/tiny-train.json` (shortened), killed
//! with SIGKILL at several moments and resumed, writes exactly the per-step losses of an
//! uninterrupted run (bit for bit on the CPU backend).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tmpdir;
use glm_train::checkpoint;
use glm_train::trainer::read_metrics;

/// Steps of the shortened run.
const STEPS: usize = 12;

fn config(dir: &Path) -> PathBuf {
    let root = glm_core::data_dir::workspace_root();
    let text = std::fs::read_to_string(root.join("examples/configs/tiny-train.json"))
        .expect("tiny-train.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    // Absolute data paths (the test runs from the crate folder) and a short run.
    let tokenizer = glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder");
    v["data"]["train"] = serde_json::json!([root.join("glm-train/data/bilingual.txt")]);
    v["data"]["mip"] = serde_json::json!(root.join("glm-train/data/instructions.jsonl"));
    v["data"]["tokenizer"] = serde_json::json!(tokenizer.join("ice_text_synth.model"));
    v["data"]["cache_dir"] = serde_json::json!(dir.join("cache"));
    v["steps"] = STEPS.into();
    v["checkpoint_every"] = 2.into();
    v["validate_every"] = 4.into();
    v["batch_size"] = 2.into();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write");
    path
}

fn cli(config: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glm-train"));
    c.arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--quiet");
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Waits until `out` holds `n` metric lines, waits `delay`, then SIGKILLs `child` and asserts it
/// was still running (killed by the signal, not finished) and had written fewer lines than a
/// complete run.
fn kill_after(child: &mut Child, out: &Path, n: usize, delay: Duration) {
    let start = Instant::now();
    while lines(out) < n {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before {n} metric lines");
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no {n} metric lines in time"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the run finished before it could be killed"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }
    assert!(!status.success());
    assert!(lines(out) < STEPS, "killed mid-run");
}

fn lines(out: &Path) -> usize {
    read_metrics(&out.join("metrics.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn killed_and_resumed_run_repeats_the_losses_bit_for_bit() {
    let dir = tmpdir("resume");
    let config = config(&dir);
    let reference = dir.join("reference");
    let status = cli(&config, &reference, false).status().expect("run");
    assert!(status.success());
    let want = read_metrics(&reference.join("metrics.jsonl")).expect("metrics");
    assert_eq!(want.len(), STEPS);
    // The run's plot (redrawn at every checkpoint): the loss series has one point per step.
    let svg = std::fs::read_to_string(reference.join(glm_train::plot::PLOT_FILE)).expect("plot");
    let loss_points: Vec<usize> = svg
        .split("<polyline")
        .filter(|el| {
            el.split("/>")
                .next()
                .is_some_and(|el| el.contains("stroke=\"#0000FF\""))
        })
        .filter_map(|el| el.split("points=\"").nth(1)?.split('"').next())
        .map(|points| points.split_whitespace().count())
        .collect();
    assert_eq!(
        loss_points,
        vec![STEPS],
        "loss polyline of {}",
        reference.display()
    );

    // A run killed before its first checkpoint cannot be resumed: a clear error, and its history
    // stays byte for byte.
    let early = dir.join("early");
    let mut child = cli(&config, &early, false).spawn().expect("spawn");
    kill_after(&mut child, &early, 1, Duration::ZERO);
    assert!(
        checkpoint::load_latest(&early.join("checkpoints")).is_none(),
        "killed before the first checkpoint"
    );
    let history = std::fs::read(early.join("metrics.jsonl")).expect("metrics");
    let refused = cli(&config, &early, true)
        .stderr(Stdio::piped())
        .output()
        .expect("resume");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("no valid checkpoint"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(early.join("metrics.jsonl")).expect("metrics"),
        history
    );

    // Kill after a given number of metric lines (the checkpoint of step 2 exists from line 3
    // on; a kill right after an even line lands in that step's checkpoint write), plus once a
    // few milliseconds after a line, wherever that is.
    let out = dir.join("killed");
    for (run, (after, delay)) in [(3usize, 0u64), (6, 0), (8, 0), (9, 40)]
        .into_iter()
        .enumerate()
    {
        let mut child = cli(&config, &out, run > 0).spawn().expect("spawn");
        kill_after(&mut child, &out, after, Duration::from_millis(delay));
        let newest = checkpoint::load_latest(&out.join("checkpoints"))
            .map(|c| c.meta.step)
            .expect("a checkpoint exists");
        assert!(
            newest < want.len() as u64,
            "run {run}: newest checkpoint {newest} is the final one"
        );
    }
    let status = cli(&config, &out, true).status().expect("resume");
    assert!(status.success());
    let got = read_metrics(&out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.step, w.step);
        assert_eq!(
            g.loss.to_bits(),
            w.loss.to_bits(),
            "step {}: {} vs {}",
            g.step,
            g.loss,
            w.loss
        );
        assert_eq!(
            g.grad_norm.map(f64::to_bits),
            w.grad_norm.map(f64::to_bits),
            "step {}",
            g.step
        );
        assert_eq!(g.lr.to_bits(), w.lr.to_bits());
        assert_eq!(g.val_loss.map(f64::to_bits), w.val_loss.map(f64::to_bits));
    }
    let _ = std::fs::remove_dir_all(dir);
}
