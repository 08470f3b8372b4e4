//! Load on `glm serve` (a bench, not a test): the server in-process on loopback, K concurrent
//! clients each sending streaming completions one after another for a fixed time, for every K of
//! `--clients` (default 1,4,16,64). Per K: requests/s, generated tokens/s, p50/p95 time to first
//! token, p50/p95 per-token latency (gaps between streamed tokens), errors and 429s. Stops by
//! itself. Prints one JSON line per K and a markdown table.
//!
//! ```text
//! cargo bench -p glm-infer --features openblas --bench serve_load -- --model DIR \
//!     [--clients 1,4,16,64] [--seconds 20] [--max-tokens 32] [--prompt-len 64] [--max-batch 16]
//! ```
//! `DIR` holds `config.json` + `model.safetensors` (e.g. `glm init-random --config
//! ../shared/bench/configs/glm-small/config.json --out DIR`); prompts are integer ids.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glm_infer::serve::{start, ServeOptions};
use glm_infer::{Glm, LoadOptions};
use serde_json::{json, Value};

struct Args {
    model: PathBuf,
    clients: Vec<usize>,
    seconds: f64,
    max_tokens: usize,
    prompt_len: usize,
    max_batch: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("serve_load: {msg}\n(see the header of glm-infer/benches/serve_load.rs)");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::new(),
        clients: vec![1, 4, 16, 64],
        seconds: 20.0,
        max_tokens: 32,
        prompt_len: 64,
        max_batch: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()),
            "--clients" => {
                a.clients = value()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| usage("--clients 1,4,16")))
                    .collect()
            }
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage("--seconds")),
            "--max-tokens" => {
                a.max_tokens = value().parse().unwrap_or_else(|_| usage("--max-tokens"))
            }
            "--prompt-len" => {
                a.prompt_len = value().parse().unwrap_or_else(|_| usage("--prompt-len"))
            }
            "--max-batch" => a.max_batch = value().parse().unwrap_or_else(|_| usage("--max-batch")),
            "--bench" => {}
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.model.as_os_str().is_empty() {
        usage("--model is required");
    }
    a
}

/// One streamed request: (status, time to first token, gaps between tokens, tokens).
fn request(addr: SocketAddr, body: &str) -> (u16, Option<f64>, Vec<f64>, usize) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, None, Vec::new(), 0);
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let start = Instant::now();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return (0, None, Vec::new(), 0);
    }
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut first, mut last, mut gaps, mut tokens) = (None, None::<Instant>, Vec::new(), 0);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let text = v["choices"][0]["text"].as_str().unwrap_or("");
        if !text.is_empty() {
            let now = Instant::now();
            match last {
                None => first = Some(now.duration_since(start).as_secs_f64()),
                Some(t) => gaps.push(now.duration_since(t).as_secs_f64()),
            }
            last = Some(now);
        }
        if let Some(n) = v["choices"][0]["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    (status, first, gaps, tokens)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = parse_args();
    let glm =
        Glm::load(&args.model, LoadOptions::default()).unwrap_or_else(|e| usage(&e.to_string()));
    let config = glm.config().clone();
    let server = start(
        glm,
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_batch_rows: args.max_batch,
            queue_capacity: 256,
            ..ServeOptions::default()
        },
        false,
    )
    .unwrap_or_else(|e| usage(&e.to_string()));
    let addr = server.addr();
    let text_ids = config.special_tokens.mask.min(config.special_tokens.gmask) as usize;
    let prompt = |k: usize| -> String {
        (0..args.prompt_len)
            .map(|i| (10 + (i * 7919 + k * 131 + 13) % (text_ids - 10)).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let stop = Arc::clone(&stop);
                let body = json!({
                    "prompt": prompt(c), "max_tokens": args.max_tokens, "stream": true,
                    "temperature": 1.0, "top_k": 0, "top_p": 0.9, "seed": c,
                })
                .to_string();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        out.push(request(addr, &body));
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        let elapsed = t0.elapsed().as_secs_f64();
        let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
        let limited = results.iter().filter(|r| r.0 == 429).count();
        let errors = results.len() - ok.len() - limited;
        let tokens: usize = ok.iter().map(|r| r.3).sum();
        let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.1).collect();
        let mut gaps: Vec<f64> = ok.iter().flat_map(|r| r.2.clone()).collect();
        let line = json!({
            "bench": "glm serve load", "model": args.model.display().to_string(),
            "clients": clients, "seconds": (elapsed * 1000.0).round() / 1000.0,
            "requests": ok.len(), "rejected_429": limited, "errors": errors,
            "requests_per_s": ok.len() as f64 / elapsed,
            "tokens_per_s": tokens as f64 / elapsed,
            "ttft_p50_s": percentile(&mut ttft, 0.5), "ttft_p95_s": percentile(&mut ttft, 0.95),
            "token_latency_p50_s": percentile(&mut gaps, 0.5),
            "token_latency_p95_s": percentile(&mut gaps, 0.95),
            "max_batch": args.max_batch, "max_tokens": args.max_tokens, "prompt_len": args.prompt_len,
        });
        println!("{line}");
        rows.push(line);
    }
    println!("\n| clients | req/s | tokens/s | TTFT p50 / p95 (s) | per-token p50 / p95 (ms) | 429 | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.2} | {:.1} | {:.2} / {:.2} | {:.1} / {:.1} | {} | {} |",
            r["clients"],
            f("requests_per_s"),
            f("tokens_per_s"),
            f("ttft_p50_s"),
            f("ttft_p95_s"),
            f("token_latency_p50_s") * 1e3,
            f("token_latency_p95_s") * 1e3,
            r["rejected_429"],
            r["errors"]
        );
    }
    let _ = server.shutdown();
}
