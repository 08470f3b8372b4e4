//! Learning-rate schedule (linear warm-up, cosine decay to a floor) and dynamic loss scaling.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Linear warm-up from `warmup_start_lr` to `peak_lr` over `warmup_steps` updates, then cosine
/// decay to `min_lr` at update `decay_steps`, then constant (spec §8: peak 8e-5, floor 8e-6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Floor after the decay.
    pub min_lr: f64,
    /// Learning rate of the first warm-up update's start.
    pub warmup_start_lr: f64,
    /// Warm-up length in updates.
    pub warmup_steps: u64,
    /// Update at which the cosine reaches `min_lr` (0 = the run's total steps).
    pub decay_steps: u64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self {
            peak_lr: 1e-3,
            min_lr: 1e-4,
            warmup_start_lr: 0.0,
            warmup_steps: 10,
            decay_steps: 0,
        }
    }
}

impl LrSchedule {
    /// The learning rate of update `step` (0-based) in a run of `total_steps`.
    pub fn lr(&self, step: u64, total_steps: u64) -> f64 {
        let decay_end = if self.decay_steps == 0 {
            total_steps
        } else {
            self.decay_steps
        };
        if step < self.warmup_steps {
            let frac = (step + 1) as f64 / self.warmup_steps as f64;
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * frac;
        }
        if step >= decay_end || decay_end <= self.warmup_steps {
            return if decay_end <= self.warmup_steps {
                self.peak_lr
            } else {
                self.min_lr
            };
        }
        let progress = (step - self.warmup_steps) as f64 / (decay_end - self.warmup_steps) as f64;
        self.min_lr
            + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr.is_finite()
            && self.peak_lr >= 0.0
            && self.min_lr >= 0.0
            && self.min_lr <= self.peak_lr)
        {
            return Err(Error::config("schedule", "need 0 ≤ min_lr ≤ peak_lr"));
        }
        Ok(())
    }
}

/// Dynamic loss scaling (DeepSpeed / Megatron `DynamicLossScaler`; spec §8: initial 65536,
/// window 2000, hysteresis 2, min 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleConfig {
    /// Scale of the first step (f16 default 2^16; ignored in f32 where the scale stays 1).
    pub initial_scale: f64,
    /// Consecutive good steps after which the scale is multiplied by `factor`.
    pub window: u64,
    /// Overflows tolerated before the scale is lowered (1 = lower on every overflow).
    pub hysteresis: u32,
    /// Lowest scale.
    pub min_scale: f64,
    /// Multiplier / divisor.
    pub factor: f64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self {
            initial_scale: 65536.0,
            window: 2000,
            hysteresis: 2,
            min_scale: 1.0,
            factor: 2.0,
        }
    }
}

/// The loss scaler's state (checkpointed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Settings.
    pub config: LossScaleConfig,
    /// Whether scaling is dynamic (false: the scale stays at its value, overflowing steps are
    /// still skipped).
    pub dynamic: bool,
    /// Current scale.
    pub scale: f64,
    /// Good steps since the last overflow or raise.
    pub good_steps: u64,
    /// Overflows left before the next lowering.
    pub hysteresis_left: u32,
    /// Steps skipped so far.
    pub skipped: u64,
}

impl LossScaler {
    /// A dynamic scaler.
    pub fn dynamic(config: LossScaleConfig) -> Self {
        Self {
            scale: config.initial_scale,
            hysteresis_left: config.hysteresis.max(1),
            config,
            dynamic: true,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// A constant scale of 1 (f32 training): overflowing steps are skipped, nothing else.
    pub fn fixed() -> Self {
        Self {
            scale: 1.0,
            dynamic: false,
            ..Self::dynamic(LossScaleConfig::default())
        }
    }

    /// Records the outcome of a step; returns `true` if the update must be applied, `false` if the
    /// gradients overflowed (the step is skipped, and the scale lowered once the hysteresis is
    /// used up).
    pub fn update(&mut self, overflow: bool) -> bool {
        if overflow {
            self.skipped += 1;
            self.good_steps = 0;
            if self.dynamic {
                if self.hysteresis_left <= 1 {
                    self.scale = (self.scale / self.config.factor).max(self.config.min_scale);
                } else {
                    self.hysteresis_left -= 1;
                }
            }
            return false;
        }
        self.good_steps += 1;
        if self.dynamic && self.config.window > 0 && self.good_steps >= self.config.window {
            self.scale *= self.config.factor;
            self.good_steps = 0;
            self.hysteresis_left = self.config.hysteresis.max(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = LrSchedule {
            peak_lr: 1.0,
            min_lr: 0.1,
            warmup_start_lr: 0.0,
            warmup_steps: 10,
            decay_steps: 110,
        };
        assert!((s.lr(0, 0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9, 0) - 1.0).abs() < 1e-12);
        assert!((s.lr(10, 0) - 1.0).abs() < 1e-12);
        assert!((s.lr(60, 0) - 0.55).abs() < 1e-12);
        assert!((s.lr(110, 0) - 0.1).abs() < 1e-12);
        assert!((s.lr(500, 0) - 0.1).abs() < 1e-12);
        let mut prev = f64::MAX;
        for t in 10..=110 {
            assert!(s.lr(t, 0) <= prev);
            prev = s.lr(t, 0);
        }
    }

    #[test]
    fn overflow_skips_and_lowers_window_raises() {
        let cfg = LossScaleConfig {
            initial_scale: 1024.0,
            window: 3,
            hysteresis: 1,
            min_scale: 1.0,
            factor: 2.0,
        };
        let mut s = LossScaler::dynamic(cfg.clone());
        assert!(!s.update(true));
        assert_eq!((s.scale, s.skipped), (512.0, 1));
        assert!(s.update(false) && s.update(false));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(false));
        assert_eq!(s.scale, 1024.0, "raised after a window of good steps");
        // Hysteresis 2: the first overflow only skips, the second lowers.
        let mut h = LossScaler::dynamic(LossScaleConfig {
            hysteresis: 2,
            ..cfg
        });
        assert!(!h.update(true));
        assert_eq!(h.scale, 1024.0);
        assert!(!h.update(true));
        assert_eq!((h.scale, h.skipped), (512.0, 2));
        // The floor holds.
        let mut m = LossScaler::dynamic(LossScaleConfig {
            initial_scale: 2.0,
            hysteresis: 1,
            ..LossScaleConfig::default()
        });
        for _ in 0..5 {
            m.update(true);
        }
        assert_eq!(m.scale, 1.0);
        // Fixed: skips but never changes.
        let mut f = LossScaler::fixed();
        assert!(!f.update(true));
        for _ in 0..5000 {
            f.update(false);
        }
        assert_eq!((f.scale, f.skipped), (1.0, 1));
    }
}
