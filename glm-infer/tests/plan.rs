//! `glm plan`: the GLM-130B README's hardware table comes out right, and on the CPU the predicted
//! total is within 15% of the peak resident set measured while `glm generate` runs.
//!
//! Peak memory is the child's `ru_maxrss` from `wait4` (kernel accounting of its resident set,
//! file-backed pages of the memory-mapped weights included). The CPU backend's fixed allowance
//! (`--workspace`: the process's code and runtime) is the peak of the same command on the smallest
//! model, measured here too.
#![cfg(all(feature = "cli", feature = "eval"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn glm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glm"))
}

fn plan_json(args: &[&str]) -> Value {
    let out = glm().arg("plan").args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "glm plan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_glm_130b_hardware_table() {
    // (what, flags, fits): README "Hardware" (8×A100 FP16 at 2048 tokens; V100 FP16, 3090 INT8,
    // 3090 INT4, 2080 Ti INT4 at 512) and 4×3090 without quantization, which cannot hold 260 GB.
    let rows: [(&str, &[&str], bool); 6] = [
        (
            "8xA100-40G FP16",
            &[
                "--dtype",
                "f16",
                "--tensor-parallel",
                "8",
                "--device-memory",
                "40GiB",
                "--sequence-length",
                "2048",
            ],
            true,
        ),
        (
            "8xV100-32G FP16",
            &[
                "--dtype",
                "f16",
                "--tensor-parallel",
                "8",
                "--device-memory",
                "32GiB",
                "--sequence-length",
                "512",
            ],
            true,
        ),
        (
            "8xRTX3090 INT8",
            &[
                "--quantization-bit-width",
                "8",
                "--tensor-parallel",
                "8",
                "--device-memory",
                "24GiB",
                "--sequence-length",
                "512",
            ],
            true,
        ),
        (
            "4xRTX3090 INT4",
            &[
                "--quantization-bit-width",
                "4",
                "--tensor-parallel",
                "4",
                "--device-memory",
                "24GiB",
                "--sequence-length",
                "512",
            ],
            true,
        ),
        (
            "8xRTX2080Ti INT4",
            &[
                "--quantization-bit-width",
                "4",
                "--tensor-parallel",
                "8",
                "--device-memory",
                "11GiB",
                "--sequence-length",
                "512",
            ],
            true,
        ),
        (
            "4xRTX3090 FP16",
            &[
                "--dtype",
                "f16",
                "--tensor-parallel",
                "4",
                "--device-memory",
                "24GiB",
                "--sequence-length",
                "512",
            ],
            false,
        ),
    ];
    for (what, flags, fits) in rows {
        let mut args = vec!["--preset", "glm-130b", "--batch", "1"];
        args.extend_from_slice(flags);
        let p = plan_json(&args);
        assert_eq!(p["fits"].as_bool(), Some(fits), "{what}: {p}");
        let devices = p["devices"].as_array().unwrap();
        let tp: usize = flags[flags
            .iter()
            .position(|f| *f == "--tensor-parallel")
            .unwrap()
            + 1]
        .parse()
        .unwrap();
        assert_eq!(devices.len(), tp, "{what}");
        assert_eq!(p["embedding"], "vocab_parallel", "{what}");
    }
    // The weights of one 40 GB A100 rank: 1/8 of every linear, 1/8 of the vocabulary, in fp16.
    let p = plan_json(&[
        "--preset",
        "glm-130b",
        "--dtype",
        "f16",
        "--tensor-parallel",
        "8",
        "--device-memory",
        "40GiB",
    ]);
    let (h, f, layers, vocab) = (12288u64, 32768u64, 70u64, 150528u64);
    let w = &p["devices"][0]["weights"];
    assert_eq!(
        w["linears"].as_u64().unwrap(),
        (4 * h * h + 3 * f * h) / 8 * layers * 2
    );
    assert_eq!(w["embedding"].as_u64().unwrap(), vocab / 8 * h * 2);
    // Offload: a budget that holds only some layers still runs (BMInf's row).
    let p = plan_json(&[
        "--preset",
        "glm-130b",
        "--dtype",
        "f16",
        "--device-memory",
        "24GiB",
        "--offload",
        "--sequence-length",
        "512",
    ]);
    let d = &p["devices"][0];
    let resident = d["resident_layers"].as_u64().unwrap();
    assert!(
        p["fits"].as_bool().unwrap() && resident >= 1 && resident < layers,
        "{p}"
    );
    // Bad requests are errors, not panics.
    for bad in [
        &[
            "--preset",
            "glm-130b",
            "--tensor-parallel",
            "7",
            "--device-memory",
            "24GiB",
        ][..],
        &["--preset", "glm-130b", "--device-memory", "24 parsecs"],
        &[
            "--preset",
            "glm-130b",
            "--device-memory",
            "24GiB",
            "--device-memory",
            "24GiB",
        ],
    ] {
        let out = glm().arg("plan").args(bad).output().unwrap();
        assert!(
            !out.status.success() && out.status.code() == Some(1),
            "{bad:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{bad:?}"
        );
    }
}

