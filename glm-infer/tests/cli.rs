//! End-to-end tests of the `glm` binary: file and interactive mode on a small seeded random model
//! whose vocabulary is the synthetic icetk tokenizer's (`GLM_TOKENIZER_DIR`, default
//! `../shared/tokenizer`), determinism under a seed, and the error messages for bad arguments;
//! beam search, greedy and sampling output files against the fixtures (`beam.json`,
//! `greedy.json`) on the fixture model; `glm quantize` (INT8 / INT4 against `quant_extra`'s
//! logits, in-place refusal, atomic config, stale outputs) and `init-random`'s size checks.
#![cfg(all(feature = "cli", feature = "eval"))]

mod common;

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

/// A fresh folder for `tag` under cargo's per-target temporary folder (emptied when made: runs do
/// not pile folders up in the system's temporary directory).
fn tmp(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("glm-cli-{tag}"));
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
    assert!(!o.status.success());
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

/// The a_gmask prompt of `greedy.json` and its context length.
fn a_gmask_prompt() -> (String, usize) {
    let greedy = common::read_json("greedy.json");
    let case = &greedy["a_gmask"];
    (
        case["prompt_text"].as_str().unwrap().to_string(),
        case["context_length"].as_u64().unwrap() as usize,
    )
}

/// argmax of row `row` of the `[1, seq, vocab]` logits `key` in `file`, checked to be decisive
/// (top-1 − top-2 well above the 1e-4 logit tolerance).
fn decisive_argmax(file: &str, key: &str, row: usize) -> u32 {
    let (values, shape) = common::tensor_f32(file, key);
    assert_eq!(shape.len(), 3, "{key}: shape {shape:?}");
    let vocab = shape[2];
    assert!(row < shape[1], "{key}: row {row} of {shape:?}");
    let logits = &values[row * vocab..(row + 1) * vocab];
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    assert!(
        logits[order[0]] - logits[order[1]] > 1e-3,
        "{key}: the fixture's top-2 logits are too close to decide a token"
    );
    order[0] as u32
}

#[test]
fn quantize_then_generate_with_int8_and_int4() {
    let work = tmp("quant");
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let (prompt_text, context_length) = a_gmask_prompt();
    let prompt_words: Vec<&str> = prompt_text.split_whitespace().collect();
    assert!(!prompt_words.is_empty());
    let prompts = work.join("p.txt");
    std::fs::write(&prompts, format!("{prompt_text}\n")).unwrap();
    let quantize = |bits: &str, out: &Path| {
        let o = run(
            &[
                "quantize",
                "--quantization-bit-width",
                bits,
                "--float-dtype",
                "f32",
            ],
            &[&fixtures, out],
        );
        assert!(
            o.status.success(),
            "quantize int{bits}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(fixtures.join("config.json")).unwrap(),
            "the config is copied unchanged"
        );
        let marker =
            glm_core::quantized::read_quantization_marker(out.join("model.safetensors")).unwrap();
        assert_eq!(
            marker.map(|(s, _)| s.bits().to_string()),
            Some(bits.to_string())
        );
    };
    quantize("8", &work.join("int8"));
    quantize("4", &work.join("int4"));
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
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{tag}: one answer file: {files:?}");
        std::fs::read_to_string(&files[0]).unwrap()
    };
    // The first generated token of each quantized model is the argmax of the original's
    // quantized logits at the <sop> row (quant_extra.safetensors, case a_gmask).
    let first_generated = |text: &str, tag: &str| -> u32 {
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(
            words.len() > prompt_words.len() && words[..prompt_words.len()] == prompt_words[..],
            "{tag}: the answer keeps the prompt: {text}"
        );
        words[prompt_words.len()].parse().unwrap()
    };
    for bits in ["8", "4"] {
        // A saved checkpoint (f32 floats) and quantization on load give the same answer.
        let saved = answer(
            &work.join(format!("int{bits}")),
            &[],
            &format!("g{bits}-saved"),
        );
        let on_load = answer(
            &fixtures,
            &["--quantization-bit-width", bits],
            &format!("g{bits}-load"),
        );
        assert_eq!(saved.lines().count(), 1, "{saved}");
        assert_eq!(
            saved, on_load,
            "int{bits}: a saved checkpoint equals quantizing on load"
        );
        let want = decisive_argmax(
            "quant_extra.safetensors",
            &format!("a_gmask.logits_int{bits}"),
            context_length - 1,
        );
        assert_eq!(
            first_generated(&saved, &format!("int{bits}")),
            want,
            "int{bits}: first generated token"
        );
    }
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

