//! Golden tests of the evaluation harness against the ORIGINAL `evaluate.py` run recorded in
//! `eval.json` (fixtures `eval/`): per-sample layouts (tokens, position ids, attention masks),
//! choice log-probabilities, predictions, per-file accuracy, window losses, perplexity, the
//! max / median / average summaries and the printed report; plus `glm evaluate` end to end.
#![cfg(all(feature = "cli", feature = "eval"))]

mod common;

use std::path::PathBuf;

use common::*;
use glm_infer::eval::data::{self, TokenFields};
use glm_infer::eval::runner::{FileDetails, TaskReport};
use glm_infer::eval::{self, lm, mc, CollectLines, EvalOptions, TaskConfig};
use glm_infer::IdCodec;
use serde_json::Value;

fn eval_dir() -> PathBuf {
    fixtures().join("eval")
}

fn task_files(json: &Value) -> Vec<PathBuf> {
    // The order of the recorded run: multiple choice first, then language modelling.
    let root = fixtures();
    vec![
        root.join(json["multiple_choice"]["yaml"].as_str().unwrap()),
        root.join(json["language_model"]["yaml"].as_str().unwrap()),
    ]
}

fn run_all() -> (Value, Vec<String>, eval::Report) {
    let json = read_json("eval.json");
    let model = model();
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(&task_files(&json), &mut lines).expect("task files");
    let options = EvalOptions {
        data_root: eval_dir().join("data"),
        token_losses: true,
        ..Default::default()
    };
    let report =
        eval::evaluate_tasks(&model, &IdCodec, &tasks, &options, &mut lines).expect("evaluation");
    (json, lines.0, report)
}

fn close_rel(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-12)
}

fn find_task<'a>(report: &'a eval::Report, name: &str) -> &'a TaskReport {
    report
        .tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("task {name} missing"))
}

