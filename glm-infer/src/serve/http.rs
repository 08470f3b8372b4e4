//! The HTTP side of `glm serve` (axum): OpenAI-compatible completions and chat completions
//! (blocking and Server-Sent Events), models, health, metrics, tokenize / detokenize. Every bad
//! request is a 4xx with an OpenAI-shaped error body; nothing a client sends can panic the
//! server.
//!
//! (Over 400 lines: the request schema with its checks, the two generation endpoints in both
//! modes, and the small endpoints, which share the checks.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::engine::{Completion, Event, Request};
use super::AppState;
use crate::beam::{BeamConfig, BeamSearchStrategy};
use crate::prompt::build_prompt;
use crate::sampling::{BaseStrategy, SamplingConfig};
use crate::strategy::Strategy;

/// An OpenAI-shaped error response.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/", get(super::page::index))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
                kind: "invalid_request_error",
                param: None,
                retry_after: None,
            }
        })
        .with_state(state)
}

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// The generation fields shared by completions and chat completions.
#[derive(Deserialize, Default)]
struct Controls {
    model: Option<String>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    n: Option<u64>,
    #[serde(default)]
    stream: bool,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    #[allow(dead_code)]
    user: Option<String>,
    num_beams: Option<u64>,
    length_penalty: Option<f64>,
    no_repeat_ngram_size: Option<u64>,
    min_tokens: Option<u64>,
    /// Beam search: top-k candidates (`true`, the evaluation harness's) or sampled candidates
    /// (`false`, generate.py's default, seeded).
    deterministic: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Option<OneOrMany>,
    #[serde(flatten)]
    controls: Controls,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Option<Vec<ChatMessage>>,
    #[serde(flatten)]
    controls: Controls,
}

/// Reads the body (bounded) and parses it as JSON of type `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.options.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body exceeds {limit} bytes (--max-body-bytes)"),
            kind: "invalid_request_error",
            param: None,
            retry_after: None,
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(None, format!("invalid JSON body: {e}")))
}

/// Builds a choice's strategy from its seed.
type StrategyFactory = Box<dyn Fn(u64) -> Result<Box<dyn Strategy>, ApiError> + Send + Sync>;

/// A checked request: what the engine needs per choice.
struct Plan {
    prompts: Vec<crate::prompt::Prompt>,
    n: usize,
    max_tokens: usize,
    stop: Vec<String>,
    stream: bool,
    make_strategy: StrategyFactory,
    seed: u64,
}

