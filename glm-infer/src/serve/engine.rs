//! The scheduler of `glm serve`: one thread owns the model and runs **continuous batching** —
//! a new request is prefilled on its own (batch 1, its own KV cache) at a step boundary and its
//! cache rows join the running batch ([`KvCache::merge_batch`]: the shorter side padded, the
//! padded positions masked per row); every step decodes one token for every row of every request
//! (each request with its own strategy, so its seed and beams are its own); a request leaves the
//! batch as soon as its blank is filled, its client is gone or its deadline passed.
//!
//! Each request fills its blanks as GLM-130B's `generate.py fill_blanks` does (the first remaining
//! mask, re-encoded context per blank, a shared budget): the same decisions as
//! [`fill_blanks`](crate::fill::fill_blanks) on the same model, which the tests check for greedy
//! decoding under concurrency.
//!
//! (Over 400 lines: the scheduler's request life cycle — admission, prefill, joining the batch,
//! the batched step with per-row masks, per-request strategy steps, leaving — kept in one place.)

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};
use glm_core::blank::BlankInput;
use glm_core::{ForwardOptions, ForwardOutput, GlmModel, KvCache};
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::cli::Codec;
use crate::error::{Error, Result};
use crate::generate::{generated_tokens, GenerationSample};
use crate::prompt::{Prompt, TextCodec};
use crate::strategy::{Strategy, DONE};
use crate::stream::TokenStream;
use rayon::prelude::*;

/// Why a completion ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end token or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text: the fills of the blanks, in order, joined (for a `[gMASK]`
    /// continuation: the continuation); cut before the first stop string.
    pub text: String,
    /// Each blank's fill.
    pub blanks: Vec<String>,
    /// The prompt with every blank filled.
    pub filled_text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens (after generate.py's rules: masks, appended `[gMASK]`).
    pub prompt_tokens: usize,
    /// Tokens sampled (end tokens included), over all blanks.
    pub completion_tokens: usize,
}

/// What the engine sends back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of the blank being filled (sampling only; UTF-8 safe).
    Piece(String),
    /// The request is done.
    Done(Completion),
    /// The request failed (the message is safe to show the client).
    Failed(String),
}

/// One request to the engine.
pub struct Request {
    /// Which choice of its HTTP request this is (events carry it).
    pub index: usize,
    /// The prompt after generate.py's rules.
    pub prompt: Prompt,
    /// The decoding strategy (its own seed; beams are rows of this request).
    pub strategy: Box<dyn Strategy>,
    /// Total length limit of each blank's generation (context + `<sop>` + new tokens).
    pub out_seq_length: usize,
    /// Stop strings: the text is cut before the first one and the request ends.
    pub stop: Vec<String>,
    /// Stream pieces ([`Event::Piece`]).
    pub stream: bool,
    /// The request is dropped (and [`Event::Failed`] sent) when this passes.
    pub deadline: Option<Instant>,
    /// When the server received it (time to first token is measured from here).
    pub received: Instant,
    /// Where events go; a closed channel (client gone) cancels the request.
    pub events: UnboundedSender<(usize, Event)>,
}

/// A model or cache operation of the engine, replayed on the other tensor-parallel ranks so that
/// their forwards meet rank 0's in every all-reduce (their results are not used).
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A blank's prefill into a fresh cache: tokens, positions, mask `[1, 1, n, n]`, room.
    Prefill {
        tokens: Vec<i64>,
        positions: Vec<i64>,
        mask: Vec<bool>,
        /// `[rows, cols]` of the (end-padded) prompts.
        shape: [usize; 2],
        /// Each row's last real position.
        last: Vec<usize>,
        reserve: usize,
    },
    /// Beam rows of the prefilled cache.
    SelectPending(Vec<usize>),
    /// The prefilled cache joins the batch.
    Join,
    /// The prefilled cache is not needed (the blank ended at once, or failed).
    DropPending,
    /// One decode step of `rows` rows over `keys` cached + 1 positions.
    Step {
        tokens: Vec<i64>,
        positions: Vec<i64>,
        mask: Vec<bool>,
        rows: usize,
        keys: usize,
    },
    /// Rows kept in the batch cache.
    SelectBatch(Vec<usize>),
    /// The batch cache keeps these positions of each row ([`KvCache::compact_positions`]).
    CompactPositions(Vec<Vec<usize>>),
    /// The batch cache starts afresh.
    ResetBatch,
}

