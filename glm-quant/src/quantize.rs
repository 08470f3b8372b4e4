//! The host-side, bit-exact quantizer: [`QuantizedMatrix`] reproduces GLM-130B's
//! `quantization/__init__.py` + `cuda/quantization.cu` (and `tools/convert_tp.py`) for one weight.
//!
//! With `w16 = f16(w)` (the original quantizes the fp16 model), for every row `r` and shard `s`:
//! ```text
//! scale[s, r] = f16( max_{j in shard s} |w16[r, j]| / (2^(bits-1) - 1) )   fp16 division
//! q[r, j]     = round_half_to_even( f16( w16[r, j] / scale[s(j), r] ) )  quotient rounded to fp16 FIRST
//! w_deq[r, j] = f16( q[r, j] * scale[s(j), r] )                          fp16 multiply
//! ```
//! The fp16 "division" of torch is an f32 division rounded to fp16, which is what is done here.
//!
//! (Over 400 lines: the bit-exact host quantizer (fp16 scales, fp16 quotient, round-half-to-even, per-shard scales) and its checkpoint tensors.)

use burn::tensor::{DType, TensorData};
use half::f16;
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::pack::{pack_pair, unpack_int4_rows};
use crate::scheme::QuantScheme;

/// One quantized weight matrix on the host, in the checkpoint layout.
///
/// # Shapes
/// - weight bytes: `[out, row_bytes]` with `row_bytes = in` (int8) or `ceil(in/2)` (int4 packed)
/// - scales: `[shards, out]` (`shards = 1` except for row-parallel layers quantized per
///   tensor-parallel shard); shard `s` covers input columns `[s·in/shards, (s+1)·in/shards)`
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    scheme: QuantScheme,
    out_features: usize,
    in_features: usize,
    shards: usize,
    data: Vec<u8>,
    scales: Vec<f16>,
}

/// `f16(q · scale)` as an f32: the dequantized weight exactly as the original's fp16 multiply
/// (the product of a ≤8-bit integer and an fp16 value is exact in f32, so one rounding).
#[inline]
pub fn dequantize_value(q: i8, scale: f16) -> f32 {
    f16::from_f32(q as f32 * scale.to_f32()).to_f32()
}

/// The row scale of a slice of fp16 weights: `f16(max|w| / (2^(bits-1)-1))`.
#[inline]
pub fn row_scale(row: &[f16], scheme: QuantScheme) -> f16 {
    let absmax = row.iter().fold(0f32, |m, w| m.max(w.to_f32().abs()));
    f16::from_f32(absmax / scheme.max_q() as f32)
}

/// `round_half_to_even(f16(w / scale))` as an integer (0 when the scale is 0).
#[inline]
pub fn quantize_value(w: f16, scale: f16) -> i8 {
    let quotient = f16::from_f32(w.to_f32() / scale.to_f32()).to_f32();
    if quotient.is_finite() {
        // No clamp in the original: |quotient| ≤ 2^(b-1)-1 + a rounding ulp, never ≥ x.5 beyond it.
        round_ties_even(quotient) as i8
    } else {
        0
    }
}

/// `x.round_ties_even()` without a libm call (the baseline x86-64 target has no `roundss`):
/// adding and subtracting 1.5·2²³ rounds any |x| < 2²² to an integer under the default
/// round-to-nearest-even mode (the sum lies in [2²³, 2²⁴), where the spacing is 1); larger values
/// (never an fp16 quotient) take the library call. The sign of a zero result may differ, which an
/// integer cast does not see.
#[inline]
pub(crate) fn round_ties_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + SHIFT) - SHIFT
    } else {
        x.round_ties_even()
    }
}

fn check_shards(
    name: &str,
    scheme: QuantScheme,
    in_features: usize,
    shards: usize,
) -> Result<usize> {
    let bad = |extra: &str| QuantError::BadShards {
        tensor: name.to_string(),
        in_features,
        shards,
        extra: extra.to_string(),
    };
    if shards == 0 || !in_features.is_multiple_of(shards) {
        return Err(bad(""));
    }
    let per_shard = in_features / shards;
    if scheme == QuantScheme::Int4 && shards > 1 && !per_shard.is_multiple_of(2) {
        return Err(bad(
            " (int4 needs an even number of columns per shard: each shard is packed on its own)",
        ));
    }
    Ok(per_shard)
}