fn check_controls(state: &AppState, c: Controls, texts: Vec<String>) -> Result<Plan, ApiError> {
    let o = &state.options;
    if let Some(model) = &c.model {
        if model != &o.model_name {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "the model `{model}` does not exist (this server has `{}`)",
                    o.model_name
                ),
                kind: "invalid_request_error",
                param: Some("model"),
                retry_after: None,
            });
        }
    }
    let max_tokens = c.max_tokens.unwrap_or(16);
    if max_tokens == 0 || max_tokens as usize > o.max_new_tokens {
        return Err(ApiError::bad(
            Some("max_tokens"),
            format!(
                "max_tokens must be in 1..={} (--max-new-tokens)",
                o.max_new_tokens
            ),
        ));
    }
    let n = c.n.unwrap_or(1);
    if n == 0 || n > 8 {
        return Err(ApiError::bad(Some("n"), "n must be in 1..=8"));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            Some("temperature"),
            "temperature must be in 0..=2",
        ));
    }
    let top_p = c.top_p.unwrap_or(0.7);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(Some("top_p"), "top_p must be in (0, 1]"));
    }
    let top_k = c.top_k.unwrap_or(0);
    let vocab = state.config.vocab_size as u64;
    if top_k > vocab {
        return Err(ApiError::bad(
            Some("top_k"),
            format!("top_k must be at most the vocabulary ({vocab})"),
        ));
    }
    let num_beams = c.num_beams.unwrap_or(1);
    if num_beams == 0 || num_beams > 8 {
        return Err(ApiError::bad(
            Some("num_beams"),
            "num_beams must be in 1..=8",
        ));
    }
    let length_penalty = c.length_penalty.unwrap_or(1.0);
    if !length_penalty.is_finite() {
        return Err(ApiError::bad(
            Some("length_penalty"),
            "length_penalty must be a number",
        ));
    }
    let ngram = c.no_repeat_ngram_size.unwrap_or(0);
    let deterministic = c.deterministic.unwrap_or(false);
    let min_tokens = c.min_tokens.unwrap_or(0);
    if num_beams == 1 && (ngram > 0 || min_tokens > 0) {
        return Err(ApiError::bad(
            Some(if ngram > 0 {
                "no_repeat_ngram_size"
            } else {
                "min_tokens"
            }),
            "no_repeat_ngram_size and min_tokens are beam-search controls (num_beams > 1)",
        ));
    }
    if min_tokens > max_tokens || ngram > max_tokens {
        return Err(ApiError::bad(
            Some("min_tokens"),
            "min_tokens must not exceed max_tokens",
        ));
    }
    let stop = c.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            Some("stop"),
            "stop takes up to 4 non-empty strings",
        ));
    }
    if texts.is_empty() || texts.len() > 16 {
        return Err(ApiError::bad(
            Some("prompt"),
            "the prompt must be a string or a list of 1..=16 strings",
        ));
    }
    let config = &state.config;
    let mut prompts = Vec::with_capacity(texts.len());
    for text in &texts {
        if text.trim().is_empty() {
            return Err(ApiError::bad(Some("prompt"), "the prompt is empty"));
        }
        let prompt = build_prompt(
            text,
            &state.codec,
            &config.special_tokens,
            config.max_sequence_length,
        )
        .and_then(|p| p.validate(config).map(|()| p))
        .map_err(|e| ApiError::bad(Some("prompt"), e.to_string()))?;
        let specials = &config.special_tokens;
        let blanks = prompt
            .tokens
            .iter()
            .filter(|&&t| t == specials.mask || t == specials.smask || t == specials.gmask)
            .count();
        if blanks > o.max_blanks {
            return Err(ApiError::bad(
                Some("prompt"),
                format!("{blanks} blanks; at most {} (--max-blanks)", o.max_blanks),
            ));
        }
        if prompt.tokens.len() > o.max_prompt_tokens {
            return Err(ApiError::bad(
                Some("prompt"),
                format!(
                    "the prompt has {} tokens; at most {} (--max-prompt-tokens)",
                    prompt.tokens.len(),
                    o.max_prompt_tokens
                ),
            ));
        }
        let total = prompt.tokens.len() + 1 + max_tokens as usize;
        if total > config.max_sequence_length {
            return Err(ApiError::bad(
                Some("max_tokens"),
                format!(
                    "{} prompt tokens + <sop> + {max_tokens} new tokens exceed the model's {} positions (max_sequence_length)",
                    prompt.tokens.len(),
                    config.max_sequence_length
                ),
            ));
        }
        prompts.push(prompt);
    }
    let ends = config.special_tokens.end_tokens().to_vec();
    let make_strategy: StrategyFactory = if num_beams > 1 {
        Box::new(move |seed| {
            let s = BeamSearchStrategy::new(BeamConfig {
                num_beams: num_beams as usize,
                length_penalty: length_penalty as f32,
                no_repeat_ngram_size: ngram as usize,
                min_gen_length: min_tokens as usize,
                deterministic,
                end_tokens: ends.clone(),
                seed,
                ..BeamConfig::default()
            })
            .map_err(|e| ApiError::bad(Some("num_beams"), e.to_string()))?;
            Ok(Box::new(s) as Box<dyn Strategy>)
        })
    } else {
        Box::new(move |seed| {
            // Temperature 0 is greedy decoding.
            let (temperature, top_k) = if temperature == 0.0 {
                (1.0, 1)
            } else {
                (temperature, top_k)
            };
            let s = BaseStrategy::new(SamplingConfig {
                temperature: temperature as f32,
                top_k: top_k as usize,
                top_p: top_p as f32,
                invalid_tokens: vec![],
                end_tokens: ends.clone(),
                seed,
            })
            .map_err(|e| ApiError::bad(Some("temperature"), e.to_string()))?;
            Ok(Box::new(s) as Box<dyn Strategy>)
        })
    };
    Ok(Plan {
        prompts,
        n: n as usize,
        max_tokens: max_tokens as usize,
        stop,
        stream: c.stream,
        make_strategy,
        seed: c.seed.unwrap_or(SamplingConfig::default().seed),
    })
}

