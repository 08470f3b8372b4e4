//! The objective sampler: span statistics over many seeds, layouts that glm-core's blank-infilling
//! builder agrees with, loss masks, the mixture, packing and resumable determinism.

use std::sync::Arc;

use glm_core::blank::{glm_attention_mask, BlankInput};
use glm_core::SpecialTokens;
use glm_train::batch::{Batch, Sequence};
use glm_train::data::{DataStream, Instruction, StreamConfig, TokenStore};
use glm_train::objective::{
    build_mask_layout, gmask_layout, gmask_segment, mask_segment, ObjectiveConfig, SampleKind,
    Segment,
};
use glm_train::rng::Rng;
use serde_json::Value;

fn fixture_dir() -> std::path::PathBuf {
    glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").expect("fixtures")
}

/// The fixture model's special tokens (`config.json` → `special_tokens`).
fn specials() -> SpecialTokens {
    glm_core::GlmConfig::from_file(fixture_dir().join("config.json"))
        .expect("config.json")
        .special_tokens
}

/// Text id number `i`: ids cycle through `[lo, num_text_tokens)`, where `lo` is above the
/// `eos` and `[pad]` ids (`config.json`), so no text id is a special token.
fn text_id(i: u32) -> u32 {
    static RANGE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let &(lo, n) = RANGE.get_or_init(|| {
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join("config.json")).expect("config.json"),
        )
        .expect("json");
        let n = config["num_text_tokens"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("num_text_tokens");
        let s = specials();
        let lo = s.eos.max(s.pad) + 1;
        assert!(
            n > lo + 100,
            "num_text_tokens {n} leaves too few text ids above {lo}"
        );
        (lo, n)
    });
    lo + i % (n - lo)
}

/// `count` consecutive text ids starting at text id number `first`.
fn text_ids(first: u32, count: u32) -> Vec<u32> {
    (first..first + count).map(text_id).collect()
}

fn check_mask_segment(text: &[u32], seg: &Segment, s: &SpecialTokens) {
    let n = seg.len();
    assert_eq!(seg.targets.len(), n);
    assert_eq!(seg.loss_mask.len(), n);
    assert_eq!(seg.position_ids.len(), n);
    // Part A: the text with each span replaced by one [MASK].
    let part_a = &seg.tokens[..seg.prefix_len];
    let masks: Vec<usize> = (0..part_a.len()).filter(|&i| part_a[i] == s.mask).collect();
    assert_eq!(masks.len(), seg.spans.len());
    assert_eq!(
        seg.tokens[seg.prefix_len], s.sop,
        "Part B starts with <sop>"
    );
    // Loss exactly on Part B.
    assert!(seg
        .loss_mask
        .iter()
        .enumerate()
        .all(|(i, &m)| m == (i >= seg.prefix_len)));
    assert_eq!(
        seg.position_ids[..seg.prefix_len],
        (0..seg.prefix_len as u32).collect::<Vec<_>>()[..]
    );
    // Part B: blocks `<sop> span` → `span <eop>`, position = its mask's index; every span once.
    let mut i = seg.prefix_len;
    let mut seen = vec![false; seg.spans.len()];
    while i < n {
        assert_eq!(seg.tokens[i], s.sop);
        let pos = seg.position_ids[i] as usize;
        let k = masks
            .iter()
            .position(|&m| m == pos)
            .expect("block position is a mask index");
        assert!(!seen[k]);
        seen[k] = true;
        let (start, len) = seg.spans[k];
        let span = &text[start..start + len];
        assert_eq!(&seg.tokens[i + 1..i + 1 + len], span);
        assert_eq!(&seg.targets[i..i + len], span);
        assert_eq!(seg.targets[i + len], s.eop);
        assert!(seg.position_ids[i..=i + len]
            .iter()
            .all(|&p| p as usize == pos));
        i += len + 1;
    }
    assert!(seen.iter().all(|&x| x));
    // Reconstruct the text from Part A and the spans.
    let mut rebuilt = Vec::new();
    let mut k = 0;
    for &t in part_a {
        if t == s.mask {
            let (start, len) = seg.spans[k];
            rebuilt.extend_from_slice(&text[start..start + len]);
            k += 1;
        } else {
            rebuilt.push(t);
        }
    }
    assert_eq!(rebuilt, text[..rebuilt.len()]);
}

