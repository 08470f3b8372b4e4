//! AdamW with f32 master weights (torch.optim.AdamW semantics, checked against the fixture) and
//! global-norm gradient clipping.
//!
//! The optimizer owns the f32 master copy of every parameter plus the two moments, flat, in the
//! model's visiting order. The model itself may hold f16/bf16 copies: after each update the master
//! values are cast back into it ([`crate::params::assign_params`]).

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::ParamInfo;

/// AdamW hyper-parameters (spec §8: β 0.9/0.95, ε 1e-8, weight decay 0.1, clipping 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε (added to `sqrt(v̂)`).
    pub eps: f64,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)`).
    pub weight_decay: f64,
    /// Exclude biases and LayerNorm parameters from weight decay (Megatron's convention; the
    /// fixture and torch's single parameter group decay everything).
    pub no_decay_bias_and_norm: bool,
    /// Global-norm clipping threshold (0 = off).
    pub clip_grad: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            no_decay_bias_and_norm: false,
            clip_grad: 1.0,
        }
    }
}

impl AdamWConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::config(
                "optimizer.beta",
                "β₁ and β₂ must be in [0, 1)",
            ));
        }
        if self.eps.is_nan() || self.eps <= 0.0 || self.weight_decay < 0.0 || self.clip_grad < 0.0 {
            return Err(Error::config(
                "optimizer",
                "need eps > 0, weight_decay ≥ 0, clip_grad ≥ 0",
            ));
        }
        Ok(())
    }
}

/// Master weights and AdamW state.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Parameter names and shapes (visiting order).
    pub infos: Vec<ParamInfo>,
    /// f32 master values, flat.
    pub master: Vec<Tensor<B, 1>>,
    /// First moments.
    pub m: Vec<Tensor<B, 1>>,
    /// Second moments.
    pub v: Vec<Tensor<B, 1>>,
    /// Updates applied so far (AdamW's `t`).
    pub updates: u64,
}

/// What [`AdamW::clip`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipStats {
    /// Global L2 norm of all gradients before clipping.
    pub norm: f64,
    /// Factor applied (1 when not clipped).
    pub coef: f64,
}

/// Elements per partial sum of [`global_norm`].
const NORM_CHUNK: usize = 65_536;

/// Global L2 norm over all `grads` (one host read).
///
/// Deterministic: every tensor is summed in fixed chunks of `NORM_CHUNK` squares on the device
/// (each chunk by one sequential reduction) and the chunk sums are added on the host in f64, in
/// order. A single whole-tensor sum would let the CPU backend split large tensors across threads
/// in a varying order, and a resumed run would then differ from an uninterrupted one in the last
/// bits of the clip factor.
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> f64 {
    let mut partials = Vec::new();
    for g in grads {
        let n = g.dims()[0];
        let sq = g.clone().square();
        let rows = n / NORM_CHUNK;
        if rows > 0 {
            let head = sq
                .clone()
                .narrow(0, 0, rows * NORM_CHUNK)
                .reshape([rows, NORM_CHUNK]);
            partials.push(head.sum_dim(1).reshape([rows]));
        }
        if n > rows * NORM_CHUNK {
            partials.push(sq.narrow(0, rows * NORM_CHUNK, n - rows * NORM_CHUNK).sum());
        }
    }
    if partials.is_empty() {
        return 0.0;
    }
    let host: Vec<f32> = Tensor::cat(partials, 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    host.iter().map(|&x| x as f64).sum::<f64>().sqrt()
}

impl<B: Backend> AdamW<B> {
    /// Starts from the given f32 master values.
    pub fn new(config: AdamWConfig, infos: Vec<ParamInfo>, master: Vec<Tensor<B, 1>>) -> Self {
        let m = master.iter().map(|p| p.zeros_like()).collect();
        let v = master.iter().map(|p| p.zeros_like()).collect();
        Self {
            config,
            infos,
            master,
            m,
            v,
            updates: 0,
        }
    }

    /// Global-norm clipping as `torch.nn.utils.clip_grad_norm_`: `g ← g·min(1, c/(‖g‖ + 1e-6))`.
    pub fn clip(&self, grads: &mut [Tensor<B, 1>]) -> ClipStats {
        let norm = global_norm(grads);
        let max = self.config.clip_grad;
        let mut coef = 1.0;
        if max > 0.0 && norm.is_finite() {
            let c = max / (norm + 1e-6);
            if c < 1.0 {
                coef = c;
                for g in grads.iter_mut() {
                    *g = g.clone().mul_scalar(c);
                }
            }
        }
        ClipStats { norm, coef }
    }

    fn decays(&self, i: usize) -> bool {
        if !self.config.no_decay_bias_and_norm {
            return true;
        }
        let name = &self.infos[i].name;
        !(name.ends_with(".bias") || name.contains("layernorm"))
    }

    /// One AdamW update with learning rate `lr` (torch.optim.AdamW, `amsgrad=False`):
    /// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p − lr/(1−β₁ᵗ) · m / (sqrt(v)/sqrt(1−β₂ᵗ) + ε)`.
    pub fn step(&mut self, lr: f64, grads: &[Tensor<B, 1>]) {
        self.updates += 1;
        let t = self.updates as i32;
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (i, g) in grads.iter().enumerate() {
            let mut p = self.master[i].clone();
            if self.decays(i) && self.config.weight_decay > 0.0 {
                p = p.mul_scalar(1.0 - lr * self.config.weight_decay);
            }
            let m = self.m[i].clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            let v = self.v[i].clone().mul_scalar(b2) + g.clone().square().mul_scalar(1.0 - b2);
            let denom = v
                .clone()
                .sqrt()
                .div_scalar(bc2_sqrt)
                .add_scalar(self.config.eps);
            self.master[i] = p - m.clone().div(denom).mul_scalar(step_size);
            self.m[i] = m;
            self.v[i] = v;
        }
    }
}