/// Hands every choice of `plan` to the engine (all or none: 429 when the queue cannot take them).
fn submit(
    state: &AppState,
    plan: &Plan,
) -> Result<(UnboundedReceiver<(usize, Event)>, usize), ApiError> {
    let choices = plan.prompts.len() * plan.n;
    let capacity = state.options.queue_capacity as i64;
    let queued = &state.metrics.queued;
    let mut now = queued.load(Ordering::Relaxed);
    loop {
        if now + choices as i64 > capacity {
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!("the queue is full ({capacity} requests waiting); retry later"),
                kind: "rate_limit_error",
                param: None,
                retry_after: Some(1),
            });
        }
        match queued.compare_exchange(
            now,
            now + choices as i64,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => break,
            Err(actual) => now = actual,
        }
    }
    let (tx, rx) = unbounded_channel();
    let received = Instant::now();
    let deadline = state.options.request_timeout.map(|t| received + t);
    let mut index = 0;
    for prompt in &plan.prompts {
        for k in 0..plan.n {
            let strategy = match (plan.make_strategy)(plan.seed.wrapping_add(k as u64)) {
                Ok(s) => s,
                Err(e) => {
                    queued.fetch_sub((choices - index) as i64, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let request = Request {
                index,
                prompt: prompt.clone(),
                strategy,
                out_seq_length: prompt.tokens.len() + 1 + plan.max_tokens,
                stop: plan.stop.clone(),
                stream: plan.stream,
                deadline,
                received,
                events: tx.clone(),
            };
            if state.engine.try_send(request).is_err() {
                queued.fetch_sub((choices - index) as i64, Ordering::SeqCst);
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the engine is not running".into(),
                    kind: "server_error",
                    param: None,
                    retry_after: Some(1),
                });
            }
            index += 1;
        }
    }
    Ok((rx, choices))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Waits for every choice; `Err` with the first failure.
async fn collect(
    mut rx: UnboundedReceiver<(usize, Event)>,
    choices: usize,
) -> Result<Vec<Completion>, ApiError> {
    let mut done: Vec<Option<Completion>> = vec![None; choices];
    let mut left = choices;
    while left > 0 {
        match rx.recv().await {
            Some((i, Event::Done(c))) => {
                if let Some(slot) = done.get_mut(i) {
                    *slot = Some(c);
                    left -= 1;
                }
            }
            Some((_, Event::Piece(_))) => {}
            Some((_, Event::Failed(message))) => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message,
                    kind: "server_error",
                    param: None,
                    retry_after: None,
                })
            }
            None => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "the engine stopped".into(),
                    kind: "server_error",
                    param: None,
                    retry_after: None,
                })
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}

