//! Golden generation tests against the ORIGINAL loop (GLM-130B generate.py / evaluation/model.py /
//! generation/strategies.py): greedy (single and batched), every beam of `beam.json`, and every
//! iteration of `multimask.json`.

mod common;

use common::*;
use glm_infer::{
    batch_filling_sequence, fill_blanks, generated_tokens, BaseStrategy, BeamConfig,
    BeamSearchStrategy, GenerationSample, IdCodec, SamplingConfig,
};

fn end_tokens(json: &serde_json::Value) -> Vec<u32> {
    vec![
        json["end_tokens"]["eop"].as_u64().unwrap() as u32,
        json["end_tokens"]["eos"].as_u64().unwrap() as u32,
    ]
}

#[test]
fn greedy_fill_blanks_matches_the_original() {
    let model = model();
    let cfg = config();
    let json = read_json("greedy.json");
    let ends = end_tokens(&json);
    let mut checked = 0;
    for (name, case) in json.as_object().unwrap() {
        if case.get("prompt_text").is_none() {
            continue;
        }
        let prompt = id_prompt(&cfg, case["prompt_text"].as_str().unwrap());
        let input = ints(&case["input_tokens"]);
        assert_eq!(
            [prompt.tokens.as_slice(), &[cfg.special_tokens.sop]].concat(),
            input,
            "{name}: input rules"
        );
        let want = ints(&case["generated_tokens"]);
        let mut greedy = BaseStrategy::new(SamplingConfig::greedy(ends.clone())).unwrap();
        let out = fill_blanks(
            &model,
            &prompt,
            &mut greedy,
            input.len() + want.len(),
            &mut |_| {},
        )
        .unwrap();
        let it = &out.iterations[0];
        assert_eq!(
            it.mask_position as u64,
            case["mask_position"].as_u64().unwrap(),
            "{name}"
        );
        let generated = generated_tokens(&it.hypotheses[0], input.len(), &[]);
        assert_eq!(generated, want, "{name}: greedy tokens");
        assert_eq!(
            id_text(&out.sequences[0]),
            case["fill_blanks_answer"].as_str().unwrap(),
            "{name}: answer"
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

fn id_text(ids: &[u32]) -> String {
    use glm_infer::TextCodec;
    IdCodec.detokenize(ids)
}

#[test]
fn batched_greedy_matches_the_evaluation_path() {
    let model = model();
    let json = read_json("greedy.json");
    let ends = end_tokens(&json);
    let cases = read_json("cases.json");
    let mut checked = 0;
    for (name, case) in json.as_object().unwrap() {
        let Some(forward_case) = case.get("forward_case").and_then(|v| v.as_str()) else {
            continue;
        };
        if case.get("prompt_text").is_some() {
            continue;
        }
        let fc = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == forward_case)
            .expect("forward case");
        let tokens = ints2(&fc["tokens"]);
        let positions = ints2(&fc["position_ids"]);
        let masks = masks(&fc["attention_mask"]);
        let ctx = ints(&fc["context_lengths"]);
        let targets = ints2(&fc["target_position_ids"]);
        let samples: Vec<GenerationSample> = (0..tokens.len())
            .map(|b| {
                GenerationSample::evaluation(
                    tokens[b].clone(),
                    ctx[b] as usize,
                    positions[b].clone(),
                    &masks[b],
                    &targets[b],
                )
                .expect("a consistent fixture sample")
            })
            .collect();
        let mut greedy = BaseStrategy::new(SamplingConfig::greedy(ends.clone())).unwrap();
        let out = batch_filling_sequence(&model, &samples, &mut greedy, &mut |_| {}).unwrap();
        let want = ints2(&case["generated_tokens"]);
        assert_eq!(out.len(), want.len(), "{name}: samples");
        for (b, hyps) in out.iter().enumerate() {
            let got = generated_tokens(&hyps[0], tokens[b].len(), &ends);
            assert_eq!(got, want[b], "{name} sample {b}");
        }
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn every_beam_matches_the_original() {
    let model = model();
    let cfg = config();
    let json = read_json("beam.json");
    let ends = end_tokens(&json);
    let tol = 1e-4f32;
    let runs = json["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for (k, run) in runs.iter().enumerate() {
        let prompt_name = run["prompt"].as_str().unwrap();
        let p = &json["prompts"][prompt_name];
        let prompt = id_prompt(&cfg, p["raw_text"].as_str().unwrap());
        let input = ints(&p["input_tokens"]);
        assert_eq!(prompt.tokens.len() + 1, input.len());
        let mut beam = BeamSearchStrategy::new(BeamConfig {
            num_beams: run["num_beams"].as_u64().unwrap() as usize,
            length_penalty: run["length_penalty"].as_f64().unwrap() as f32,
            consider_end: true,
            end_tokens: ends.clone(),
            invalid_tokens: vec![],
            no_repeat_ngram_size: run["no_repeat_ngram_size"].as_u64().unwrap() as usize,
            min_gen_length: run["min_gen_length"].as_u64().unwrap() as usize,
            deterministic: true,
            seed: 0,
        })
        .unwrap();
        let max_new = run["max_new_tokens"].as_u64().unwrap() as usize;
        let mut steps = 0;
        let out = fill_blanks(
            &model,
            &prompt,
            &mut beam,
            input.len() + max_new,
            &mut |_| steps += 1,
        )
        .unwrap();
        let tag = format!(
            "run {k} ({prompt_name} lp={} ng={} mgl={})",
            run["length_penalty"], run["no_repeat_ngram_size"], run["min_gen_length"]
        );
        assert_eq!(
            steps as u64,
            run["num_steps"].as_u64().unwrap(),
            "{tag}: steps"
        );
        let hyps = &out.iterations[0].hypotheses;
        let want = run["final_beams"].as_array().unwrap();
        assert_eq!(hyps.len(), want.len(), "{tag}: beam count");
        for (i, (h, w)) in hyps.iter().zip(want).enumerate() {
            let tokens: Vec<u32> = h.tokens.iter().map(|&t| t as u32).collect();
            assert_eq!(tokens, ints(&w["tokens"]), "{tag}: beam {i} tokens");
            let got = h.penalized_score.unwrap();
            let exp = w["penalized_score"].as_f64().unwrap() as f32;
            assert!(
                (got - exp).abs() <= tol,
                "{tag}: beam {i} penalized {got} vs {exp}"
            );
            let raw = h.raw_score.unwrap();
            let exp_raw = w["raw_score"].as_f64().unwrap() as f32;
            assert!(
                (raw - exp_raw).abs() <= tol,
                "{tag}: beam {i} raw {raw} vs {exp_raw}"
            );
        }
        assert_eq!(
            out.blanks[0][0],
            ints(&run["chosen_generated"]),
            "{tag}: chosen"
        );
        let answers: Vec<String> = out.sequences.iter().map(|s| id_text(s)).collect();
        let want_answers: Vec<String> = run["fill_blanks_answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(answers, want_answers, "{tag}: fill_blanks answers");
    }
}

#[test]
fn every_multimask_iteration_matches_the_original() {
    let model = model();
    let cfg = config();
    let json = read_json("multimask.json");
    let ends = vec![cfg.special_tokens.eop, cfg.special_tokens.eos];
    for (name, p) in json["prompts"].as_object().unwrap() {
        let prompt = id_prompt(&cfg, p["raw_text"].as_str().unwrap());
        assert_eq!(
            prompt.tokens,
            ints(&p["initial_sequence"]),
            "{name}: initial sequence"
        );
        let mut greedy = BaseStrategy::new(SamplingConfig::greedy(ends.clone())).unwrap();
        let out_len = p["out_seq_length"].as_u64().unwrap() as usize;
        let out = fill_blanks(&model, &prompt, &mut greedy, out_len, &mut |_| {}).unwrap();
        let iters = p["iterations"].as_array().unwrap();
        assert_eq!(out.iterations.len(), iters.len(), "{name}: iterations");
        for (i, (ours, want)) in out.iterations.iter().zip(iters).enumerate() {
            assert_eq!(
                ours.mask_position as u64,
                want["mask_position"].as_u64().unwrap(),
                "{name} #{i}"
            );
            assert_eq!(
                ours.input_tokens,
                ints(&want["input_tokens"]),
                "{name} #{i}: input"
            );
            assert_eq!(
                ours.max_gen_length as u64,
                want["max_gen_length"].as_u64().unwrap(),
                "{name} #{i}: budget"
            );
            let generated = generated_tokens(&ours.hypotheses[0], ours.input_tokens.len(), &[]);
            assert_eq!(
                generated,
                ints(&want["generated_tokens"]),
                "{name} #{i}: generated"
            );
            assert_eq!(
                ours.blank_tokens,
                ints(&want["blank_tokens"]),
                "{name} #{i}: blank"
            );
            assert_eq!(
                ours.sequence_after,
                ints(&want["sequence_after"]),
                "{name} #{i}: sequence after"
            );
            let blank = glm_core::blank::BlankInput {
                tokens: ours.input_tokens.clone(),
                mask_position: ours.mask_position,
                kind: prompt.kind,
            };
            let n = ints(&want["position_ids"]).len();
            assert_eq!(
                blank.position_ids(n),
                ints(&want["position_ids"]),
                "{name} #{i}: positions"
            );
        }
    }
}

/// `beam.json` → `evaluation_path` of the [gMASK] runs: the same context through the evaluation
/// code (`build_generation_sample` + `collate_fn` + `generate_text(return_all_beams=True)`), whose
/// context is padded to a multiple of 32 and whose length penalty counts that padding.
#[cfg(feature = "eval")]
#[test]
fn every_beam_of_the_evaluation_path_matches_the_original() {
    use glm_infer::eval::gen::build_generation_context;
    use glm_infer::TextCodec;
    let model = model();
    let cfg = config();
    let json = read_json("beam.json");
    let ends = end_tokens(&json);
    let tol = 1e-4f32;
    let mut checked = 0;
    for (k, run) in json["runs"].as_array().unwrap().iter().enumerate() {
        let Some(want) = run.get("evaluation_path") else {
            continue;
        };
        let prompt_name = run["prompt"].as_str().unwrap();
        let p = &json["prompts"][prompt_name];
        let tag = format!(
            "run {k} ({prompt_name} lp={} ng={} mgl={})",
            run["length_penalty"], run["no_repeat_ngram_size"], run["min_gen_length"]
        );
        let text = IdCodec.tokenize(p["raw_text"].as_str().unwrap()).unwrap();
        let max_new = run["max_new_tokens"].as_u64().unwrap() as usize;
        let ctx = build_generation_context(
            &text,
            max_new,
            p["use_gmask"].as_bool().unwrap(),
            false,
            &cfg.special_tokens,
        )
        .unwrap();
        assert_eq!(ctx.tokens, ints(&p["input_tokens"]), "{tag}: context");
        let (sample, width) = ctx.to_sample(cfg.special_tokens.pad).unwrap();
        assert_eq!(
            width as u64,
            want["padded_context_length"].as_u64().unwrap(),
            "{tag}: padded context"
        );
        let mut beam = BeamSearchStrategy::new(BeamConfig {
            num_beams: run["num_beams"].as_u64().unwrap() as usize,
            length_penalty: run["length_penalty"].as_f64().unwrap() as f32,
            consider_end: true,
            end_tokens: ends.clone(),
            invalid_tokens: vec![],
            no_repeat_ngram_size: run["no_repeat_ngram_size"].as_u64().unwrap() as usize,
            min_gen_length: run["min_gen_length"].as_u64().unwrap() as usize,
            deterministic: true,
            seed: 0,
        })
        .unwrap();
        let out = batch_filling_sequence(&model, &[sample], &mut beam, &mut |_| {}).unwrap();
        assert_eq!(out.len(), 1, "{tag}: one sample");
        let hyps = &out[0];
        let beams = ints2(&want["beams"]);
        let scores = want["penalized_scores"].as_array().unwrap();
        let lengths = ints(&want["total_lengths"]);
        assert_eq!(hyps.len(), beams.len(), "{tag}: beam count");
        assert_eq!(scores.len(), beams.len(), "{tag}: fixture scores");
        assert_eq!(lengths.len(), beams.len(), "{tag}: fixture lengths");
        assert!(!beams.is_empty(), "{tag}: no beam");
        for (i, h) in hyps.iter().enumerate() {
            assert_eq!(
                generated_tokens(h, width, &ends),
                beams[i],
                "{tag}: beam {i} tokens"
            );
            assert_eq!(
                (width + generated_tokens(h, width, &[]).len()) as u32,
                lengths[i],
                "{tag}: beam {i} total length"
            );
            let got = h.penalized_score.unwrap();
            let exp = scores[i].as_f64().unwrap() as f32;
            assert!(
                (got - exp).abs() <= tol,
                "{tag}: beam {i} penalized {got} vs {exp}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "beam.json has no evaluation_path run");
}
