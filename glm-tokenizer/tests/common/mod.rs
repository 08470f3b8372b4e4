//! Shared helpers for the integration tests: where the golden folder is, and one cached
//! tokenizer per mode.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use glm_tokenizer::{Mode, Tokenizer};

/// The golden folder: `$GLM_TOKENIZER_DIR`, else `shared/tokenizer` beside the project root.
/// A missing folder fails the test run (it is not a skip).
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("GLM_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/tokenizer"
            ))
        });
    assert!(
        dir.join("golden.jsonl").is_file(),
        "golden tokenizer folder {} is missing golden.jsonl (set GLM_TOKENIZER_DIR)",
        dir.display()
    );
    dir
}

/// Model file a mode runs on.
pub fn model_file(mode: Mode) -> PathBuf {
    let name = match mode {
        Mode::Glm130bKeepExtraWhitespace => "ice_text_synth_keep_ws.model",
        Mode::ChatGlm6b => "ice_text_synth_chatglm6b.model",
        _ => "ice_text_synth.model",
    };
    golden_dir().join(name)
}

/// The tokenizer for `mode`, loaded once per test binary.
pub fn tokenizer(mode: Mode) -> &'static Tokenizer {
    static CACHE: [OnceLock<Tokenizer>; 8] = [const { OnceLock::new() }; 8];
    let slot = Mode::ALL
        .iter()
        .position(|&m| m == mode)
        .expect("mode is in Mode::ALL");
    CACHE[slot].get_or_init(|| {
        Tokenizer::from_file(model_file(mode), mode.options()).unwrap_or_else(|e| {
            panic!(
                "loading {} for {}: {e}",
                model_file(mode).display(),
                mode.name()
            )
        })
    })
}

/// Parsed lines of a JSONL file in the golden folder.
pub fn read_jsonl(name: &str) -> Vec<serde_json::Value> {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} line {}: {e}", i + 1))
        })
        .collect()
}

/// `value[key]` as a list of ids.
pub fn ids(value: &serde_json::Value, key: &str) -> Vec<u32> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array"))
        .iter()
        .map(|v| v.as_u64().expect("id is an integer") as u32)
        .collect()
}

/// Decodes ids one at a time through a stream decoder and joins the pieces.
pub fn stream_decode(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = tok.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        if let Some(text) = stream.push(id) {
            assert!(!text.is_empty(), "push returned Some(\"\")");
            out.push_str(&text);
        }
    }
    out.push_str(&stream.finish());
    out
}