/// Issue 10, defect 6: `glm quantize m ./m` used to truncate `m/config.json` (paths compared as
/// spelled); a stale config of an earlier run survived next to a new model; the config copy was
/// not atomic.
#[test]
fn quantize_never_destroys_or_leaves_stale_outputs() {
    let work = tmp("quant-safety");
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let m = work.join("m");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(f), m.join(f)).unwrap();
    }
    let config_before = std::fs::read(m.join("config.json")).unwrap();
    let model_before = std::fs::read(m.join("model.safetensors")).unwrap();
    let quantize = |input: &Path, output: &Path, dir: &Path| {
        glm()
            .current_dir(dir)
            .args(["quantize", "--quantization-bit-width", "8"])
            .arg(input)
            .arg(output)
            .output()
            .unwrap()
    };
    // In place, spelled differently (and through a symlink): refused, nothing touched.
    let mut same: Vec<PathBuf> = vec![PathBuf::from("./m"), work.join("m/../m")];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&m, work.join("link")).unwrap();
        same.push(PathBuf::from("link"));
    }
    for out in &same {
        let o = quantize(Path::new("m"), out, &work);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "quantize m {}: succeeded",
            out.display()
        );
        assert!(err.contains("input's folder"), "{err}");
        assert_eq!(
            std::fs::read(m.join("config.json")).unwrap(),
            config_before,
            "config.json survives `quantize m {}`",
            out.display()
        );
        assert_eq!(
            std::fs::read(m.join("model.safetensors")).unwrap(),
            model_before,
            "the float weights survive `quantize m {}`",
            out.display()
        );
    }
    // A config from an earlier run is replaced (atomically: no temporary file is left).
    let out = work.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), "{\"stale\": true}").unwrap();
    let o = quantize(&m, &out, &work);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        config_before
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    // An input without a config: the stale config of the earlier run must not survive next to
    // the new weights.
    let bare = work.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(m.join("model.safetensors"), bare.join("model.safetensors")).unwrap();
    let o = quantize(&bare.join("model.safetensors"), &out, &work);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !out.join("config.json").exists(),
        "a config of another run stays next to the new weights"
    );
    assert!(out.join("model.safetensors").is_file());
    std::fs::remove_dir_all(&work).ok();
}

