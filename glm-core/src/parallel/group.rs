//! [`TensorParallel`]: a model split over `world` ranks, one thread and one device each.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn_collective::{finish_collective, register, reset_collective, CollectiveConfig, PeerId};

use super::comm::{collective_turn, GroupState, TpRank};
use super::layout::TpLayout;
use super::panic_message;
use super::source::RankSource;
use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::model::{GlmModel, ModelOptions};
use crate::quantized::QuantizeOptions;
use crate::weights::{RandomSource, WeightSource};

/// GLM split over `world` tensor-parallel ranks exactly as SAT splits it (spec §6): each rank is
/// a [`GlmModel`] holding its shard (whole heads of the fused QKV, its `[value | gate]` chunks of
/// `dense_h_to_4h`, its input columns of `attention.dense` / `dense_4h_to_h`, the LayerNorms
/// replicated, the embedding vocabulary-parallel or replicated: [`TpLayout`]). The row-parallel
/// linears all-reduce through burn-collective (NCCL on CUDA); every rank ends a forward with the
/// whole vocabulary's logits, so generation, beam search and scoring run unchanged on every rank
/// in lock step ([`run`](Self::run)).
///
/// Ranks are threads, one device each (several ranks may share a device: the CPU tests do).
/// burn-collective keeps one server per backend type and process, so the groups (and glm-train's
/// data-parallel steps) of one process take turns.
///
/// Communication per layer and forward: two all-reduces of `[batch, rows, hidden]`; per forward,
/// with the vocabulary-parallel embedding, one more for the lookup and one of the zero-padded
/// `[batch, rows, vocab]` logits.
#[derive(Debug)]
pub struct TensorParallel<B: Backend> {
    ranks: Vec<GlmModel<B>>,
    devices: Vec<B::Device>,
    layout: TpLayout,
    state: Arc<GroupState>,
}

impl<B: Backend> TensorParallel<B> {
    /// Loads every rank's shard of `source` (any checkpoint: a SAT folder of this degree gives
    /// each rank its own `mp_rank_XX` file, anything else is sliced on load) onto `devices` (one
    /// per rank, or one for all), float or quantized as
    /// [`GlmModel::from_source_quantized`] loads it. Quantize-on-load computes each rank's scales
    /// over its own shard, as the original's `convert_tp.py --quantization-bit-width`.
    ///
    /// A degree that does not divide the heads or the inner size, or a vocabulary that
    /// `torch.chunk` cannot give every rank a part of, is [`Error::InvalidConfig`].
    pub fn from_source(
        config: &GlmConfig,
        source: &dyn WeightSource,
        devices: &[B::Device],
        options: ModelOptions,
        quant: Option<QuantizeOptions>,
        layout: TpLayout,
    ) -> Result<Self> {
        layout.check(config)?;
        let devices = Self::rank_devices(devices, layout.world)?;
        let state = Arc::new(GroupState::default());
        let quant = quant.map(|q| q.with_tensor_parallel(1));
        let mut ranks = Vec::with_capacity(layout.world);
        for (rank, device) in devices.iter().enumerate() {
            let dims = layout.shard(config, rank)?;
            let view = RankSource::new(source, dims.clone());
            view.check()?;
            let mut model = GlmModel::load_for(config, &dims, &view, device, options, quant, 1)?;
            model.tp = Some(TpRank {
                dims,
                state: Arc::clone(&state),
            });
            ranks.push(model);
        }
        // The weights were uploaded from this thread; the ranks read them from their own (on GPU
        // backends: their own streams).
        for device in &devices {
            B::sync(device).map_err(|e| Error::Device(format!("sync after loading: {e:?}")))?;
        }
        Ok(Self {
            ranks,
            devices,
            layout,
            state,
        })
    }

    /// Random weights split over the ranks: the ranks of the model [`GlmModel::random`] builds
    /// with the same seed.
    pub fn random(
        config: &GlmConfig,
        devices: &[B::Device],
        options: ModelOptions,
        seed: u64,
        layout: TpLayout,
    ) -> Result<Self> {
        let source = RandomSource::new(config, seed)?;
        Self::from_source(config, &source, devices, options, None, layout)
    }

