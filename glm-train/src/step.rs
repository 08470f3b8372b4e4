//! The training step: loss on the generated rows, backward with loss scaling, gradient
//! accumulation and data-parallel reduction, global-norm clipping, overflow skipping and the
//! AdamW update on f32 master weights.
//!
//! (Over 400 lines: one optimisation step: forward with the GLM objective, mixed-precision loss scaling, gradient checks, clipping and the optimiser.)

use std::panic::AssertUnwindSafe;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation, DType, ElementConversion, Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, CollectiveError,
    PeerId, ReduceOperation,
};
use glm_core::dropout::Dropout;
use glm_core::parallel::{panic_message, NodeGroup};
use glm_core::GlmModel;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::{assign_params, cast_params, param_grads, param_infos, param_values};
use crate::schedule::LossScaler;

/// Forward-pass settings of training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardConfig {
    /// Embedding gradient shrink α (1 = off).
    pub shrink_alpha: f64,
    /// Hidden dropout p.
    pub hidden_dropout: f64,
    /// Attention dropout p.
    pub attention_dropout: f64,
}

impl ForwardConfig {
    /// No dropout, no shrink: the inference forward.
    pub fn eval() -> Self {
        Self {
            shrink_alpha: 1.0,
            hidden_dropout: 0.0,
            attention_dropout: 0.0,
        }
    }
}

/// Sum of the token cross-entropies over the loss rows of `batch` (f32 whatever the model dtype),
/// `None` if the batch has no loss row.
///
/// The batch's layout and ids are checked against the model on the host first
/// ([`GlmInput::validate`](glm_core::blank::GlmInput::validate)): a hand-made batch with an id
/// outside the vocabulary or inconsistent field lengths is a typed error, not a backend panic.
///
/// # Shapes
/// - output: `[1]`
pub fn loss_sum<B: Backend>(
    model: &GlmModel<B>,
    batch: &Batch,
    forward: &ForwardConfig,
) -> Result<Option<Tensor<B, 1>>> {
    check_batch(model, batch)?;
    Ok(loss_sum_checked(model, batch, forward))
}

/// Checks `batch` against `model` on the host: layout, token ids below the vocabulary, position
/// ids below `max_sequence_length`, loss rows and targets inside the batch.
pub fn check_batch<B: Backend>(model: &GlmModel<B>, batch: &Batch) -> Result<()> {
    batch.input.validate(model.config())?;
    batch.check_targets(model.config().vocab_size)?;
    Ok(())
}

/// [`loss_sum`] for a batch already passed through [`check_batch`] (the step's hot path).
fn loss_sum_checked<B: Backend>(
    model: &GlmModel<B>,
    batch: &Batch,
    forward: &ForwardConfig,
) -> Option<Tensor<B, 1>> {
    if batch.num_targets() == 0 {
        return None;
    }
    let device = model.word_embeddings.val().device();
    let (tokens, positions, mask) = batch.input.to_tensors::<B>(&device);
    let mut dropout = if forward.hidden_dropout > 0.0 || forward.attention_dropout > 0.0 {
        Dropout::new(
            forward.hidden_dropout,
            forward.attention_dropout,
            batch.dropout_seeds.clone(),
        )
    } else {
        Dropout::disabled()
    };
    let hidden = model.forward_train(tokens, positions, mask, forward.shrink_alpha, &mut dropout);
    let [b, s, h] = hidden.dims();
    let rows = batch.loss_rows::<B>(&device);
    let n = rows.targets.dims()[0];
    let picked = hidden
        .reshape([b * s, h])
        .select(0, rows.rows)
        .reshape([1, n, h]);
    let logits = model
        .logits(picked)
        .reshape([n, model.config().vocab_size])
        .cast(DType::F32);
    let logp = activation::log_softmax(logits, 1);
    let picked = logp.gather(1, rows.targets.reshape([n, 1]));
    Some(picked.sum().neg())
}

/// Loss sum and gradients of `batch` through the CPU host step ([`crate::host`]) when it applies.
#[cfg(feature = "flex")]
fn host_grads<B: AutodiffBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    factor: f64,
    forward: &ForwardConfig,
) -> Option<(f64, Vec<Tensor<B::InnerBackend, 1>>)> {
    crate::host::loss_and_grads(model, batch, factor, forward)
}

