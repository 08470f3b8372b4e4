//! Streaming decode: for every golden id list and for random id sequences, pushing ids one at
//! a time releases only final text (every partial output is a prefix of the full decode), and
//! the pieces joined equal `decode(all ids)`.

mod common;

use common::{ids, read_jsonl, stream_decode, tokenizer};
use glm_tokenizer::{Mode, Tokenizer};
use proptest::prelude::*;

/// Pushes ids one at a time, checking after each push that the text so far is a prefix of
/// the full decode; returns the joined text.
fn checked_stream(tok: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    let full = tok.decode(ids);
    let mut stream = tok.stream_decoder();
    let mut acc = String::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(piece) = stream.push(id) {
            acc.push_str(&piece);
            if !full.starts_with(&acc) {
                return Err(format!(
                    "after id #{i} ({id}) released {acc:?}, not a prefix of {full:?}"
                ));
            }
        }
    }
    acc.push_str(&stream.finish());
    if acc != full {
        return Err(format!("stream {acc:?} != decode {full:?}"));
    }
    Ok(acc)
}

#[test]
fn stream_matches_decode_on_golden_strings() {
    let mut failures = Vec::new();
    let mut n = 0;
    for line in read_jsonl("golden.jsonl") {
        for mode in Mode::ALL {
            let want = ids(&line[mode.name()], "ids");
            if let Err(e) = checked_stream(tokenizer(mode), &want) {
                failures.push(format!("{} {}: {e}", line["id"], mode.name()));
            }
            n += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn stream_matches_decode_on_golden_decode_cases() {
    for line in read_jsonl("golden_decode.jsonl") {
        for mode in [
            Mode::Glm130b,
            Mode::Glm130bSpecialTokens,
            Mode::Glm130bKeepExtraWhitespace,
            Mode::Icetk,
        ] {
            checked_stream(tokenizer(mode), &ids(&line, "ids"))
                .unwrap_or_else(|e| panic!("{}: {e}", line["name"]));
        }
        checked_stream(tokenizer(Mode::ChatGlm6b), &ids(&line, "chatglm6b_ids"))
            .unwrap_or_else(|e| panic!("{}: {e}", line["name"]));
    }
}

#[test]
fn chinese_split_across_byte_pieces_is_held_until_complete() {
    let tok = tokenizer(Mode::Glm130b);
    let byte = |b: u8| {
        tok.piece_to_id(&format!("<0x{b:02X}>"))
            .expect("byte piece")
    };
    let mut stream = tok.stream_decoder();
    // 你 = E4 BD A0
    assert_eq!(stream.push(byte(0xe4)), None);
    assert_eq!(stream.push(byte(0xbd)), None);
    assert_eq!(stream.push(byte(0xa0)).as_deref(), Some("你"));
    // A lone lead byte followed by a normal piece becomes U+FFFD.
    assert_eq!(stream.push(byte(0xe4)), None);
    let x = tok.piece_to_id("▁x").expect("▁x");
    assert_eq!(stream.push(x).as_deref(), Some("\u{fffd} x"));
    assert_eq!(stream.finish(), "");
}

#[test]
fn whitespace_token_spelled_by_pieces_is_held_until_decided() {
    let tok = tokenizer(Mode::Glm130b);
    let id = |p: &str| {
        tok.piece_to_id(p)
            .unwrap_or_else(|| panic!("{p} not in vocab"))
    };
    // "<" "n" ">" decode to "<n>", which GLM's decode turns into a newline.
    let ids = [id("x"), id("<"), id("n"), id(">"), id("x")];
    assert_eq!(tok.decode(&ids), "x\nx");
    assert_eq!(stream_decode(tok, &ids), "x\nx");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(ids[0]).as_deref(), Some("x"));
    assert_eq!(stream.push(ids[1]), None);
    assert_eq!(stream.push(ids[2]), None);
    assert_eq!(stream.push(ids[3]).as_deref(), Some("\n"));
}

/// Ids biased towards the pieces that make streaming hard: bytes, `▁`, `<n>`, specials,
/// punctuation that spells whitespace tokens, plus random and out-of-range ids.
fn tricky_ids(tok: &'static Tokenizer) -> impl Strategy<Value = Vec<u32>> {
    let named: Vec<u32> = [
        "▁", "<n>", "<", "|", ">", "n", "tab", "blank", "_", "▁<", "x", "▁x", "<unk>", "</s>",
        "[MASK]", "<|tab|>",
    ]
    .iter()
    .filter_map(|p| tok.piece_to_id(p))
    .collect();
    let byte0 = tok.piece_to_id("<0x00>").unwrap_or(0);
    let vocab = tok.vocab_size() as u32;
    let id = prop_oneof![
        3 => proptest::sample::select(named),
        3 => (0u32..256).prop_map(move |b| byte0 + b),
        2 => 0u32..vocab,
        1 => Just(tok.gmask_id()),
        1 => any::<u32>(),
    ];
    proptest::collection::vec(id, 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stream_equals_decode_on_random_ids(ids in tricky_ids(tokenizer(Mode::Glm130b))) {
        for mode in [Mode::Glm130b, Mode::Glm130bSpecialTokens, Mode::Glm130bKeepExtraWhitespace, Mode::Icetk] {
            prop_assert!(checked_stream(tokenizer(mode), &ids).is_ok(), "{:?}", checked_stream(tokenizer(mode), &ids));
        }
        let chat: Vec<u32> = ids.iter().map(|id| id.wrapping_sub(20000)).collect();
        prop_assert!(checked_stream(tokenizer(Mode::ChatGlm6b), &chat).is_ok());
    }
}