#[test]
fn span_statistics_over_many_seeds() {
    let s = specials();
    let cfg = ObjectiveConfig::default();
    let text: Vec<u32> = text_ids(0, 400);
    let (mut masked, mut total, mut spans, mut span_tokens) = (0usize, 0usize, 0usize, 0usize);
    let mut max_len = 0;
    for seed in 0..1000 {
        let mut rng = Rng::new(seed);
        let (seg, consumed) = mask_segment(&text, 512, &cfg, &s, &mut rng).expect("segment");
        assert_eq!(seg.len(), consumed + 2 * seg.spans.len(), "n + 2k rows");
        check_mask_segment(&text[..consumed], &seg, &s);
        // Spans are in range, sorted, and separated by at least one kept token.
        for w in seg.spans.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0);
        }
        let covered: usize = seg.spans.iter().map(|x| x.1).sum();
        masked += covered;
        total += consumed;
        spans += seg.spans.len();
        span_tokens += covered;
        max_len = max_len.max(seg.spans.iter().map(|x| x.1).max().unwrap_or(0));
    }
    let ratio = masked as f64 / total as f64;
    assert!((ratio - 0.15).abs() < 0.005, "masked ratio {ratio}");
    // Poisson(3) restricted to >= 1 has mean 3/(1-e^-3) = 3.16; the last span of a sample is cut.
    let mean = span_tokens as f64 / spans as f64;
    assert!((2.6..3.3).contains(&mean), "mean span length {mean}");
    assert!((8..=39).contains(&max_len));
}

#[test]
fn mask_segments_respect_the_window() {
    let s = specials();
    let cfg = ObjectiveConfig::default();
    let text: Vec<u32> = text_ids(0, 890);
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let window = 16 + (seed as usize % 100);
        let (seg, consumed) = mask_segment(&text, window, &cfg, &s, &mut rng).expect("segment");
        assert!(seg.len() <= window);
        check_mask_segment(&text[..consumed], &seg, &s);
    }
}

#[test]
fn gmask_layout_agrees_with_glm_core_and_keeps_the_prefix_ratio() {
    let s = specials();
    let cfg = ObjectiveConfig::default();
    let text: Vec<u32> = text_ids(0, 100);
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let (seg, n) = gmask_segment(&text, 64, &cfg, &s, &mut rng).expect("segment");
        assert_eq!(n, 63);
        let prefix = seg.prefix_len - 1;
        assert!(prefix >= (0.2 * n as f64).ceil() as usize && prefix < n);
        // glm-core's builder on the context gives the same positions and mask.
        let input =
            BlankInput::from_context(&seg.tokens[..seg.prefix_len], &s).expect("blank input");
        assert_eq!(input.tokens[..], seg.tokens[..=seg.prefix_len]);
        assert_eq!(input.position_ids(seg.len()), seg.position_ids);
        assert_eq!(
            input.attention_mask(seg.len()),
            glm_attention_mask(seg.len(), seg.prefix_len)
        );
        // Targets: the rest of the text from the <sop> row on, no <eop>.
        assert_eq!(seg.targets[seg.prefix_len..], text[prefix..n]);
        assert!(seg
            .loss_mask
            .iter()
            .enumerate()
            .all(|(i, &m)| m == (i >= seg.prefix_len)));
    }
}

#[test]
fn single_span_layout_agrees_with_glm_core() {
    let s = specials();
    let text: Vec<u32> = text_ids(0, 20);
    let seg = build_mask_layout(&text, &[(5, 4)], &s, &mut Rng::new(1));
    let input = BlankInput::from_context(&seg.tokens[..seg.prefix_len], &s).expect("blank input");
    assert_eq!(input.mask_position, 5);
    assert_eq!(input.position_ids(seg.len()), seg.position_ids);
    assert_eq!(
        input.attention_mask(seg.len()),
        glm_attention_mask(seg.len(), seg.prefix_len)
    );
}

fn fixture_json() -> Value {
    let dir = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures").expect("fixtures");
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("train_step.json")).expect("train_step.json"),
    )
    .expect("json")
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u32)
        .collect()
}

#[test]
fn layouts_reproduce_the_fixture_batch() {
    let json = fixture_json();
    let s = specials();
    let s0 = &json["batch"]["samples"]["sample0"];
    let (left, span, right) = (u32s(&s0["left"]), u32s(&s0["span"]), u32s(&s0["right"]));
    let text: Vec<u32> = [left.clone(), span.clone(), right].concat();
    let mask_seg = build_mask_layout(&text, &[(left.len(), span.len())], &s, &mut Rng::new(0));
    let s1 = &json["batch"]["samples"]["sample1"];
    let (prefix, target) = (u32s(&s1["prefix"]), u32s(&s1["target"]));
    let gtext: Vec<u32> = [prefix.clone(), target].concat();
    let gseg = gmask_layout(&gtext, prefix.len(), &s);
    // The sequence length is the fixture batch's row length.
    let b = &json["batch"];
    let rows = b["tokens"].as_array().expect("tokens");
    assert_eq!(rows.len(), 2, "one [MASK] and one [gMASK] sample");
    let seq = rows[0].as_array().expect("row").len();
    assert!(rows.iter().all(|r| r.as_array().map(Vec::len) == Some(seq)));
    let batch = Batch::from_sequences(&[
        Sequence::pack(&[mask_seg], seq, s.pad, 0),
        Sequence::pack(&[gseg], seq, s.pad, 0),
    ]);
    let flat =
        |v: &Value| -> Vec<u32> { v.as_array().expect("rows").iter().flat_map(u32s).collect() };
    assert_eq!(batch.input.tokens, flat(&b["tokens"]));
    assert_eq!(batch.input.position_ids, flat(&b["position_ids"]));
    assert_eq!(batch.targets, flat(&b["targets"]));
    let lm: Vec<bool> = flat(&b["loss_mask"]).into_iter().map(|x| x != 0).collect();
    assert_eq!(batch.loss_mask, lm);
    let mut mask = Vec::new();
    for sample in b["attention_mask"].as_array().expect("mask") {
        for row in sample[0].as_array().expect("rows") {
            mask.extend(u32s(row).into_iter().map(|x| x != 0));
        }
    }
    assert_eq!(batch.input.mask, mask);
}

