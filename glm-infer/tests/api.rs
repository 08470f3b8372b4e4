//! The two-call API (`Glm::load` + `Glm::fill`) on the fixture model: the original's greedy and
//! beam answers (greedy.json, beam.json), streaming pieces that add up to the fill, and `score`
//! against an independent forward of the generation layout.

mod common;

use glm_infer::{BeamConfig, Decoding, GenerateOptions, Glm, LoadOptions};

fn fixture_glm() -> Glm {
    Glm::load(common::fixtures(), LoadOptions::default()).expect("load the fixture model")
}

#[test]
fn fill_reproduces_the_original_greedy_and_beam_answers() {
    let glm = fixture_glm();
    let greedy = common::read_json("greedy.json");
    let mut checked = 0;
    for (name, case) in greedy.as_object().unwrap() {
        let Some(text) = case.get("prompt_text").and_then(|v| v.as_str()) else {
            continue;
        };
        let new = case["generated_tokens"].as_array().unwrap().len();
        let out = glm.fill(text, &GenerateOptions::greedy(new)).unwrap();
        assert_eq!(
            out.text,
            case["fill_blanks_answer"].as_str().unwrap(),
            "{name}"
        );
        // Streaming hands out the fill piece by piece.
        let mut pieces = String::new();
        let streamed = glm
            .fill_streaming(text, &GenerateOptions::greedy(new), |p| pieces.push_str(p))
            .unwrap();
        assert_eq!(streamed, out, "{name}: streaming changes nothing");
        let joined: Vec<String> = out.blanks.clone();
        assert!(
            !pieces.is_empty() && joined.iter().any(|b| !b.is_empty()),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked > 0, "greedy.json has prompt_text cases");

    let beam = common::read_json("beam.json");
    for (k, r) in beam["runs"].as_array().unwrap().iter().enumerate() {
        let p = &beam["prompts"][r["prompt"].as_str().unwrap()];
        let options = GenerateOptions {
            max_new_tokens: r["max_new_tokens"].as_u64().unwrap() as usize,
            decoding: Decoding::Beam(BeamConfig {
                num_beams: r["num_beams"].as_u64().unwrap() as usize,
                length_penalty: r["length_penalty"].as_f64().unwrap() as f32,
                no_repeat_ngram_size: r["no_repeat_ngram_size"].as_u64().unwrap() as usize,
                min_gen_length: r["min_gen_length"].as_u64().unwrap() as usize,
                deterministic: true,
                ..BeamConfig::default()
            }),
        };
        let out = glm.fill(p["raw_text"].as_str().unwrap(), &options).unwrap();
        assert_eq!(
            out.text,
            r["fill_blanks_answers"][0].as_str().unwrap(),
            "beam run {k}: best beam"
        );
    }
}

#[cfg(feature = "eval")]
#[test]
fn score_is_the_log_probability_of_the_continuation_after_gmask() {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Int, Tensor, TensorData};
    let glm = fixture_glm();
    let cfg = glm.config().clone();
    let s = cfg.special_tokens;
    let text_ids = s.mask.min(s.gmask).min(s.sop).min(cfg.vocab_size as u32);
    let context: Vec<u32> = (0..7).map(|i| 3 + (i * 37) % (text_ids - 3)).collect();
    let cont: Vec<u32> = (0..4).map(|i| 3 + (i * 53 + 11) % (text_ids - 3)).collect();
    let words = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let got = glm.score(&words(&context), &words(&cont)).unwrap();
    // Independently: the generation layout of `context [gMASK] <sop> cont[..-1]` (positions
    // 0..n, the prefix through [gMASK] bidirectional, causal after), one forward, f32
    // log-softmax, the continuation's tokens at their rows.
    let mut tokens = context.clone();
    tokens.push(s.gmask);
    let prefix = tokens.len();
    tokens.push(s.sop);
    tokens.extend_from_slice(&cont[..cont.len() - 1]);
    let n = tokens.len();
    let device = Default::default();
    let t = Tensor::<common::Cpu, 2, Int>::from_data(
        TensorData::new(
            tokens.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
            [1, n],
        ),
        &device,
    );
    let p = Tensor::<common::Cpu, 2, Int>::from_data(
        TensorData::new((0..n as i64).collect::<Vec<_>>(), [1, n]),
        &device,
    );
    let mask = glm_core::blank::glm_attention_mask(n, prefix);
    let m = Tensor::<common::Cpu, 4, burn::tensor::Bool>::from_data(
        TensorData::new(mask, [1, 1, n, n]),
        &device,
    );
    let logits = glm.model().forward(t, p, m).unwrap();
    let lp: Vec<f32> = log_softmax(logits, 2).into_data().to_vec().unwrap();
    let v = cfg.vocab_size;
    let want: f32 = cont
        .iter()
        .enumerate()
        .map(|(j, &tok)| lp[(prefix + j) * v + tok as usize])
        .sum();
    assert!((got - want).abs() < 1e-4, "score {got} vs forward {want}");
    assert!(glm.score(&words(&context), "").is_err());
}

#[test]
fn stream_and_logits_agree_with_the_original_greedy_answers() {
    let glm = fixture_glm();
    let greedy = common::read_json("greedy.json");
    let mut checked = 0;
    for (name, case) in greedy.as_object().unwrap() {
        let Some(text) = case.get("prompt_text").and_then(|v| v.as_str()) else {
            continue;
        };
        let generated: Vec<u64> = case["generated_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        // The first generated token is the argmax of the next-token logits.
        let logits = glm.logits(text).unwrap();
        assert_eq!(logits.len(), glm.config().vocab_size, "{name}");
        let best = logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b });
        assert_eq!(best as u64, generated[0], "{name}: first greedy token");
        // The iterator hands out pieces, then the whole fill: the original's answer.
        let items: Vec<glm_infer::StreamItem> = glm
            .stream(text, &GenerateOptions::greedy(generated.len()))
            .collect::<Result<_, _>>()
            .unwrap();
        let Some(glm_infer::StreamItem::Done(fill)) = items.last() else {
            panic!("{name}: the stream ends with the fill");
        };
        assert_eq!(
            fill.text,
            case["fill_blanks_answer"].as_str().unwrap(),
            "{name}"
        );
        assert!(items.len() > 1, "{name}: pieces before the fill");
        checked += 1;
    }
    assert!(checked > 0);
}
