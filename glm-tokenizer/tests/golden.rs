//! Golden tests: every string of `golden.jsonl` in every mode (ids and decoded text exact),
//! and every case of `golden_decode.jsonl`.

mod common;

use common::{ids, read_jsonl, tokenizer};
use glm_tokenizer::Mode;

#[test]
fn golden_encode_and_decode_all_modes() {
    let lines = read_jsonl("golden.jsonl");
    assert!(
        lines.len() >= 200,
        "golden.jsonl has only {} lines",
        lines.len()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in &lines {
        let text = line["text"].as_str().expect("text");
        let id = line["id"].as_str().unwrap_or("?");
        for mode in Mode::ALL {
            let case = &line[mode.name()];
            assert!(case.is_object(), "{id}: mode {} missing", mode.name());
            let tok = tokenizer(mode);
            let want = ids(case, "ids");
            let got = tok.encode(text);
            if got != want {
                failures.push(format!(
                    "{id} {} encode {}",
                    mode.name(),
                    first_difference(&want, &got)
                ));
            }
            let want_text = case["decoded"].as_str().expect("decoded");
            let got_text = tok.decode(&want);
            if got_text != want_text {
                failures.push(format!(
                    "{id} {} decode\n  want {want_text:?}\n  got  {got_text:?}",
                    mode.name()
                ));
            }
            if let Some(pieces) = case.get("pieces").and_then(|p| p.as_array()) {
                let got_pieces: Vec<&str> = want
                    .iter()
                    .map(|&i| tok.id_to_piece(i).unwrap_or("<none>"))
                    .collect();
                let want_pieces: Vec<&str> =
                    pieces.iter().map(|p| p.as_str().unwrap_or("")).collect();
                if got_pieces != want_pieces {
                    failures.push(format!(
                        "{id} {} pieces\n  want {want_pieces:?}\n  got  {got_pieces:?}",
                        mode.name()
                    ));
                }
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_decode_cases() {
    let lines = read_jsonl("golden_decode.jsonl");
    assert!(lines.len() >= 30);
    let mut failures = Vec::new();
    for line in &lines {
        let name = line["name"].as_str().unwrap_or("?");
        let glm_ids = ids(line, "ids");
        let mut check = |mode: Mode, ids: &[u32], key: &str| {
            if let Some(want) = line.get(key).and_then(|v| v.as_str()) {
                let got = tokenizer(mode).decode(ids);
                if got != want {
                    failures.push(format!("{name} {key}: want {want:?} got {got:?}"));
                }
            }
        };
        check(Mode::Glm130b, &glm_ids, "glm130b_decoded");
        check(
            Mode::Glm130bSpecialTokens,
            &glm_ids,
            "glm130b_special_tokens_decoded",
        );
        check(
            Mode::Glm130bKeepExtraWhitespace,
            &glm_ids,
            "glm130b_keep_extra_whitespace_decoded",
        );
        check(Mode::Icetk, &glm_ids, "icetk_decoded");
        check(
            Mode::ChatGlm6b,
            &ids(line, "chatglm6b_ids"),
            "chatglm6b_decoded",
        );
    }
    assert!(
        failures.is_empty(),
        "{} decode cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn special_ids_are_derived_from_the_model() {
    let glm = tokenizer(Mode::Glm130b);
    assert_eq!(
        [
            glm.mask_id(),
            glm.gmask_id(),
            glm.smask_id(),
            glm.eod_id(),
            glm.sop_id(),
            glm.eop_id()
        ],
        [150000, 150001, 150002, 150003, 150004, 150005]
    );
    assert_eq!(glm.special_id(glm_tokenizer::GlmSpecial::DBlock), 150007);
    assert_eq!(glm.eos_id(), 20002);
    assert_eq!(glm.unk_id(), Some(20000));
    assert_eq!(glm.vocab_size(), 150344);
    assert_eq!(glm.piece_to_id("<|tab|>"), Some(150008));
    assert_eq!(glm.piece_to_id("<|blank_80|>"), Some(150087));
    assert_eq!(glm.piece_to_id("<0x00>"), Some(150088));
    assert_eq!(glm.id_to_piece(150343), Some("<0xFF>"));
    assert_eq!(glm.id_to_piece(20004), Some("<n>"));
    assert_eq!(glm.id_to_piece(19999), None);
    assert_eq!(glm.id_to_piece(150344), None);

    let chat = tokenizer(Mode::ChatGlm6b);
    assert_eq!(
        [
            chat.mask_id(),
            chat.gmask_id(),
            chat.sop_id(),
            chat.eop_id()
        ],
        [130000, 130001, 130004, 130005]
    );
    assert_eq!(chat.eod_id(), 130003);
    assert_eq!(chat.eos_id(), 2);
    assert_eq!(chat.vocab_size(), 130344);

    let icetk = tokenizer(Mode::Icetk);
    assert_eq!([icetk.mask_id(), icetk.gmask_id()], [150000, 150001]);
    assert_eq!(icetk.vocab_size(), 150008);
}

#[test]
fn literal_specials_only_in_special_tokens_mode() {
    let plain = tokenizer(Mode::Glm130b);
    let special = tokenizer(Mode::Glm130bSpecialTokens);
    let text = "a [gMASK] b<sop>";
    assert!(!plain.encode(text).contains(&plain.gmask_id()));
    let ids = special.encode(text);
    assert!(ids.contains(&special.gmask_id()) && ids.contains(&special.sop_id()));
    assert_eq!(special.decode(&ids), text);
}

/// Where two id lists first differ, with a little context (long golden strings make whole
/// lists unreadable).
fn first_difference(want: &[u32], got: &[u32]) -> String {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let lo = at.saturating_sub(3);
    let window = |v: &[u32]| v[lo.min(v.len())..(at + 4).min(v.len())].to_vec();
    format!(
        "(lengths {} vs {}) first difference at {at}: want ..{:?}.. got ..{:?}..",
        want.len(),
        got.len(),
        window(want),
        window(got)
    )
}