/// Without `Flex` every step runs burn's autodiff.
#[cfg(not(feature = "flex"))]
fn host_grads<B: AutodiffBackend>(
    _model: &GlmModel<B>,
    _batch: &Batch,
    _factor: f64,
    _forward: &ForwardConfig,
) -> Option<(f64, Vec<Tensor<B::InnerBackend, 1>>)> {
    None
}

/// What one data-parallel worker returns: its loss sum and its summed gradients.
type WorkerResult<B> = (f64, Option<Vec<Tensor<B, 1>>>);

/// What one data-parallel replica hands back: its loss sum and, on replica 0, the all-reduced
/// gradient bucket.
type ReplicaOutcome<B> = Result<(f64, Option<Tensor<B, 1>>)>;

/// Loss and gradients of one optimizer step, before clipping.
#[derive(Debug, Clone)]
pub struct StepGrads<B: Backend> {
    /// Mean loss over the step's target tokens (unscaled).
    pub loss: f64,
    /// Gradients of the mean loss, unscaled, f32, flat, visiting order.
    pub grads: Vec<Tensor<B, 1>>,
    /// Target tokens of the step.
    pub targets: usize,
}

/// Model, optimizer and loss scaler.
#[derive(Debug, Clone)]
pub struct TrainState<B: AutodiffBackend> {
    /// The model in the compute dtype (its parameters are `cast(master)`).
    pub model: GlmModel<B>,
    /// AdamW with the f32 master weights.
    pub optim: AdamW<B::InnerBackend>,
    /// Loss scaler.
    pub scaler: LossScaler,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Mean loss over the step's target tokens.
    pub loss: f64,
    /// Global gradient norm before clipping (unscaled; non-finite on overflow).
    pub grad_norm: f64,
    /// Clip factor applied.
    pub clip_coef: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Loss scale the gradients were computed with.
    pub loss_scale: f64,
    /// Whether the update was skipped (overflow).
    pub skipped: bool,
    /// Target tokens.
    pub targets: usize,
}

impl<B: AutodiffBackend> TrainState<B> {
    /// Takes a model built in the compute dtype `dtype` (its rotary tables must match; see
    /// [`crate::init::deepnorm_model`]) and keeps f32 master copies of its parameters.
    pub fn new(model: GlmModel<B>, dtype: DType, adam: AdamWConfig, scaler: LossScaler) -> Self {
        let infos = param_infos::<B, _>(&model);
        let master: Vec<Tensor<B::InnerBackend, 1>> = param_values::<B, _>(&model)
            .into_iter()
            .map(|t| t.inner())
            .collect();
        let model = cast_params::<B, _>(model, dtype);
        let optim = AdamW::new(adam, infos, master);
        let mut s = Self {
            model,
            optim,
            scaler,
        };
        s.sync_model();
        s
    }

    /// Writes the master weights into the model (cast to its dtype).
    pub fn sync_model(&mut self) {
        self.model = assign_params::<B, _>(self.model.clone(), &self.optim.master);
    }

    /// The model with f32 weights on the inner backend (for evaluation and export).
    pub fn master_model(&self) -> GlmModel<B::InnerBackend> {
        let m = cast_params::<B, _>(self.model.clone(), DType::F32);
        let m = assign_params::<B, _>(m, &self.optim.master);
        m.valid()
    }