#[test]
fn harness_matches_the_original_run() {
    let (json, lines, report) = run_all();

    // Multiple choice: per sample log-probs (1e-4), predictions, per-file accuracy, summary.
    let mcj = &json["multiple_choice"];
    let task = find_task(&report, mcj["task"].as_str().unwrap());
    let group = &task.groups[0];
    let want_files = mcj["files"].as_object().unwrap();
    assert_eq!(group.files.len(), want_files.len());
    assert!(!group.files.is_empty(), "no file evaluated");
    for file in &group.files {
        let want = &want_files[&file.file];
        assert_eq!(
            file.num_samples as u64,
            want["num_samples"].as_u64().unwrap(),
            "{}",
            file.file
        );
        assert_eq!(
            file.metrics[0].value,
            want["accuracy"].as_f64().unwrap(),
            "{}: accuracy",
            file.file
        );
        let FileDetails::MultiChoice {
            is_single_token,
            samples,
        } = &file.details
        else {
            panic!("not mul")
        };
        assert_eq!(
            *is_single_token,
            want["is_single_token"].as_bool().unwrap(),
            "{}",
            file.file
        );
        let want_samples = want["samples"].as_array().unwrap();
        assert_eq!(samples.len(), want_samples.len(), "{}: samples", file.file);
        assert!(!samples.is_empty(), "{}: no sample", file.file);
        for (got, w) in samples.iter().zip(want_samples) {
            let exp: Vec<f64> = w["choice_log_probs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.choice_log_probs.len(), exp.len());
            for (g, e) in got.choice_log_probs.iter().zip(&exp) {
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-4,
                    "{} #{}: {:?} vs {exp:?}",
                    file.file,
                    w["index"],
                    got.choice_log_probs
                );
            }
            assert_eq!(
                got.prediction as u64,
                w["prediction"].as_u64().unwrap(),
                "{} #{}",
                file.file,
                w["index"]
            );
            assert_eq!(got.label, w["label"].as_i64().unwrap());
        }
    }
    let gm = &mcj["group_metrics"];
    let s = &group.stats[0].stats;
    assert_eq!(
        (s.max, s.median, s.average),
        (
            gm["max"].as_f64().unwrap(),
            gm["median"].as_f64().unwrap(),
            gm["average"].as_f64().unwrap()
        )
    );

    // Language modelling: window losses (relative 1e-5), token losses, PPL (relative 1e-4).
    let lmj = &json["language_model"];
    let task = find_task(&report, lmj["task"].as_str().unwrap());
    let group = &task.groups[0];
    let want_files = lmj["files"].as_object().unwrap();
    assert_eq!(group.files.len(), want_files.len());
    assert!(!group.files.is_empty(), "no file evaluated");
    for file in &group.files {
        let want = &want_files[&file.file];
        let FileDetails::LanguageModel { documents } = &file.details else {
            panic!("not lm")
        };
        let doc = &documents[0];
        assert_eq!(
            doc.num_tokens as u64,
            want["num_tokens"].as_u64().unwrap(),
            "{}",
            file.file
        );
        assert_eq!(
            doc.num_original_tokens as u64,
            want["num_original_tokens"].as_u64().unwrap(),
            "{}",
            file.file
        );
        assert_eq!(
            file.num_samples as u64,
            want["num_windows"].as_u64().unwrap(),
            "{}",
            file.file
        );
        assert_eq!(
            documents.len(),
            1,
            "{}: one document per text file",
            file.file
        );
        let want_windows = want["windows"].as_array().unwrap();
        assert_eq!(
            doc.windows.len(),
            want_windows.len(),
            "{}: windows",
            file.file
        );
        for (w, ww) in doc.windows.iter().zip(want_windows) {
            let exp = ww["loss"].as_f64().unwrap();
            assert!(
                close_rel(w.loss, exp, 1e-5),
                "{} window {}: loss {} vs {exp}",
                file.file,
                ww["window"],
                w.loss
            );
            assert_eq!(
                w.prompt_length as u64,
                ww["prompt_length"].as_u64().unwrap()
            );
            let tl = w.token_losses.as_ref().unwrap();
            let exp_tl = ww["token_losses"].as_array().unwrap();
            assert_eq!(tl.len(), exp_tl.len());
            for (g, e) in tl.iter().zip(exp_tl) {
                assert!(
                    (f64::from(*g) - e.as_f64().unwrap()).abs() <= 1e-4,
                    "{} window {}: token loss",
                    file.file,
                    ww["window"]
                );
            }
        }
        assert!(
            close_rel(doc.total_loss, want["total_loss"].as_f64().unwrap(), 1e-5),
            "{}: total",
            file.file
        );
        assert!(
            close_rel(file.metrics[0].value, want["ppl"].as_f64().unwrap(), 1e-4),
            "{}: ppl {}",
            file.file,
            file.metrics[0].value
        );
    }
    let gm = &lmj["group_metrics"];
    let s = &group.stats[0].stats;
    for (got, key) in [(s.max, "max"), (s.median, "median"), (s.average, "average")] {
        assert!(
            close_rel(got, gm[key].as_f64().unwrap(), 1e-4),
            "group {key}: {got}"
        );
    }

    // The printed report, line for line (timings and absolute paths normalised), numbers
    // included.
    let want = harness_stdout(&json);
    let got: Vec<String> = lines.iter().map(|l| normalise_line(l)).collect();
    assert_report_lines(&got, &want, &json);
}

/// The original's stdout (`eval.json` → `harness_stdout`).
fn harness_stdout(json: &Value) -> Vec<String> {
    json["harness_stdout"]
        .as_array()
        .expect("harness_stdout")
        .iter()
        .map(|v| v.as_str().expect("a line").to_string())
        .collect()
}

/// Absolute fixture paths back to the relative ones of the recorded run (cwd `eval/`), timings
/// to `<t>`.
fn normalise_line(line: &str) -> String {
    let data = eval_dir().join("data");
    let tasks_dir = eval_dir().join("tasks");
    let l = line
        .replace(&format!("{}/", data.display()), "data/")
        .replace(&format!("{}/", tasks_dir.display()), "tasks/");
    regex_free_timing(&l)
}

