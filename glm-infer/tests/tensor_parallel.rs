//! Generation split over tensor-parallel ranks (`LoadOptions::tensor_parallel`): for every degree
//! the fixture config divides, the original's greedy answers (greedy.json), best beams
//! (beam.json), streaming, next-token logits and `score` — the same as on one device. Degrees
//! come from the fixture config, answers from the fixture files.

mod common;

use glm_core::parallel::TpLayout;
use glm_infer::{BeamConfig, Decoding, GenerateOptions, Glm, LoadOptions};

/// The degrees above 1 (up to 4) that the fixture config splits over.
fn degrees() -> Vec<usize> {
    let cfg = common::config();
    (2..=4)
        .filter(|&n| TpLayout::new(n).check(&cfg).is_ok())
        .collect()
}

fn load(world: usize, replicated_embedding: bool) -> Glm {
    let options = LoadOptions {
        tensor_parallel: Some(world),
        replicated_embedding,
        ..LoadOptions::default()
    };
    let glm = Glm::load(common::fixtures(), options).expect("load split over ranks");
    assert_eq!(glm.tensor_parallel().map(|g| g.world()), Some(world));
    glm
}

#[test]
fn every_degree_gives_the_original_greedy_and_beam_answers() {
    let degrees = degrees();
    assert!(
        !degrees.is_empty(),
        "the fixture config splits over some degree"
    );
    let greedy = common::read_json("greedy.json");
    let beam = common::read_json("beam.json");
    let mut layouts: Vec<(usize, bool)> = degrees.iter().map(|&n| (n, false)).collect();
    layouts.push((degrees[0], true));
    for (world, replicated) in layouts {
        let glm = load(world, replicated);
        let tag = format!("TP={world} replicated={replicated}");
        let mut checked = 0;
        for (name, case) in greedy.as_object().expect("greedy.json") {
            let Some(text) = case.get("prompt_text").and_then(|v| v.as_str()) else {
                continue;
            };
            let new = case["generated_tokens"].as_array().expect("tokens").len();
            let mut pieces = String::new();
            let out = glm
                .fill_streaming(text, &GenerateOptions::greedy(new), |p| pieces.push_str(p))
                .expect("fill");
            assert_eq!(
                out.text,
                case["fill_blanks_answer"].as_str().expect("answer"),
                "{tag} {name}"
            );
            assert!(!pieces.is_empty(), "{tag} {name}: streamed pieces");
            checked += 1;
        }
        assert!(checked > 0, "greedy.json has prompt_text cases");
        for (k, r) in beam["runs"].as_array().expect("runs").iter().enumerate() {
            let p = &beam["prompts"][r["prompt"].as_str().expect("prompt")];
            let options = GenerateOptions {
                max_new_tokens: r["max_new_tokens"].as_u64().expect("n") as usize,
                decoding: Decoding::Beam(BeamConfig {
                    num_beams: r["num_beams"].as_u64().expect("beams") as usize,
                    length_penalty: r["length_penalty"].as_f64().expect("lp") as f32,
                    no_repeat_ngram_size: r["no_repeat_ngram_size"].as_u64().expect("ngram")
                        as usize,
                    min_gen_length: r["min_gen_length"].as_u64().expect("min") as usize,
                    deterministic: true,
                    ..BeamConfig::default()
                }),
            };
            let out = glm
                .fill(p["raw_text"].as_str().expect("text"), &options)
                .expect("beam fill");
            assert_eq!(
                out.text,
                r["fill_blanks_answers"][0].as_str().expect("answer"),
                "{tag} beam run {k}"
            );
        }
    }
}

#[cfg(feature = "eval")]
#[test]
fn logits_score_and_streams_match_one_device() {
    let single = Glm::load(common::fixtures(), LoadOptions::default()).expect("load");
    let tol = common::read_json("cases.json")["tolerance"]["logits_max_abs"]
        .as_f64()
        .expect("tolerance") as f32;
    let greedy = common::read_json("greedy.json");
    let (name, case) = greedy
        .as_object()
        .expect("greedy.json")
        .iter()
        .find(|(_, c)| c.get("prompt_text").is_some())
        .expect("a prompt_text case");
    let text = case["prompt_text"].as_str().expect("text");
    let new = case["generated_tokens"].as_array().expect("tokens").len();
    let want_logits = single.logits(text).expect("logits");
    let ids: Vec<String> = case["generated_tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.to_string())
        .collect();
    let continuation = ids.join(" ");
    let want_score = single.score(text, &continuation).expect("score");
    for world in degrees() {
        let glm = load(world, false);
        let got = glm.logits(text).expect("logits");
        assert_eq!(got.len(), want_logits.len(), "TP={world} {name}");
        let d = got
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= tol, "TP={world} {name}: logits differ by {d}");
        let score = glm.score(text, &continuation).expect("score");
        assert!(
            (score - want_score).abs() <= tol * ids.len() as f32,
            "TP={world}: score {score} vs {want_score}"
        );
        let items: Vec<glm_infer::StreamItem> = glm
            .stream(text, &GenerateOptions::greedy(new))
            .collect::<Result<_, _>>()
            .expect("stream");
        let Some(glm_infer::StreamItem::Done(fill)) = items.last() else {
            panic!("TP={world}: the stream ends with the fill");
        };
        assert_eq!(
            fill.text,
            case["fill_blanks_answer"].as_str().expect("answer"),
            "TP={world} stream"
        );
    }
}

#[test]
fn a_bad_prompt_is_the_same_typed_error_on_a_split_model() {
    let world = *degrees().first().expect("a degree");
    let glm = load(world, false);
    let cfg = glm.config().clone();
    // An id outside the vocabulary: every rank refuses it; the caller sees the prompt error.
    let bad = format!("{} [gMASK]", cfg.vocab_size);
    let single = Glm::load(common::fixtures(), LoadOptions::default()).expect("load");
    let want = single
        .fill(&bad, &GenerateOptions::greedy(2))
        .expect_err("bad id");
    let got = glm
        .fill(&bad, &GenerateOptions::greedy(2))
        .expect_err("bad id");
    assert_eq!(got.to_string(), want.to_string());
    // The group still works.
    let greedy = common::read_json("greedy.json");
    let case = greedy
        .as_object()
        .expect("greedy.json")
        .values()
        .find(|c| c.get("prompt_text").is_some())
        .expect("case");
    let new = case["generated_tokens"].as_array().expect("tokens").len();
    let out = glm
        .fill(
            case["prompt_text"].as_str().expect("text"),
            &GenerateOptions::greedy(new),
        )
        .expect("fill after an error");
    assert_eq!(
        out.text,
        case["fill_blanks_answer"].as_str().expect("answer")
    );
}
