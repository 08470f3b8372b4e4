//! KV cache for incremental decoding (SAT "mem_kv"): per layer the keys AFTER rotary and the
//! values. Each layer's keys and values live in a buffer with room along the sequence; a step
//! writes its new rows in place (on the CPU backend directly into the uniquely owned buffer —
//! a buffer shared with a cloned cache is copied first, so no clone changes behind its back;
//! `slice_assign` on other backends) and attention reads a narrowed view of the filled part. Room grows geometrically when a step does not fit (amortised
//! O(1) copies per token); [`KvCache::reserve`] sizes it once for a known generation budget.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::error::{Error, Result};

/// Cached keys and values of one layer (views of the filled part).
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

/// One layer's buffers: `[batch, heads, capacity, head_dim]`, the first `len` positions filled.
#[derive(Debug, Clone)]
struct Slot<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> Slot<B> {
    fn view(&self) -> LayerKv<B> {
        LayerKv {
            k: self.k.clone().narrow(2, 0, self.len),
            v: self.v.clone().narrow(2, 0, self.len),
        }
    }

    fn capacity(&self) -> usize {
        self.k.dims()[2]
    }
}

/// The KV cache of a whole model: one [`LayerKv`] per layer once the first call has run.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<Slot<B>>>,
    /// Positions to make room for at the first allocation (0: just what the call needs).
    reserve: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            reserve: 0,
        }
    }

    /// Makes room for `positions` cached positions in all (so no step up to that length copies
    /// the cache): at the first call when the cache is empty, at once otherwise.
    pub fn reserve(&mut self, positions: usize) {
        self.reserve = self.reserve.max(positions);
        for slot in self.layers.iter_mut().flatten() {
            if slot.capacity() < positions {
                grow(slot, positions);
            }
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
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

    /// The cache of layer `layer` (views of the filled positions), if filled.
    pub fn layer(&self, layer: usize) -> Option<LayerKv<B>> {
        self.layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .map(Slot::view)
    }

    /// Appends new keys/values of `layer` and returns the full (cached + new) keys and values.
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, heads, new_len, head_dim]` → `[batch, heads, cached_len + new_len,
    ///   head_dim]` each
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let [batch, heads, new, head_dim] = k.dims();
        let mut slot = match self.layers[layer].take() {
            Some(slot) => slot,
            // No room asked for beyond this call: the new tensors are the buffers.
            None if self.reserve <= new => {
                let slot = Slot { k, v, len: new };
                let view = slot.view();
                self.layers[layer] = Some(slot);
                return (view.k, view.v);
            }
            None => {
                let (device, dtype) = (k.device(), k.dtype());
                let empty = || {
                    Tensor::<B, 4>::zeros([batch, heads, self.reserve, head_dim], &device)
                        .cast(dtype)
                };
                Slot {
                    k: empty(),
                    v: empty(),
                    len: 0,
                }
            }
        };
        let needed = slot.len + new;
        if slot.capacity() < needed {
            // Geometric growth: amortised O(1) copies per appended position.
            let grown = needed
                .max(slot.capacity() + slot.capacity() / 2 + 16)
                .max(self.reserve);
            grow(&mut slot, grown);
        }
        let at = slot.len;
        let put = |buffer: Tensor<B, 4>, rows: Tensor<B, 4>| {
            // In place on the CPU backend; `slice_assign` (a copy there) elsewhere.
            glm_quant::kernels::try_write_rows(buffer, at, rows).unwrap_or_else(|(buffer, rows)| {
                buffer.slice_assign([0..batch, 0..heads, at..needed, 0..head_dim], rows)
            })
        };
        slot.k = put(slot.k, k);
        slot.v = put(slot.v, v);
        slot.len = needed;
        let view = slot.view();
        self.layers[layer] = Some(slot);
        (view.k, view.v)
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

    /// Appends the rows of `other` to this cache's batch (continuous batching: a sequence
    /// prefilled on its own joins the running batch). The shorter side is padded with zero
    /// positions at the end, so both hold `max(len, other.len)` positions; the caller masks the
    /// padded positions of each row. Either side may be empty. Layer counts, heads and head sizes
    /// must agree (a typed error, the cache unchanged).
    pub fn merge_batch(&mut self, other: KvCache<B>) -> Result<()> {
        if other.is_empty() {
            return Ok(());
        }
        if self.is_empty() {
            let reserve = self.reserve.max(other.reserve);
            *self = other;
            self.reserve(reserve);
            return Ok(());
        }
        if other.layers.len() != self.layers.len() {
            return Err(Error::InvalidInput(format!(
                "merge_batch: {} cached layers into {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        let len = self.len().max(other.len());
        let capacity = len.max(self.reserve);
        let mut merged = Vec::with_capacity(self.layers.len());
        for (layer, (a, b)) in self.layers.iter().zip(&other.layers).enumerate() {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::InvalidInput(format!(
                    "merge_batch: layer {layer} is cached on one side only"
                )));
            };
            let [_, heads, _, head_dim] = a.k.dims();
            let [_, other_heads, _, other_dim] = b.k.dims();
            if (heads, head_dim) != (other_heads, other_dim) {
                return Err(Error::InvalidInput(format!(
                    "merge_batch: layer {layer} holds {heads}×{head_dim} heads, the other cache \
                     {other_heads}×{other_dim}"
                )));
            }
            let padded = |t: &Tensor<B, 4>, len: usize| {
                let t = t.clone().narrow(2, 0, len);
                let [batch, heads, filled, head_dim] = t.dims();
                if filled == capacity {
                    return t;
                }
                let pad =
                    Tensor::<B, 4>::zeros([batch, heads, capacity - filled, head_dim], &t.device())
                        .cast(t.dtype());
                Tensor::cat(vec![t, pad], 2)
            };
            merged.push(Some(Slot {
                k: Tensor::cat(vec![padded(&a.k, a.len), padded(&b.k, b.len)], 0),
                v: Tensor::cat(vec![padded(&a.v, a.len), padded(&b.v, b.len)], 0),
                len,
            }));
        }
        self.layers = merged;
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
        let views = self
            .layers
            .iter()
            .take(num_layers)
            .flatten()
            .map(Slot::view);
        for (layer, kv) in views.enumerate() {
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
        Some(Tensor::cat(vec![flat(kv.k), flat(kv.v)], 2))
    }
}

/// Moves `slot` into buffers with room for `capacity` positions (the filled part copied once).
fn grow<B: Backend>(slot: &mut Slot<B>, capacity: usize) {
    let [batch, heads, _, head_dim] = slot.k.dims();
    let (device, dtype) = (slot.k.device(), slot.k.dtype());
    let len = slot.len;
    let moved = |old: &Tensor<B, 4>| {
        Tensor::<B, 4>::zeros([batch, heads, capacity, head_dim], &device)
            .cast(dtype)
            .slice_assign(
                [0..batch, 0..heads, 0..len, 0..head_dim],
                old.clone().narrow(2, 0, len),
            )
    };
    slot.k = moved(&slot.k);
    slot.v = moved(&slot.v);
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorPrimitive};
    use burn_flex::FlexTensor;

    fn flex(t: Tensor<Flex, 4>) -> FlexTensor {
        match t.into_primitive() {
            TensorPrimitive::Float(p) => p,
            TensorPrimitive::QFloat(_) => unreachable!("float tensor"),
        }
    }

    /// Address of layer 0's key buffer.
    fn address(cache: &KvCache<Flex>) -> usize {
        let slot = cache.layers[0].as_ref().expect("filled");
        flex(slot.k.clone()).storage::<f32>().as_ptr() as usize
    }

    #[test]
    fn merging_pads_the_shorter_batch_and_keeps_every_row() {
        let device = Default::default();
        let rows = |batch: usize, len: usize, base: f32| {
            let n = batch * 2 * len * 3;
            let values: Vec<f32> = (0..n).map(|i| base + i as f32).collect();
            Tensor::<Flex, 4>::from_data(TensorData::new(values, [batch, 2, len, 3]), &device)
        };
        let mut a = KvCache::<Flex>::new(1);
        a.reserve(16);
        a.append(0, rows(2, 5, 0.0), rows(2, 5, 1000.0));
        let mut b = KvCache::<Flex>::new(1);
        b.append(0, rows(1, 3, 5000.0), rows(1, 3, 7000.0));
        a.merge_batch(b).expect("merge");
        assert_eq!(a.len(), 5);
        assert_eq!(a.batch_size(), Some(3));
        let kv = a.layer(0).expect("layer");
        let k: Vec<f32> = kv.k.into_data().to_vec().expect("f32");
        // Row 2 = b's row: its 3 positions, then 2 zero positions, per head.
        for head in 0..2 {
            let at = ((2 * 2 + head) * 5) * 3;
            let want: Vec<f32> = (0..9).map(|i| 5000.0 + (head * 9 + i) as f32).collect();
            assert_eq!(&k[at..at + 9], &want[..], "head {head}");
            assert_eq!(&k[at + 9..at + 15], &[0.0; 6], "head {head} padding");
        }
        // The merged cache keeps taking steps (room reserved).
        let (k2, _) = a.append(0, rows(3, 1, 9000.0), rows(3, 1, 9500.0));
        assert_eq!(k2.dims(), [3, 2, 6, 3]);
        let mut c = KvCache::<Flex>::new(2);
        assert!(a.merge_batch(KvCache::new(1)).is_ok(), "an empty side");
        c.append(0, rows(1, 1, 0.0), rows(1, 1, 0.0));
        c.append(1, rows(1, 1, 0.0), rows(1, 1, 0.0));
        assert!(a.merge_batch(c).is_err(), "layer counts differ");
    }

    #[test]
    fn decode_steps_write_the_buffers_in_place_and_views_hold_every_row() {
        let device = Default::default();
        let rand = |s: usize| {
            Tensor::<Flex, 4>::random([2, 3, s, 4], Distribution::Normal(0.0, 1.0), &device)
        };
        let mut cache = KvCache::<Flex>::new(1);
        cache.reserve(8);
        let mut all_k = Vec::new();
        let mut previous = None;
        for (step, s) in [5usize, 1, 1, 1, 2, 1].into_iter().enumerate() {
            let (k, v) = (rand(s), rand(s));
            all_k.push(Tensor::<Flex, 4>::from_data(k.to_data(), &device));
            let (ck, cv) = cache.append(0, k, v);
            let expected: Vec<f32> = Tensor::cat(all_k.clone(), 2).into_data().to_vec().unwrap();
            assert_eq!(ck.dims(), [2, 3, cache.len(), 4]);
            assert_eq!(cv.dims(), ck.dims());
            assert_eq!(
                ck.into_data().to_vec::<f32>().unwrap(),
                expected,
                "step {step}"
            );
            drop(cv);
            let at = address(&cache);
            if let Some(before) = previous {
                // Steps 1–3 fit the 8 reserved positions and step 5 the grown buffer: written in
                // place. Step 4 (10 positions) grows into a new buffer.
                assert_eq!(
                    at != before,
                    step == 4,
                    "step {step}: buffer moved = {}",
                    at != before
                );
            }
            previous = Some(at);
        }
        assert_eq!(cache.len(), 11);
    }
}
