//! Rotary position embedding of GLM-130B (SAT `rotary_embeddings.py`, GPT-NeoX "rotate half").
//!
//! The full head dimension is rotated; dimension `d < hn/2` is paired with `d + hn/2`. Positions
//! are looked up in cos/sin tables, so arbitrary (repeated, non-monotone) position ids work.
//!
//! Why fp16 tables by default: SAT builds `inv_freq`, the angles and cos/sin in fp16 (spec §2.6),
//! and fp32 tables move the fixtures' logits by ~6e-3 (more at long positions, where fp16's spacing
//! is 1.0). [`RotaryPrecision::Fp32`] gives the mathematically exact tables (FasterTransformer's).

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use half::f16;
use serde::{Deserialize, Serialize};

use crate::config::limits;
use crate::error::{Error, Result};

/// How the cos/sin tables are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RotaryPrecision {
    /// Bit-exact with SAT 0.2.12: fp16 `inv_freq`, fp16 angles, fp16 cos/sin (the default).
    #[default]
    Fp16Sat,
    /// Exact fp32 `inv_freq`, angles and cos/sin (what FasterTransformer computes).
    Fp32,
    /// SAT after `model.float()`: the fp16-rounded `inv_freq` buffer, fp32 angles and cos/sin.
    Fp32SatBuffer,
}

impl RotaryPrecision {
    /// How many positions (`0..n`) tables of this precision can hold: `Some(65505)` for
    /// [`Fp16Sat`](Self::Fp16Sat), whose fp16 position ids end at 65504, the largest finite fp16
    /// (past it the angle is infinite and cos/sin are NaN); `None` (no limit of its own) for the
    /// fp32 modes.
    pub fn max_positions(self) -> Option<usize> {
        match self {
            RotaryPrecision::Fp16Sat => Some(f16::MAX.to_f32() as usize + 1),
            RotaryPrecision::Fp32 | RotaryPrecision::Fp32SatBuffer => None,
        }
    }
}

/// Host-side cos/sin tables, `[max_positions, head_dim]` row-major, row = position id.
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryTables {
    /// Rows of the tables (positions 0..max_positions).
    pub max_positions: usize,
    /// Rotated dimension (= head size).
    pub dim: usize,
    /// `inv_freq`, `dim/2` values (fp16-rounded in [`RotaryPrecision::Fp16Sat`]).
    pub inv_freq: Vec<f32>,
    /// cos table, `[max_positions, dim]`.
    pub cos: Vec<f32>,
    /// sin table, `[max_positions, dim]`.
    pub sin: Vec<f32>,
}

impl RotaryTables {
    /// Builds the tables for positions `0..max_positions` of a `dim`-wide rotation.
    ///
    /// Errors (before allocating) when `dim` is zero or odd, the base is not a finite number > 1,
    /// the tables would exceed [`limits::MAX_TENSOR_ELEMENTS`], or `precision` cannot represent
    /// the positions (fp16 tables past position 65504, see [`RotaryPrecision::max_positions`]):
    /// the tables never hold NaN or infinity.
    pub fn new(
        dim: usize,
        max_positions: usize,
        base: f64,
        precision: RotaryPrecision,
    ) -> Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(Error::InvalidConfig {
                field: "num_attention_heads",
                reason: format!("rotary needs a positive even head size, got {dim}"),
            });
        }
        if !(base.is_finite() && base > 1.0 && base <= f64::from(f32::MAX)) {
            return Err(Error::InvalidConfig {
                field: "rotary_base",
                reason: format!("must be > 1 and a finite f32, got {base}"),
            });
        }
        if let Some(max) = precision.max_positions().filter(|&m| max_positions > m) {
            return Err(Error::InvalidConfig {
                field: "max_sequence_length",
                reason: format!(
                    "{max_positions} positions do not fit {precision:?} rotary tables (fp16 \
                     positions end at {}); choose RotaryPrecision::Fp32 or Fp32SatBuffer",
                    max - 1
                ),
            });
        }
        let elements = limits::tensor_elements("max_sequence_length", &[max_positions, dim])?;
        let half = dim / 2;
        // torch: 1 / base ** (arange(0, dim, 2).float() / dim), all in fp32.
        let inv_freq_f32: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        let inv_freq: Vec<f32> = match precision {
            RotaryPrecision::Fp16Sat | RotaryPrecision::Fp32SatBuffer => inv_freq_f32
                .iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect(),
            RotaryPrecision::Fp32 => inv_freq_f32,
        };
        let mut cos = vec![0f32; elements];
        let mut sin = vec![0f32; elements];
        for p in 0..max_positions {
            for (i, &freq) in inv_freq.iter().enumerate() {
                let (c, s) = match precision {
                    RotaryPrecision::Fp16Sat => {
                        // t = fp16 arange; angle = f16(t * inv_freq) (exact product, one rounding).
                        let t = f16::from_f32(p as f32).to_f32();
                        let angle = f16::from_f32(t * freq).to_f32();
                        (
                            f16::from_f32(angle.cos()).to_f32(),
                            f16::from_f32(angle.sin()).to_f32(),
                        )
                    }
                    RotaryPrecision::Fp32 | RotaryPrecision::Fp32SatBuffer => {
                        let angle = p as f32 * freq;
                        (angle.cos(), angle.sin())
                    }
                };
                let row = p * dim;
                cos[row + i] = c;
                cos[row + i + half] = c;
                sin[row + i] = s;
                sin[row + i + half] = s;
            }
        }
        Ok(Self {
            max_positions,
            dim,
            inv_freq,
            cos,
            sin,
        })
    }

    /// Uploads the tables as `[max_positions, dim]` tensors of the given float dtype.
    pub fn to_device<B: Backend>(&self, device: &B::Device, dtype: DType) -> Rotary<B> {
        let shape = [self.max_positions, self.dim];
        let upload = |v: &Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(v.clone(), shape), device).cast(dtype)
        };
        // rotate_half as a matrix: (x·R)[j] = −x[j + half] for j < half, x[j − half] otherwise.
        let (d, half) = (self.dim, self.dim / 2);
        let mut r = vec![0f32; d * d];
        for j in 0..half {
            r[(j + half) * d + j] = -1.0;
            r[j * d + j + half] = 1.0;
        }
        Rotary {
            cos: upload(&self.cos),
            sin: upload(&self.sin),
            rotate_half: Tensor::<B, 2>::from_data(TensorData::new(r, [d, d]), device).cast(dtype),
        }
    }
}