/// The channels to the other ranks' [`follow`] loops.
pub(crate) struct Followers(pub(crate) Vec<std::sync::mpsc::Sender<Op>>);

/// One cached forward of the serve engine, on rank 0 or replayed on a follower: `rows × cols`
/// tokens and positions, a `[rows, 1, cols, keys]` mask (`true` = blocked), only the last
/// position's logits.
fn cached_forward<B: Backend>(
    model: &GlmModel<B>,
    tokens: Vec<i64>,
    positions: Vec<i64>,
    mask: Vec<bool>,
    [rows, cols, keys]: [usize; 3],
    cache: &mut KvCache<B>,
) -> glm_core::Result<ForwardOutput<B>> {
    let device = model.word_embeddings.val().device();
    model.forward_with(
        Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [rows, cols]), &device),
        Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [rows, cols]), &device),
        Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [rows, 1, cols, keys]), &device),
        Some(cache),
        ForwardOptions {
            hidden_states: false,
            last_only: true,
        },
    )
}

/// The prefill of `rows` prompts padded at the end to `cols` tokens (`[rows, 1, cols, cols]`
/// mask), on rank 0 or replayed on a follower: the logits of each row's last real position.
fn prefill_forward<B: Backend>(
    model: &GlmModel<B>,
    tokens: Vec<i64>,
    positions: Vec<i64>,
    mask: Vec<bool>,
    [rows, cols]: [usize; 2],
    last: &[usize],
    cache: &mut KvCache<B>,
) -> glm_core::Result<Tensor<B, 3>> {
    let device = model.word_embeddings.val().device();
    model.forward_last_at(
        Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [rows, cols]), &device),
        Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [rows, cols]), &device),
        Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [rows, 1, cols, cols]), &device),
        Some(cache),
        last,
    )
}

/// A tensor-parallel rank other than 0 inside `glm serve`: replays rank 0's operations on its own
/// shard and caches until the engine stops (its channel closes).
pub(crate) fn follow<B: Backend>(model: &GlmModel<B>, ops: Receiver<Op>) -> glm_core::Result<()> {
    let mut batch = model.new_cache();
    let mut pending: Option<KvCache<B>> = None;
    while let Ok(op) = ops.recv() {
        match op {
            Op::Prefill {
                tokens,
                positions,
                mask,
                shape,
                last,
                reserve,
            } => {
                let mut cache = model.new_cache();
                cache.reserve(reserve);
                prefill_forward(model, tokens, positions, mask, shape, &last, &mut cache)?;
                pending = Some(cache);
            }
            Op::SelectPending(rows) => {
                if let Some(cache) = pending.as_mut() {
                    cache.select_batch(&rows)?;
                }
            }
            Op::Join => {
                if let Some(cache) = pending.take() {
                    batch.merge_batch(cache)?;
                }
            }
            Op::DropPending => pending = None,
            Op::Step {
                tokens,
                positions,
                mask,
                rows,
                keys,
            } => {
                cached_forward(
                    model,
                    tokens,
                    positions,
                    mask,
                    [rows, 1, keys + 1],
                    &mut batch,
                )?;
            }
            Op::SelectBatch(rows) => batch.select_batch(&rows)?,
            Op::CompactPositions(positions) => batch.compact_positions(&positions)?,
            Op::ResetBatch => batch = model.new_cache(),
        }
    }
    Ok(())
}

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Most rows (sequences; a beam request counts its beams) decoded together.
    pub max_batch_rows: usize,
}

/// A request in the batch: its blank being filled and where its rows are.
struct Active<'t> {
    /// The request and its blank's inputs.
    blank: Ready,
    /// Rows of this request: context + generated (−1 once done).
    tokens: Vec<Vec<i64>>,
    /// The sequence index of the next token to feed.
    counter: usize,
    /// Per batch-cache position: the sequence index cached there, or −1 for padding.
    slots: Vec<i64>,
    stream: Option<TokenStream<'t>>,
    text: String,
    stopped: bool,
    first_token: bool,
    last_token_at: Instant,
}

