//! The reference path: dequantize the whole matrix with generic burn tensor ops, then matmul.
//! Slow (it materialises an f32 `[out, in]` matrix per call) but obviously right, and it runs on
//! every backend, so the fused kernels are tested against it.

use burn::tensor::{backend::Backend, DType, ElementConversion, Int, Tensor};

use crate::scheme::QuantScheme;
use crate::weight::QuantLayout;

/// Signed value of the low `bits` bits of `x` (x holds an unsigned field in `[0, 2^bits)`).
fn sign_extend<B: Backend, const D: usize>(x: Tensor<B, D, Int>, bits: u32) -> Tensor<B, D, Int> {
    let half = 1i64 << (bits - 1);
    let full = 1i64 << bits;
    let negative = x.clone().greater_equal_elem(half).int();
    x - negative * full
}

/// `f16(q · scale)` as f32 `[out, in]` from packed words `[out, words]` and scales `[shards, out]`.
///
/// # Shapes
/// - `packed`: `[out, words_per_row]` I32, `scales`: `[shards, out]` → `[out, in]` F32
pub fn dequantize<B: Backend>(
    packed: Tensor<B, 2, Int>,
    scales: Tensor<B, 2>,
    layout: QuantLayout,
) -> Tensor<B, 2> {
    let [out, words] = packed.dims();
    let device = packed.device();
    if out == 0 || layout.in_features == 0 {
        return Tensor::zeros([out, layout.in_features], (&device, DType::F32));
    }
    // Little-endian bytes of every word, unsigned: [out, 4·words].
    let bytes: Vec<Tensor<B, 2, Int>> = (0..4)
        .map(|b| {
            packed
                .clone()
                .bitwise_right_shift_scalar((8 * b).elem())
                .bitwise_and_scalar(0xFF.elem())
        })
        .collect();
    let bytes = Tensor::stack::<3>(bytes, 2).reshape([out, 4 * words]);
    let values = match layout.scheme {
        QuantScheme::Int8 => sign_extend(bytes, 8),
        QuantScheme::Int4 => {
            let hi = sign_extend(bytes.clone().bitwise_right_shift_scalar(4.elem()), 4);
            let lo = sign_extend(bytes.bitwise_and_scalar(0x0F.elem()), 4);
            // Even column = high nibble.
            Tensor::stack::<3>(vec![hi, lo], 2).reshape([out, 8 * words])
        }
    };
    let q = values
        .narrow(1, 0, layout.in_features)
        .float()
        .cast(DType::F32);
    let shards = layout.shards;
    let per_shard = layout.cols_per_shard();
    let scales = scales
        .cast(DType::F32)
        .transpose()
        .reshape([out, shards, 1]);
    let w = q.reshape([out, shards, per_shard]) * scales;
    // q·scale is exact in f32 (≤ 8-bit × 11-bit); rounding to fp16 reproduces the half multiply.
    w.reshape([out, layout.in_features])
        .cast(DType::F16)
        .cast(DType::F32)
}
