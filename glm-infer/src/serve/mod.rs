//! `glm serve`: an OpenAI-compatible HTTP server with continuous batching (feature `serve`).
//!
//! ```text
//! POST /v1/completions        OpenAI fields (model, prompt, max_tokens, temperature, top_p, n,
//!                             stream, stop, seed, user) + GLM's (top_k, num_beams, length_penalty,
//!                             no_repeat_ngram_size, min_tokens); [MASK]/[sMASK]/[gMASK] in the
//!                             prompt are filled in order, no mask -> [gMASK] appended
//! POST /v1/chat/completions   messages rendered by [`http::chat_prompt`], ending in [gMASK]
//! GET  /v1/models, /health, /metrics (Prometheus text), POST /tokenize, /detokenize
//! GET  /                      the blank-filling playground
//! ```
//!
//! One engine thread owns the model ([`engine`]); the HTTP side (axum on a small tokio runtime)
//! checks requests, queues them (bounded: 429 with `Retry-After` when full) and relays the
//! engine's events, as one JSON body or as Server-Sent Events ending with `data: [DONE]`.
//! Defaults when a field is absent are generate.py's: temperature 1, top-p 0.7, top-k 0, seed
//! 1234 (the `n` choices use seeds seed, seed+1, …); `max_tokens` 16 as OpenAI's.
//! `usage.completion_tokens` counts every sampled token, end tokens included.

pub mod engine;
pub mod http;
pub mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use glm_core::GlmConfig;

use crate::api::Glm;
use crate::cli::Codec;
use crate::error::{Error, Result};

pub use self::engine::{Completion, Event, FinishReason};
pub use self::metrics::Metrics;

/// Server settings (`glm serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port, see [`Server::addr`]).
    pub addr: SocketAddr,
    /// The model name clients must use (`model` field; absent is accepted).
    pub model_name: String,
    /// Most rows decoded together (a beam request counts its beams).
    pub max_batch_rows: usize,
    /// Most requests waiting for the engine (beyond: 429).
    pub queue_capacity: usize,
    /// Longest prompt in tokens (beyond: 400).
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` (beyond: 400).
    pub max_new_tokens: usize,
    /// Most blanks in one prompt.
    pub max_blanks: usize,
    /// Largest request body (beyond: 413).
    pub max_body_bytes: usize,
    /// A request still generating after this is ended with an error.
    pub request_timeout: Option<Duration>,
    /// On SIGTERM / Ctrl-C: how long in-flight requests may still run.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            model_name: "glm".into(),
            max_batch_rows: 16,
            queue_capacity: 64,
            max_prompt_tokens: 1024,
            max_new_tokens: 512,
            max_blanks: 16,
            max_body_bytes: 1 << 20,
            request_timeout: Some(Duration::from_secs(300)),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What every HTTP handler shares.
pub(crate) struct AppState {
    pub(crate) options: ServeOptions,
    pub(crate) config: GlmConfig,
    pub(crate) codec: Codec,
    pub(crate) engine: SyncSender<engine::Request>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) next_id: AtomicU64,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), stops the
    /// engine and waits for it.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    /// Blocks until the server stops (after [`shutdown`](Self::shutdown) from elsewhere, or a
    /// signal when started by [`serve`]).
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("the server thread panicked".into()))),
            None => Ok(()),
        }
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("the server thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Starts the engine (a thread owning `glm`) and the HTTP server; returns once it listens.
/// With `signals`, SIGTERM and Ctrl-C shut it down too.
pub fn start<B: Backend>(glm: Glm<B>, options: ServeOptions, signals: bool) -> Result<Server>
where
    Glm<B>: Send + 'static,
{
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<engine::Request>(options.queue_capacity.max(1));
    let state = Arc::new(AppState {
        options: options.clone(),
        config: glm.config().clone(),
        codec: glm.codec().clone(),
        engine: tx,
        metrics: Arc::clone(&metrics),
        next_id: AtomicU64::new(1),
    });
    let limits = engine::EngineLimits {
        max_batch_rows: options.max_batch_rows.max(1),
    };
    let engine_metrics = Arc::clone(&metrics);
    let engine = std::thread::Builder::new()
        .name("glm-engine".into())
        .spawn(move || {
            let glm = glm;
            match glm.tensor_parallel() {
                None => engine::run(glm.model(), glm.codec(), rx, limits, engine_metrics, None),
                Some(group) => run_parallel(group, glm.codec(), rx, limits, engine_metrics),
            }
        })
        .map_err(|e| Error::Usage(format!("cannot start the engine thread: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.addr))
        .map_err(|e| Error::Io {
            path: options.addr.to_string().into(),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        path: options.addr.to_string().into(),
        source: e,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = options.shutdown_grace;
    let app = http::router(Arc::clone(&state));
    drop(state);
    let thread = std::thread::Builder::new()
        .name("glm-http".into())
        .spawn(move || -> Result<()> {
            runtime.block_on(async move {
                let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
                let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = drain_rx.await;
                });
                let server = tokio::spawn(async move { server.await });
                let stop = async move {
                    if signals {
                        tokio::select! {
                            _ = stop_rx => {}
                            _ = shutdown_signal() => {}
                        }
                    } else {
                        let _ = stop_rx.await;
                    }
                };
                stop.await;
                let _ = drain_tx.send(());
                // In-flight requests get the grace period, then the server goes anyway.
                let _ = tokio::time::timeout(grace, server).await;
            });
            // Dropping the runtime drops every task still holding the engine's queue.
            drop(runtime);
            // With the queue gone the engine finishes what it holds and stops.
            let _ = engine.join();
            Ok(())
        })
        .map_err(|e| Error::Usage(format!("cannot start the HTTP thread: {e}")))?;
    Ok(Server {
        addr,
        metrics,
        shutdown: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The engine on rank 0 of a tensor-parallel group, every other rank replaying its operations
/// ([`engine::follow`]) until the engine stops.
fn run_parallel<B: Backend>(
    group: &glm_core::parallel::TensorParallel<B>,
    codec: &Codec,
    rx: std::sync::mpsc::Receiver<engine::Request>,
    limits: engine::EngineLimits,
    metrics: Arc<Metrics>,
) {
    let world = group.world();
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (1..world).map(|_| std::sync::mpsc::channel()).unzip();
    let receivers: std::sync::Mutex<Vec<Option<std::sync::mpsc::Receiver<engine::Op>>>> =
        std::sync::Mutex::new(receivers.into_iter().map(Some).collect());
    let failed_metrics = Arc::clone(&metrics);
    let result = group.run(
        |rank0| {
            engine::run(
                rank0,
                codec,
                rx,
                limits,
                metrics,
                Some(engine::Followers(senders)),
            );
            Ok::<(), glm_core::Error>(())
        },
        |rank| {
            let r = rank.tensor_parallel_rank().map_or(0, |tp| tp.dims().rank);
            let ops = receivers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(r.wrapping_sub(1))
                .and_then(Option::take)
                .ok_or_else(|| {
                    glm_core::Error::InvalidInput(format!("no operations for rank {r}"))
                })?;
            engine::follow(rank, ops)
        },
    );
    if let Err(e) = result {
        failed_metrics
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("glm serve: the tensor-parallel engine stopped: {e}");
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves until SIGTERM or Ctrl-C (`glm serve`).
pub fn serve<B: Backend>(glm: Glm<B>, options: ServeOptions) -> Result<()>
where
    Glm<B>: Send + 'static,
{
    let server = start(glm, options, true)?;
    eprintln!("listening on http://{}", server.addr());
    server.wait()
}
