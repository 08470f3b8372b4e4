//! Compact vocabulary end to end: `glm-train` with `"vocabulary": "compact"` keeps exactly the
//! tokenizer ids of its training data (plus the specials and `<unk>`), exports the map beside the
//! model, and glm-infer loads the folder with the normal tokenizer: prompts and outputs keep the
//! tokenizer's ids on the outside, the model sees its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use glm_core::vocab::{VocabMap, VOCAB_MAP_FILE};
use glm_core::GlmConfig;
use glm_infer::{GenerateOptions, Glm, LoadOptions};
use glm_tokenizer::{Tokenizer, TokenizerOptions};
use glm_train::config::Vocabulary;
use glm_train::{TrainConfig, Trainer};

type B = burn::backend::Autodiff<burn::backend::Flex>;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-compact-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn tokenizer_path() -> PathBuf {
    glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder")
        .join("ice_text_synth.model")
}

/// `examples/configs/tiny-train.json`, compact, a few steps, data paths absolute.
fn config(dir: &Path, corpus: &Path) -> TrainConfig {
    let root = glm_core::data_dir::workspace_root();
    let text = std::fs::read_to_string(root.join("examples/configs/tiny-train.json"))
        .expect("tiny-train.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["data"]["train"] = serde_json::json!([corpus]);
    v["data"]["mip"] = serde_json::json!(root.join("glm-train/data/instructions.jsonl"));
    v["data"]["tokenizer"] = serde_json::json!(tokenizer_path());
    v["data"]["cache_dir"] = serde_json::json!(dir.join("cache"));
    v["vocabulary"] = "compact".into();
    v["steps"] = 4.into();
    v["checkpoint_every"] = 2.into();
    v["validate_every"] = 2.into();
    v["batch_size"] = 2.into();
    serde_json::from_value(v).expect("config")
}

/// The ids the map must keep, computed from the inputs: every token of every blank-line separated
/// document and of every MIP pair, each special of the config, `<unk>`.
fn expected_ids(tok: &Tokenizer, corpus: &str, mip: &Path, outer: &GlmConfig) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for doc in corpus
        .split("\n\n")
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        ids.extend(tok.encode(doc));
    }
    for line in std::fs::read_to_string(mip).expect("mip").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("mip line");
        for field in ["prompt", "target"] {
            ids.extend(tok.encode(v[field].as_str().expect("text")));
        }
    }
    let s = &outer.special_tokens;
    ids.extend([
        s.mask, s.gmask, s.smask, s.eod, s.sop, s.eop, s.enc, s.dblock, s.eos, s.pad,
    ]);
    ids.extend(tok.unk_id());
    ids
}

