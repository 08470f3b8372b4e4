//! Bad input: broken model files give typed errors; arbitrary text and arbitrary ids never
//! panic; encode → decode round-trips where SentencePiece guarantees it.

mod common;

use common::{golden_dir, model_file, tokenizer};
use glm_tokenizer::{Error, Mode, SentencePieceModel, Tokenizer, TokenizerOptions};
use proptest::prelude::*;

fn base_model_bytes() -> Vec<u8> {
    std::fs::read(model_file(Mode::Glm130b)).expect("base model")
}

// --- a tiny protobuf writer for hand-made models -------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_bytes(field: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
    varint(field << 3, out);
    varint(v, out);
}

fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
    let mut p = Vec::new();
    field_bytes(1, text.as_bytes(), &mut p);
    p.push(2 << 3 | 5);
    p.extend_from_slice(&score.to_le_bytes());
    field_varint(3, kind, &mut p);
    p
}

/// A minimal valid unigram model: `<unk>`, `▁`, `a`, `b`, `▁ab`, no charsmap.
fn tiny_model(extra_pieces: &[Vec<u8>], trainer: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for p in [
        piece("<unk>", 0.0, 2),
        piece("▁", -1.0, 1),
        piece("a", -2.0, 1),
        piece("b", -2.0, 1),
        piece("▁ab", -1.5, 1),
    ]
    .iter()
    .chain(extra_pieces)
    {
        field_bytes(1, p, &mut m);
    }
    field_bytes(2, trainer, &mut m);
    field_bytes(3, &[], &mut m);
    m
}

#[test]
fn tiny_hand_made_model_works() {
    let model = SentencePieceModel::from_bytes(&tiny_model(&[], &[]), "tiny").expect("valid");
    assert_eq!(model.encode("ab ba"), vec![4, 1, 3, 2]);
    assert_eq!(model.decode(&[4, 1, 3, 2]), "ab ba");
    assert_eq!(model.encode("abc"), vec![4, 0]);
}

#[test]
fn missing_file_is_io_error() {
    let err = Tokenizer::glm130b(golden_dir().join("no_such.model")).expect_err("missing");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("no_such.model"));
}

#[test]
fn non_model_files_are_rejected() {
    let json = std::fs::read(golden_dir().join("golden.jsonl")).expect("golden");
    let err = SentencePieceModel::from_bytes(&json, "golden.jsonl").expect_err("not a model");
    assert!(err.to_string().contains("golden.jsonl"), "{err}");
    // An empty file decodes to an empty ModelProto: no <unk>.
    assert!(matches!(
        SentencePieceModel::from_bytes(&[], "empty"),
        Err(Error::InvalidModel { .. })
    ));
}

#[test]
fn truncated_model_files_give_typed_errors() {
    let bytes = base_model_bytes();
    // Inside the first piece, inside the scores, inside the charsmap: all truncated fields.
    for cut in [3, 10, 1000, bytes.len() / 2, bytes.len() - 5] {
        let err = SentencePieceModel::from_bytes(&bytes[..cut], "cut").expect_err("truncated");
        assert!(
            matches!(err, Error::Truncated { .. } | Error::InvalidModel { .. }),
            "cut {cut}: {err}"
        );
    }
    let err = SentencePieceModel::from_bytes(&bytes[..10], "cut").expect_err("truncated");
    assert!(
        matches!(err, Error::Truncated { ref field, .. } if field.contains("pieces")),
        "{err}"
    );
}

#[test]
fn wrong_wire_types_and_bad_fields_are_typed() {
    // Piece type sent as a length-delimited field.
    let mut bad_piece = Vec::new();
    field_bytes(1, b"x", &mut bad_piece);
    field_bytes(3, b"oops", &mut bad_piece);
    let err =
        SentencePieceModel::from_bytes(&tiny_model(&[bad_piece], &[]), "m").expect_err("wire type");
    assert!(
        matches!(err, Error::WireType { ref field, .. } if field.contains("pieces[5].type")),
        "{err}"
    );

    let err = SentencePieceModel::from_bytes(&tiny_model(&[piece("z", 0.0, 9)], &[]), "m")
        .expect_err("enum");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");

    let err = SentencePieceModel::from_bytes(&tiny_model(&[piece("a", -1.0, 1)], &[]), "m")
        .expect_err("dup");
    assert!(
        matches!(err, Error::InvalidModel { ref reason, .. } if reason.contains("already defined")),
        "{err}"
    );

    let err = SentencePieceModel::from_bytes(&tiny_model(&[piece("<0x41>", 0.0, 6)], &[]), "m")
        .expect_err("byte");
    assert!(
        matches!(err, Error::InvalidModel { ref reason, .. } if reason.contains("byte_fallback")),
        "{err}"
    );

    let err = SentencePieceModel::from_bytes(&tiny_model(&[piece("q", f32::NAN, 1)], &[]), "m")
        .expect_err("nan");
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");

    let mut bpe = Vec::new();
    field_varint(3, 2, &mut bpe);
    let err = SentencePieceModel::from_bytes(&tiny_model(&[], &bpe), "m").expect_err("bpe");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");

    let mut byte_fallback = Vec::new();
    field_varint(35, 1, &mut byte_fallback);
    let err = SentencePieceModel::from_bytes(
        &tiny_model(&[piece("<0x41>", 0.0, 6)], &byte_fallback),
        "m",
    )
    .expect_err("255 byte pieces missing");
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
}

