//! The training step: loss on the generated rows, backward with loss scaling, gradient
//! accumulation and data-parallel reduction, global-norm clipping, overflow skipping and the
//! AdamW update on f32 master weights.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation, DType, ElementConversion, Tensor};
use glm_core::dropout::Dropout;
use glm_core::GlmModel;

use crate::batch::Batch;
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
/// # Shapes
/// - output: `[1]`
pub fn loss_sum<B: Backend>(
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

/// What one data-parallel worker returns: its loss sum and its summed gradients.
type WorkerResult<B> = (f64, Option<Vec<Tensor<B, 1>>>);

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

    /// Loss and unscaled gradients of `micro_batches` (gradient accumulation) spread over
    /// `replicas` data-parallel workers: micro-batch `i` runs on worker `i % replicas`, each worker
    /// on its own thread with its own copy of the model; gradients are summed (all-reduce) in a
    /// fixed order. The loss is the mean over ALL target tokens of the step, so the result equals
    /// one big batch up to float rounding.
    pub fn grads(
        &self,
        micro_batches: &[Batch],
        forward: &ForwardConfig,
        replicas: usize,
    ) -> StepGrads<B::InnerBackend> {
        let denom: usize = micro_batches.iter().map(Batch::num_targets).sum();
        let scale = self.scaler.scale;
        let factor = if denom == 0 {
            0.0
        } else {
            scale / denom as f64
        };
        let run = |model: &GlmModel<B>, batches: Vec<&Batch>| {
            let mut acc: Option<Vec<Tensor<B::InnerBackend, 1>>> = None;
            let mut loss = 0.0f64;
            for batch in batches {
                let Some(sum) = loss_sum(model, batch, forward) else {
                    continue;
                };
                let value: f32 = sum.clone().detach().into_scalar().elem();
                loss += value as f64;
                let g = sum.mul_scalar(factor).backward();
                let grads = param_grads::<B, _>(model, &g);
                acc = Some(match acc {
                    None => grads,
                    Some(a) => a.into_iter().zip(grads).map(|(x, y)| x + y).collect(),
                });
            }
            (loss, acc)
        };
        let replicas = replicas.max(1);
        let results: Vec<WorkerResult<B::InnerBackend>> = if replicas == 1 {
            vec![run(&self.model, micro_batches.iter().collect())]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..replicas)
                    .map(|r| {
                        let model = self.model.clone();
                        let mine: Vec<&Batch> =
                            micro_batches.iter().skip(r).step_by(replicas).collect();
                        let run = &run;
                        scope.spawn(move || run(&model, mine))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or((f64::NAN, None)))
                    .collect()
            })
        };
        // All-reduce: sum the workers' gradients in worker order.
        let mut loss = 0.0;
        let mut total: Option<Vec<Tensor<B::InnerBackend, 1>>> = None;
        for (l, g) in results {
            loss += l;
            if let Some(g) = g {
                total = Some(match total {
                    None => g,
                    Some(t) => t.into_iter().zip(g).map(|(x, y)| x + y).collect(),
                });
            }
        }
        let grads = match total {
            Some(g) => g.into_iter().map(|t| t.mul_scalar(1.0 / scale)).collect(),
            None => self.optim.master.iter().map(|p| p.zeros_like()).collect(),
        };
        StepGrads {
            loss: if denom == 0 { 0.0 } else { loss / denom as f64 },
            grads,
            targets: denom,
        }
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
pub fn eval_loss<B: Backend>(model: &GlmModel<B>, batches: &[Batch]) -> Option<f64> {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for b in batches {
        if let Some(l) = loss_sum(model, b, &ForwardConfig::eval()) {
            let v: f32 = l.into_scalar().elem();
            sum += v as f64;
            n += b.num_targets();
        }
    }
    (n > 0).then(|| sum / n as f64)
}
