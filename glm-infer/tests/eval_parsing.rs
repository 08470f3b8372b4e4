//! Malformed task YAML and data files: every error names the file, the line and the field. Plus
//! the generation path and batching invariance on a small random model.
#![cfg(feature = "eval")]

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
    let samples = mc::prepare_file(
        &items,
        64,
        Default::default(),
        &specials,
        Path::new("d.jsonl"),
    )
    .unwrap();
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
        ..Default::default()
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

/// Issue 10, defect 4: absurd lengths and batch sizes in a task file are typed errors naming the
/// line and the field, raised while parsing (nothing allocated), and a generation budget the model
/// cannot reach is refused before any data file is read.
#[test]
fn absurd_sizes_are_refused_before_allocation() {
    use glm_infer::eval::config::{MAX_LENGTH_LIMIT, MAX_MICRO_BATCH_SIZE, MAX_NUM_BEAMS};
    let too_long = MAX_LENGTH_LIMIT + 1;
    let cases = [
        (
            "name: a\ntype: gen\npath: p\nmax_gen_length: 1000000000000000000\n".to_string(),
            "task.yaml:4: field `max_gen_length`: must be at most".to_string(),
        ),
        (
            format!("name: a\ntype: gen\npath: p\nmax-seq-length: {too_long}\n"),
            "task.yaml:4: field `max-seq-length`: must be at most".into(),
        ),
        (
            "name: a\ntype: lm\npath: p\nmax-seq-length: 99999999999999999999999999999999999999999\n"
                .into(),
            "task.yaml:4: field `max-seq-length`: must be at most".into(),
        ),
        (
            format!("name: a\ntype: lm\npath: p\ngeneration-length: {too_long}\n"),
            "task.yaml:4: field `generation-length`: must be at most".into(),
        ),
        (
            format!(
                "name: a\ntype: mul\npath: p\nmicro-batch-size: {}\n",
                MAX_MICRO_BATCH_SIZE + 1
            ),
            "task.yaml:4: field `micro-batch-size`: must be at most".into(),
        ),
        (
            format!(
                "name: a\ntype: gen\npath: p\nnum_beams: {}\n",
                MAX_NUM_BEAMS + 1
            ),
            "task.yaml:4: field `num_beams`: must be at most".into(),
        ),
        (
            "name: a\ntype: gen\npath: p\nmin_gen_length: 18446744073709551615\n".into(),
            "task.yaml:4: field `min_gen_length`: must be at most".into(),
        ),
        (
            "name: a\ntype: gen\npath: p\nmax_seq_length: 8\nmax_gen_length: 6\n".into(),
            "task.yaml:5: field `max_gen_length`: max_gen_length 6 + 2 leaves no room".into(),
        ),
    ];
    for (text, want) in &cases {
        let err = yaml_error(text);
        assert!(
            err.starts_with(want.as_str()),
            "{text:?}: got `{err}`, want `{want}…`"
        );
    }

    // Within the parser's limits but beyond the model: refused before the data folder is read
    // (it does not exist here).
    let model = tiny_model();
    let max = model.config().max_sequence_length;
    let dir = tmp("gen-budget");
    let task = dir.join("gen.yaml");
    write(
        &task,
        &format!(
            "name: g\ntype: gen\npath: absent\nmax_seq_length: {}\nmax_gen_length: {}\n",
            max + 10,
            max
        ),
    );
    let mut lines = CollectLines::default();
    let tasks = eval::load_tasks(std::slice::from_ref(&task), &mut lines).unwrap();
    let options = EvalOptions {
        data_root: dir.clone(),
        token_losses: false,
        ..Default::default()
    };
    let err = eval::evaluate_tasks(&model, &IdCodec, &tasks, &options, &mut lines)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}:5: field `max_gen_length`: max_gen_length {max} + 2 exceeds the model's max_sequence_length {max}",
            task.display()
        )
    );

    // An lm document whose windows need more positions than the model has: a typed error
    // naming the field and the file, before any window is scored.
    let lm_task = dir.join("lm.yaml");
    write(
        &lm_task,
        &format!(
            "name: l\ntype: lm\npath: docs\nfile-pattern: \"*.txt\"\nmax_seq_length: {}\ngeneration_length: 1\n",
            max + 1
        ),
    );
    let doc: Vec<String> = (0..max + 5).map(|i| (i % 7 + 3).to_string()).collect();
    write(&dir.join("docs/d.txt"), &doc.join(" "));
    let tasks = eval::load_tasks(std::slice::from_ref(&lm_task), &mut lines).unwrap();
    let err = eval::evaluate_tasks(&model, &IdCodec, &tasks, &options, &mut lines)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}:5: field `max_seq_length`", lm_task.display()))
            && err.contains("d.txt"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 10, defect 5: the public sample structs of the harness (multiple-choice samples, `lm`
/// windows, generation contexts) with fields that do not fit together are typed errors, never a
/// panic inside padding or the backend.
#[test]
fn inconsistent_public_samples_are_errors() {
    use glm_infer::eval::gen::GenerationContext;
    use glm_infer::eval::lm::{self, WindowLayout};
    let model = tiny_model();
    let specials = model.config().special_tokens;
    let good = eval::data::ChoiceItem {
        line: 3,
        text: vec![5, 6, 7],
        choices: vec![vec![8], vec![9, 10]],
        label: 0,
    };
    let samples = mc::prepare_file(
        &[good],
        64,
        Default::default(),
        &specials,
        Path::new("d.jsonl"),
    )
    .unwrap();
    assert!(mc::score_batch(&model, &samples).is_ok());
    let mut short_mask = samples[0].clone();
    short_mask.mask.pop();
    let mut no_targets = samples[0].clone();
    no_targets.choice_target_ids.clear();
    let mut empty_choice = samples[0].clone();
    empty_choice.choices[1].clear();
    let mut positions = samples[0].clone();
    positions.position_ids.push(0);
    for (what, bad) in [
        ("short mask", short_mask),
        ("no target rows", no_targets),
        ("empty choice", empty_choice),
        ("extra position", positions),
    ] {
        let err = mc::score_batch(&model, &[bad]);
        assert!(
            matches!(&err, Err(e) if e.to_string().contains("line 3")),
            "{what}: {err:?}"
        );
    }

    let layout = WindowLayout::new(16, 4, false, specials.gmask, specials.sop).unwrap();
    let doc: Vec<u32> = (5..40).collect();
    let window = layout.window(&doc, 1);
    assert!(lm::window_losses(&model, &[&window]).is_ok());
    let mut bad = window.clone();
    bad.loss_mask.pop();
    assert!(lm::window_losses(&model, &[&bad]).is_err());
    let mut bad = window.clone();
    bad.mask.truncate(3);
    assert!(lm::window_losses(&model, &[&bad]).is_err());
    let mut bad = window;
    bad.tokens.clear();
    assert!(lm::window_losses(&model, &[&bad]).is_err());

    let ctx = eval::gen::build_generation_context(&[5, 6, 7], 4, true, false, &specials).unwrap();
    assert!(ctx.to_sample(specials.pad).is_ok());
    let mut bad: GenerationContext = ctx.clone();
    bad.position_ids.pop();
    assert!(bad.to_sample(specials.pad).is_err());
    let mut bad = ctx.clone();
    bad.mask.clear();
    assert!(bad.to_sample(specials.pad).is_err());
    let mut bad = ctx;
    bad.tokens.clear();
    bad.position_ids.clear();
    bad.mask.clear();
    assert!(bad.to_sample(specials.pad).is_err());
}
