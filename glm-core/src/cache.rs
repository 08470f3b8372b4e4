//! KV cache for incremental decoding (SAT "mem_kv"): per layer the keys AFTER rotary and the
//! values, concatenated along the sequence on every call.

use burn::tensor::{backend::Backend, Int, Tensor};

/// Cached keys and values of one layer.
///
/// # Shapes
/// - `k`, `v`: `[batch, heads, cached_len, head_dim]`
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Post-rotary keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

/// The KV cache of a whole model: one [`LayerKv`] per layer once the first call has run.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batch size of the cached entries (`None` when empty).
    pub fn batch_size(&self) -> Option<usize> {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|l| l.k.dims()[0])
    }

    /// The cache of layer `layer`, if filled.
    pub fn layer(&self, layer: usize) -> Option<&LayerKv<B>> {
        self.layers.get(layer).and_then(|l| l.as_ref())
    }

    /// Appends new keys/values of `layer` and returns the full (cached + new) keys and values.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some(old) => (
                Tensor::cat(vec![old.k, k], 2),
                Tensor::cat(vec![old.v, v], 2),
            ),
            None => (k, v),
        };
        self.layers[layer] = Some(LayerKv {
            k: k.clone(),
            v: v.clone(),
        });
        (k, v)
    }

    /// Keeps the batch rows `indices` (in that order), e.g. the parent beams of beam search.
    ///
    /// # Shapes
    /// - `indices`: `[new_batch]`
    pub fn select_batch(&mut self, indices: Tensor<B, 1, Int>) {
        for kv in self.layers.iter_mut().flatten() {
            kv.k = kv.k.clone().select(0, indices.clone());
            kv.v = kv.v.clone().select(0, indices.clone());
        }
    }

    /// Layer `layer` in SAT's `mem_kv` layout: `[batch, cached_len, 2·hidden]`, last index
    /// `kv·hidden + head·head_dim + d` (kv 0 = key, 1 = value).
    pub fn sat_mem_kv(&self, layer: usize) -> Option<Tensor<B, 3>> {
        let kv = self.layer(layer)?;
        let [batch, heads, len, head_dim] = kv.k.dims();
        let flat = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([batch, len, heads * head_dim]);
        Some(Tensor::cat(vec![flat(kv.k.clone()), flat(kv.v.clone())], 2))
    }
}
