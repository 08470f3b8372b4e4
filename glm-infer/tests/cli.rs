//! End-to-end tests of the `glm` binary: file and interactive mode on a small seeded random model
//! whose vocabulary is the synthetic icetk tokenizer's (`GLM_TOKENIZER_DIR`, default
//! `../shared/tokenizer`), determinism under a seed, and the error messages for bad arguments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn glm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glm"))
}

fn tokenizer() -> PathBuf {
    glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder")
        .join("ice_text_synth.model")
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random tiny model with GLM-130B's vocabulary layout (150528 rows, specials at 150000).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tmp("model");
        let out = glm()
            .args([
                "init-random",
                "--preset",
                "tiny",
                "--vocab-size",
                "150528",
                "--glm130b-specials",
                "--seed",
                "3",
                "--out",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init-random: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn run(args: &[&str], extra: &[&Path]) -> Output {
    let mut cmd = glm();
    cmd.args(args);
    for p in extra {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

fn generate_files(dir: &Path, prompts: &Path, strategy: &[&str]) -> Vec<(String, String)> {
    let mut cmd = glm();
    cmd.arg("generate")
        .arg("--model")
        .arg(model_dir())
        .arg("--tokenizer")
        .arg(tokenizer());
    cmd.arg("--input-source")
        .arg(prompts)
        .arg("--output-path")
        .arg(dir);
    cmd.args(["--out-seq-length", "40"]).args(strategy);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn file_mode_writes_one_answer_file_per_prompt_deterministically() {
    let work = tmp("file");
    let prompts = work.join("prompts.txt");
    std::fs::write(
        &prompts,
        "The weather is [MASK] today.\n\n北京是中国的首都[gMASK]\nno mask at all\n",
    )
    .unwrap();
    let greedy = ["--top-k", "1"];
    let a = generate_files(&work.join("a"), &prompts, &greedy);
    assert_eq!(a.len(), 3, "one file per non-empty line: {a:?}");
    for (name, body) in &a {
        assert!(
            body.ends_with('\n') && body.lines().count() == 1,
            "{name}: {body:?}"
        );
    }
    assert!(
        a[0].1.contains("weather") && a[0].1.contains("today"),
        "the blank is filled in place: {:?}",
        a[0].1
    );
    let b = generate_files(&work.join("b"), &prompts, &greedy);
    assert_eq!(a, b, "greedy output is deterministic");
    let sampling = [
        "--top-k",
        "0",
        "--top-p",
        "0.9",
        "--temperature",
        "1.3",
        "--seed",
        "11",
    ];
    let s1 = generate_files(&work.join("s1"), &prompts, &sampling);
    let s2 = generate_files(&work.join("s2"), &prompts, &sampling);
    assert_eq!(s1, s2, "sampling is reproducible under a seed");
    let beams = [
        "--sampling-strategy",
        "BeamSearchStrategy",
        "--num-beams",
        "3",
        "--deterministic",
    ];
    let bs = generate_files(&work.join("beam"), &prompts, &beams);
    assert!(
        bs.iter().all(|(_, body)| body.lines().count() == 3),
        "every beam is written: {bs:?}"
    );
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn interactive_mode_reads_until_stop() {
    let work = tmp("interactive");
    let mut child = glm()
        .arg("generate")
        .arg("--model")
        .arg(model_dir())
        .arg("--tokenizer")
        .arg(tokenizer())
        .args(["--top-k", "1", "--out-seq-length", "32", "--output-path"])
        .arg(&work)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("Hello [MASK] world\nstop\nnever read\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Please Input Query (stop to exit) >>>"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("Output:").count(),
        1,
        "one query answered, then stop: {stdout}"
    );
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 1);
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn bad_arguments_give_clear_errors() {
    let work = tmp("errors");
    let prompts = work.join("p.txt");
    std::fs::write(&prompts, "1 2 3\n").unwrap();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let o = run(&["generate", "--model"], &[&work.join("absent")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("absent"), "{}", stderr(&o));

    let o = run(&["generate", "--device", "tpu", "--model"], &[model_dir()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown device `tpu`"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &["generate", "--dtype", "f8", "--input-source"],
        &[&prompts, Path::new("--model"), model_dir()],
    );
    assert!(stderr(&o).contains("unknown dtype"), "{}", stderr(&o));

    // The fixture model (vocab 1024, specials at 1000) does not fit the icetk tokenizer.
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let o = run(
        &["generate", "--model"],
        &[&fixtures, Path::new("--tokenizer"), &tokenizer()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not fit the model"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &["generate", "--tokenizer"],
        &[
            &work.join("missing.model"),
            Path::new("--model"),
            model_dir(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.model"), "{}", stderr(&o));

    let o = run(
        &["generate", "--out-seq-length", "100000", "--model"],
        &[model_dir()],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exceeds the model's max_sequence_length"),
        "{}",
        stderr(&o)
    );

    #[cfg(not(feature = "cuda"))]
    {
        let o = run(&["generate", "--device", "cuda", "--model"], &[model_dir()]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("built without"), "{}", stderr(&o));
    }
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn quantize_then_generate_with_int8_and_int4() {
    let work = tmp("quant");
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let prompts = work.join("p.txt");
    std::fs::write(&prompts, "585 293 517 710 791 149 356 721 701 231\n").unwrap();
    let out = run(
        &[
            "quantize",
            "--quantization-bit-width",
            "8",
            "--float-dtype",
            "f32",
        ],
        &[&fixtures, &work.join("int8")],
    );
    assert!(
        out.status.success(),
        "quantize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        work.join("int8/model.safetensors").is_file() && work.join("int8/config.json").is_file()
    );
    let marker =
        glm_core::quantized::read_quantization_marker(work.join("int8/model.safetensors")).unwrap();
    assert_eq!(marker.map(|(s, _)| s.bits()), Some(8));
    let answer = |model: &Path, extra: &[&str], tag: &str| {
        let dir = work.join(tag);
        let mut cmd = glm();
        cmd.arg("generate")
            .arg("--model")
            .arg(model)
            .arg("--input-source")
            .arg(&prompts);
        cmd.arg("--output-path")
            .arg(&dir)
            .args(["--top-k", "1", "--out-seq-length", "20"])
            .args(extra);
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read_to_string(
            std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap()
    };
    // A saved INT8 checkpoint and INT8 quantization on load give the same answer.
    let saved = answer(&work.join("int8"), &[], "g8-saved");
    let on_load = answer(&fixtures, &["--quantization-bit-width", "8"], "g8-load");
    assert_eq!(saved.lines().count(), 1);
    assert!(saved.starts_with("585 293 517"), "{saved}");
    assert_eq!(
        saved, on_load,
        "a saved INT8 checkpoint (f32 floats) equals quantizing on load"
    );
    answer(&fixtures, &["--quantization-bit-width", "4"], "g4-load");
    let o = run(
        &["generate", "--quantization-bit-width", "3", "--model"],
        &[&fixtures],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("quantization-bit-width"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_dir_all(&work).ok();
}
