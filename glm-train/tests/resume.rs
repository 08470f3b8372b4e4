//! Kill-and-resume: the `glm-train` binary on `examples/configs/tiny-train.json` (shortened), killed
//! with SIGKILL at several moments and resumed, writes exactly the per-step losses of an
//! uninterrupted run (bit for bit on the CPU backend).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tmpdir;
use glm_train::trainer::read_metrics;

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
    v["steps"] = 12.into();
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
    assert_eq!(want.len(), 12);

    // Kill after a given number of metric lines, plus once with a timer that lands anywhere
    // (possibly inside a checkpoint write).
    let out = dir.join("killed");
    let mut first = true;
    for kill_after in [1usize, 4, 7, 0] {
        let mut child = cli(&config, &out, !first).spawn().expect("spawn");
        first = false;
        let start = Instant::now();
        loop {
            let done = child.try_wait().expect("wait").is_some();
            let n = lines(&out);
            let timer = kill_after == 0 && start.elapsed() > Duration::from_millis(1500);
            if done
                || (kill_after > 0 && n >= kill_after)
                || timer
                || start.elapsed() > Duration::from_secs(300)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
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
