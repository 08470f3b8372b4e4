//! `glm serve` end to end over real HTTP on loopback (a plain std TCP client): concurrent greedy
//! requests give the original's answers (greedy.json, multimask.json, beam.json) exactly as one at
//! a time, with rows really batched; SSE streaming; every kind of bad request is an
//! OpenAI-shaped 4xx and the server keeps serving; a full queue is 429 with Retry-After; a client
//! that disconnects frees its slot; shutdown lets in-flight requests finish.
#![cfg(feature = "serve")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use glm_infer::serve::{ServeOptions, Server};
use glm_infer::{Glm, LoadOptions};
use serde_json::{json, Value};

fn server(options: ServeOptions) -> Server {
    common::fixture_server(options)
}

/// One HTTP/1.1 exchange: status, headers (lower-case names), body (chunked decoded).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&body[at..at + eol]).trim(), 16)
                    .expect("chunk size");
            at += eol + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[at..at + size]);
            at += size + 2;
        }
        body = out;
    }
    (status, headers, body)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, bytes) = http(addr, "POST", path, body.to_string().as_bytes());
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The greedy cases of the fixtures: (prompt, max_tokens, answer).
fn greedy_cases() -> Vec<(String, usize, String)> {
    let mut cases = Vec::new();
    let greedy = common::read_json("greedy.json");
    for case in greedy.as_object().expect("greedy.json").values() {
        if let Some(text) = case.get("prompt_text").and_then(Value::as_str) {
            let n = case["generated_tokens"].as_array().expect("tokens").len();
            let answer = case["fill_blanks_answer"]
                .as_str()
                .expect("answer")
                .to_string();
            cases.push((text.to_string(), n, answer));
        }
    }
    let multi = common::read_json("multimask.json");
    for p in multi["prompts"].as_object().expect("prompts").values() {
        let Some(answer) = p.get("fill_blanks_answer").and_then(Value::as_str) else {
            continue;
        };
        let initial = p["initial_sequence"].as_array().expect("initial").len();
        let out = p["out_seq_length"].as_u64().expect("out") as usize;
        cases.push((
            p["raw_text"].as_str().expect("text").to_string(),
            out - initial - 1,
            answer.to_string(),
        ));
    }
    assert!(cases.len() >= 3, "greedy and multi-blank fixture cases");
    cases
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, _, body) = http(addr, "GET", "/metrics", b"");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("metric {name}"))
}

/// `copies` of every greedy fixture case sent at once: each answered with the original's fill
/// and exact usage.
fn greedy_answers_at_once(addr: SocketAddr, copies: usize) {
    let threads: Vec<_> = (0..copies)
        .flat_map(|_| greedy_cases())
        .map(|(prompt, max_tokens, answer)| {
            std::thread::spawn(move || {
                let (status, body) = post(
                    addr,
                    "/v1/completions",
                    &json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
                );
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["choices"][0]["filled_text"], answer, "{prompt}");
                assert_eq!(body["object"], "text_completion");
                let usage = &body["usage"];
                assert_eq!(
                    usage["total_tokens"].as_u64(),
                    Some(
                        usage["prompt_tokens"].as_u64().unwrap_or(0)
                            + usage["completion_tokens"].as_u64().unwrap_or(0)
                    )
                );
            })
        })
        .collect();
    for t in threads {
        t.join().expect("request thread");
    }
}

#[test]
fn concurrent_greedy_requests_give_the_original_answers_batched() {
    let server = server(ServeOptions::default());
    let addr = server.addr();
    // Every case several times at once: they join one running batch.
    greedy_answers_at_once(addr, 3);
    // Rows were decoded together: more rows than steps.
    let (steps, rows) = (
        metric(addr, "glm_decode_steps_total"),
        metric(addr, "glm_decode_step_rows_total"),
    );
    assert!(rows > steps, "no batching: {rows} rows over {steps} steps");
    // Beam search through the same engine: beam.json's best answers.
    let beam = common::read_json("beam.json");
    for (k, r) in beam["runs"].as_array().expect("runs").iter().enumerate() {
        let p = &beam["prompts"][r["prompt"].as_str().expect("prompt")];
        let (status, body) = post(
            addr,
            "/v1/completions",
            &json!({
                "prompt": p["raw_text"], "max_tokens": r["max_new_tokens"],
                "num_beams": r["num_beams"], "length_penalty": r["length_penalty"],
                "no_repeat_ngram_size": r["no_repeat_ngram_size"], "min_tokens": r["min_gen_length"], "deterministic": true,
            }),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["filled_text"], r["fill_blanks_answers"][0],
            "beam run {k}"
        );
    }
    server.shutdown().expect("shutdown");
}

