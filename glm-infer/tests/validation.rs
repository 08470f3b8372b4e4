//! Issue 10, defect 5: glm-infer's entry points (prompt building, blank filling, the decoding
//! loop with sampling and beam search) check ids, lengths, budgets and layouts and return typed
//! errors instead of panicking in the backend or answering with the prompt. Every prompt, size and
//! special id comes from the fixtures (`GLM_FIXTURES`): greedy.json's prompts and config.json.

mod common;

use common::*;
use glm_core::blank::{BlankInput, MaskKind};
use glm_core::GlmConfig;
use glm_infer::prompt::{build_prompt, build_prompt_for, IdCodec, Prompt};
use glm_infer::strategy::{Hypothesis, Strategy};
use glm_infer::{
    batch_filling_sequence, fill_blanks, BaseStrategy, BeamConfig, BeamSearchStrategy, Error,
    GenerationSample, SamplingConfig,
};

/// Every generate.py prompt of greedy.json, built by the input rules.
fn prompts(cfg: &GlmConfig) -> Vec<(String, Prompt)> {
    let json = read_json("greedy.json");
    let out: Vec<(String, Prompt)> = json
        .as_object()
        .expect("greedy.json object")
        .iter()
        .filter_map(|(name, case)| {
            let text = case.get("prompt_text")?.as_str()?;
            Some((name.clone(), id_prompt(cfg, text)))
        })
        .collect();
    assert!(!out.is_empty(), "greedy.json has no prompt");
    out
}

fn greedy(cfg: &GlmConfig) -> BaseStrategy {
    BaseStrategy::new(SamplingConfig::greedy(
        cfg.special_tokens.end_tokens().to_vec(),
    ))
    .expect("greedy")
}

fn beam(cfg: &GlmConfig) -> BeamSearchStrategy {
    BeamSearchStrategy::new(BeamConfig {
        num_beams: 2,
        length_penalty: 1.0,
        consider_end: true,
        end_tokens: cfg.special_tokens.end_tokens().to_vec(),
        invalid_tokens: Vec::new(),
        no_repeat_ngram_size: 0,
        min_gen_length: 0,
        deterministic: true,
        seed: 1,
    })
    .expect("beam")
}

fn assert_prompt_error<T: std::fmt::Debug>(r: glm_infer::Result<T>, needle: &str) {
    match r {
        Err(e @ (Error::Prompt(_) | Error::Core(_) | Error::Strategy(_))) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
        other => panic!("expected a typed error ({needle}), got {other:?}"),
    }
}

fn vocab_id(cfg: &GlmConfig) -> u32 {
    u32::try_from(cfg.vocab_size).expect("vocab fits u32")
}

#[test]
fn build_prompt_rejects_empty_text_and_ids_outside_the_vocabulary() {
    let cfg = config();
    for text in ["", "   ", "\n\t"] {
        assert_prompt_error(
            build_prompt(text, &IdCodec, &cfg.special_tokens, cfg.max_sequence_length),
            "empty prompt",
        );
    }
    let (_, prompt) = prompts(&cfg).into_iter().next().expect("a prompt");
    // The same prompt with one id out of range.
    let mut ids: Vec<String> = prompt.tokens.iter().map(u32::to_string).collect();
    ids[0] = vocab_id(&cfg).to_string();
    let text = ids.join(" ");
    assert_prompt_error(
        build_prompt_for(&text, &IdCodec, &cfg),
        "outside the vocabulary",
    );
    // Longer than the model.
    let long = vec!["1"; cfg.max_sequence_length + 1].join(" ");
    assert_prompt_error(build_prompt_for(&long, &IdCodec, &cfg), "too long");
}

