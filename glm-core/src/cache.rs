//! KV cache for incremental decoding (SAT "mem_kv"): per layer the keys AFTER rotary and the
//! values, concatenated along the sequence on every call.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::error::{Error, Result};

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

    /// Keeps the batch rows `indices` (in that order, repeats allowed), e.g. the parent beams of
    /// beam search. An empty list or an index ≥ the cached batch size is a typed error (checked on
    /// the host; the cache is then unchanged). On an empty cache only the list is checked.
    pub fn select_batch(&mut self, indices: &[usize]) -> Result<()> {
        if indices.is_empty() {
            return Err(Error::InvalidInput(
                "select_batch: no rows to keep (empty index list)".into(),
            ));
        }
        let Some(first) = self.layers.iter().flatten().next() else {
            return Ok(());
        };
        let batch = first.k.dims()[0];
        if let Some(&bad) = indices.iter().find(|&&i| i >= batch) {
            return Err(Error::InvalidInput(format!(
                "select_batch: row {bad} is outside the cached batch of {batch}"
            )));
        }
        let ids: Vec<i64> = indices
            .iter()
            .map(|&i| i64::try_from(i).unwrap_or(i64::MAX))
            .collect();
        let device = first.k.device();
        let indices =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [indices.len()]), &device);
        for kv in self.layers.iter_mut().flatten() {
            kv.k = kv.k.clone().select(0, indices.clone());
            kv.v = kv.v.clone().select(0, indices.clone());
        }
        Ok(())
    }

    /// Checks that this cache can take a step of `batch` rows of a model with `num_layers` layers
    /// of `heads` heads of size `head_dim`: no layer beyond `num_layers`, and either nothing
    /// cached or every layer cached with the same `[batch, heads, len, head_dim]` keys and values.
    pub fn check_compatible(
        &self,
        num_layers: usize,
        heads: usize,
        head_dim: usize,
        batch: usize,
    ) -> Result<()> {
        if self.layers.iter().skip(num_layers).any(Option::is_some) {
            return Err(Error::InvalidInput(format!(
                "the KV cache holds layers beyond the model's {num_layers}"
            )));
        }
        let filled = self.layers.iter().take(num_layers).flatten().count();
        if filled == 0 {
            return Ok(());
        }
        if filled != num_layers {
            return Err(Error::InvalidInput(format!(
                "the KV cache is partly filled ({filled} of {num_layers} layers)"
            )));
        }
        let len = self.len();
        let expected = [batch, heads, len, head_dim];
        for (layer, kv) in self.layers.iter().take(num_layers).flatten().enumerate() {
            if kv.k.dims() != expected || kv.v.dims() != expected {
                return Err(Error::InvalidInput(format!(
                    "KV cache layer {layer} holds keys {:?} / values {:?}, this step needs \
                     {expected:?}",
                    kv.k.dims(),
                    kv.v.dims()
                )));
            }
        }
        Ok(())
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