/// A batch that never empties (clients sending the fixture cases back to back, out of step with
/// each other, multi-blank prompts re-joining for their next blank) keeps its KV cache about as
/// long as its longest sequence: the padding that joins leave between a row's positions is
/// dropped (compaction), and every answer is still the original's. Without compaction the cache
/// grows by one position per decode step for as long as the batch runs.
#[test]
fn a_batch_that_never_empties_keeps_its_cache_short() {
    let server = server(ServeOptions::default());
    let addr = server.addr();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut cases = greedy_cases();
                let n = cases.len();
                cases.rotate_left(c % n);
                let mut longest = 0u64;
                for _ in 0..3 {
                    for (prompt, max_tokens, answer) in &cases {
                        let (status, body) = post(
                            addr,
                            "/v1/completions",
                            &json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
                        );
                        assert_eq!(status, 200, "{body}");
                        assert_eq!(body["choices"][0]["filled_text"], *answer, "{prompt}");
                        let usage = &body["usage"];
                        longest = longest.max(usage["total_tokens"].as_u64().unwrap_or(0));
                    }
                }
                longest
            })
        })
        .collect();
    let longest = clients
        .into_iter()
        .map(|t| t.join().expect("client"))
        .max()
        .unwrap_or(0) as f64;
    let steps = metric(addr, "glm_decode_steps_total");
    let most = metric(addr, "glm_batch_cache_positions_max");
    let compactions = metric(addr, "glm_batch_cache_compactions_total");
    // A sequence holds its prompt, its blank's start token and its fill: at most its usage's
    // total + 2. Compaction runs once padding passes a quarter of that, plus 4 positions.
    let bound = (longest + 2.0) * 1.25 + 6.0;
    assert!(compactions > 0.0, "no compaction over {steps} steps");
    assert!(
        most <= bound,
        "the batch cache reached {most} positions; the longest sequence is {longest} tokens"
    );
    server.shutdown().expect("shutdown");
}

