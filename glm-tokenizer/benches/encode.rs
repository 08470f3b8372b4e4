//! Criterion benches: encode throughput (MB/s) on ~1 MB of mixed Chinese/English/code text
//! built from the golden strings, plus decode and streaming decode of the result.
//!
//! `cargo bench -p glm-tokenizer --bench encode`; the same text goes through Python
//! sentencepiece in `benches/sp_bench.py` for the side-by-side number.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glm_tokenizer::{Mode, Tokenizer};

fn golden_dir() -> String {
    std::env::var("GLM_TOKENIZER_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/tokenizer").to_string()
    })
}

/// Golden strings joined by newlines, repeated to about 1 MB (same recipe as sp_bench.py).
fn bench_text() -> String {
    let golden =
        std::fs::read_to_string(format!("{}/golden.jsonl", golden_dir())).expect("golden.jsonl");
    let block: Vec<String> = golden
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let block = block.join("\n");
    let mut text = String::new();
    while text.len() < 1_000_000 {
        text.push_str(&block);
        text.push('\n');
    }
    text
}

fn benches(c: &mut Criterion) {
    let text = bench_text();
    let model = format!("{}/ice_text_synth.model", golden_dir());
    let mut group = c.benchmark_group("tokenizer");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(text.len() as u64));
    for mode in [Mode::Icetk, Mode::Glm130b] {
        let tok = Tokenizer::from_file(&model, mode.options()).expect("model loads");
        group.bench_function(format!("encode/{}", mode.name()), |b| {
            b.iter(|| tok.encode(black_box(&text)))
        });
        let ids = tok.encode(&text);
        group.bench_function(format!("decode/{}", mode.name()), |b| {
            b.iter(|| tok.decode(black_box(&ids)))
        });
        group.bench_function(format!("stream_decode/{}", mode.name()), |b| {
            b.iter(|| {
                let mut stream = tok.stream_decoder();
                let mut n = 0;
                for &id in black_box(&ids) {
                    n += stream.push(id).map_or(0, |s| s.len());
                }
                n + stream.finish().len()
            })
        });
    }
    group.finish();
}

criterion_group!(tokenizer, benches);
criterion_main!(tokenizer);
