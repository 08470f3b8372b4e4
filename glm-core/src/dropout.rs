//! Training-mode dropout with host-generated, per-sample masks (spec §8: dropout 0.1 on the
//! embedding output, the attention probabilities, the attention output and the MLP output).
//!
//! Masks come from a counter-based hash of `(sample seed, site, element)`, not from the backend's
//! global RNG: the same sample gets the same mask whether it runs alone, in a bigger batch, in
//! another micro-batch or on another data-parallel replica, and a resumed run draws exactly the
//! masks of an uninterrupted one.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Dropout probabilities plus the per-sample mask stream of one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element of the hidden stream (embedding, attention output, MLP
    /// output).
    pub hidden: f64,
    /// Probability of zeroing an attention probability.
    pub attention: f64,
    row_seeds: Vec<u64>,
    site: u64,
}

impl Dropout {
    /// No dropout (the inference behaviour).
    pub fn disabled() -> Self {
        Self {
            hidden: 0.0,
            attention: 0.0,
            row_seeds: Vec::new(),
            site: 0,
        }
    }

    /// Dropout with the given probabilities; `row_seeds[b]` seeds the masks of batch row `b`.
    pub fn new(hidden: f64, attention: f64, row_seeds: Vec<u64>) -> Self {
        Self {
            hidden,
            attention,
            row_seeds,
            site: 0,
        }
    }

    /// Whether any dropout is applied.
    pub fn is_active(&self) -> bool {
        self.hidden > 0.0 || self.attention > 0.0
    }

    /// Applies hidden-stream dropout.
    ///
    /// # Shapes
    /// - `x`: `[batch, ...]` → same
    pub fn hidden<B: Backend, const D: usize>(&mut self, x: Tensor<B, D>) -> Tensor<B, D> {
        let p = self.hidden;
        self.apply(x, p)
    }

    /// Applies attention-probability dropout.
    ///
    /// # Shapes
    /// - `x`: `[batch, ...]` → same
    pub fn attention<B: Backend, const D: usize>(&mut self, x: Tensor<B, D>) -> Tensor<B, D> {
        let p = self.attention;
        self.apply(x, p)
    }

    /// Zeroes each element with probability `p` and scales the rest by `1/(1-p)`; every call is a
    /// new "site" with fresh masks. Rows beyond `row_seeds` reuse seeds derived from the row index.
    ///
    /// # Shapes
    /// - `x`: `[batch, ...]` → same
    pub fn apply<B: Backend, const D: usize>(&mut self, x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
        if p <= 0.0 {
            return x;
        }
        let site = self.site;
        self.site += 1;
        let dims = x.dims();
        let batch = dims[0].max(1);
        let numel: usize = dims.iter().product();
        let per_row = numel / batch;
        let scale = if p >= 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - p)) as f32
        };
        // Compare the top 53 bits of the hash with p.
        let threshold = (p.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
        let mut values = Vec::with_capacity(numel);
        for b in 0..batch {
            let row_seed = self
                .row_seeds
                .get(b)
                .copied()
                .unwrap_or_else(|| splitmix64(b as u64 ^ 0xA076_1D64_78BD_642F));
            let base = splitmix64(row_seed ^ splitmix64(site.wrapping_add(0x9E37_79B9_7F4A_7C15)));
            for i in 0..per_row {
                let h = splitmix64(base.wrapping_add(i as u64));
                values.push(if (h >> 11) < threshold { 0.0 } else { scale });
            }
        }
        let device = x.device();
        let mask =
            Tensor::<B, D>::from_data(TensorData::new(values, dims), &device).cast(x.dtype());
        x * mask
    }
}

/// SplitMix64 finaliser (Steele et al.): a fast, well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn masks_are_per_row_and_scaled() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([2, 10_000], &device);
        let mut d = Dropout::new(0.1, 0.0, vec![7, 8]);
        let y: Vec<f32> = d.hidden(x.clone()).into_data().to_vec().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!((1700..2300).contains(&zeros), "{zeros} zeros of 20000");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Row 1 alone with seed 8 gets the same mask as row 1 of the pair.
        let mut single = Dropout::new(0.1, 0.0, vec![8]);
        let y1: Vec<f32> = single
            .hidden(x.narrow(0, 1, 1))
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(&y[10_000..], &y1[..]);
        // No dropout is the identity.
        let mut off = Dropout::disabled();
        let z: Vec<f32> = off
            .hidden(Tensor::<Flex, 1>::ones([4], &device))
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(z, vec![1.0; 4]);
    }
}