/// Device-side rotary tables (constants: not parameters, never trained).
#[derive(Module, Debug)]
pub struct Rotary<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `[dim, dim]` signed permutation: `x·R = rotate_half(x)` exactly (one ±1 term per output).
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend> Rotary<B> {
    /// The cosine and sine tables, one row per position (each angle twice: `[θ | θ]`), as the
    /// model applies them; for host-side code that rotates on its own (glm-train's CPU step).
    ///
    /// # Shapes
    /// - output: `([max_positions, dim], [max_positions, dim])`
    pub fn tables(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.cos.clone(), self.sin.clone())
    }

    /// Rotates `x` by the angles of `position_ids`: the plain reference of the fast path
    /// ([`angles`](Self::angles) + [`apply_bshd`](Self::apply_bshd), which the model runs), written
    /// as the original (`x·cos + rotate_half(x)·sin` with `rotate_half` by narrow / negate / cat);
    /// a test checks they agree bit for bit.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]`
    /// - `position_ids`: `[batch, seq]` (values < max positions)
    /// - output: like `x`
    pub fn apply(&self, x: Tensor<B, 4>, position_ids: Tensor<B, 2, Int>) -> Tensor<B, 4> {
        let [batch, _heads, seq, dim] = x.dims();
        let flat = position_ids.reshape([batch * seq]);
        let cos = self
            .cos
            .clone()
            .select(0, flat.clone())
            .reshape([batch, 1, seq, dim]);
        let sin = self
            .sin
            .clone()
            .select(0, flat)
            .reshape([batch, 1, seq, dim]);
        let half = dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }

    /// The cos / sin rows of `position_ids`, repeated over `heads`: the operands of
    /// [`apply_bshd`](Self::apply_bshd), built once per layer call and shared by queries and keys.
    ///
    /// # Shapes
    /// - `position_ids`: `[batch, seq]` → each `[batch, seq, heads, dim]`
    pub fn angles(
        &self,
        position_ids: Tensor<B, 2, Int>,
        heads: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq] = position_ids.dims();
        let dim = self.cos.dims()[1];
        let flat = position_ids.reshape([batch * seq]);
        let rows = |t: &Tensor<B, 2>| {
            t.clone()
                .select(0, flat.clone())
                .reshape([batch, seq, 1, dim])
                .repeat_dim(2, heads)
        };
        (rows(&self.cos), rows(&self.sin))
    }

    /// Rotates `x` laid out as `[batch, seq, heads, dim]` (contiguous) by the angles of
    /// [`angles`](Self::angles): `x·cos + rotate_half(x)·sin`, the same operations in the same
    /// order as [`apply`](Self::apply) (bit-identical), but on same-shape contiguous operands.
    ///
    /// # Shapes
    /// - `x`, `cos`, `sin`: `[batch, seq, heads, dim]` → like `x`
    pub fn apply_bshd(
        &self,
        x: Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [batch, seq, heads, dim] = x.dims();
        let rotated = x
            .clone()
            .reshape([batch * seq * heads, dim])
            .matmul(self.rotate_half.clone())
            .reshape([batch, seq, heads, dim]);
        x * cos.clone() + rotated * sin.clone()
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn fast_rotary_equals_the_reference_bit_for_bit() {
        let device = Default::default();
        let (batch, heads, seq, dim, max) = (2, 3, 5, 8, 16);
        let tables = RotaryTables::new(dim, max, 10_000.0, RotaryPrecision::Fp16Sat)
            .unwrap()
            .to_device::<Flex>(&device, DType::F32);
        let x = Tensor::<Flex, 4>::random(
            [batch, heads, seq, dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let pos: Vec<i64> = vec![0, 1, 2, 3, 4, 7, 7, 7, 9, 15];
        let pos = Tensor::<Flex, 2, Int>::from_data(TensorData::new(pos, [batch, seq]), &device);
        let reference = tables.apply(x.clone(), pos.clone());
        let (cos, sin) = tables.angles(pos, heads);
        let fast = tables
            .apply_bshd(x.swap_dims(1, 2), &cos, &sin)
            .swap_dims(1, 2);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            reference.into_data().to_vec().unwrap(),
            fast.into_data().to_vec().unwrap(),
        );
        assert_eq!(a, b);
    }
}
