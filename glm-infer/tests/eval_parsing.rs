//! Malformed task YAML and data files: every error names the file, the line and the field. Plus
//! the generation path and batching invariance on a small random model.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_infer::eval::data::{read_choice_file, read_generation_file, TokenFields};
use glm_infer::eval::runner::FileDetails;
use glm_infer::eval::{self, mc, CollectLines, EvalOptions, TaskConfig};
use glm_infer::IdCodec;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-eval-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn yaml_error(text: &str) -> String {
    let dir = tmp("yaml");
    let path = dir.join("task.yaml");
    write(&path, text);
    let err = TaskConfig::from_file(&path).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    err.replace(&path.display().to_string(), "task.yaml")
}

#[test]
fn malformed_task_files_name_file_line_and_field() {
    let cases = [
        (
            "name: a\ntype: mul\npath: p\nmicro-batch-size: 0\n",
            "task.yaml:4: field `micro-batch-size`: must be at least 1",
        ),
        (
            "name: a\ntype: mul\npath: p\nuse_task_mask: maybe\n",
            "task.yaml:4: field `use_task_mask`: expected true or false",
        ),
        (
            "name: a\ntype: lm\npath: p\nmax_seq_length: 16\ngeneration_length: 20\n",
            "task.yaml:5: field `generation_length`",
        ),
        (
            "name: a\ntype: gen\npath: p\nsampling_strategy: Nucleus\n",
            "task.yaml:4: field `sampling_strategy`: unknown strategy",
        ),
        (
            "name: a\ntype: gen\npath: p\nmicro-batch-size: 4\n",
            "task.yaml:4: field `micro-batch-size`",
        ),
        (
            "name: a\ntype: mul\npath: p\nfile-pattern: [a, b]\n",
            "task.yaml:4: field `file-pattern`: expected a string",
        ),
        (
            "name: a\ntype: mul\npath: p\nlength_penalty: 1.0\n",
            "task.yaml:4: field `length_penalty`: only valid for `gen`",
        ),
        (
            "name: a\ntype: mul\npath: p\nbogus: 1\n",
            "task.yaml:4: field `bogus`: unknown field",
        ),
        ("name: a\ntype: mul\n  path: p\n", "task.yaml:"),
        ("- a\n- b\n", "task.yaml:1: a task file must be a mapping"),
    ];
    for (text, want) in cases {
        let err = yaml_error(text);
        assert!(
            err.starts_with(want),
            "{text:?}: got `{err}`, want `{want}…`"
        );
    }
}

#[test]
fn malformed_data_lines_name_file_line_and_field() {
    let dir = tmp("jsonl");
    let path = dir.join("test.jsonl");
    let vocab = 1024;
    let cases = [
        ("{\"inputs\": [1, 2], \"choices\": [[3]], \"label\": 0}\n{\"inputs\": [1, 2], \"choices\": [[3]]\n", ":2: invalid JSON"),
        ("{\"inputs\": [1, 2], \"choices\": [[3]], \"label\": \"x\"}\n", ":1: field `label`: expected an integer"),
        ("{\"inputs\": [1, -2], \"choices\": [[3]], \"label\": 0}\n", ":1: field `inputs`"),
        ("{\"inputs\": [1, 5000], \"choices\": [[3]], \"label\": 0}\n", ":1: field `inputs`"),
        ("\n{\"choices\": [[3]], \"label\": 0}\n", ":2: field `inputs`: missing"),
        ("{\"inputs_pretokenized\": \"1 x\", \"choices\": [[3]], \"label\": 0}\n", ":1: field `inputs_pretokenized`: cannot tokenize"),
        ("{\"inputs\": [1], \"choices\": [[3], []], \"label\": 0}\n", ":1: field `choices`: choice 1 is empty"),
        ("{\"inputs\": [1], \"choices\": [3, 4], \"label\": 0}\n", ":1: field `choices`"),
        ("[1, 2]\n", ":1: expected a JSON object"),
    ];
    for (text, want) in cases {
        write(&path, text);
        let fields = TokenFields {
            path: &path,
            codec: &IdCodec,
            vocab_size: vocab,
        };
        let err = read_choice_file(&fields).unwrap_err().to_string();
        let want = format!("{}{want}", path.display());
        assert!(err.starts_with(&want), "{text:?}: got `{err}`");
    }
    write(
        &path,
        "{\"inputs\": [1], \"targets_pretokenized\": [\"5 6\", \"7\"]}\n",
    );
    let fields = TokenFields {
        path: &path,
        codec: &IdCodec,
        vocab_size: vocab,
    };
    assert_eq!(
        read_generation_file(&fields).unwrap()[0].targets,
        vec![vec![5, 6], vec![7]]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_model() -> GlmModel<Flex> {
    GlmModel::<Flex>::random(
        &GlmConfig::tiny(),
        &Default::default(),
        ModelOptions::default(),
        11,
    )
    .unwrap()
}

#[test]
fn batching_and_padding_do_not_change_scores() {
    let model = tiny_model();
    let specials = model.config().special_tokens;
    let items: Vec<_> = (0..5)
        .map(|i| eval::data::ChoiceItem {
            line: i + 1,
            text: (10..(14 + 3 * i as u32)).collect(),
            choices: vec![vec![20, 21], vec![22], vec![23, 24, 25]],
            label: 0,
        })
        .collect();
    let samples = mc::prepare_file(&items, 64, false, &specials, Path::new("d.jsonl")).unwrap();
    let batched = mc::score_batch(&model, &samples).unwrap();
    for (s, b) in samples.iter().zip(&batched) {
        let alone = mc::score_batch(&model, std::slice::from_ref(s)).unwrap();
        for (x, y) in alone[0].iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

#[test]
fn generation_tasks_run_with_both_strategies() {
    let model = tiny_model();
    let dir = tmp("gen");
    let data = dir.join("data");
    write(
        &data.join("qa/test.jsonl"),
        "{\"inputs_pretokenized\": \"11 12 13\", \"targets_pretokenized\": [\"14 15\"]}\n{\"inputs\": [16, 17], \"targets\": [[18]]}\n",
    );
    write(&dir.join("greedy.yaml"), "name: QA\ntype: gen\npath: qa\nmax_gen_length: 4\nmax-seq-length: 32\nuse_task_mask: true\n");
    write(
        &dir.join("beam.yaml"),
        "name: QA-beam\ntype: gen\npath: qa\nmax_gen_length: 4\nmax-seq-length: 32\nsampling_strategy: BeamSearchStrategy\nnum_beams: 2\n",
    );
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(std::slice::from_ref(&dir), &mut lines).unwrap();
    assert_eq!(tasks.len(), 2);
    let options = EvalOptions {
        data_root: data,
        token_losses: false,
    };
    let report = eval::evaluate_tasks(&model, &IdCodec, &tasks, &options, &mut lines).unwrap();
    for task in &report.tasks {
        let file = &task.groups[0].files[0];
        assert_eq!(
            file.metrics
                .iter()
                .map(|m| m.metric.as_str())
                .collect::<Vec<_>>(),
            vec!["EM", "F1"]
        );
        let FileDetails::Generation { samples } = &file.details else {
            panic!("not gen")
        };
        assert_eq!(samples.len(), 2);
        assert!(samples.iter().all(|s| s.prediction.len() <= 4));
        assert_eq!(samples[0].references, vec!["14 15".to_string()]);
    }
    assert!(
        lines.0.iter().any(|l| l.contains("Metric EM: max = ")),
        "{:#?}",
        lines.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