impl QuantizedMatrix {
    /// Quantizes a row-major fp16 `[out, in]` weight with `shards` column groups (1 unless the
    /// weight is row-parallel and a tensor-parallel degree is emulated).
    ///
    /// # Shapes
    /// - `weight`: `out * in` values, row-major `[out, in]`
    ///
    /// # Errors
    /// Wrong length, a shard count that does not divide `in` (int4: into even chunks), or a
    /// non-finite weight — all naming `name`.
    pub fn quantize_f16(
        name: &str,
        weight: &[f16],
        out_features: usize,
        in_features: usize,
        shards: usize,
        scheme: QuantScheme,
    ) -> Result<Self> {
        if weight.len() != out_features * in_features {
            return Err(QuantError::ShapeMismatch {
                tensor: name.to_string(),
                expected: vec![out_features, in_features],
                found: vec![weight.len()],
            });
        }
        let per_shard = check_shards(name, scheme, in_features, shards)?;
        if let Some(i) = weight.iter().position(|w| !w.is_finite()) {
            return Err(QuantError::NonFinite {
                tensor: name.to_string(),
                row: i / in_features,
                col: i % in_features,
                value: weight[i].to_f32(),
            });
        }
        let row_bytes = scheme.row_bytes(in_features);
        let mut data = vec![0u8; out_features * row_bytes];
        // Scales computed row-major [out, shards] first, transposed to [shards, out] below.
        let mut scales_rs = vec![f16::ZERO; out_features * shards];
        if out_features > 0 && in_features > 0 {
            data.par_chunks_mut(row_bytes)
                .zip(scales_rs.par_chunks_mut(shards))
                .zip(weight.par_chunks(in_features))
                .for_each(|((bytes, scales), row)| {
                    let mut q = vec![0i8; in_features];
                    for (s, scale) in scales.iter_mut().enumerate() {
                        let cols = s * per_shard..(s + 1) * per_shard;
                        *scale = row_scale(&row[cols.clone()], scheme);
                        for j in cols {
                            q[j] = quantize_value(row[j], *scale);
                        }
                    }
                    match scheme {
                        QuantScheme::Int8 => {
                            for (b, v) in bytes.iter_mut().zip(&q) {
                                *b = *v as u8;
                            }
                        }
                        QuantScheme::Int4 => {
                            for (k, b) in bytes.iter_mut().enumerate() {
                                let odd = q.get(2 * k + 1).copied().unwrap_or(0);
                                *b = pack_pair(q[2 * k], odd);
                            }
                        }
                    }
                });
        }
        let mut scales = vec![f16::ZERO; out_features * shards];
        for r in 0..out_features {
            for s in 0..shards {
                scales[s * out_features + r] = scales_rs[r * shards + s];
            }
        }
        Ok(Self {
            scheme,
            out_features,
            in_features,
            shards,
            data,
            scales,
        })
    }

    /// Quantizes a float tensor `[out, in]` (F32 / F16 / BF16 / F64): the values are first rounded
    /// to fp16, as the original pipeline runs `model.half()` before quantizing.
    ///
    /// # Shapes
    /// - `weight`: `[out, in]`
    pub fn quantize(
        name: &str,
        weight: &TensorData,
        shards: usize,
        scheme: QuantScheme,
    ) -> Result<Self> {
        let [out, inp] = matrix_shape(name, &weight.shape)?;
        let w16 = to_f16_vec(name, weight)?;
        Self::quantize_f16(name, &w16, out, inp, shards, scheme)
    }

    /// Wraps already-quantized checkpoint tensors (`<linear>.weight` I8/U8 and
    /// `<linear>.weight_scale` F16, or F32/F64 holding fp16 values).
    ///
    /// `scale` is `[out]` (one shard) or `[shards, out]`; `in_features` is needed because an int4
    /// row of `ceil(in/2)` bytes does not tell whether `in` is odd.
    ///
    /// # Shapes
    /// - `weight`: `[out, row_bytes]`, `scale`: `[out]` or `[shards, out]`
    pub fn from_checkpoint(
        name: &str,
        weight: &TensorData,
        scale: &TensorData,
        scheme: QuantScheme,
        in_features: usize,
    ) -> Result<Self> {
        let [out, row_bytes] = matrix_shape(name, &weight.shape)?;
        if !matches!(weight.dtype, DType::I8 | DType::U8) {
            return Err(QuantError::DtypeMismatch {
                tensor: name.to_string(),
                expected: "I8 (or U8)".into(),
                found: format!("{:?}", weight.dtype),
            });
        }
        if row_bytes != scheme.row_bytes(in_features) {
            return Err(QuantError::ShapeMismatch {
                tensor: name.to_string(),
                expected: vec![out, scheme.row_bytes(in_features)],
                found: weight.shape.to_vec(),
            });
        }
        let scale_name = format!("{name}{}", crate::scheme::SCALE_SUFFIX);
        let shards = match scale.shape.as_slice() {
            [n] if *n == out => 1,
            [s, n] if *n == out && *s > 0 => *s,
            other => {
                return Err(QuantError::ShapeMismatch {
                    tensor: scale_name,
                    expected: vec![out],
                    found: other.to_vec(),
                })
            }
        };
        check_shards(name, scheme, in_features, shards)?;
        let scales = to_f16_vec(&scale_name, scale)?;
        Self::from_parts(
            name,
            scheme,
            out,
            in_features,
            shards,
            weight.as_bytes().to_vec(),
            scales,
        )
    }