/// Issue 10, defect 4: `init-random --vocab-size` is checked before any folder is created or any
/// tensor allocated.
#[test]
fn init_random_refuses_absurd_vocabulary_sizes() {
    let work = tmp("init-limits");
    for (size, want) in [
        ("18446744073709551615", "vocab_size"),
        ("4611686018427387904", "vocab_size"),
        ("3", "special token"),
    ] {
        let out = work.join(format!("m{size}"));
        let o = glm()
            .args([
                "init-random",
                "--preset",
                "tiny",
                "--vocab-size",
                size,
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--vocab-size {size} accepted");
        assert_eq!(o.status.code(), Some(1), "--vocab-size {size}: {err}");
        assert!(
            err.contains("--vocab-size") && err.contains(want),
            "--vocab-size {size}: {err}"
        );
        assert!(!out.exists(), "--vocab-size {size}: a folder was created");
    }
    std::fs::remove_dir_all(&work).ok();
}

/// Beam search, greedy and sampling through `glm generate` on the fixture model (id prompts, no
/// tokenizer): every beam of every `beam.json` run, the greedy answers of `greedy.json`, and
/// sampled answers that keep their context and are reproducible under a seed.
#[test]
fn generate_files_match_the_fixture_beams_and_greedy_answers() {
    let work = tmp("fixture-gen");
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let cfg = common::config();
    let one_answer = |tag: &str, prompt: &str, args: &[String]| -> Vec<String> {
        let dir = work.join(tag);
        let prompts = work.join(format!("{tag}.txt"));
        std::fs::write(&prompts, format!("{prompt}\n")).unwrap();
        let o = glm()
            .arg("generate")
            .arg("--model")
            .arg(&fixtures)
            .arg("--input-source")
            .arg(&prompts)
            .arg("--output-path")
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{tag}: {files:?}");
        let body = std::fs::read_to_string(&files[0]).unwrap();
        assert!(body.ends_with('\n'), "{tag}: {body:?}");
        body.lines().map(str::to_string).collect()
    };

    // Every beam of every run, in order.
    let beam = common::read_json("beam.json");
    let runs = beam["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for (k, r) in runs.iter().enumerate() {
        let p = &beam["prompts"][r["prompt"].as_str().unwrap()];
        let input_len = p["input_tokens"].as_array().unwrap().len();
        let out_len = input_len + r["max_new_tokens"].as_u64().unwrap() as usize;
        let args: Vec<String> = [
            "--sampling-strategy",
            "BeamSearchStrategy",
            "--deterministic",
            "--num-beams",
            &r["num_beams"].to_string(),
            "--length-penalty",
            &r["length_penalty"].to_string(),
            "--no-repeat-ngram-size",
            &r["no_repeat_ngram_size"].to_string(),
            "--min-gen-length",
            &r["min_gen_length"].to_string(),
            "--out-seq-length",
            &out_len.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = one_answer(&format!("beam{k}"), p["raw_text"].as_str().unwrap(), &args);
        let want: Vec<String> = r["fill_blanks_answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "beam run {k}: every beam, best first");
        // Split over tensor-parallel ranks: every beam the same.
        if let Some(world) = (2..=4)
            .rev()
            .find(|&n| glm_core::parallel::TpLayout::new(n).check(&cfg).is_ok())
        {
            let split: Vec<String> = args
                .iter()
                .cloned()
                .chain(["--tensor-parallel".to_string(), world.to_string()])
                .collect();
            let got = one_answer(
                &format!("beam-tp{k}"),
                p["raw_text"].as_str().unwrap(),
                &split,
            );
            assert_eq!(
                got, want,
                "beam run {k} with --tensor-parallel {world}: every beam"
            );
        }
    }

    // Greedy through the sampling strategy (top-k 1, any temperature): greedy.json's answers.
    let greedy = common::read_json("greedy.json");
    let mut checked = 0;
    for (name, case) in greedy.as_object().unwrap() {
        let Some(text) = case.get("prompt_text").and_then(|v| v.as_str()) else {
            continue;
        };
        let out_len = case["context_length"].as_u64().unwrap() as usize
            + case["generated_tokens"].as_array().unwrap().len();
        let args: Vec<String> = ["--top-k", "1", "--temperature", "1.3", "--out-seq-length"]
            .iter()
            .map(|s| s.to_string())
            .chain([out_len.to_string()])
            .collect();
        let got = one_answer(&format!("greedy-{name}"), text, &args);
        assert_eq!(
            got,
            [case["fill_blanks_answer"].as_str().unwrap()],
            "{name}: greedy answer"
        );

        // Nucleus sampling: the context around the blank is kept, the blank holds at most the
        // budget of valid ids, and a seed reproduces the draw.
        let sampling: Vec<String> = [
            "--top-k",
            "0",
            "--top-p",
            "0.9",
            "--temperature",
            "1.3",
            "--seed",
            "11",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--out-seq-length".to_string(), out_len.to_string()])
        .collect();
        let s1 = one_answer(&format!("sample1-{name}"), text, &sampling);
        let s2 = one_answer(&format!("sample2-{name}"), text, &sampling);
        assert_eq!(s1, s2, "{name}: sampling is reproducible under a seed");
        // Split over tensor-parallel ranks: the same greedy answer, the same seeded draw (every
        // rank samples from the same logits with the same seed).
        if let Some(world) = (2..=4)
            .rev()
            .find(|&n| glm_core::parallel::TpLayout::new(n).check(&cfg).is_ok())
        {
            let tp = ["--tensor-parallel".to_string(), world.to_string()];
            let split: Vec<String> = args.iter().chain(&tp).cloned().collect();
            let got = one_answer(&format!("greedy-tp-{name}"), text, &split);
            assert_eq!(
                got,
                [case["fill_blanks_answer"].as_str().unwrap()],
                "{name}: greedy answer with --tensor-parallel {world}"
            );
            let split: Vec<String> = sampling.iter().chain(&tp).cloned().collect();
            let drawn = one_answer(&format!("sample-tp-{name}"), text, &split);
            assert_eq!(
                drawn, s1,
                "{name}: seeded draw with --tensor-parallel {world}"
            );
        }
        assert_eq!(s1.len(), 1, "{name}: one sampled answer");
        let words: Vec<&str> = text.split_whitespace().collect();
        let mask = words
            .iter()
            .position(|w| w.starts_with('[') && w.ends_with(']'));
        let (before, after): (&[&str], &[&str]) = match mask {
            Some(i) => (&words[..i], &words[i + 1..]),
            None => (&words[..], &[]),
        };
        let got: Vec<&str> = s1[0].split_whitespace().collect();
        assert!(
            got.len() >= before.len() + after.len()
                && got[..before.len()] == *before
                && got[got.len() - after.len()..] == *after,
            "{name}: the sampled answer keeps the context: {}",
            s1[0]
        );
        let blank = &got[before.len()..got.len() - after.len()];
        let budget = case["generated_tokens"].as_array().unwrap().len();
        assert!(blank.len() <= budget, "{name}: {} > {budget}", blank.len());
        for id in blank {
            let id: usize = id.parse().unwrap();
            assert!(id < cfg.vocab_size, "{name}: id {id}");
        }
        checked += 1;
    }
    assert!(checked > 0, "greedy.json has no prompt case");
    std::fs::remove_dir_all(&work).ok();
}

/// `glm convert` writes an original SAT folder split over ranks (and back to safetensors); `glm
/// generate --tensor-parallel` runs each rank from its own file and gives greedy.json's answers.
#[test]
fn convert_to_sat_then_generate_split_over_ranks() {
    let work = tmp("convert");
    let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").unwrap();
    let cfg = common::config();
    let world = (2..=4)
        .rev()
        .find(|&n| glm_core::parallel::TpLayout::new(n).check(&cfg).is_ok())
        .expect("a degree the fixture config divides");
    let sat = work.join("sat");
    let o = run(
        &[
            "convert",
            "--tensor-parallel",
            &world.to_string(),
            "--dtype",
            "f32",
        ],
        &[&fixtures, &sat],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = glm_core::weights::SatCheckpoint::open(&sat).unwrap();
    assert_eq!(ckpt.tensor_parallel(), world);
    let st = work.join("st");
    let o = run(
        &["convert", "--format", "safetensors", "--dtype", "f32"],
        &[&sat, &st],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Back in safetensors: the original tensors, bit for bit (f32 all the way).
    use glm_core::weights::WeightSource;
    let (a, b) = (
        glm_core::weights::SafetensorsFile::open(fixtures.join("model.safetensors")).unwrap(),
        glm_core::weights::SafetensorsFile::open(st.join("model.safetensors")).unwrap(),
    );
    assert_eq!(a.names().len(), b.names().len());
    for name in a.names() {
        assert!(
            a.load(&name).unwrap().as_bytes() == b.load(&name).unwrap().as_bytes(),
            "{name}"
        );
    }
    // Converting onto its own input is refused.
    let o = run(&["convert"], &[&sat, &sat]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("input's folder"));
    let greedy = common::read_json("greedy.json");
    let (name, case) = greedy
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| c.get("prompt_text").is_some())
        .expect("a prompt_text case");
    let prompts = work.join("prompts.txt");
    std::fs::write(
        &prompts,
        format!("{}\n", case["prompt_text"].as_str().unwrap()),
    )
    .unwrap();
    let out_len = case["context_length"].as_u64().unwrap() as usize
        + case["generated_tokens"].as_array().unwrap().len();
    let answers = work.join("answers");
    let o = glm()
        .arg("generate")
        .arg("--model")
        .arg(&sat)
        .arg("--input-source")
        .arg(&prompts)
        .arg("--output-path")
        .arg(&answers)
        .args(["--top-k", "1", "--out-seq-length", &out_len.to_string()])
        .args(["--tensor-parallel", &world.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<PathBuf> = std::fs::read_dir(&answers)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap().trim_end(),
        case["fill_blanks_answer"].as_str().unwrap(),
        "{name}"
    );
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn timing_reports_the_first_token_and_seconds_per_token_only_when_asked() {
    let work = tmp("timing");
    let prompts = work.join("prompts.txt");
    std::fs::write(&prompts, "The weather is [MASK] today.\n").unwrap();
    let run = |timing: bool| {
        let mut cmd = glm();
        cmd.arg("generate")
            .arg("--model")
            .arg(model_dir())
            .arg("--tokenizer")
            .arg(tokenizer())
            .arg("--input-source")
            .arg(&prompts)
            .arg("--output-path")
            .arg(work.join(if timing { "t" } else { "n" }))
            .args(["--top-k", "1", "--out-seq-length", "40"]);
        if timing {
            cmd.arg("--timing");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(true);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("timing: first token after "))
        .unwrap_or_else(|| panic!("no timing line in {stderr:?}"));
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    // First-token seconds, then (when more than one token was generated) s/token and the count.
    assert!(numbers.first().is_some_and(|&t| t > 0.0), "{line}");
    match numbers[..] {
        [_] => assert!(!line.contains("then"), "{line}"),
        [_, per_token, n] => assert!(per_token >= 0.0 && n >= 1.0 && line.contains("then")),
        _ => panic!("unexpected timing line {line:?}"),
    }
    assert!(!run(false).contains("timing:"));
    std::fs::remove_dir_all(&work).ok();
}