#[test]
fn fill_blanks_checks_the_prompt_and_the_budget() {
    let model = model();
    let cfg = config();
    let vocab = vocab_id(&cfg);
    let mut ran = 0;
    for (name, prompt) in prompts(&cfg) {
        let ctx = prompt.tokens.len() + 1;
        // Sanity: the unmodified prompt generates.
        let out = fill_blanks(&model, &prompt, &mut greedy(&cfg), ctx + 2, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!out.iterations.is_empty(), "{name}");

        // Id outside the vocabulary (the mask itself is kept so there is a blank to fill).
        let mut bad = prompt.clone();
        let mask_id = prompt.kind.token(&cfg.special_tokens);
        let at = bad
            .tokens
            .iter()
            .position(|&t| t != mask_id)
            .expect("a text token");
        bad.tokens[at] = vocab;
        for strategy in [&mut greedy(&cfg) as &mut dyn Strategy, &mut beam(&cfg)] {
            assert_prompt_error(
                fill_blanks(&model, &bad, strategy, ctx + 2, &mut |_| {}),
                "outside the vocabulary",
            );
        }
        // Empty prompt.
        let mut empty = prompt.clone();
        empty.tokens.clear();
        assert_prompt_error(
            fill_blanks(&model, &empty, &mut greedy(&cfg), ctx + 2, &mut |_| {}),
            "empty prompt",
        );
        // No mask of its kind: nothing to fill is an error, not the prompt echoed back.
        let mut no_mask = prompt.clone();
        no_mask.tokens.retain(|&t| t != mask_id);
        if !no_mask.tokens.is_empty() {
            assert_prompt_error(
                fill_blanks(&model, &no_mask, &mut greedy(&cfg), ctx + 2, &mut |_| {}),
                "to fill",
            );
        }
        // Zero budget, a budget that leaves no room, a budget beyond the model.
        for budget in [0, ctx] {
            assert_prompt_error(
                fill_blanks(&model, &prompt, &mut greedy(&cfg), budget, &mut |_| {}),
                "budget",
            );
        }
        assert_prompt_error(
            fill_blanks(
                &model,
                &prompt,
                &mut greedy(&cfg),
                cfg.max_sequence_length + 1,
                &mut |_| {},
            ),
            "max_sequence_length",
        );
        // A prompt struct longer than the model (built without build_prompt).
        let mut long = prompt.clone();
        long.tokens = std::iter::repeat_n(prompt.tokens.clone(), cfg.max_sequence_length)
            .flatten()
            .take(cfg.max_sequence_length + 1)
            .collect();
        assert_prompt_error(
            fill_blanks(&model, &long, &mut greedy(&cfg), ctx + 2, &mut |_| {}),
            "too long",
        );
        ran += 1;
    }
    assert!(ran > 0);
}

#[test]
fn generation_samples_check_budget_and_layout() {
    let cfg = config();
    let model = model();
    let mut ran = 0;
    for (name, prompt) in prompts(&cfg) {
        let blank = BlankInput::from_context(&prompt.tokens, &cfg.special_tokens)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let sample = GenerationSample::from_blank(&blank, 1, &cfg).expect("budget of one");
        assert_eq!(sample.position_ids.len(), blank.context_length() + 1);
        assert_prompt_error(GenerationSample::from_blank(&blank, 0, &cfg), "budget");
        // An absurd budget is an error before the [total, total] mask is allocated.
        assert_prompt_error(
            GenerationSample::from_blank(&blank, usize::MAX, &cfg),
            "max_sequence_length",
        );
        let mut bad = blank.clone();
        bad.mask_position = bad.tokens.len();
        assert_prompt_error(GenerationSample::from_blank(&bad, 1, &cfg), "mask_position");

        // The decoding loop itself: inconsistent samples.
        let mut s = sample.clone();
        s.mask.pop();
        assert_prompt_error(
            batch_filling_sequence(&model, &[s], &mut greedy(&cfg), &mut |_| {}),
            "mask",
        );
        let mut s = sample.clone();
        s.tokens[0] = vocab_id(&cfg);
        assert_prompt_error(
            batch_filling_sequence(&model, &[s], &mut greedy(&cfg), &mut |_| {}),
            "token id",
        );
        let mut s = sample.clone();
        s.context_length = 0;
        assert_prompt_error(
            batch_filling_sequence(&model, &[s], &mut greedy(&cfg), &mut |_| {}),
            "context length",
        );
        assert_prompt_error(
            batch_filling_sequence(&model, &[], &mut greedy(&cfg), &mut |_| {}),
            "empty",
        );
        ran += 1;
    }
    assert!(ran > 0);
    // A blank of the kind generate.py would choose for an empty context does not exist.
    assert!(BlankInput::from_context(&[], &cfg.special_tokens).is_err());
    assert_eq!(MaskKind::choose(&[], &cfg.special_tokens), MaskKind::GMask);
}

/// A strategy that asks the loop to keep a row that does not exist (a buggy custom strategy).
struct BadParents(Vec<u32>);

impl Strategy for BadParents {
    fn step(&mut self, _: &[f32], _: usize, tokens: &mut Vec<Vec<i64>>) -> Option<Vec<usize>> {
        let rows = tokens.len();
        for row in tokens.iter_mut() {
            row.push(0);
        }
        Some(vec![rows; rows])
    }
    fn is_done(&self) -> bool {
        false
    }
    fn finalize(&mut self, tokens: Vec<Vec<i64>>) -> Vec<Vec<Hypothesis>> {
        tokens
            .into_iter()
            .map(|t| {
                vec![Hypothesis {
                    tokens: t,
                    penalized_score: None,
                    raw_score: None,
                }]
            })
            .collect()
    }
    fn end_tokens(&self) -> &[u32] {
        &self.0
    }
}

#[test]
fn a_strategy_selecting_missing_rows_is_an_error_not_a_panic() {
    let cfg = config();
    let model = model();
    let (_, prompt) = prompts(&cfg).into_iter().next().expect("a prompt");
    let ctx = prompt.tokens.len() + 1;
    let mut strategy = BadParents(cfg.special_tokens.end_tokens().to_vec());
    assert_prompt_error(
        fill_blanks(&model, &prompt, &mut strategy, ctx + 2, &mut |_| {}),
        "outside the cached batch",
    );
}
