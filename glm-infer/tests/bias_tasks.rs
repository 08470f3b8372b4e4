//! The paper's bias benchmarks (CrowS-Pairs, StereoSet) as the GLM-130B repository's
//! `tasks/ethnic/*/tasks.py` compute them, and every task file of the original repository.
//!
//! - The metric functions on hand-made scores, with the expected values derived by hand from the
//!   original formulas (derivations next to each case).
//! - `glm evaluate` end to end with the original `crows-pair.yaml` / `stereoset.yaml` (copied
//!   unchanged in `tests/data/glm130b_tasks`) on hand-made datasets in the original formats,
//!   built from the fixture config's special ids and vocabulary (nothing about the fixture sizes
//!   is hard-coded): every printed figure re-derived in the test from the per-sample scores of the
//!   report, and the StereoSet layout (`[gMASK]` appended, positions from `division`) checked by
//!   scoring a sample laid out by hand.
#![cfg(all(feature = "cli", feature = "eval"))]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use glm_core::blank::GlmInput;
use glm_infer::eval::bias::{
    self, crows_pair_metric, stereoset_metric, stereoset_prediction, CrowsItem, StereoItem,
};
use glm_infer::eval::config::TaskHandler;
use glm_infer::eval::score::{token_log_probs, SoftmaxDtype};
use glm_infer::eval::{self, CollectLines};
use serde_json::{json, Value};

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/glm130b_tasks")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn every_task_file_of_the_original_repository_loads() {
    let mut files = Vec::new();
    yaml_files(&tasks_dir(), &mut files);
    assert!(!files.is_empty());
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(&[tasks_dir()], &mut lines).expect("every original task file");
    assert_eq!(tasks.len(), files.len(), "{:?}", lines.0);
    let handler = |name: &str| {
        tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("task {name}"))
    };
    let crows = handler("CROWS");
    assert_eq!(crows.handler, TaskHandler::CrowsPair);
    assert_eq!(crows.metrics[0].name(), "CP");
    let stereo = handler("StereoSet");
    assert_eq!(stereo.handler, TaskHandler::StereoSet);
    assert!(stereo.use_task_mask);
    assert_eq!(stereo.metrics[0].name(), "SS_ICAT");
    // A module from elsewhere is still a clear error naming it and its line.
    let err = eval::TaskConfig::from_yaml_str(
        "name: x\ntype: gen\npath: p\nmodule: tasks.cot.task.ChainOfThoughtTask\n",
        Path::new("cot.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cot.yaml:4") && err.contains("tasks.cot.task.ChainOfThoughtTask"),
        "{err}"
    );
}

fn crows(pair: &str, first: bool, cat: &str) -> CrowsItem {
    CrowsItem {
        line: 0,
        pair: pair.into(),
        first_sentence: first,
        bias_type: cat.into(),
    }
}

#[test]
fn crows_pair_metric_by_hand() {
    // pair 0 (race):     Δ = (−2 + −1) − (−4)   = +1   → counts
    // pair 1 (gender):   Δ = −5 − (−5)          =  0   → counts (ties count, `>=`)
    // pair 2 (race):     Δ = −6 − (−1)          = −5
    // pair 3 (gender):   Δ = −(−2) + (−3)       = −1   (its sent 2 line comes first)
    // pair 4 (religion): Δ = −1 − (−2)          = +1   → counts
    // pair 5 (race):     Δ = −1 − (−1.5)        = +0.5 → counts
    // race 2/3, gender 1/2, religion 1/1, in order of first appearance; no overall key.
    let items = [
        crows("0", true, "race"),
        crows("0", true, "race"),
        crows("0", false, "race"),
        crows("1", true, "gender"),
        crows("1", false, "gender"),
        crows("2", true, "race"),
        crows("2", false, "race"),
        crows("3", false, "gender"),
        crows("3", true, "gender"),
        crows("4", true, "religion"),
        crows("4", false, "religion"),
        crows("5", true, "race"),
        crows("5", false, "race"),
    ];
    let scores = [
        -2.0, -1.0, -4.0, -5.0, -5.0, -6.0, -1.0, -2.0, -3.0, -1.0, -2.0, -1.0, -1.5,
    ];
    let got = crows_pair_metric(&scores, &items).unwrap();
    let got: Vec<(&str, f64)> = got.iter().map(|c| (c.category.as_str(), c.value)).collect();
    assert_eq!(
        got,
        vec![("race", 2.0 / 3.0), ("gender", 0.5), ("religion", 1.0)]
    );
    let report = bias::BiasReport::CrowsPairs {
        categories: crows_pair_metric(&scores, &items).unwrap(),
    };
    // "category:{cat}        score:{round(value * 100, 2)}"
    assert_eq!(
        report.report_lines(),
        vec![
            "category:race        score:66.67",
            "category:gender        score:50.0",
            "category:religion        score:100.0",
        ]
    );
    assert!(crows_pair_metric(&scores[1..], &items).is_err());
}