    /// Loss and unscaled gradients of `micro_batches` (gradient accumulation), spread over the
    /// data-parallel `devices` (one replica each; empty = the model's own device, no replication).
    ///
    /// Micro-batch `i` runs on replica `i % devices.len()`. Each replica works on its own thread
    /// with its own copy of the model ([`Module::fork`]: fresh autodiff leaves, so the replicas'
    /// graphs never share a node), flattens its summed gradients into one bucket, and the buckets
    /// are summed by burn-collective's all-reduce ([`burn_collective::all_reduce`], tree strategy);
    /// the result on replica 0 becomes the step's gradients, on the device of the master weights.
    /// The loss is the mean over ALL target tokens of the step, so the result equals one big batch
    /// up to float rounding.
    ///
    /// Reproducibility: with one or two replicas every sum is bit-for-bit the same from run to
    /// run (a + b = b + a); with three or more, burn-collective chooses the summation order, so
    /// runs agree to float rounding only.
    ///
    /// burn-collective keeps one local server per backend type and process, so concurrent
    /// data-parallel steps in one process (two trainers on two threads) take turns.
    pub fn grads(
        &self,
        micro_batches: &[Batch],
        forward: &ForwardConfig,
        devices: &[B::Device],
    ) -> Result<StepGrads<B::InnerBackend>> {
        for batch in micro_batches {
            check_batch(&self.model, batch)?;
        }
        let (denom, scale, factor) = self.loss_factor(micro_batches);
        let run = |model: &GlmModel<B>, batches: Vec<&Batch>| {
            self.replica_grads(model, batches, factor, forward)
        };
        let home = self.model.word_embeddings.val().device();
        let (loss, summed) = match devices {
            [] => run(&self.model, micro_batches.iter().collect()),
            [only] if *only == home => run(&self.model, micro_batches.iter().collect()),
            _ => {
                let (loss, bucket) = self.all_reduced(micro_batches, devices, &run)?;
                (loss, Some(self.unbucket(bucket.to_device(&home))))
            }
        };
        let grads = match summed {
            // Unscaling by 1 (f32 training) is skipped: it would be a pass over every gradient.
            Some(g) if scale == 1.0 => g,
            Some(g) => g.into_iter().map(|t| t.mul_scalar(1.0 / scale)).collect(),
            None => self.optim.master.iter().map(|p| p.zeros_like()).collect(),
        };
        Ok(StepGrads {
            loss: if denom == 0 { 0.0 } else { loss / denom as f64 },
            grads,
            targets: denom,
        })
    }

    /// The step's target count, loss scale and the factor every loss sum is multiplied by before
    /// the backward (`scale / targets`: the gradients of the mean loss, scaled).
    fn loss_factor(&self, micro_batches: &[Batch]) -> (usize, f64, f64) {
        let denom: usize = micro_batches.iter().map(Batch::num_targets).sum();
        let scale = self.scaler.scale;
        let factor = if denom == 0 {
            0.0
        } else {
            scale / denom as f64
        };
        (denom, scale, factor)
    }

    /// Loss sum and summed gradients (scaled by `factor`) of `batches` on `model`; `None`
    /// gradients when no batch has a target.
    fn replica_grads(
        &self,
        model: &GlmModel<B>,
        batches: Vec<&Batch>,
        factor: f64,
        forward: &ForwardConfig,
    ) -> WorkerResult<B::InnerBackend> {
        let mut acc: Option<Vec<Tensor<B::InnerBackend, 1>>> = None;
        let mut loss = 0.0f64;
        for batch in batches {
            let grads = match host_grads(model, batch, factor, forward) {
                Some((sum, grads)) => {
                    loss += sum;
                    grads
                }
                None => {
                    let Some(sum) = loss_sum_checked(model, batch, forward) else {
                        continue;
                    };
                    let value: f32 = sum.clone().detach().into_scalar().elem();
                    loss += value as f64;
                    let g = sum.mul_scalar(factor).backward();
                    param_grads::<B, _>(model, &g)
                }
            };
            acc = Some(match acc {
                None => grads,
                Some(a) => a.into_iter().zip(grads).map(|(x, y)| x + y).collect(),
            });
        }
        (loss, acc)
    }