/// Splits a line into its text (numbers replaced by `#`) and its numbers.
fn split_numbers(line: &str) -> (String, Vec<f64>) {
    let mut text = String::new();
    let mut numbers = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if starts_number {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let token: String = chars[start..i].iter().collect();
            match token.parse::<f64>() {
                Ok(v) => {
                    numbers.push(v);
                    text.push('#');
                }
                Err(_) => text.push_str(&token),
            }
        } else {
            text.push(chars[i]);
            i += 1;
        }
    }
    (text, numbers)
}

/// Compares printed report lines with the original's: the text exactly, the numbers of `PPL`
/// lines within the fixture README's relative tolerance for perplexities (`eval.json` →
/// `tolerance`, 1e-4) plus the half unit of the printed third decimal, every other number
/// exactly (accuracies and counts are exact).
fn assert_report_lines(got: &[String], want: &[String], json: &Value) {
    let ppl_rel = ppl_tolerance(json);
    assert_eq!(got.len(), want.len(), "{got:#?}");
    assert!(!want.is_empty(), "the recorded run printed nothing");
    let mut ppl_lines = 0;
    for (g, w) in got.iter().zip(want) {
        let (gt, gn) = split_numbers(g);
        let (wt, wn) = split_numbers(w);
        assert_eq!(gt, wt, "{g} vs {w}");
        assert_eq!(gn.len(), wn.len(), "{g} vs {w}");
        if w.contains("PPL") {
            ppl_lines += 1;
            for (a, b) in gn.iter().zip(&wn) {
                assert!(
                    (a - b).abs() <= ppl_rel * b.abs() + 5e-4,
                    "{g} vs {w}: {a} vs {b}"
                );
            }
        } else {
            assert_eq!(g, w);
        }
    }
    assert!(ppl_lines > 0, "no PPL line was compared");
}

