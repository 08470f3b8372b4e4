//! Encode throughput on a long mixed Chinese/English/code text built from the golden strings.
//!
//! ```text
//! cargo run --release -p glm-tokenizer --example encode_bench -- [MODE] [SECONDS]
//! ```
//! Prints one JSON line. MODE is a golden mode name (default `icetk`: plain SentencePiece plus
//! the +20000 shift, the like-for-like comparison with `benches/sp_bench.py`).

use std::time::Instant;

use glm_tokenizer::{Mode, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode_name = args.next().unwrap_or_else(|| "icetk".to_string());
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let mode = Mode::from_name(&mode_name).ok_or_else(|| format!("unknown mode {mode_name}"))?;
    let dir = std::env::var("GLM_TOKENIZER_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/tokenizer").to_string()
    });
    let model = match mode {
        Mode::ChatGlm6b => "ice_text_synth_chatglm6b.model",
        Mode::Glm130bKeepExtraWhitespace => "ice_text_synth_keep_ws.model",
        _ => "ice_text_synth.model",
    };

    let started = Instant::now();
    let tok = Tokenizer::from_file(format!("{dir}/{model}"), mode.options())?;
    let load_s = started.elapsed().as_secs_f64();

    let text = bench_text(&format!("{dir}/golden.jsonl"))?;
    let mut ids = 0usize;
    let mut runs = 0usize;
    let started = Instant::now();
    while runs == 0 || started.elapsed().as_secs_f64() < seconds {
        ids = tok.encode(&text).len();
        runs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mb = text.len() as f64 * runs as f64 / 1e6;
    println!(
        "{{\"impl\":\"glm-tokenizer\",\"mode\":\"{}\",\"text_bytes\":{},\"ids\":{},\"runs\":{},\"seconds\":{:.3},\"mb_per_s\":{:.2},\"load_s\":{:.3}}}",
        mode.name(),
        text.len(),
        ids,
        runs,
        elapsed,
        mb / elapsed,
        load_s
    );
    Ok(())
}

/// The golden strings joined by newlines, repeated to about 1 MB (same recipe as sp_bench.py).
fn bench_text(golden: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut one = Vec::new();
    for line in std::fs::read_to_string(golden)?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)?;
        one.push(
            value["text"]
                .as_str()
                .ok_or("golden line without text")?
                .to_string(),
        );
    }
    let block = one.join("\n");
    let mut text = String::with_capacity(1 << 20);
    while text.len() < 1_000_000 {
        text.push_str(&block);
        text.push('\n');
    }
    Ok(text)
}
