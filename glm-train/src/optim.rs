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
/// (on `Flex` f32 buffers: chunks of 16 384 squares on the host)
/// (each chunk by one sequential reduction) and the chunk sums are added on the host in f64, in
/// order. A single whole-tensor sum would let the CPU backend split large tensors across threads
/// in a varying order, and a resumed run would then differ from an uninterrupted one in the last
/// bits of the clip factor.
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> f64 {
    #[cfg(feature = "flex")]
    if let Some(norm) = host::global_norm(grads) {
        return norm;
    }
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
                #[cfg(feature = "flex")]
                if host::scale_in_place(grads, c) {
                    return ClipStats { norm, coef };
                }
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
        #[cfg(feature = "flex")]
        {
            let decays: Vec<bool> = (0..grads.len()).map(|i| self.decays(i)).collect();
            let constants = host::Constants {
                decay: (1.0 - lr * self.config.weight_decay) as f32,
                b1: b1 as f32,
                one_minus_b1: (1.0 - b1) as f32,
                b2: b2 as f32,
                one_minus_b2: (1.0 - b2) as f32,
                bc2_sqrt: bc2_sqrt as f32,
                eps: self.config.eps as f32,
                step_size: step_size as f32,
                weight_decay: self.config.weight_decay > 0.0,
            };
            let done = host::adamw(self, grads, &decays, &constants);
            // Parameters the host pass could not take (none for f32 `Flex` tensors) get the
            // generic update below.
            for (i, g) in grads.iter().enumerate() {
                if !done.get(i).copied().unwrap_or(false) {
                    self.step_param(i, g, lr, bc2_sqrt, step_size);
                }
            }
            return;
        }
        #[allow(unreachable_code)]
        for (i, g) in grads.iter().enumerate() {
            self.step_param(i, g, lr, bc2_sqrt, step_size);
        }
    }

    /// The generic AdamW update of parameter `i` (tensor ops of any backend).
    fn step_param(&mut self, i: usize, g: &Tensor<B, 1>, lr: f64, bc2_sqrt: f64, step_size: f64) {
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        {
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

/// The optimizer's passes in place on `Flex` host buffers: one fused multi-threaded pass per
/// parameter for AdamW (the generic path runs a dozen tensor ops, each a pass with a fresh
/// buffer), the global norm as f64 sums of squares. Same formulas and f32 operation order as
/// the generic path; `None` / `false` when the tensors are not f32 `Flex` tensors.
#[cfg(feature = "flex")]
mod host {
    use std::any::TypeId;

    use burn::backend::Flex;
    use burn::tensor::{backend::Backend, Tensor};
    use glm_quant::kernels::flex_host::HostF32;
    use rayon::prelude::*;

    use super::AdamW;

    /// Elements per task of the element-wise passes.
    const CHUNK: usize = 1 << 14;

    /// The scalars of one AdamW update, rounded to f32 as the generic path's scalar ops do.
    pub(super) struct Constants {
        pub decay: f32,
        pub b1: f32,
        pub one_minus_b1: f32,
        pub b2: f32,
        pub one_minus_b2: f32,
        pub bc2_sqrt: f32,
        pub eps: f32,
        pub step_size: f32,
        pub weight_decay: bool,
    }

    fn is_flex<B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<Flex>()
    }

    /// Takes `t` out of its place (an empty tensor left there) as a host buffer.
    fn take<B: Backend>(t: &mut Tensor<B, 1>) -> Option<HostF32> {
        let empty = HostF32::tensor_from_vec::<B, 1>(Vec::new(), [0])?;
        let taken = std::mem::replace(t, empty);
        match HostF32::from_tensor(taken) {
            Ok(h) => Some(h),
            Err(back) => {
                *t = back;
                None
            }
        }
    }

    /// Puts a host buffer back as a tensor.
    fn put<B: Backend>(t: &mut Tensor<B, 1>, h: HostF32) {
        if let Some(back) = h.into_tensor::<B, 1>() {
            *t = back;
        }
    }

    /// `√(Σ g²)` over every gradient, f64 sums per chunk.
    pub(super) fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> Option<f64> {
        if !is_flex::<B>() {
            return None;
        }
        let mut total = 0f64;
        for g in grads {
            let h = HostF32::from_tensor(g.clone()).ok()?;
            // Partial sums collected in chunk order and added in that order: a parallel `sum`
            // would associate them in an order that depends on the threads' timing, and a
            // resumed run would no longer repeat an uninterrupted one bit for bit.
            let partials: Vec<f64> = h
                .as_slice()
                .par_chunks(CHUNK)
                .map(|c| {
                    // 16 f32 lanes per chunk (vectorized), summed in f64.
                    let mut lanes = [0f32; 16];
                    let mut tail = c.chunks_exact(16);
                    for block in &mut tail {
                        for (l, &x) in lanes.iter_mut().zip(block) {
                            *l += x * x;
                        }
                    }
                    let rest: f64 = tail.remainder().iter().map(|&x| f64::from(x * x)).sum();
                    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + rest
                })
                .collect();
            total += partials.iter().sum::<f64>();
        }
        Some(total.sqrt())
    }

    /// `g ← g·c` for every gradient in place; `false` (nothing changed) for another backend.
    pub(super) fn scale_in_place<B: Backend>(grads: &mut [Tensor<B, 1>], c: f64) -> bool {
        if !is_flex::<B>() {
            return false;
        }
        let c = c as f32;
        for g in grads.iter_mut() {
            let Some(mut h) = take(g) else {
                *g = g.clone().mul_scalar(c);
                continue;
            };
            h.as_mut_slice()
                .par_chunks_mut(CHUNK)
                .for_each(|x| x.iter_mut().for_each(|v| *v *= c));
            put(g, h);
        }
        true
    }

    /// One AdamW update of every parameter in place; which parameters it updated (none when
    /// the optimizer's tensors are not `Flex`).
    pub(super) fn adamw<B: Backend>(
        opt: &mut AdamW<B>,
        grads: &[Tensor<B, 1>],
        decays: &[bool],
        k: &Constants,
    ) -> Vec<bool> {
        let n = opt.master.len();
        let mut done = vec![false; n];
        if !is_flex::<B>() || grads.len() != n || opt.m.len() != n || opt.v.len() != n {
            return done;
        }
        for i in 0..n {
            let Ok(g) = HostF32::from_tensor(grads[i].clone()) else {
                continue;
            };
            let Some(mut p) = take(&mut opt.master[i]) else {
                continue;
            };
            let Some(mut m) = take(&mut opt.m[i]) else {
                put(&mut opt.master[i], p);
                continue;
            };
            let Some(mut v) = take(&mut opt.v[i]) else {
                put(&mut opt.master[i], p);
                put(&mut opt.m[i], m);
                continue;
            };
            let decay = decays.get(i).copied().unwrap_or(true) && k.weight_decay;
            let update = |p: f32, m: &mut f32, v: &mut f32, g: f32| -> f32 {
                let pv = if decay { p * k.decay } else { p };
                let mv = *m * k.b1 + g * k.one_minus_b1;
                let vv = *v * k.b2 + g * g * k.one_minus_b2;
                let denom = vv.sqrt() / k.bc2_sqrt + k.eps;
                *m = mv;
                *v = vv;
                pv - mv / denom * k.step_size
            };
            if p.is_unique() {
                p.as_mut_slice()
                    .par_chunks_mut(CHUNK)
                    .zip(m.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(v.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(g.as_slice().par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| {
                        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                            *p = update(*p, m, v, g);
                        }
                    });
            } else {
                // The model shares the master buffers (sync_model): the new values go to a
                // fresh buffer in the same pass instead of a copy first and an in-place pass.
                let len = p.as_slice().len();
                let mut fresh: Vec<f32> = Vec::with_capacity(len);
                fresh.spare_capacity_mut()[..len]
                    .par_chunks_mut(CHUNK)
                    .zip(p.as_slice().par_chunks(CHUNK))
                    .zip(m.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(v.as_mut_slice().par_chunks_mut(CHUNK))
                    .zip(g.as_slice().par_chunks(CHUNK))
                    .for_each(|((((dst, p), m), v), g)| {
                        for ((((d, &p), m), v), &g) in dst.iter_mut().zip(p).zip(m).zip(v).zip(g) {
                            d.write(update(p, m, v, g));
                        }
                    });
                // SAFETY: the chunks above cover the first `len` elements and each was written.
                unsafe { fresh.set_len(len) };
                p = HostF32::from_vec(fresh);
            }
            put(&mut opt.master[i], p);
            put(&mut opt.m[i], m);
            put(&mut opt.v[i], v);
            done[i] = true;
        }
        done
    }
}