/// The perplexity tolerance the fixtures state (`eval.json` → `tolerance.ppl`, e.g.
/// `"relative 1e-4"`).
fn ppl_tolerance(json: &Value) -> f64 {
    let text = json["tolerance"]["ppl"]
        .as_str()
        .expect("eval.json: tolerance.ppl");
    assert!(text.starts_with("relative"), "{text}");
    text.split_whitespace()
        .find_map(|w| w.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no number in tolerance.ppl `{text}`"))
}

/// Replaces `in 12.3s` by `in <t>s`.
fn regex_free_timing(line: &str) -> String {
    match line.rfind(" in ") {
        Some(at) if line.ends_with('s') || line.ends_with("s.") => {
            let tail = &line[at + 4..];
            let num = tail.trim_end_matches('.').trim_end_matches('s');
            if num.parse::<f64>().is_ok() {
                let suffix = if line.ends_with("s.") { "s." } else { "s" };
                return format!("{} in <t>{suffix}", &line[..at]);
            }
            line.to_string()
        }
        _ => line.to_string(),
    }
}

#[test]
fn layouts_match_the_original_datasets() {
    let json = read_json("eval.json");
    let cfg = config();
    let specials = cfg.special_tokens;
    let mcj = &json["multiple_choice"];
    let task = TaskConfig::from_file(&fixtures().join(mcj["yaml"].as_str().unwrap())).unwrap();
    assert_eq!(
        task.max_seq_length as u64,
        mcj["max_seq_length"].as_u64().unwrap()
    );
    assert_eq!(
        task.micro_batch_size as u64,
        mcj["micro_batch_size"].as_u64().unwrap()
    );
    let data_root = eval_dir().join("data").join(&task.path);
    for (name, want) in mcj["files"].as_object().unwrap() {
        let path = data_root.join(name);
        let fields = TokenFields {
            path: &path,
            codec: &IdCodec,
            vocab_size: cfg.vocab_size,
        };
        let items = data::read_choice_file(&fields).unwrap();
        let samples = mc::prepare_file(
            &items,
            task.max_seq_length,
            task.choice_encoding(),
            &specials,
            &path,
        )
        .unwrap();
        let want_samples = want["samples"].as_array().unwrap();
        assert_eq!(samples.len(), want_samples.len(), "{name}: samples");
        assert!(!samples.is_empty(), "{name}: no sample");
        for (s, w) in samples.iter().zip(want_samples) {
            let tag = format!("{name} #{}", w["index"]);
            assert_eq!(
                s.text,
                ints(&w["inputs_after_truncation"]),
                "{tag}: truncation"
            );
            assert_eq!(s.tokens, ints(&w["tokens"]), "{tag}: tokens");
            assert_eq!(s.position_ids, ints(&w["position_ids"]), "{tag}: positions");
            let n = s.tokens.len();
            let may: Vec<Vec<u32>> = (0..n)
                .map(|i| (0..n).map(|j| u32::from(!s.mask[i * n + j])).collect())
                .collect();
            assert_eq!(
                may,
                ints2(&w["attention_mask_may_attend"]),
                "{tag}: attention"
            );
            let targets: Vec<u32> = s
                .choice_target_ids
                .iter()
                .flatten()
                .map(|&r| r as u32)
                .collect();
            let want_targets: Vec<u32> = match &w["choice_target_ids"] {
                Value::Array(a) if a.iter().all(Value::is_array) => {
                    ints2(&w["choice_target_ids"]).concat()
                }
                other => ints(other),
            };
            assert_eq!(targets, want_targets, "{tag}: choice target rows");
        }
    }
    let lmj = &json["language_model"];
    let task = TaskConfig::from_file(&fixtures().join(lmj["yaml"].as_str().unwrap())).unwrap();
    let eval::TaskKind::LanguageModel(settings) = &task.kind else {
        panic!("not lm")
    };
    assert_eq!(
        settings.generation_length as u64,
        lmj["generation_length"].as_u64().unwrap()
    );
    let data_root = eval_dir().join("data").join(&task.path);
    for (name, want) in lmj["files"].as_object().unwrap() {
        let path = data_root.join(name);
        let fields = TokenFields {
            path: &path,
            codec: &IdCodec,
            vocab_size: cfg.vocab_size,
        };
        let doc = data::read_text_document(&fields).unwrap();
        let mask_id = if task.use_task_mask {
            specials.gmask
        } else {
            specials.mask
        };
        let windows: Vec<lm::Window> = lm::windows(
            &doc.tokens,
            task.max_seq_length,
            settings.generation_length,
            task.unidirectional,
            mask_id,
            specials.sop,
        )
        .expect("the fixture layout is valid")
        .collect();
        let want_windows = want["windows"].as_array().unwrap();
        assert_eq!(windows.len(), want_windows.len(), "{name}");
        for (w, ww) in windows.iter().zip(want_windows) {
            assert_eq!(w.tokens, ints(&ww["tokens"]), "{name}: tokens");
            assert_eq!(w.targets, ints(&ww["targets"]), "{name}: targets");
            assert_eq!(
                w.position_ids,
                ints(&ww["position_ids"]),
                "{name}: positions"
            );
            let lm: Vec<u32> = w.loss_mask.iter().map(|&m| u32::from(m)).collect();
            assert_eq!(lm, ints(&ww["loss_masks"]), "{name}: loss mask");
            let bidir = ww["bidirectional_block"].as_u64().unwrap() as usize;
            let n = w.tokens.len();
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(
                        !w.mask[i * n + j],
                        j < bidir || j <= i,
                        "{name}: mask ({i}, {j})"
                    );
                }
            }
        }
    }
}