#[test]
fn compact_training_exports_a_model_that_glm_infer_loads_with_the_normal_tokenizer() {
    let dir = tmpdir("run");
    let root = glm_core::data_dir::workspace_root();
    // A slice of the bundled corpus: fewer documents, fewer ids.
    let full = std::fs::read_to_string(root.join("glm-train/data/bilingual.txt")).expect("corpus");
    let text: String = full.split("\n\n").take(12).collect::<Vec<_>>().join("\n\n");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, &text).expect("corpus");
    let config = config(&dir, &corpus);
    assert_eq!(config.vocabulary, Vocabulary::Compact);
    let outer = config.model.clone();
    let tok = Tokenizer::from_file(tokenizer_path(), TokenizerOptions::glm130b()).expect("tok");

    let out = dir.join("out");
    let mut trainer =
        Trainer::<B>::new(config.clone(), &out, &Default::default(), false).expect("trainer");
    let lines = trainer.run().expect("run");
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l.loss.is_finite()));

    // The map keeps exactly the training data's ids, the specials and <unk>.
    let map = VocabMap::load_beside(&out)
        .expect("map")
        .expect("vocab_map.json");
    let mip = root.join("glm-train/data/instructions.jsonl");
    let want: Vec<u32> = expected_ids(&tok, &text, &mip, &outer)
        .into_iter()
        .collect();
    assert_eq!(map.outer_ids, want);
    assert_eq!(map.outer_vocab_size, outer.vocab_size);
    assert_eq!(map.unknown, tok.unk_id());
    assert!(map.len() < outer.vocab_size / 10, "{} ids kept", map.len());

    // The exported config is the compact model's; its specials map back to the tokenizer's.
    let inner = GlmConfig::from_file(out.join("config.json")).expect("config");
    assert_eq!(inner.vocab_size, map.len());
    assert_eq!(
        map.outer_specials(&inner.special_tokens).expect("specials"),
        outer.special_tokens
    );

    // glm-infer: the normal tokenizer on the outside, the model's ids inside.
    let glm = Glm::load(
        &out,
        LoadOptions {
            tokenizer: Some(tokenizer_path()),
            ..Default::default()
        },
    )
    .expect("load");
    assert_eq!(glm.config().vocab_size, map.len());
    let sentence = text.lines().next().expect("a line");
    let outer_ids = tok.encode(sentence);
    let inner_ids = glm.tokenize(sentence).expect("tokenize");
    assert_eq!(inner_ids.len(), outer_ids.len());
    for (i, o) in inner_ids.iter().zip(&outer_ids) {
        assert_eq!(map.to_outer(*i), Some(*o));
    }
    assert_eq!(glm.detokenize(&inner_ids), tok.decode(&outer_ids));
    // What `glm serve`'s /tokenize and /detokenize show: the tokenizer's ids.
    assert_eq!(
        glm.codec().tokenize_outer(sentence).expect("outer"),
        outer_ids
    );
    assert_eq!(
        glm.codec().detokenize_outer(&outer_ids),
        tok.decode(&outer_ids)
    );
    // Text the corpus never had becomes <unk> inside (the map's documented fallback).
    let unseen = (0x4E00u32..0x9FFF)
        .filter_map(char::from_u32)
        .map(String::from)
        .find(|c| {
            let ids = tok.encode(c);
            !ids.is_empty() && ids.iter().all(|t| map.to_inner(*t).is_none())
        })
        .expect("a character outside the corpus");
    let unk_inner = map.to_inner(tok.unk_id().expect("unk")).expect("unk kept");
    assert!(glm
        .tokenize(&unseen)
        .expect("tokenize")
        .iter()
        .all(|&t| t == unk_inner));
    // Generation runs in the model's ids and comes back as the tokenizer's text.
    let filled = glm
        .fill(&format!("{sentence}[MASK]"), &GenerateOptions::greedy(6))
        .expect("fill");
    assert!(filled.text.starts_with(&tok.decode(&outer_ids)));

    // A config.json whose vocab_size disagrees with the map is refused, naming the map file.
    let mut wrong = inner.clone();
    wrong.vocab_size += 1;
    wrong.save(out.join("config.json")).expect("save");
    let err = Glm::load(
        &out,
        LoadOptions {
            tokenizer: Some(tokenizer_path()),
            ..Default::default()
        },
    )
    .expect_err("mismatch")
    .to_string();
    assert!(err.contains(VOCAB_MAP_FILE), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_resume_on_a_corpus_with_other_ids_is_refused() {
    let dir = tmpdir("resume");
    let root = glm_core::data_dir::workspace_root();
    let tok = Tokenizer::from_file(tokenizer_path(), TokenizerOptions::glm130b()).expect("tok");
    let full = std::fs::read_to_string(root.join("glm-train/data/bilingual.txt")).expect("corpus");
    // A pre-tokenized corpus, so that one id can be swapped without moving any boundary.
    let mut docs: Vec<Vec<u32>> = full.split("\n\n").take(8).map(|d| tok.encode(d)).collect();
    let corpus = dir.join("corpus.jsonl");
    let write = |docs: &[Vec<u32>]| {
        let lines: Vec<String> = docs
            .iter()
            .map(|ids| serde_json::json!({ "ids": ids }).to_string())
            .collect();
        std::fs::write(&corpus, lines.join("\n")).expect("corpus");
    };
    write(&docs);
    let out = dir.join("out");
    let mut t = Trainer::<B>::new(config(&dir, &corpus), &out, &Default::default(), false)
        .expect("trainer");
    t.run().expect("run");
    // Same documents and token count, one token swapped for an id the run never kept: the
    // compact vocabulary changes, so the saved embedding rows would mean other tokens.
    let map = VocabMap::load_beside(&out).expect("map").expect("map file");
    let unseen = (0..map.outer_vocab_size as u32)
        .find(|&id| map.to_inner(id).is_none())
        .expect("an id outside the map");
    docs[0][0] = unseen;
    write(&docs);
    let err = match Trainer::<B>::new(config(&dir, &corpus), &out, &Default::default(), true) {
        Ok(_) => panic!("a resume on another vocabulary must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("compact vocabulary"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