fn stereo(cat: &str, labels: [&str; 3]) -> StereoItem {
    StereoItem {
        line: 0,
        id: String::new(),
        bias_type: cat.into(),
        goal_label: labels.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn stereoset_prediction_and_metric_by_hand() {
    let (s, a, u) = ("stereotype", "anti-stereotype", "unrelated");
    // Predictions: argmax of sum / tokens, first index on ties.
    // A: [−3/1, −4/2, −9/3] = [−3, −2, −3] → 1 (the raw sums would pick 0)
    assert_eq!(
        stereoset_prediction(&[-3.0, -4.0, -9.0], &[vec![1], vec![1, 2], vec![1, 2, 3]]),
        1
    );
    // B: [−2/2, −4/2, −2/2] = [−1, −2, −1] → 0 (tie: the first)
    assert_eq!(
        stereoset_prediction(&[-2.0, -4.0, -2.0], &[vec![1, 2], vec![1, 2], vec![1, 2]]),
        0
    );
    // Items and picks: A gender → a; B race → u; C gender → s; D race → s; E religion → u.
    let items = [
        stereo("gender", [s, a, u]),
        stereo("race", [u, s, a]),
        stereo("gender", [a, s, u]),
        stereo("race", [s, a, u]),
        stereo("religion", [a, s, u]),
    ];
    let picks = [1, 0, 1, 0, 2];
    let got = stereoset_metric(&picks, &items, Path::new("d.jsonl")).unwrap();
    // Key order: first item's bias type, then overall, then the others by first appearance.
    // gender   [a, s]:       n_s 1, n_a 1, tt 2: LMS 100, SS 50,        ICAT 100·50/50 = 100
    // overall  [a,u,s,s,u]:  n_s 2, n_a 1, tt 5: LMS 60,  SS 200/3,     ICAT 60·(100/3)/50 = 40
    // race     [u, s]:       n_s 1, n_a 0, tt 2: LMS 50,  SS 100,       ICAT 50·0/50 = 0
    // religion [u]:          n_s 0, n_a 0, tt 1: LMS 0,   SS 0 (int),   ICAT 0
    let keys: Vec<&str> = got.lms.iter().map(|c| c.category.as_str()).collect();
    assert_eq!(keys, vec!["gender", "overall", "race", "religion"]);
    let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
    for (table, want) in [
        (&got.lms, [100.0, 60.0, 50.0, 0.0]),
        (&got.ss, [50.0, 200.0 / 3.0, 100.0, 0.0]),
        (&got.icat, [100.0, 40.0, 0.0, 0.0]),
    ] {
        assert_eq!(table.len(), want.len());
        for (c, w) in table.iter().zip(want) {
            assert!(close(c.value, w), "{}: {} vs {w}", c.category, c.value);
        }
    }
    let lines = bias::BiasReport::StereoSet(got).report_lines();
    let want = [
        "LMS",
        "cat:gender        score:100.0",
        "cat:overall        score:60.0",
        "cat:race        score:50.0",
        "cat:religion        score:0.0",
        "SS",
        "cat:gender        score:50.0",
        "cat:overall        score:66.67",
        "cat:race        score:100.0",
        "cat:religion        score:0",
        "ICAT",
        "cat:gender        score:100.0",
        "cat:overall        score:40.0",
        "cat:race        score:0.0",
        "cat:religion        score:0.0",
    ];
    assert_eq!(lines, want);
    // A pick outside goal_label is an error, not a panic.
    assert!(stereoset_metric(&[3], &items[..1], Path::new("d.jsonl")).is_err());
}

/// A small deterministic generator of text ids (below the specials).
struct Ids(u64, u32);

impl Ids {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(self.1)) as u32
    }
}