fn usage(completions: &[Completion]) -> Value {
    let prompt: usize = completions.iter().map(|c| c.prompt_tokens).sum();
    let generated: usize = completions.iter().map(|c| c.completion_tokens).sum();
    json!({"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated})
}

/// In-flight accounting for one HTTP request (decremented when the handler ends, however).
struct InFlight(Arc<AppState>);

impl InFlight {
    fn new(state: &Arc<AppState>) -> Self {
        state.metrics.requests.fetch_add(1, Ordering::Relaxed);
        state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn rejected(state: &AppState, e: ApiError) -> Response {
    state.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    e.into_response()
}

/// What differs between the two generation endpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Completion,
    Chat,
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let guard = InFlight::new(&state);
    let parsed: CompletionBody = match read_json(&state, body).await {
        Ok(b) => b,
        Err(e) => return rejected(&state, e),
    };
    let Some(prompt) = parsed.prompt else {
        return rejected(
            &state,
            ApiError::bad(Some("prompt"), "`prompt` is required"),
        );
    };
    generate(
        state,
        guard,
        parsed.controls,
        prompt.into_vec(),
        Flavor::Completion,
    )
    .await
}

/// The chat template: each message on its own line as `Role: content`, then `Assistant:` and a
/// `[gMASK]` for the model to continue (GLM-130B is not a chat model; this is a plain prompt).
pub fn chat_prompt(messages: &[(String, String)]) -> String {
    let mut text = String::new();
    for (role, content) in messages {
        let mut role = role.clone();
        if let Some(first) = role.get(..1) {
            role = first.to_uppercase() + role.get(1..).unwrap_or("");
        }
        text.push_str(&format!("{role}: {content}\n"));
    }
    text.push_str("Assistant: [gMASK]");
    text
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let guard = InFlight::new(&state);
    let parsed: ChatBody = match read_json(&state, body).await {
        Ok(b) => b,
        Err(e) => return rejected(&state, e),
    };
    let messages = match parsed.messages {
        Some(m) if !m.is_empty() => m,
        _ => {
            return rejected(
                &state,
                ApiError::bad(Some("messages"), "`messages` must be a non-empty list"),
            )
        }
    };
    if let Some(m) = messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return rejected(
            &state,
            ApiError::bad(
                Some("messages"),
                format!("unknown role `{}` (system, user, assistant)", m.role),
            ),
        );
    }
    let pairs: Vec<(String, String)> = messages.into_iter().map(|m| (m.role, m.content)).collect();
    let text = chat_prompt(&pairs);
    generate(state, guard, parsed.controls, vec![text], Flavor::Chat).await
}

async fn generate(
    state: Arc<AppState>,
    guard: InFlight,
    controls: Controls,
    texts: Vec<String>,
    flavor: Flavor,
) -> Response {
    let plan = match check_controls(&state, controls, texts) {
        Ok(p) => p,
        Err(e) => return rejected(&state, e),
    };
    let (rx, choices) = match submit(&state, &plan) {
        Ok(x) => x,
        Err(e) => return rejected(&state, e),
    };
    let id = format!(
        "{}-{:x}",
        if flavor == Flavor::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_secs();
    let model = state.options.model_name.clone();
    if plan.stream {
        return stream_response(rx, choices, id, created, model, flavor, guard);
    }
    let completions = match collect(rx, choices).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let usage = usage(&completions);
    let choices: Vec<Value> = completions
        .iter()
        .enumerate()
        .map(|(i, c)| match flavor {
            Flavor::Completion => json!({
                "index": i, "text": c.text, "logprobs": null,
                "finish_reason": c.finish_reason.as_str(),
                "blanks": c.blanks, "filled_text": c.filled_text,
            }),
            Flavor::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason.as_str(),
            }),
        })
        .collect();
    let object = if flavor == Flavor::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    drop(guard);
    axum::Json(json!({
        "id": id, "object": object, "created": created, "model": model,
        "choices": choices, "usage": usage,
    }))
    .into_response()
}

fn stream_response(
    rx: UnboundedReceiver<(usize, Event)>,
    choices: usize,
    id: String,
    created: u64,
    model: String,
    flavor: Flavor,
    guard: InFlight,
) -> Response {
    let object = if flavor == Flavor::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |index: usize, text: &str, finish: Option<&str>, extra: Value| {
        let mut choice = match flavor {
            Flavor::Completion => {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
            }
            Flavor::Chat => {
                json!({"index": index, "delta": {"content": text}, "finish_reason": finish})
            }
        };
        if let (Some(c), Some(e)) = (choice.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    struct Stream<F> {
        rx: UnboundedReceiver<(usize, Event)>,
        left: usize,
        finished: bool,
        chunk: F,
        _guard: InFlight,
    }
    let state = Stream {
        rx,
        left: choices,
        finished: false,
        chunk,
        _guard: guard,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        if s.left == 0 {
            s.finished = true;
            return Some((
                Ok::<_, std::convert::Infallible>(SseEvent::default().data("[DONE]")),
                s,
            ));
        }
        let event = match s.rx.recv().await {
            Some((i, Event::Piece(text))) => (s.chunk)(i, &text, None, json!({})),
            Some((i, Event::Done(c))) => {
                s.left -= 1;
                let extra = json!({"blanks": c.blanks, "filled_text": c.filled_text, "usage": usage(std::slice::from_ref(&c))});
                (s.chunk)(i, "", Some(c.finish_reason.as_str()), extra)
            }
            Some((_, Event::Failed(m))) => {
                s.left = 0;
                json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}})
            }
            None => {
                s.left = 0;
                json!({"error": {"message": "the engine stopped", "type": "server_error", "param": null, "code": null}})
            }
        };
        Some((Ok(SseEvent::default().data(event.to_string())), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [{
        "id": state.options.model_name, "object": "model", "created": 0, "owned_by": "glm-rs",
    }]}))
    .into_response()
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenizeBody {
    text: String,
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u64>,
}

async fn tokenize(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let parsed: TokenizeBody = match read_json(&state, body).await {
        Ok(b) => b,
        Err(e) => return rejected(&state, e),
    };
    // The tokenizer's ids (a compact-vocabulary model's own ids stay inside the server).
    match state.codec.tokenize_outer(&parsed.text) {
        Ok(ids) => axum::Json(json!({"tokens": ids, "count": ids.len()})).into_response(),
        Err(e) => rejected(&state, ApiError::bad(Some("text"), e.to_string())),
    }
}

async fn detokenize(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let parsed: DetokenizeBody = match read_json(&state, body).await {
        Ok(b) => b,
        Err(e) => return rejected(&state, e),
    };
    let vocab = state
        .codec
        .vocab_map()
        .map_or(state.config.vocab_size, |m| m.outer_vocab_size) as u64;
    if let Some(bad) = parsed.tokens.iter().find(|&&t| t >= vocab) {
        return rejected(
            &state,
            ApiError::bad(
                Some("tokens"),
                format!("token {bad} is outside the vocabulary of {vocab}"),
            ),
        );
    }
    let ids: Vec<u32> = parsed.tokens.iter().map(|&t| t as u32).collect();
    axum::Json(json!({"text": state.codec.detokenize_outer(&ids)})).into_response()
}