/// A request's next blank, ready to prefill.
struct Ready {
    req: Request,
    /// The sequence with the blanks filled so far (generate.py's `output`).
    seq: Vec<u32>,
    blanks: Vec<Vec<u32>>,
    completion_tokens: usize,
    sample: GenerationSample,
    context_length: usize,
}

/// Runs the engine until `rx` closes and every request is done.
pub(crate) fn run<B: Backend>(
    model: &GlmModel<B>,
    codec: &Codec,
    rx: Receiver<Request>,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
    followers: Option<Followers>,
) {
    let mut engine = Engine {
        model,
        codec,
        metrics,
        limits,
        followers,
        active: Vec::new(),
        cache: model.new_cache(),
    };
    let mut open = true;
    loop {
        // Admission at the step boundary: wait when idle, else take what fits; everything taken
        // is prefilled together.
        let mut arrived = Vec::new();
        if engine.active.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(req) => arrived.push(req),
                Err(_) => return,
            }
        }
        while open && engine.rows() + arrived.len() < engine.limits.max_batch_rows {
            match rx.try_recv() {
                Ok(req) => arrived.push(req),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !arrived.is_empty() {
            engine.admit(arrived);
        }
        if !engine.active.is_empty() {
            engine.step();
        }
    }
}

struct Engine<'m, 't, B: Backend> {
    model: &'m GlmModel<B>,
    codec: &'t Codec,
    metrics: Arc<Metrics>,
    limits: EngineLimits,
    followers: Option<Followers>,
    active: Vec<Active<'t>>,
    cache: KvCache<B>,
}