#[test]
fn task_folders_are_searched_recursively() {
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(&[eval_dir().join("tasks")], &mut lines).unwrap();
    let json = read_json("eval.json");
    let mut names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut want = vec![
        json["multiple_choice"]["task"].as_str().unwrap(),
        json["language_model"]["task"].as_str().unwrap(),
    ];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn glm_evaluate_cli_reports_the_original_numbers() {
    evaluate_cli(&[]);
}

/// The same report with the model split over the largest tensor-parallel degree (up to 4) that
/// the fixture config divides.
#[test]
fn glm_evaluate_cli_split_over_ranks_reports_the_original_numbers() {
    let cfg = common::config();
    let world = (2..=4)
        .rev()
        .find(|&n| glm_core::parallel::TpLayout::new(n).check(&cfg).is_ok())
        .expect("a tensor-parallel degree the fixture config divides");
    evaluate_cli(&["--tensor-parallel".to_string(), world.to_string()]);
}

/// `glm evaluate` of the recorded run's tasks on the fixture model, writing `report`.
fn glm_evaluate(json: &Value, report: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_glm"));
    c.arg("evaluate")
        .args(task_files(json))
        .arg("--model")
        .arg(fixtures())
        .arg("--data-path")
        .arg(eval_dir().join("data"))
        .arg("--report")
        .arg(report)
        .arg("--no-progress");
    c
}

fn evaluate_cli(extra: &[String]) {
    let json = read_json("eval.json");
    let out_dir = std::env::temp_dir().join(format!(
        "glm-eval-cli-{}-{}",
        std::process::id(),
        extra.join("")
    ));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let report_path = out_dir.join("report.json");
    let out = glm_evaluate(&json, &report_path)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "glm evaluate {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every printed line against the original's stdout, numbers included.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<String> = stdout.lines().map(normalise_line).collect();
    assert_report_lines(&got, &harness_stdout(&json), &json);
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let lm_files = &tasks[1]["groups"][0]["files"];
    for f in lm_files.as_array().unwrap() {
        let want = json["language_model"]["files"][f["file"].as_str().unwrap()]["ppl"]
            .as_f64()
            .unwrap();
        let got = f["metrics"][0]["value"].as_f64().unwrap();
        assert!(close_rel(got, want, 1e-4), "{f}");
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `glm evaluate` as two nodes of a multi-node job (two processes on loopback, burn-collective's
/// global orchestrator): each scores its share of every file, node 0 prints the original's report
/// and writes a JSON report identical to the single-process one (timings aside); node 1 writes
/// nothing.
#[test]
fn glm_evaluate_on_two_nodes_writes_the_single_process_report() {
    let json = read_json("eval.json");
    let dir = std::env::temp_dir().join(format!("glm-eval-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let command = |report: &std::path::Path| {
        let mut c = glm_evaluate(&json, report);
        c.arg("--token-losses");
        c
    };
    let single = dir.join("single.json");
    let out = command(&single).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let reports = [dir.join("node0.json"), dir.join("node1.json")];
    let children: Vec<std::process::Child> = reports
        .iter()
        .enumerate()
        .map(|(rank, report)| {
            command(report)
                .args(["--nodes", "2", "--node-rank", &rank.to_string()])
                .args(["--orchestrator", &format!("127.0.0.1:{port}")])
                .args(["--collective-timeout", "120"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<std::process::Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (rank, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "node {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&outputs[0].stdout);
    let got: Vec<String> = stdout.lines().map(normalise_line).collect();
    assert_report_lines(&got, &harness_stdout(&json), &json);
    assert!(outputs[1].stdout.is_empty(), "node 1 printed a report");
    assert!(!reports[1].exists(), "node 1 wrote a report");

    // Identical reports, timings aside.
    fn strip_seconds(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("seconds");
                map.values_mut().for_each(strip_seconds);
            }
            Value::Array(items) => items.iter_mut().for_each(strip_seconds),
            _ => {}
        }
    }
    let read = |p: &std::path::Path| -> Value {
        let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        strip_seconds(&mut v);
        v
    };
    let (want, got) = (read(&single), read(&reports[0]));
    assert!(
        want["tasks"].as_array().is_some_and(|t| !t.is_empty()),
        "empty report"
    );
    assert_eq!(
        got, want,
        "the 2-node report differs from the single-process one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