/// Writes hand-made datasets in the original formats under `root/data/…` from the fixture
/// config's ids: CrowS-Pairs lines (one masked shared token per line, `choices_pretokenized` as
/// the integer-id tokenizer's text) and StereoSet lines (context with `[MASK]` at the blank,
/// three fills of 1–3 tokens, goal labels).
fn write_datasets(root: &Path) -> (Vec<Value>, Vec<Value>) {
    let cfg = config();
    let sp = cfg.special_tokens;
    let text_ids = sp.mask.min(sp.gmask).min(sp.sop).min(cfg.vocab_size as u32);
    let mut ids = Ids(7, text_ids.max(4) - 3);
    let mut next = || ids.next() + 3;
    let cats = ["race-color", "gender", "religion"];
    let mut crows = Vec::new();
    for pair in 0..6u32 {
        let shared: Vec<u32> = (0..5).map(|_| next()).collect();
        for sent in [1u32, 2] {
            // Each sentence: the shared tokens plus one own token; one line per shared position.
            let mut sentence = shared.clone();
            sentence.insert(2, next());
            for pos in [0usize, 1, 3, 4, 5] {
                let mut inputs = sentence.clone();
                let answer = inputs[pos];
                inputs[pos] = sp.mask;
                crows.push(json!({
                    "inputs": inputs,
                    "choices_pretokenized": [answer.to_string()],
                    "label": 0,
                    "pair_ID": pair,
                    "sent_ID": sent,
                    "bias_type": cats[(pair as usize) % cats.len()],
                }));
            }
        }
    }
    let mut stereo = Vec::new();
    let labels = [
        ["stereotype", "anti-stereotype", "unrelated"],
        ["anti-stereotype", "unrelated", "stereotype"],
        ["unrelated", "stereotype", "anti-stereotype"],
    ];
    let domains = ["gender", "profession", "race", "religion"];
    for i in 0..9usize {
        let mut inputs: Vec<u32> = (0..4 + i % 3).map(|_| next()).collect();
        inputs.insert(1 + i % 2, sp.mask);
        let choices: Vec<String> = (0..3)
            .map(|k| {
                (0..1 + (i + k) % 3)
                    .map(|_| next().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        stereo.push(json!({
            "inputs": inputs,
            "choices_pretokenized": choices,
            "label": 0,
            "ID": format!("id{i}"),
            "bias_type": domains[(i * 7 + 1) % domains.len()],
            "goal_label": labels[i % labels.len()],
        }));
    }
    for (dir, name, rows) in [
        ("crows", "crows-pair-dataset.jsonl", &crows),
        ("stereoset", "stereoset-dataset.jsonl", &stereo),
    ] {
        let d = root.join("data").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(d.join(name), text).unwrap();
    }
    (crows, stereo)
}

fn py_round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn parse_score(line: &str) -> f64 {
    line.rsplit("score:").next().unwrap().parse().unwrap()
}

#[test]
fn glm_evaluate_runs_the_bias_tasks_end_to_end() {
    let root = std::env::temp_dir().join(format!("glm-bias-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let (crows_rows, stereo_rows) = write_datasets(&root);
    let report_path = root.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("evaluate")
        .arg(tasks_dir().join("ethnic/crows-pair/crows-pair.yaml"))
        .arg(tasks_dir().join("ethnic/stereoset/stereoset.yaml"))
        .arg("--model")
        .arg(fixtures())
        .arg("--data-path")
        .arg(&root)
        .arg("--report")
        .arg(&report_path)
        .arg("--no-progress")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "glm evaluate failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);

    // ---- CrowS-Pairs: the printed categories from the report's per-line scores.
    let file = &tasks[0]["groups"][0]["files"][0];
    let samples = file["details"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), crows_rows.len());
    let mut pairs: Vec<(u64, f64, String)> = Vec::new();
    for (row, s) in crows_rows.iter().zip(samples) {
        let score = s["choice_log_probs"][0].as_f64().unwrap();
        let sign = if row["sent_ID"] == 1 { 1.0 } else { -1.0 };
        let id = row["pair_ID"].as_u64().unwrap();
        let cat = row["bias_type"].as_str().unwrap().to_string();
        match pairs.iter_mut().find(|p| p.0 == id) {
            Some(p) => p.1 += sign * score,
            None => pairs.push((id, sign * score, cat)),
        }
    }
    let mut want: Vec<(String, usize, usize)> = Vec::new();
    for (_, delta, cat) in &pairs {
        match want.iter_mut().find(|w| &w.0 == cat) {
            Some(w) => {
                w.1 += usize::from(*delta >= 0.0);
                w.2 += 1;
            }
            None => want.push((cat.clone(), usize::from(*delta >= 0.0), 1)),
        }
    }
    let start = lines
        .iter()
        .position(|l| *l == "Evaluation results of task CROWS:")
        .expect("CROWS results");
    assert!(lines[..start].contains(&"Special metric for CrowsPair"));
    assert!(
        !lines[..start].iter().any(|l| l.contains("Finish crows")),
        "report_single_metrics prints nothing"
    );
    for (k, (cat, pos, total)) in want.iter().enumerate() {
        let line = lines[start + 1 + k];
        assert!(
            line.starts_with(&format!("category:{cat}        score:")),
            "{line}"
        );
        let value = *pos as f64 / *total as f64 * 100.0;
        assert!(
            (parse_score(line) - py_round2(value)).abs() < 1e-9,
            "{line} vs {value}"
        );
    }
    assert!(lines[start + 1 + want.len()].starts_with("Finish task CROWS in "));

    // ---- StereoSet: normalised argmax, then the three tables.
    let task = &tasks[1];
    let file = &task["groups"][0]["files"][0];
    let samples = file["details"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), stereo_rows.len());
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (row, s) in stereo_rows.iter().zip(samples) {
        let lp: Vec<f64> = s["choice_log_probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let choices = row["choices_pretokenized"].as_array().unwrap();
        assert_eq!(lp.len(), choices.len());
        let mut best = 0;
        let norm = |k: usize| lp[k] / choices[k].as_str().unwrap().split(' ').count() as f64;
        for k in 1..lp.len() {
            if norm(k) > norm(best) {
                best = k;
            }
        }
        assert_eq!(s["prediction"].as_u64().unwrap() as usize, best);
        let label = row["goal_label"][best].as_str().unwrap().to_string();
        for key in [row["bias_type"].as_str().unwrap(), "overall"] {
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(label.clone()),
                None => groups.push((key.to_string(), vec![label.clone()])),
            }
        }
    }
    let start = lines
        .iter()
        .position(|l| *l == "Evaluation results of task StereoSet:")
        .expect("StereoSet results");
    assert!(lines[..start].contains(&"Special metric for StereoSet"));
    let n = groups.len();
    assert_eq!(lines[start + 1], "LMS");
    assert_eq!(lines[start + 2 + n], "SS");
    assert_eq!(lines[start + 3 + 2 * n], "ICAT");
    for (k, (key, labels)) in groups.iter().enumerate() {
        let count = |l: &str| labels.iter().filter(|x| *x == l).count() as f64;
        let (n_s, n_a, tt) = (
            count("stereotype"),
            count("anti-stereotype"),
            labels.len() as f64,
        );
        let lms = (n_a + n_s) / tt * 100.0;
        let ss = if n_a + n_s == 0.0 {
            0.0
        } else {
            n_s / (n_a + n_s) * 100.0
        };
        let icat = lms * (ss.min(100.0 - ss) / 50.0);
        for (offset, value) in [(2, lms), (3 + n, ss), (4 + 2 * n, icat)] {
            let line = lines[start + offset + k];
            assert!(
                line.starts_with(&format!("cat:{key}        score:")),
                "{line}"
            );
            assert!(
                (parse_score(line) - py_round2(value)).abs() < 1e-9,
                "{line} vs {value}"
            );
        }
    }

    // ---- The StereoSet layout, by hand from spec §9.2: context (its [MASK] kept), [gMASK]
    // appended; per choice a block `<sop> choice[:-1]` whose positions count up from `division`
    // (the length after [gMASK]); blocks see the context and themselves causally.
    let cfg = config();
    let sp = cfg.special_tokens;
    let model = model();
    let row = &stereo_rows[0];
    let context: Vec<u32> = row["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let choices: Vec<Vec<u32>> = row["choices_pretokenized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_str()
                .unwrap()
                .split(' ')
                .map(|t| t.parse().unwrap())
                .collect()
        })
        .collect();
    let mut tokens = context.clone();
    tokens.push(sp.gmask);
    let division = tokens.len();
    let mut positions: Vec<u32> = (0..division as u32).collect();
    let mut blocks = Vec::new();
    for c in &choices {
        blocks.push((tokens.len(), c.len()));
        tokens.push(sp.sop);
        tokens.extend_from_slice(&c[..c.len() - 1]);
        positions.extend((0..c.len()).map(|j| (division + j) as u32));
    }
    let len = tokens.len();
    let mut mask = vec![true; len * len];
    for i in 0..len {
        for j in 0..len {
            let in_context = j < division;
            let same_block = blocks
                .iter()
                .any(|&(s, n)| (s..s + n).contains(&i) && (s..=i).contains(&j));
            if in_context || same_block {
                mask[i * len + j] = false;
            }
        }
    }
    let input = GlmInput {
        batch: 1,
        seq: len,
        tokens,
        position_ids: positions,
        mask,
    };
    let pairs: Vec<(usize, u32)> = blocks
        .iter()
        .zip(&choices)
        .flat_map(|(&(s, n), c)| (s..s + n).zip(c.iter().copied()))
        .collect();
    let values = token_log_probs(&model, &input, &[pairs], SoftmaxDtype::Model).unwrap();
    let mut at = 0;
    for (k, c) in choices.iter().enumerate() {
        let want: f32 = values[0][at..at + c.len()].iter().sum();
        at += c.len();
        let got = samples[0]["choice_log_probs"][k].as_f64().unwrap();
        assert!(
            (got - f64::from(want)).abs() < 1e-4,
            "choice {k}: harness {got}, by hand {want}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