impl<'t, B: Backend> Engine<'_, 't, B> {
    /// Replays `op` on the other tensor-parallel ranks (none on one device).
    fn replay(&self, op: impl FnOnce() -> Op) {
        if let Some(followers) = &self.followers {
            let op = op();
            for tx in &followers.0 {
                let _ = tx.send(op.clone());
            }
        }
    }

    /// Starts the batch cache afresh (on every rank).
    fn reset_batch(&mut self) {
        self.cache = self.model.new_cache();
        self.replay(|| Op::ResetBatch);
    }

    /// Drops the padding between each row's cached positions once it takes more than a fifth of
    /// the batch cache (joins pad the shorter side; every step appends at the common end), so
    /// the cache stays about as long as its longest sequence however long the batch runs.
    fn compact_cache(&mut self) {
        let len = self.cache.len();
        let used = |a: &Active<'_>| a.slots.iter().filter(|&&s| s >= 0).count();
        let footprint = self.active.iter().map(used).max().unwrap_or(0);
        if footprint == 0 || len <= footprint + footprint / 4 + 4 {
            return;
        }
        let mut positions = Vec::with_capacity(self.rows());
        for a in &self.active {
            let kept: Vec<usize> = (0..a.slots.len()).filter(|&p| a.slots[p] >= 0).collect();
            positions.extend(std::iter::repeat_n(kept, a.tokens.len()));
        }
        self.replay(|| Op::CompactPositions(positions.clone()));
        if let Err(e) = self.cache.compact_positions(&positions) {
            for a in self.active.drain(..) {
                fail(&self.metrics, &a.blank.req, &e.to_string());
            }
            self.reset_batch();
            return;
        }
        for a in &mut self.active {
            a.slots.retain(|&s| s >= 0);
            a.slots.resize(footprint, -1);
        }
        self.metrics.compactions.fetch_add(1, Ordering::Relaxed);
    }

    fn rows(&self) -> usize {
        self.active.iter().map(|a| a.tokens.len()).sum()
    }

    /// Publishes the batch's rows and cache length to the metrics.
    fn observe_batch(&self) {
        let m = &self.metrics;
        m.batch_rows.store(self.rows() as i64, Ordering::Relaxed);
        let len = self.cache.len() as i64;
        m.cache_positions.store(len, Ordering::Relaxed);
        m.cache_positions_max.fetch_max(len, Ordering::Relaxed);
    }

    /// Takes new requests: their first blanks are prefilled (together where their lengths are
    /// close) and join the batch.
    fn admit(&mut self, reqs: Vec<Request>) {
        let mut ready = Vec::with_capacity(reqs.len());
        for req in reqs {
            self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            if req.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = req.prompt.tokens.clone();
            if let Some(blank) = self.prepare(req, seq, Vec::new(), 0) {
                ready.push(blank);
            }
        }
        self.prefill(ready);
    }

    /// Prefills the first remaining blank of `seq` and joins the batch, or finishes the request
    /// when no blank is left.
    fn start_blank(
        &mut self,
        req: Request,
        seq: Vec<u32>,
        blanks: Vec<Vec<u32>>,
        completion_tokens: usize,
    ) {
        if let Some(blank) = self.prepare(req, seq, blanks, completion_tokens) {
            self.prefill(vec![blank]);
        }
    }

    /// The next blank of a request, ready to prefill: `None` when the request finished (no blank
    /// left, budget spent) or failed instead.
    fn prepare(
        &mut self,
        req: Request,
        seq: Vec<u32>,
        blanks: Vec<Vec<u32>>,
        completion_tokens: usize,
    ) -> Option<Ready> {
        let config = self.model.config();
        let specials = config.special_tokens;
        let mask_id = req.prompt.kind.token(&specials);
        let Some(mask_position) = seq.iter().position(|&t| t == mask_id) else {
            self.finish(req, seq, blanks, completion_tokens, FinishReason::Stop);
            return None;
        };
        let blank = BlankInput {
            tokens: [seq.as_slice(), &[specials.sop]].concat(),
            mask_position,
            kind: req.prompt.kind,
        };
        let ctx = blank.context_length();
        let Some(max_gen) = req.out_seq_length.checked_sub(ctx).filter(|&m| m > 0) else {
            // The budget is spent: what was filled so far is the answer.
            self.finish(req, seq, blanks, completion_tokens, FinishReason::Length);
            return None;
        };
        let sample = match GenerationSample::from_blank(&blank, max_gen, config) {
            Ok(s) => s,
            Err(e) => {
                fail(&self.metrics, &req, &e.to_string());
                return None;
            }
        };
        Some(Ready {
            req,
            seq,
            blanks,
            completion_tokens,
            sample,
            context_length: ctx,
        })
    }

    /// Prefills blanks in groups of similar context length (each at least ¾ of its group's
    /// longest, so padding stays under a quarter of the work) and joins them to the batch.
    fn prefill(&mut self, mut ready: Vec<Ready>) {
        ready.sort_by_key(|r| std::cmp::Reverse(r.context_length));
        while let Some(longest) = ready.first().map(|r| r.context_length) {
            let n = ready
                .iter()
                .take_while(|r| r.context_length * 4 >= longest * 3)
                .count();
            let group: Vec<Ready> = ready.drain(..n).collect();
            self.prefill_group(group);
        }
    }

    /// One prefill of `group`'s contexts (padded at the end to the longest, padded keys masked),
    /// each request's first strategy step on its last position's logits, and the join of those
    /// that go on decoding.
    fn prefill_group(&mut self, group: Vec<Ready>) {
        let rows = group.len();
        let cols = group.iter().map(|r| r.context_length).max().unwrap_or(0);
        let reserve = group.iter().map(|r| r.sample.total()).max().unwrap_or(0);
        let mut tok = Vec::with_capacity(rows * cols);
        let mut pos = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols * cols);
        let mut last = Vec::with_capacity(rows);
        for r in &group {
            let (ctx, total) = (r.context_length, r.sample.total());
            let pad = cols - ctx;
            tok.extend(r.sample.tokens[..ctx].iter().map(|&t| i64::from(t)));
            tok.extend(std::iter::repeat_n(0, pad));
            pos.extend(r.sample.position_ids[..ctx].iter().map(|&p| i64::from(p)));
            pos.extend(std::iter::repeat_n(0, pad));
            for q in 0..cols {
                if q < ctx {
                    mask.extend_from_slice(&r.sample.mask[q * total..q * total + ctx]);
                    mask.extend(std::iter::repeat_n(true, pad));
                } else {
                    // A padded query sees itself only (its output is not used).
                    mask.extend((0..cols).map(|k| k != q));
                }
            }
            last.push(ctx - 1);
        }
        self.replay(|| Op::Prefill {
            tokens: tok.clone(),
            positions: pos.clone(),
            mask: mask.clone(),
            shape: [rows, cols],
            last: last.clone(),
            reserve,
        });
        let mut cache = self.model.new_cache();
        cache.reserve(reserve);
        let out = prefill_forward(self.model, tok, pos, mask, [rows, cols], &last, &mut cache);
        let logits = match out.map_err(Error::from).and_then(host_logits) {
            Ok(l) => l,
            Err(e) => {
                self.replay(|| Op::DropPending);
                for r in group {
                    fail(&self.metrics, &r.req, &e.to_string());
                }
                return;
            }
        };
        let vocab = self.model.config().vocab_size;
        let mut keep = Vec::with_capacity(rows);
        let mut joining = Vec::with_capacity(rows);
        let mut done = Vec::new();
        for (i, mut r) in group.into_iter().enumerate() {
            let ctx = r.context_length;
            let mut tokens = vec![r.sample.tokens[..ctx]
                .iter()
                .map(|&t| i64::from(t))
                .collect()];
            let part = &logits[i * vocab..(i + 1) * vocab];
            // The request's rows in the prefilled cache: its one row, or beams of it.
            let rows_of = match r.req.strategy.step(part, vocab, &mut tokens) {
                None => vec![i],
                Some(parents) if parents.iter().all(|&p| p == 0) => vec![i; parents.len()],
                Some(parents) => {
                    let msg = format!("the strategy chose parents {parents:?} of one row");
                    fail(&self.metrics, &r.req, &msg);
                    continue;
                }
            };
            let stream = if r.req.stream {
                TokenStream::for_codec(self.codec, ctx, r.req.strategy.end_tokens().to_vec())
            } else {
                None
            };
            let slots = (0..ctx as i64)
                .chain(std::iter::repeat_n(-1, cols - ctx))
                .collect();
            let mut active = Active {
                blank: r,
                tokens,
                counter: ctx,
                slots,
                stream,
                text: String::new(),
                stopped: false,
                first_token: true,
                last_token_at: Instant::now(),
            };
            self.after_step(&mut active);
            if self.blank_done(&active) {
                done.push(active);
            } else {
                keep.extend(rows_of);
                joining.push(active);
            }
        }
        if joining.is_empty() {
            self.replay(|| Op::DropPending);
        } else {
            let same = keep.len() == rows && keep.iter().enumerate().all(|(j, &i)| i == j);
            let selected = if same {
                Ok(())
            } else {
                self.replay(|| Op::SelectPending(keep.clone()));
                cache.select_batch(&keep)
            };
            match selected {
                Ok(()) => self.join(joining, cache),
                Err(e) => {
                    self.replay(|| Op::DropPending);
                    for a in joining {
                        fail(&self.metrics, &a.blank.req, &e.to_string());
                    }
                }
            }
        }
        for a in done {
            self.end_blank(a);
        }
    }

    /// Joins prefilled blanks (their rows in `cache`, in order) to the batch.
    fn join(&mut self, joining: Vec<Active<'t>>, cache: KvCache<B>) {
        self.replay(|| Op::Join);
        if let Err(e) = self.cache.merge_batch(cache) {
            for a in joining {
                fail(&self.metrics, &a.blank.req, &e.to_string());
            }
            return;
        }
        let len = self.cache.len();
        for a in &mut self.active {
            a.slots.resize(len, -1);
        }
        for mut a in joining {
            a.slots.resize(len, -1);
            self.active.push(a);
        }
        self.observe_batch();
    }

    /// One decode step for every row of every request in the batch.
    fn step(&mut self) {
        let vocab = self.model.config().vocab_size;
        let len = self.cache.len();
        let rows = self.rows();
        let mut tok = Vec::with_capacity(rows);
        let mut pos = Vec::with_capacity(rows);
        let mut mask = Vec::with_capacity(rows * (len + 1));
        for a in &self.active {
            let total = a.blank.sample.total();
            let cur = a.counter;
            let row_mask: Vec<bool> = a
                .slots
                .iter()
                .map(|&s| s < 0 || a.blank.sample.mask[cur * total + s as usize])
                .chain(std::iter::once(a.blank.sample.mask[cur * total + cur]))
                .collect();
            for row in &a.tokens {
                let t = row.get(cur).copied().unwrap_or(0);
                tok.push(if t == DONE { 0 } else { t });
                pos.push(i64::from(a.blank.sample.position_ids[cur]));
                mask.extend_from_slice(&row_mask);
            }
        }
        self.replay(|| Op::Step {
            tokens: tok.clone(),
            positions: pos.clone(),
            mask: mask.clone(),
            rows,
            keys: len,
        });
        let out = cached_forward(
            self.model,
            tok,
            pos,
            mask,
            [rows, 1, len + 1],
            &mut self.cache,
        );
        let logits = match out.map_err(Error::from).and_then(|o| host_logits(o.logits)) {
            Ok(l) => l,
            Err(e) => {
                // A failed step fails every request of the batch; the engine starts afresh.
                for a in self.active.drain(..) {
                    fail(&self.metrics, &a.blank.req, &e.to_string());
                }
                self.reset_batch();
                return;
            }
        };
        self.metrics.observe_step(rows);
        // Each request steps its own strategy on its rows; the cache follows every row kept.
        let mut keep: Vec<usize> = Vec::with_capacity(rows);
        let mut staying = Vec::with_capacity(self.active.len());
        let mut leaving = Vec::new();
        let mut offset = 0;
        let mut reordered = false;
        // The strategies (sampling filters, sorts) step side by side on the thread pool.
        let mut active = std::mem::take(&mut self.active);
        let mut parts = Vec::with_capacity(active.len());
        for a in &active {
            let n = a.tokens.len();
            parts.push(&logits[offset * vocab..(offset + n) * vocab]);
            offset += n;
        }
        let all_parents: Vec<Option<Vec<usize>>> = active
            .par_iter_mut()
            .zip(parts)
            .map(|(a, part)| a.blank.req.strategy.step(part, vocab, &mut a.tokens))
            .collect();
        offset = 0;
        for (mut a, parents) in active.into_iter().zip(all_parents) {
            let n = a.tokens.len();
            a.slots.push(a.counter as i64);
            a.counter += 1;
            self.after_step(&mut a);
            let cancelled = a.blank.req.events.is_closed();
            let late = a.blank.req.deadline.is_some_and(|d| Instant::now() > d);
            if cancelled || late || self.blank_done(&a) {
                reordered = true;
                if cancelled {
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                } else if late {
                    fail(&self.metrics, &a.blank.req, "the request deadline passed");
                } else {
                    leaving.push(a);
                }
            } else {
                match parents {
                    Some(p) => {
                        reordered = true;
                        keep.extend(p.iter().map(|&r| offset + r));
                    }
                    None => keep.extend(offset..offset + n),
                }
                staying.push(a);
            }
            offset += n;
        }
        self.active = staying;
        if self.active.is_empty() {
            self.reset_batch();
        } else if reordered {
            self.replay(|| Op::SelectBatch(keep.clone()));
            if let Err(e) = self.cache.select_batch(&keep) {
                for a in self.active.drain(..) {
                    fail(&self.metrics, &a.blank.req, &e.to_string());
                }
                self.reset_batch();
            }
        }
        if !self.active.is_empty() {
            self.compact_cache();
        }
        self.observe_batch();
        for a in leaving {
            self.end_blank(a);
        }
    }

    /// Streams the new text, checks stop strings and records timings after a strategy step.
    fn after_step(&self, a: &mut Active<'t>) {
        let now = Instant::now();
        if a.first_token {
            self.metrics
                .observe_ttft(now.duration_since(a.blank.req.received));
            a.first_token = false;
        } else {
            self.metrics
                .observe_token_latency(now.duration_since(a.last_token_at));
        }
        a.last_token_at = now;
        self.metrics.tokens.fetch_add(1, Ordering::Relaxed);
        a.blank.completion_tokens += 1;
        if let Some(stream) = &mut a.stream {
            let piece = stream.push_rows(&a.tokens);
            if !piece.is_empty() {
                a.text.push_str(&piece);
                let cut = first_stop(&a.text, &a.blank.req.stop);
                let send = match cut {
                    Some(at) => {
                        a.stopped = true;
                        let before = a.text.len() - piece.len();
                        piece[..at.saturating_sub(before).min(piece.len())].to_string()
                    }
                    None => piece,
                };
                if !send.is_empty() {
                    let _ = a
                        .blank
                        .req
                        .events
                        .send((a.blank.req.index, Event::Piece(send)));
                }
            }
        } else if a.blank.req.stream && self.codec.tokenizer().is_none() {
            // Integer-id text: each new token of row 0 is a piece.
            let ends = a.blank.req.strategy.end_tokens();
            if let Some(&t) = a.tokens.first().and_then(|row| row.last()) {
                if t >= 0 && !ends.contains(&(t as u32)) {
                    let _ = a.blank.req.events.send((
                        a.blank.req.index,
                        Event::Piece(format!("{} ", self.codec.detokenize(&[t as u32]))),
                    ));
                }
            }
        }
        if a.stream.is_none() && !a.blank.req.stop.is_empty() {
            // Without streaming, stop strings are checked on the decoded fill.
            let fill = current_fill(a);
            let text = self.codec.detokenize(&fill);
            a.stopped = first_stop(&text, &a.blank.req.stop).is_some();
        }
    }

    fn blank_done(&self, a: &Active<'t>) -> bool {
        a.stopped || a.blank.req.strategy.is_done() || a.counter >= a.blank.sample.total() - 1
    }

    /// The blank is filled: splice it in (beam 0) and go on with the next blank, or finish.
    fn end_blank(&mut self, a: Active<'t>) {
        let Active {
            blank:
                Ready {
                    mut req,
                    seq,
                    mut blanks,
                    completion_tokens,
                    context_length,
                    ..
                },
            tokens,
            stopped,
            ..
        } = a;
        let ends = req.strategy.end_tokens().to_vec();
        let hypotheses = req.strategy.finalize(tokens);
        let Some(best) = hypotheses.first().and_then(|h| h.first()) else {
            fail(&self.metrics, &req, "the strategy returned no sequence");
            return;
        };
        let ended = best
            .tokens
            .get(context_length..)
            .is_some_and(|t| t.iter().any(|&x| x >= 0 && ends.contains(&(x as u32))));
        let fill = generated_tokens(best, context_length, &ends);
        let mask_id = req.prompt.kind.token(&self.model.config().special_tokens);
        let Some(at) = seq.iter().position(|&t| t == mask_id) else {
            fail(&self.metrics, &req, "the blank disappeared");
            return;
        };
        let spliced = [&seq[..at], fill.as_slice(), &seq[at + 1..]].concat();
        blanks.push(fill);
        if stopped {
            self.finish(req, spliced, blanks, completion_tokens, FinishReason::Stop);
            return;
        }
        let budget_left = spliced.len() + 1 < req.out_seq_length;
        let more = spliced.contains(&mask_id);
        if more && budget_left {
            req.received = Instant::now();
            self.start_blank(req, spliced, blanks, completion_tokens);
        } else {
            let reason = if ended && !more {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            self.finish(req, spliced, blanks, completion_tokens, reason);
        }
    }

    fn finish(
        &self,
        req: Request,
        mut seq: Vec<u32>,
        blanks: Vec<Vec<u32>>,
        completion_tokens: usize,
        reason: FinishReason,
    ) {
        if seq.last() == Some(&self.model.config().special_tokens.eos) {
            seq.pop();
        }
        let blanks: Vec<String> = blanks.iter().map(|b| self.codec.detokenize(b)).collect();
        let mut text = blanks.concat();
        let mut reason = reason;
        if let Some(at) = first_stop(&text, &req.stop) {
            text.truncate(at);
            reason = FinishReason::Stop;
        }
        let completion = Completion {
            text,
            blanks,
            filled_text: self.codec.detokenize(&seq),
            finish_reason: reason,
            prompt_tokens: req.prompt.tokens.len(),
            completion_tokens,
        };
        self.metrics.completed.fetch_add(1, Ordering::Relaxed);
        let _ = req.events.send((req.index, Event::Done(completion)));
    }
}

/// Beam 0's generated tokens so far (end tokens and −1 dropped).
fn current_fill(a: &Active<'_>) -> Vec<u32> {
    let ends = a.blank.req.strategy.end_tokens();
    a.tokens
        .first()
        .map(|row| {
            row.iter()
                .skip(a.blank.context_length)
                .take_while(|&&t| t >= 0 && !ends.contains(&(t as u32)))
                .map(|&t| t as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Byte index of the first stop string in `text`.
fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

fn fail(metrics: &Metrics, req: &Request, message: &str) {
    metrics.failed.fetch_add(1, Ordering::Relaxed);
    let _ = req
        .events
        .send((req.index, Event::Failed(message.to_string())));
}

fn host_logits<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>> {
    logits
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| Error::Prompt(format!("reading logits: {e:?}")))
}