#[test]
fn streaming_sends_openai_chunks_then_done() {
    let server = server(ServeOptions::default());
    let addr = server.addr();
    let (prompt, max_tokens, answer) = greedy_cases().remove(0);
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true});
    let (status, headers, bytes) =
        http(addr, "POST", "/v1/completions", body.to_string().as_bytes());
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
    let text = String::from_utf8(bytes).expect("UTF-8");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    let last = chunks.last().expect("a final chunk");
    assert_eq!(last["choices"][0]["filled_text"], answer);
    let fill = last["choices"][0]["blanks"][0].as_str().expect("blank");
    assert_eq!(streamed.trim(), fill.trim(), "pieces add up to the fill");
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(
        last["choices"][0]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn bad_requests_are_openai_errors_and_the_server_keeps_serving() {
    let server = server(ServeOptions {
        max_body_bytes: 4096,
        max_blanks: 2,
        ..ServeOptions::default()
    });
    let addr = server.addr();
    let cfg = common::config();
    let (prompt, max_tokens, answer) = greedy_cases().remove(0);
    let good = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string();
    // Every prompt below is made of the fixture prompt's own ids.
    let ids: Vec<&str> = prompt
        .split_whitespace()
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert!(ids.len() >= 3, "a fixture prompt with three ids: {prompt}");
    let short = ids[..2].join(" ");
    let with = |extra: Value| {
        let mut body = json!({"prompt": short});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body.to_string().into_bytes()
    };
    let blanks = format!("{} [MASK] {} [MASK] {} [MASK]", ids[0], ids[1], ids[2]);
    let bad: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"prompt\": ".to_vec(), 400),
        ("wrong type", with(json!({"max_tokens": "many"})), 400),
        (
            "temperature out of range",
            with(json!({"temperature": 7})),
            400,
        ),
        ("top_p out of range", with(json!({"top_p": 0})), 400),
        ("zero max_tokens", with(json!({"max_tokens": 0})), 400),
        ("unknown model", with(json!({"model": "gpt-9"})), 404),
        ("invalid UTF-8", b"{\"prompt\": \"\xff\xfe\"}".to_vec(), 400),
        ("empty prompt", br#"{"prompt": "   "}"#.to_vec(), 400),
        ("no prompt", br#"{"max_tokens": 3}"#.to_vec(), 400),
        (
            "too many blanks",
            json!({"prompt": blanks}).to_string().into_bytes(),
            400,
        ),
        (
            "id outside the vocabulary",
            format!(r#"{{"prompt": "{}"}}"#, cfg.vocab_size).into_bytes(),
            400,
        ),
        (
            "longer than the model",
            with(json!({"max_tokens": cfg.max_sequence_length})),
            400,
        ),
        ("oversize body", vec![b' '; 8192], 413),
        (
            "beam-only control without beams",
            with(json!({"min_tokens": 2})),
            400,
        ),
    ];
    for (what, body, want) in &bad {
        let (status, _, bytes) = http(addr, "POST", "/v1/completions", body);
        assert_eq!(status, *want, "{what}: {}", String::from_utf8_lossy(&bytes));
        let err: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{what}: JSON error body"));
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        assert!(err["error"]["type"].is_string(), "{what}");
    }
    let (status, _, _) = http(addr, "GET", "/no/such/thing", b"");
    assert_eq!(status, 404);
    // A flood of bad and good requests at once: every good one answered correctly.
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let (good, answer) = (good.clone(), answer.clone());
            let bad = bad[i % bad.len()].clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let (status, _, bytes) = http(addr, "POST", "/v1/completions", good.as_bytes());
                    assert_eq!(status, 200);
                    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
                    assert_eq!(body["choices"][0]["filled_text"], answer);
                } else {
                    let (status, _, _) = http(addr, "POST", "/v1/completions", &bad.1);
                    assert_eq!(status, bad.2, "{}", bad.0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    assert!(metric(addr, "glm_requests_rejected_total") >= bad.len() as f64);
    // The small endpoints.
    let three = ids[..3].join(" ");
    let numbers: Vec<u64> = ids[..3].iter().map(|w| w.parse().expect("id")).collect();
    let (status, body) = post(addr, "/tokenize", &json!({"text": three}));
    assert_eq!((status, body["tokens"].clone()), (200, json!(numbers)));
    let (status, body) = post(addr, "/detokenize", &json!({"tokens": numbers}));
    assert_eq!((status, body["text"].as_str()), (200, Some(three.as_str())));
    let (status, _) = post(addr, "/detokenize", &json!({"tokens": [cfg.vocab_size]}));
    assert_eq!(status, 400);
    let (status, _, bytes) = http(addr, "GET", "/v1/models", b"");
    let models: Value = serde_json::from_slice(&bytes).expect("models");
    assert_eq!(
        (status, models["data"][0]["id"].as_str()),
        (200, Some("glm"))
    );
    let (status, _, _) = http(addr, "GET", "/health", b"");
    assert_eq!(status, 200);
    let (status, _, page) = http(addr, "GET", "/", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/v1/completions"));
}

#[test]
fn a_full_queue_is_429_and_nothing_is_lost() {
    let server = server(ServeOptions {
        max_batch_rows: 1,
        queue_capacity: 1,
        ..ServeOptions::default()
    });
    let addr = server.addr();
    let (prompt, max_tokens, answer) = greedy_cases().remove(0);
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http(addr, "POST", "/v1/completions", body.as_bytes()))
        })
        .collect();
    let mut served = 0;
    let mut limited = 0;
    for t in threads {
        let (status, headers, bytes) = t.join().expect("thread");
        match status {
            200 => {
                let body: Value = serde_json::from_slice(&bytes).expect("JSON");
                assert_eq!(body["choices"][0]["filled_text"], answer);
                served += 1;
            }
            429 => {
                assert!(
                    headers.iter().any(|(k, _)| k == "retry-after"),
                    "Retry-After"
                );
                limited += 1;
            }
            other => panic!("status {other}: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    assert!(
        served >= 1 && limited >= 1,
        "{served} served, {limited} limited"
    );
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let server = server(ServeOptions::default());
    let addr = server.addr();
    let cfg = common::config();
    // A long stream: read the first event, then hang up.
    let budget = (cfg.max_sequence_length / 2).min(512);
    let body =
        json!({"prompt": greedy_cases().remove(0).0, "max_tokens": budget, "stream": true, "temperature": 0})
            .to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("write");
    let mut first = [0u8; 256];
    let n = s.read(&mut first).expect("first bytes");
    assert!(n > 0);
    drop(s);
    let start = Instant::now();
    while metric(addr, "glm_requests_cancelled_total") < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cancelled request kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(addr, "glm_batch_rows"),
        0.0,
        "its rows left the batch"
    );
    assert!(metric(addr, "glm_tokens_generated_total") < budget as f64);
}

#[test]
fn shutdown_lets_in_flight_requests_finish() {
    let server = server(ServeOptions::default());
    let addr = server.addr();
    let (prompt, max_tokens, answer) = greedy_cases().remove(0);
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string();
    let request =
        std::thread::spawn(move || http(addr, "POST", "/v1/completions", body.as_bytes()));
    let start = Instant::now();
    while metric(addr, "glm_requests_in_flight") < 1.0 && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    server.shutdown().expect("shutdown");
    let (status, _, bytes) = request.join().expect("request");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(body["choices"][0]["filled_text"], answer);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn chat_completions_render_the_messages_and_continue_them() {
    use glm_core::{GlmConfig, GlmModel, ModelOptions, SpecialTokens};
    // A random tiny model with GLM-130B's vocabulary layout, text through the synthetic icetk
    // tokenizer.
    let mut cfg = GlmConfig::tiny();
    cfg.vocab_size = 150528;
    cfg.special_tokens = SpecialTokens::glm_130b();
    let model =
        GlmModel::<common::Cpu>::random(&cfg, &Default::default(), ModelOptions::default(), 3)
            .expect("model");
    let path = glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder")
        .join("ice_text_synth.model");
    let load = || {
        glm_tokenizer::Tokenizer::from_file(&path, glm_tokenizer::TokenizerOptions::icetk())
            .expect("tokenizer")
    };
    let glm = Glm::from_parts(model.clone(), Some(load()));
    let server = common::loopback_server(glm, ServeOptions::default());
    let addr = server.addr();
    let messages = [
        ("system", "Answer briefly."),
        ("user", "What is the weather like?"),
    ];
    let body = json!({
        "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
        "max_tokens": 8, "temperature": 0,
    });
    let (status, reply) = post(addr, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
    // The same as filling the documented template directly.
    let template = glm_infer::serve::http::chat_prompt(
        &messages
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect::<Vec<_>>(),
    );
    let local = Glm::from_parts(model, Some(load()));
    let want = local
        .fill(&template, &glm_infer::GenerateOptions::greedy(8))
        .expect("fill");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        want.blanks.concat()
    );
    // Streaming: chat.completion.chunk deltas.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (status, _, bytes) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        stream.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(bytes).expect("UTF-8");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let deltas: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(deltas, want.blanks.concat());
    let (status, _) = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "robot", "content": "x"}]}),
    );
    assert_eq!(status, 400);
    let (status, _) = post(addr, "/v1/chat/completions", &json!({"messages": []}));
    assert_eq!(status, 400);
}

/// Split over tensor-parallel ranks (the largest degree up to 4 the fixture config divides): the
/// engine replays every forward on the other ranks; concurrent greedy requests still give the
/// original's answers.
#[test]
fn a_server_split_over_ranks_gives_the_same_answers() {
    let cfg = common::config();
    let world = (2..=4)
        .rev()
        .find(|&n| glm_core::parallel::TpLayout::new(n).check(&cfg).is_ok())
        .expect("a degree the fixture config divides");
    let options = LoadOptions {
        tensor_parallel: Some(world),
        ..LoadOptions::default()
    };
    let glm = Glm::load(common::fixtures(), options).expect("split model");
    let server = common::loopback_server(glm, ServeOptions::default());
    let addr = server.addr();
    greedy_answers_at_once(addr, 2);
    server.shutdown().expect("shutdown");
}