    /// Builds a matrix from raw parts (checkpoint bytes `[out, row_bytes]`, scales `[shards, out]`).
    pub fn from_parts(
        name: &str,
        scheme: QuantScheme,
        out_features: usize,
        in_features: usize,
        shards: usize,
        data: Vec<u8>,
        scales: Vec<f16>,
    ) -> Result<Self> {
        check_shards(name, scheme, in_features, shards)?;
        let row_bytes = scheme.row_bytes(in_features);
        if data.len() != out_features * row_bytes {
            return Err(QuantError::ShapeMismatch {
                tensor: name.to_string(),
                expected: vec![out_features, row_bytes],
                found: vec![data.len()],
            });
        }
        if scales.len() != shards * out_features {
            return Err(QuantError::ShapeMismatch {
                tensor: format!("{name}{}", crate::scheme::SCALE_SUFFIX),
                expected: vec![shards, out_features],
                found: vec![scales.len()],
            });
        }
        Ok(Self {
            scheme,
            out_features,
            in_features,
            shards,
            data,
            scales,
        })
    }

    /// Scheme, sizes and shard count.
    pub fn layout(&self) -> crate::weight::QuantLayout {
        crate::weight::QuantLayout {
            scheme: self.scheme,
            out_features: self.out_features,
            in_features: self.in_features,
            shards: self.shards,
        }
    }

    /// Scales as f32 values, `[shards, out]` (what the kernels take).
    pub fn scales_f32(&self) -> Vec<f32> {
        self.scales.iter().map(|s| s.to_f32()).collect()
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// Output features (rows).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input features (columns).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of column groups with their own scales.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Checkpoint bytes, row-major `[out, row_bytes]` (int8 values, or packed int4).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Scales, `[shards, out]` row-major.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The integer values, `[out, in]` row-major (int4 unpacked and sign-extended).
    pub fn values(&self) -> Vec<i8> {
        match self.scheme {
            QuantScheme::Int8 => bytemuck::cast_slice(&self.data).to_vec(),
            // The data length was checked on construction: every row is whole.
            QuantScheme::Int4 => unpack_int4_rows(&self.data, self.in_features),
        }
    }

    /// The dequantized weight `f16(q · scale)` as f32, `[out, in]` row-major (the reference).
    pub fn dequantize(&self) -> Vec<f32> {
        let values = self.values();
        let per_shard = self.in_features / self.shards;
        let mut out = vec![0f32; values.len()];
        if self.in_features == 0 {
            return out;
        }
        out.par_chunks_mut(self.in_features)
            .zip(values.par_chunks(self.in_features))
            .enumerate()
            .for_each(|(r, (dst, q))| {
                for (j, (d, &v)) in dst.iter_mut().zip(q).enumerate() {
                    *d = dequantize_value(v, self.scales[(j / per_shard) * self.out_features + r]);
                }
            });
        out
    }

    /// The weight tensor as stored in a checkpoint: I8 `[out, row_bytes]`.
    pub fn weight_data(&self) -> TensorData {
        TensorData::from_bytes_vec(
            self.data.clone(),
            vec![self.out_features, self.scheme.row_bytes(self.in_features)],
            DType::I8,
        )
    }

    /// The scale tensor as stored in a checkpoint: F16 `[out]` (one shard) or `[shards, out]`.
    pub fn scale_data(&self) -> TensorData {
        let shape = if self.shards == 1 {
            vec![self.out_features]
        } else {
            vec![self.shards, self.out_features]
        };
        TensorData::new(self.scales.clone(), shape)
    }

    /// Bytes of the quantized weight plus its fp16 scales.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + 2 * self.scales.len()
    }
}

fn matrix_shape(name: &str, shape: &[usize]) -> Result<[usize; 2]> {
    match shape {
        [a, b] => Ok([*a, *b]),
        other => Err(QuantError::ShapeMismatch {
            tensor: name.to_string(),
            expected: vec![0, 0],
            found: other.to_vec(),
        }),
    }
}

/// Any float tensor → fp16 values (round-to-nearest-even, like torch's `.half()`). Reads the
/// little-endian bytes directly, so the buffer's alignment does not matter.
fn to_f16_vec(name: &str, data: &TensorData) -> Result<Vec<f16>> {
    let bytes = data.as_bytes();
    Ok(match data.dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_f32(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| {
                f16::from_f64(f64::from_le_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]))
            })
            .collect(),
        _ => {
            return Err(QuantError::DtypeMismatch {
                tensor: name.to_string(),
                expected: "a float dtype (F16, BF16, F32, F64)".into(),
                found: format!("{:?}", data.dtype),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rounding_is_the_library_rounding_on_every_fp16_value_and_on_ties() {
        let mut checked = 0;
        let every_f16 = (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32());
        let ties = (-400..=400).map(|k| k as f32 + 0.5);
        let large = [
            4_194_303.5f32,
            4_194_304.5,
            -4_194_304.5,
            1e9,
            -1e9,
            8_388_609.0,
        ];
        for x in every_f16.chain(ties).chain(large).filter(|x| x.is_finite()) {
            // `==` treats -0 and +0 as equal: the one allowed difference.
            assert!(round_ties_even(x) == x.round_ties_even(), "{x}");
            checked += 1;
        }
        assert!(checked > 60_000);
    }
}