fn corpus(dir: &std::path::Path, docs: usize) -> Arc<TokenStore> {
    let mut rng = Rng::new(3);
    let docs: Vec<Vec<u32>> = (0..docs)
        .map(|_| {
            let len = 5 + rng.below(150);
            (0..len).map(|_| text_id(rng.below(900) as u32)).collect()
        })
        .collect();
    Arc::new(TokenStore::write(&dir.join("corpus"), &docs).expect("store"))
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("glm-train-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn stream(store: Arc<TokenStore>, mip: Vec<Instruction>, seq: usize) -> DataStream {
    let docs = (0..store.len() as u32).collect();
    DataStream::new(
        store,
        docs,
        Arc::new(mip),
        StreamConfig {
            seq_len: seq,
            objective: ObjectiveConfig::default(),
            specials: specials(),
            seed: 9,
            min_segment: 8,
        },
    )
    .expect("stream")
}

#[test]
fn mixture_packing_and_resumable_determinism() {
    let dir = tmpdir("mix");
    let store = corpus(&dir, 300);
    let mip: Vec<Instruction> = (0..20)
        .map(|i| Instruction {
            prompt: vec![20 + i, 21, 22],
            target: vec![30 + i, 31],
        })
        .collect();
    let mut s = stream(store.clone(), mip.clone(), 128);
    let (mut kinds, mut segs) = ([0usize; 3], 0usize);
    let mut used = 0usize;
    for _ in 0..400 {
        // Count segment kinds through a clone that builds segments only.
        let seq = s.next_sequence();
        assert_eq!(seq.tokens.len(), 128);
        used += seq.used();
        // Segments are isolated: no row sees another segment or padding.
        for &(off, len, prefix) in &seq.segments {
            for i in off..off + len {
                for j in 0..128 {
                    let visible = !seq.mask[i * 128 + j];
                    let inside = j >= off && j < off + len && (j - off < prefix || j <= i);
                    assert_eq!(visible, inside);
                }
            }
        }
        for i in seq.used()..128 {
            assert!(!seq.loss_mask[i] && (0..128).all(|j| seq.mask[i * 128 + j]));
        }
    }
    assert!(
        used as f64 / (400.0 * 128.0) > 0.9,
        "packing fills sequences"
    );
    let mut probe = stream(store.clone(), mip, 128);
    for _ in 0..3000 {
        if let Some(seg) = probe.next_segment(128) {
            segs += 1;
            kinds[match seg.kind {
                SampleKind::Mask => 0,
                SampleKind::GMask => 1,
                SampleKind::Mip => 2,
            }] += 1;
        }
    }
    let frac = |k: usize| kinds[k] as f64 / segs as f64;
    assert!((frac(2) - 0.05).abs() < 0.015, "MIP {}", frac(2));
    let mask_of_self = kinds[0] as f64 / (kinds[0] + kinds[1]) as f64;
    assert!(
        (mask_of_self - 0.3).abs() < 0.03,
        "[MASK] share {mask_of_self}"
    );

    // Same seed → same batches; a restored state continues identically.
    let mut a = stream(store.clone(), Vec::new(), 64);
    let mut b = stream(store.clone(), Vec::new(), 64);
    for _ in 0..7 {
        assert_eq!(a.next_batch(3), b.next_batch(3));
    }
    let saved = serde_json::to_string(a.state()).expect("state");
    let expect: Vec<Batch> = (0..5).map(|_| a.next_batch(3)).collect();
    let mut c = stream(store, Vec::new(), 64);
    c.restore(serde_json::from_str(&saved).expect("state"))
        .expect("restore");
    let got: Vec<Batch> = (0..5).map(|_| c.next_batch(3)).collect();
    assert_eq!(got, expect);
    let _ = std::fs::remove_dir_all(dir);
}