/// Runs `cmd` and returns its peak resident set in bytes (`wait4`'s `ru_maxrss`, KiB on Linux).
// The child is reaped by `wait4` below, which `Child::wait` cannot do while reporting rusage.
#[allow(clippy::zombie_processes)]
fn peak_rss(cmd: &mut Command) -> u64 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call with valid pointers to locals; the child is ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {cmd:?}"
    );
    usage.ru_maxrss as u64 * 1024
}

/// `glm init-random --out dir/name ARGS`, asserting success; the output folder.
fn init_random(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let st = glm()
        .arg("init-random")
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-plan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn generate(model: &Path, prompt: &Path, out: &Path, total: usize) -> Command {
    let mut c = glm();
    c.args(["generate", "--top-k", "1", "--out-seq-length"])
        .arg(total.to_string())
        .arg("--model")
        .arg(model)
        .arg("--input-source")
        .arg(prompt)
        .arg("--output-path")
        .arg(out);
    c
}

#[test]
fn cpu_prediction_is_within_15_percent_of_the_measured_peak() {
    let dir = tmp("cpu");
    let init = |preset: &str| init_random(&dir, preset, &["--preset", preset]);
    let (tiny, small) = (init("tiny"), init("small"));
    let config: Value =
        serde_json::from_slice(&std::fs::read(small.join("config.json")).unwrap()).unwrap();
    let max_len = config["max_sequence_length"].as_u64().unwrap() as usize;
    let total = max_len.min(160);
    let prompt_len = total / 2;
    let prompt = dir.join("prompt.txt");
    let ids: Vec<String> = (0..prompt_len).map(|i| (5 + i % 50).to_string()).collect();
    std::fs::write(&prompt, ids.join(" ") + "\n").unwrap();
    // The CPU backend's fixed allowance: the same command on the smallest model, short prompt.
    let short = dir.join("short.txt");
    std::fs::write(&short, "5 6 7 8\n").unwrap();
    let baseline = peak_rss(&mut generate(&tiny, &short, &dir.join("o1"), 12));
    let measured = peak_rss(&mut generate(&small, &prompt, &dir.join("o2"), total));
    let p = plan_json(&[
        "--config",
        small.join("config.json").to_str().unwrap(),
        "--dtype",
        "f32",
        "--device-memory",
        "64GiB",
        "--sequence-length",
        &total.to_string(),
        "--workspace",
        &baseline.to_string(),
    ]);
    let predicted = p["devices"][0]["total"].as_u64().unwrap();
    let err = (predicted as f64 - measured as f64).abs() / measured as f64;
    println!(
        "predicted {predicted} B, measured {measured} B (baseline {baseline} B): {:.1}% off",
        err * 100.0
    );
    assert!(
        err <= 0.15,
        "predicted {predicted} B vs measured peak {measured} B ({:.1}% off)",
        err * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_random_streams_loadable_seeded_checkpoints() {
    let dir = tmp("init");
    let write = |name: &str, extra: &[&str]| {
        let mut args = vec!["--preset", "tiny"];
        args.extend_from_slice(extra);
        init_random(&dir, name, &args)
    };
    let a = write(
        "a",
        &[
            "--seed",
            "3",
            "--quantization-bit-width",
            "4",
            "--tensor-parallel",
            "2",
        ],
    );
    let b = write(
        "b",
        &[
            "--seed",
            "3",
            "--quantization-bit-width",
            "4",
            "--tensor-parallel",
            "2",
        ],
    );
    let c = write(
        "c",
        &[
            "--seed",
            "4",
            "--quantization-bit-width",
            "4",
            "--tensor-parallel",
            "2",
        ],
    );
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, same checkpoint");
    assert_ne!(bytes(&a), bytes(&c), "another seed, other weights");
    let header =
        glm_core::quantized::read_safetensors_metadata(a.join("model.safetensors")).unwrap();
    assert_eq!(
        header.get("tensor_parallel").map(String::as_str),
        Some("2"),
        "{header:?}"
    );
    // It loads as a quantized model and generates.
    let prompt = dir.join("p.txt");
    std::fs::write(&prompt, "5 6 7 8\n").unwrap();
    let out = generate(&a, &prompt, &dir.join("o"), 12).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
