//! INT4 packing exactly as GLM-130B's `int4WeightCompression` / `cuda/quantization.cu`:
//! byte `k` of a row holds `(q[2k] << 4) | (q[2k+1] & 0x0F)` — the EVEN column in the HIGH nibble,
//! two's-complement nibbles, sign-extended on unpacking.
//!
//! Rows with an odd number of columns (not produced by the original, supported here) pad the
//! last byte's low nibble with 0.

use crate::error::{QuantError, Result};

/// Packs two int4 values into one byte (even column high, odd column low).
#[inline]
pub fn pack_pair(even: i8, odd: i8) -> u8 {
    ((even as u8) << 4) | ((odd as u8) & 0x0F)
}

/// The two values of a packed byte, sign-extended: `(even, odd) = (byte >> 4, (byte << 4) >> 4)`.
#[inline]
pub fn unpack_pair(byte: u8) -> (i8, i8) {
    ((byte as i8) >> 4, ((byte << 4) as i8) >> 4)
}

/// Packs a row-major `[rows, cols]` matrix of int4 values into `[rows, ceil(cols/2)]` bytes.
///
/// # Shapes
/// - `values`: `rows * cols` values in `[-8, 7]` → `rows * ceil(cols/2)` bytes
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `values.len() != rows * cols`,
/// [`QuantError::ValueOutOfRange`] for a value outside `[-8, 7]`.
pub fn pack_int4(values: &[i8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(QuantError::ShapeMismatch {
            tensor: "int4 values".into(),
            expected: vec![rows, cols],
            found: vec![values.len()],
        });
    }
    if let Some((index, &v)) = values
        .iter()
        .enumerate()
        .find(|(_, &v)| !(-8..=7).contains(&v))
    {
        return Err(QuantError::ValueOutOfRange {
            tensor: "int4 values".into(),
            index,
            value: v as i32,
            scheme: "int4",
        });
    }
    let row_bytes = cols.div_ceil(2);
    let mut out = Vec::with_capacity(rows * row_bytes);
    for row in values.chunks_exact(cols.max(1)).take(rows) {
        let mut pairs = row.chunks_exact(2);
        for p in &mut pairs {
            out.push(pack_pair(p[0], p[1]));
        }
        if let [last] = pairs.remainder() {
            out.push(pack_pair(*last, 0));
        }
    }
    Ok(out)
}

/// Unpacks `[rows, ceil(cols/2)]` bytes into `[rows, cols]` sign-extended int4 values.
///
/// # Shapes
/// - `packed`: `rows * ceil(cols/2)` bytes → `rows * cols` values in `[-8, 7]`
///
/// # Errors
/// [`QuantError::ShapeMismatch`] when `packed.len() != rows * ceil(cols/2)`.
pub fn unpack_int4(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    let row_bytes = cols.div_ceil(2);
    if rows.checked_mul(row_bytes) != Some(packed.len()) {
        return Err(QuantError::ShapeMismatch {
            tensor: "packed int4".into(),
            expected: vec![rows, row_bytes],
            found: vec![packed.len()],
        });
    }
    Ok(unpack_int4_rows(packed, cols))
}

/// Unpacks every whole row of `ceil(cols/2)` bytes in `packed` into `cols` sign-extended int4
/// values (a trailing partial row is ignored; [`unpack_int4`] checks the length first).
pub(crate) fn unpack_int4_rows(packed: &[u8], cols: usize) -> Vec<i8> {
    let row_bytes = cols.div_ceil(2);
    if row_bytes == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity((packed.len() / row_bytes).saturating_mul(cols));
    for row in packed.chunks_exact(row_bytes) {
        for (k, &b) in row.iter().enumerate() {
            let (even, odd) = unpack_pair(b);
            out.push(even);
            if 2 * k + 1 < cols {
                out.push(odd);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_and_sign() {
        assert_eq!(pack_pair(1, 2), 0x12);
        assert_eq!(pack_pair(-1, 7), 0xF7);
        assert_eq!(pack_pair(-8, -7), 0x89);
        assert_eq!(unpack_pair(0xF7), (-1, 7));
        assert_eq!(unpack_pair(0x89), (-8, -7));
    }

    #[test]
    fn odd_columns_pad_low_nibble() {
        let packed = pack_int4(&[3, -2, 5, 1, 2, 3], 2, 3).unwrap();
        assert_eq!(packed, vec![0x3E, 0x50, 0x12, 0x30]);
        assert_eq!(unpack_int4(&packed, 2, 3).unwrap(), vec![3, -2, 5, 1, 2, 3]);
    }

    #[test]
    fn rejects_out_of_range_and_bad_lengths() {
        assert!(matches!(
            pack_int4(&[8, 0], 1, 2),
            Err(QuantError::ValueOutOfRange { value: 8, .. })
        ));
        assert!(matches!(
            pack_int4(&[0, 0, 0], 1, 2),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            unpack_int4(&[0, 0, 0], 1, 2),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn absurd_shapes_are_errors_not_overflows() {
        assert!(matches!(
            pack_int4(&[0, 0], usize::MAX, 2),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            unpack_int4(&[0, 0], usize::MAX, 4),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}