#[test]
fn chatglm_layout_needs_the_specials_in_the_file() {
    let err = Tokenizer::from_file(model_file(Mode::Glm130b), TokenizerOptions::chatglm6b())
        .expect_err("no [MASK]");
    assert!(
        matches!(err, Error::MissingSpecialPiece { ref piece, .. } if piece == "[MASK]"),
        "{err}"
    );
    // Appending GLM's pieces to a file that already has them is a duplicate, as in Python.
    let err = Tokenizer::from_file(model_file(Mode::ChatGlm6b), TokenizerOptions::glm130b())
        .expect_err("dup");
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SentencePieceModel::from_bytes(&bytes, "random");
        let _ = Tokenizer::from_bytes(&bytes, "random", TokenizerOptions::glm130b());
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        for mode in Mode::ALL {
            let tok = tokenizer(mode);
            let ids = tok.encode(&text);
            let vocab = tok.vocab_size() as u32;
            prop_assert!(ids.iter().all(|&id| id < vocab));
            let _ = tok.decode(&ids);
        }
    }

    #[test]
    fn arbitrary_ids_never_panic(ids in proptest::collection::vec(any::<u32>(), 0..32),
                                 small in proptest::collection::vec(0u32..160_000, 0..32)) {
        for mode in Mode::ALL {
            let tok = tokenizer(mode);
            let _ = tok.decode(&ids);
            let _ = tok.decode(&small);
            let mut stream = tok.stream_decoder();
            for &id in ids.iter().chain(&small) {
                let _ = stream.push(id);
            }
            let _ = stream.finish();
            for &id in &ids {
                let _ = tok.id_to_piece(id);
            }
        }
    }

    /// GLM-130B keeps newlines, tabs and space runs as tokens and has byte fallback, so any
    /// NFKC-stable text without a lone leading/trailing space and without literal whitespace
    /// tokens comes back unchanged.
    #[test]
    fn glm130b_round_trip(text in "[a-zA-Z0-9 \t\n.,;:!?(){}=+*/你好世界中文模型生成🙂👋€]{0,60}") {
        prop_assume!(!text.starts_with(' ') || text.starts_with("  "));
        prop_assume!(!text.ends_with(' ') || text.ends_with("  "));
        let tok = tokenizer(Mode::Glm130b);
        prop_assert_eq!(tok.decode(&tok.encode(&text)), text.clone());
        let batch = tok.encode_batch(&[text.as_str(), "x"]);
        prop_assert_eq!(&batch[0], &tok.encode(&text));
    }

    /// icetk has no whitespace tokens and no byte fallback: round trip holds for words of known
    /// characters separated by single spaces.
    #[test]
    fn icetk_round_trip(words in proptest::collection::vec("[a-z0-9你好世界]{1,8}", 0..10)) {
        let text = words.join(" ");
        let tok = tokenizer(Mode::Icetk);
        prop_assert_eq!(tok.decode(&tok.encode(&text)), text);
    }
}

proptest! {
    // Each case loads the 130000-piece model, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_model_never_panics(flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        // Corrupt the start of the file (pieces) and the tail (normalizer spec + charsmap).
        let mut bytes = base_model_bytes();
        let n = bytes.len();
        for (i, (at, v)) in flips.iter().enumerate() {
            let pos = if i % 2 == 0 { *at } else { n - 1 - at };
            bytes[pos] = *v;
        }
        if let Ok(model) = SentencePieceModel::from_bytes(&bytes, "corrupt") {
            let ids = model.encode("Hello 你好 ｗｏｒｌｄ\n\t!");
            let _ = model.decode(&ids);
        }
    }
}

#[test]
fn encode_batch_matches_encode_and_runs_in_parallel() {
    let tok = tokenizer(Mode::Glm130b);
    let texts: Vec<String> = (0..400)
        .map(|i| format!("第{i}行 line {i}: {}", "文本 text ".repeat(i % 40)))
        .collect();
    let batch = tok.encode_batch(&texts);
    assert_eq!(batch.len(), texts.len());
    for (t, ids) in texts.iter().zip(&batch) {
        assert_eq!(ids, &tok.encode(t));
    }
}