    /// [`TrainState::grads`] for one node of a multi-node job: `micro_batches` is the WHOLE
    /// step of every node (each node draws the same stream); micro-batch `i` belongs to global
    /// replica `i % (nodes × devices.len())`, node `r` running replicas `r × devices.len() ..`,
    /// exactly the split of a single-process run with `nodes × devices.len()` replicas. Each
    /// replica's flattened gradients, with its loss sum appended, are summed over every replica
    /// of every node by `group` (burn-collective's global all-reduce), so every node ends the
    /// step with the same gradients and mean loss.
    pub fn grads_on_nodes(
        &self,
        micro_batches: &[Batch],
        forward: &ForwardConfig,
        devices: &[B::Device],
        group: &NodeGroup<B::InnerBackend>,
    ) -> Result<StepGrads<B::InnerBackend>> {
        for batch in micro_batches {
            check_batch(&self.model, batch)?;
        }
        if devices.is_empty() {
            return Err(Error::config("data_parallel", "no device given"));
        }
        let (denom, scale, factor) = self.loss_factor(micro_batches);
        let local = devices.len();
        let world = local * group.nodes() as usize;
        let first = group.rank() as usize * local;
        let total: usize = self.optim.master.iter().map(|p| p.dims()[0]).sum();
        let home = self.model.word_embeddings.val().device();
        let buckets: Vec<Result<Tensor<B::InnerBackend, 1>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(r, device)| {
                    let mine: Vec<&Batch> = micro_batches
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % world == first + r)
                        .map(|(_, b)| b)
                        .collect();
                    let home = &home;
                    scope.spawn(move || {
                        let replica = if device == home && local == 1 {
                            self.model.clone()
                        } else {
                            self.model.clone().fork(device)
                        };
                        let (loss, grads) = self.replica_grads(&replica, mine, factor, forward);
                        let bucket = match grads {
                            Some(g) => Tensor::cat(g, 0).cast(DType::F32),
                            None => Tensor::zeros([total], device),
                        };
                        let loss = Tensor::<B::InnerBackend, 1>::from_floats([loss as f32], device);
                        Tensor::cat(vec![bucket, loss], 0)
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(r, h)| {
                    h.join().map_err(|panic| Error::DataParallel {
                        replica: first + r,
                        reason: panic_message(panic.as_ref()),
                    })
                })
                .collect()
        });
        let buckets = buckets
            .into_iter()
            .map(|b| b.map(|t| t.into_primitive().tensor()))
            .collect::<Result<Vec<_>>>()?;
        let summed = group.all_reduce(buckets)?;
        let summed = summed
            .into_iter()
            .next()
            .ok_or_else(|| Error::DataParallel {
                replica: first,
                reason: "no all-reduce result".into(),
            })?;
        let summed = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed))
            .to_device(&home);
        let loss: f32 = summed.clone().narrow(0, total, 1).into_scalar().elem();
        let grads = self
            .unbucket(summed.narrow(0, 0, total))
            .into_iter()
            .map(|t| t.mul_scalar(1.0 / scale))
            .collect();
        Ok(StepGrads {
            loss: if denom == 0 {
                0.0
            } else {
                loss as f64 / denom as f64
            },
            grads,
            targets: denom,
        })
    }

    /// Runs `run` on one replica per device and all-reduces the flattened gradients with
    /// burn-collective. Returns the loss sum (added on the host in replica order) and the summed
    /// gradient bucket of replica 0.
    fn all_reduced<F>(
        &self,
        micro_batches: &[Batch],
        devices: &[B::Device],
        run: &F,
    ) -> Result<(f64, Tensor<B::InnerBackend, 1>)>
    where
        F: Fn(&GlmModel<B>, Vec<&Batch>) -> WorkerResult<B::InnerBackend> + Sync,
    {
        type Inner<B> = <B as AutodiffBackend>::InnerBackend;
        let replicas = devices.len();
        let total: usize = self.optim.master.iter().map(|p| p.dims()[0]).sum();
        let config = CollectiveConfig::default().with_num_devices(replicas);
        // One burn-collective server per backend type and process: hold it for the whole step and
        // start from a clean server (a failed earlier step cannot leave peers registered).
        let _turn = glm_core::parallel::collective_turn();
        reset_collective::<Inner<B>>();
        let collective_error =
            |replica: usize, what: &str, e: CollectiveError| Error::DataParallel {
                replica,
                reason: format!("burn-collective {what}: {e:?}"),
            };
        let outcomes: Vec<ReplicaOutcome<Inner<B>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(r, device)| {
                    let config = config.clone();
                    let mine: Vec<&Batch> =
                        micro_batches.iter().skip(r).step_by(replicas).collect();
                    scope.spawn(move || {
                        let peer = PeerId::from(r as u32);
                        register::<Inner<B>>(peer, device.clone(), config)
                            .map_err(|e| collective_error(r, "register", e))?;
                        // Whatever happens in the forward/backward, the replica still takes
                        // part in the all-reduce, or the other replicas would wait forever.
                        let computed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            let replica = self.model.clone().fork(device);
                            let (loss, grads) = run(&replica, mine);
                            let bucket = match grads {
                                Some(g) => Tensor::cat(g, 0),
                                None => Tensor::zeros([total], device),
                            };
                            (loss, bucket.cast(DType::F32))
                        }));
                        let (loss, bucket, failure) = match computed {
                            Ok((loss, bucket)) => (loss, bucket, None),
                            Err(panic) => (
                                f64::NAN,
                                Tensor::zeros([total], device),
                                Some(panic_message(panic.as_ref())),
                            ),
                        };
                        let reduced = all_reduce::<Inner<B>>(
                            peer,
                            bucket.into_primitive().tensor(),
                            ReduceOperation::Sum,
                        );
                        let finished = finish_collective::<Inner<B>>(peer);
                        if let Some(reason) = failure {
                            return Err(Error::DataParallel { replica: r, reason });
                        }
                        let reduced = reduced.map_err(|e| collective_error(r, "all-reduce", e))?;
                        finished.map_err(|e| collective_error(r, "finish", e))?;
                        let bucket = Tensor::from_primitive(TensorPrimitive::Float(reduced));
                        Ok((loss, (r == 0).then_some(bucket)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(r, h)| {
                    h.join().unwrap_or_else(|panic| {
                        Err(Error::DataParallel {
                            replica: r,
                            reason: panic_message(panic.as_ref()),
                        })
                    })
                })
                .collect()
        });
        let mut loss = 0.0;
        let mut bucket = None;
        for outcome in outcomes {
            let (l, b) = outcome?;
            loss += l;
            bucket = bucket.or(b);
        }
        let bucket = bucket.ok_or_else(|| Error::DataParallel {
            replica: 0,
            reason: "no all-reduce result".into(),
        })?;
        Ok((loss, bucket))
    }

    /// Splits a flat bucket back into one flat tensor per parameter (visiting order).
    fn unbucket(&self, bucket: Tensor<B::InnerBackend, 1>) -> Vec<Tensor<B::InnerBackend, 1>> {
        let mut at = 0;
        self.optim
            .master
            .iter()
            .map(|p| {
                let n = p.dims()[0];
                let t = bucket.clone().narrow(0, at, n);
                at += n;
                t
            })
            .collect()
    }

    /// Clips, checks for overflow (non-finite global norm), updates the loss scaler and, unless
    /// the step is skipped, applies AdamW with `lr` and refreshes the model.
    pub fn apply(&mut self, step: StepGrads<B::InnerBackend>, lr: f64) -> StepReport {
        let mut grads = step.grads;
        let loss_scale = self.scaler.scale;
        let clip = self.optim.clip(&mut grads);
        let overflow = !clip.norm.is_finite();
        let applied = self.scaler.update(overflow);
        if applied {
            self.optim.step(lr, &grads);
            self.sync_model();
        }
        StepReport {
            loss: step.loss,
            grad_norm: clip.norm,
            clip_coef: clip.coef,
            lr,
            loss_scale,
            skipped: !applied,
            targets: step.targets,
        }
    }
}

/// Mean loss of `batches` on an inference model (no dropout, no shrink); `None` without targets.
/// Each batch is checked as in [`loss_sum`].
pub fn eval_loss<B: Backend>(model: &GlmModel<B>, batches: &[Batch]) -> Result<Option<f64>> {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for b in batches {
        if let Some(l) = loss_sum(model, b, &ForwardConfig::eval())? {
            let v: f32 = l.into_scalar().elem();
            sum += v as f64;
            n += b.num_targets();
        }
    }
    Ok((n > 0).then(|| sum / n as f64))
}