    fn rank_devices(devices: &[B::Device], world: usize) -> Result<Vec<B::Device>> {
        match devices {
            [one] => Ok(vec![one.clone(); world]),
            many if many.len() == world => Ok(many.to_vec()),
            many => Err(Error::InvalidInput(format!(
                "{} devices for {world} tensor-parallel ranks (give one per rank, or one for all)",
                many.len()
            ))),
        }
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// The degree and embedding layout.
    pub fn layout(&self) -> TpLayout {
        self.layout
    }

    /// The model configuration (of the whole model).
    pub fn config(&self) -> &GlmConfig {
        self.ranks[0].config()
    }

    /// The ranks' models, rank 0 first. Their forwards communicate: run them through
    /// [`run`](Self::run) / [`run_all`](Self::run_all), all ranks together.
    pub fn ranks(&self) -> &[GlmModel<B>] {
        &self.ranks
    }

    /// The ranks' devices.
    pub fn devices(&self) -> &[B::Device] {
        &self.devices
    }

    /// Runs the ranks together: `lead` on rank 0 on the calling thread (its value is returned:
    /// it may hold non-`Send` state, e.g. a streaming callback), `follow` on every other rank on
    /// its own thread. Both must run the same sequence of forwards (the same generation with the
    /// same seed does: every rank sees the same logits).
    ///
    /// When a rank fails (returns an error, panics, or a collective fails), every rank stops at
    /// its next collective or layer boundary and this returns [`Error::TensorParallel`] naming the
    /// rank that failed first — never a hang. When rank 0 failed first, or met the same error as
    /// the rank that did (a bad prompt every rank refuses alike), its own error is returned as it
    /// is.
    pub fn run<T, E>(
        &self,
        lead: impl FnOnce(&GlmModel<B>) -> std::result::Result<T, E>,
        follow: impl Fn(&GlmModel<B>) -> std::result::Result<(), E> + Sync,
    ) -> std::result::Result<T, E>
    where
        E: From<Error> + std::fmt::Display,
    {
        let world = self.world();
        let _turn = collective_turn();
        reset_collective::<B>();
        self.state.clear();
        let config = CollectiveConfig::default().with_num_devices(world);
        let state = &self.state;
        let lead_result = std::thread::scope(|scope| {
            for (rank, model) in self.ranks.iter().enumerate().skip(1) {
                let device = self.devices[rank].clone();
                let config = config.clone();
                let follow = &follow;
                scope.spawn(move || {
                    // A follower's failure reaches the caller through the group state.
                    let _ = rank_body::<B, (), E>(rank, device, config, state, || follow(model));
                });
            }
            rank_body::<B, T, E>(0, self.devices[0].clone(), config, state, || {
                lead(&self.ranks[0])
            })
        });
        reset_collective::<B>();
        match (lead_result, state.first()) {
            (result, None) => result,
            // Rank 0 failed first, or every rank met the same error (a bad input): rank 0's own.
            (Err(own), Some((rank, reason))) if rank == 0 || reason == own.to_string() => Err(own),
            (_, Some(_)) => Err(E::from(state.error().unwrap_or(Error::TensorParallel {
                rank: 0,
                reason: "a rank failed".into(),
            }))),
        }
    }

    /// Runs `f` on every rank (rank 0 on the calling thread) and returns every rank's value, rank
    /// 0 first. Failures as in [`run`](Self::run).
    pub fn run_all<T: Send>(&self, f: impl Fn(&GlmModel<B>) -> Result<T> + Sync) -> Result<Vec<T>> {
        type Others<T> = std::sync::Mutex<Vec<(usize, T)>>;
        let others: Others<T> = std::sync::Mutex::new(Vec::new());
        let first = self.run(&f, |model| {
            let value = f(model)?;
            let rank = model.tensor_parallel_rank().map_or(0, |tp| tp.dims().rank);
            others
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((rank, value));
            Ok(())
        })?;
        let mut others = others
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        others.sort_by_key(|(rank, _)| *rank);
        Ok(std::iter::once(first)
            .chain(others.into_iter().map(|(_, v)| v))
            .collect())
    }
}

/// One rank's part of [`TensorParallel::run`]: register with burn-collective, run `body` (a
/// failure or panic marks the group failed, which wakes the others), finish.
fn rank_body<B: Backend, T, E: From<Error> + std::fmt::Display>(
    rank: usize,
    device: B::Device,
    config: CollectiveConfig,
    state: &GroupState,
    body: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let peer = PeerId::from(rank as u32);
    if let Err(e) = register::<B>(peer, device, config) {
        let reason = format!("burn-collective register: {e:?}");
        state.fail::<B>(rank, reason.clone());
        return Err(E::from(Error::TensorParallel { rank, reason }));
    }
    let result = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(panic) => Err(E::from(Error::TensorParallel {
            rank,
            reason: format!("panicked: {}", panic_message(panic.as_ref())),
        })),
    };
    if let Err(e) = &result {
        state.fail::<B>(rank, e.to_string());
    }
    if !state.failed() {
        if let Err(e) = finish_collective::<B>(peer) {
            state.fail::<B>(rank, format!("burn-collective finish: {e:?}"));
        }
    }
    result
}
