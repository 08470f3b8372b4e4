//! f32 tensors of burn's `Flex` backend as host slices, for host-side code outside this crate
//! (glm-train's CPU training step): read in place, updated in place when the buffer is not
//! shared, and wrapped back into a burn tensor without a copy.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::downcast;

/// The contiguous f32 buffer of a `Flex` tensor.
#[derive(Debug, Clone)]
pub struct HostF32 {
    tensor: FlexTensor,
}

impl HostF32 {
    /// The buffer of `t` when its backend is `Flex` and it is an f32 float tensor (made
    /// contiguous, copying only when it is a strided view); `Err(t)` otherwise.
    pub fn from_tensor<B: Backend, const D: usize>(
        t: Tensor<B, D>,
    ) -> std::result::Result<Self, Tensor<B, D>> {
        if t.dtype() != DType::F32 {
            return Err(t);
        }
        let keep = t.clone();
        let flex = match t.into_primitive() {
            TensorPrimitive::Float(p) => downcast::<FlexTensor>(p),
            TensorPrimitive::QFloat(_) => None,
        };
        let Some(flex) = flex else {
            return Err(keep);
        };
        let tensor = if flex.is_contiguous() && flex.layout().start_offset() == 0 {
            flex
        } else {
            flex.to_contiguous()
        };
        Ok(Self { tensor })
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        // A contiguous f32 tensor at offset 0 (checked at construction) always has its slice.
        self.tensor.as_slice::<f32>().unwrap_or(&[])
    }

    /// Whether no other tensor shares the buffer ([`as_mut_slice`](Self::as_mut_slice) writes in
    /// place without a copy).
    pub fn is_unique(&self) -> bool {
        self.tensor.is_unique()
    }

    /// The values for writing: in place when no other tensor shares the buffer, a private copy
    /// first otherwise (copy on write).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let n = self.tensor.layout().num_elements();
        let all = self.tensor.storage_mut::<f32>();
        let end = n.min(all.len());
        &mut all[..end]
    }

    /// The buffer as a tensor of `B` (`None` when `B` is not `Flex`).
    pub fn into_tensor<B: Backend, const D: usize>(self) -> Option<Tensor<B, D>> {
        let prim = downcast::<B::FloatTensorPrimitive>(self.tensor)?;
        Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
    }

    /// `values` as a 1-D buffer (no copy).
    ///
    /// # Shapes
    /// - `values`: `[n]`
    pub fn from_vec(values: Vec<f32>) -> Self {
        let n = values.len();
        Self {
            tensor: FlexTensor::from_data(TensorData::new(values, [n])),
        }
    }

    /// `values` as an f32 tensor of `B` of the given shape, without a copy (`None` when `B` is
    /// not `Flex` or the shape does not hold `values.len()` elements).
    ///
    /// # Shapes
    /// - `values`: `shape.iter().product()` elements, row-major
    pub fn tensor_from_vec<B: Backend, const D: usize>(
        values: Vec<f32>,
        shape: [usize; D],
    ) -> Option<Tensor<B, D>> {
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        if n != values.len() {
            return None;
        }
        let tensor = FlexTensor::from_data(TensorData::new(values, shape));
        Self { tensor }.into_tensor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn buffers_round_trip_and_copy_on_write() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let device = Default::default();
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let t = HostF32::tensor_from_vec::<Flex, 2>(values.clone(), [3, 4]).ok_or("flex")?;
        let shared = t.clone();
        let mut host = HostF32::from_tensor(t).map_err(|_| "flex f32")?;
        assert_eq!(host.as_slice(), &values[..]);
        host.as_mut_slice()[0] = 9.0;
        let back: Tensor<Flex, 2> = host.into_tensor().ok_or("flex")?;
        let back: Vec<f32> = back.into_data().to_vec().map_err(|_| "f32")?;
        assert_eq!(back[0], 9.0);
        assert_eq!(back[1..], values[1..]);
        // The other tensor sharing the buffer kept its values.
        let old: Vec<f32> = shared.into_data().to_vec().map_err(|_| "f32")?;
        assert_eq!(old, values);
        // A strided view is made contiguous.
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [3, 4]), &device);
        let host = HostF32::from_tensor(t.transpose()).map_err(|_| "flex f32")?;
        assert_eq!(host.as_slice()[..3], [0.0, 2.0, 4.0]);
        assert!(HostF32::tensor_from_vec::<Flex, 2>(values, [5, 4]).is_none());
        Ok(())
    }
}
