//! KV cache for incremental decoding (SAT "mem_kv"): per layer the keys AFTER rotary and the
//! values of every position seen so far.
//!
//! Each layer keeps one buffer per tensor with room for more positions than are filled; a step
//! writes its new keys/values into the free tail (in place when nothing else holds the buffer)
//! and attention reads a narrowed view, so a decoding step costs O(new tokens) instead of copying
//! the whole cache as a concatenation would. The buffer doubles when it is full; give the final
//! length up front ([`KvCache::with_capacity`]) to allocate once.

use burn::tensor::{backend::Backend, Int, Tensor};

/// Cached keys and values of one layer (views of the filled part of the buffers).
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

/// One layer's buffers: `[batch, heads, capacity, head_dim]`, positions `..len` filled.
#[derive(Debug, Clone)]
struct Slot<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> Slot<B> {
    fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    fn view(&self) -> LayerKv<B> {
        LayerKv {
            k: self.k.clone().narrow(2, 0, self.len),
            v: self.v.clone().narrow(2, 0, self.len),
        }
    }
}

/// The KV cache of a whole model: one entry per layer once the first call has run.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<Slot<B>>>,
    /// Positions to allocate room for on the first append.
    capacity: usize,
}

/// `t` written into a fresh zero buffer of `capacity` positions (dim 2).
fn with_room<B: Backend>(t: Tensor<B, 4>, capacity: usize) -> Tensor<B, 4> {
    let [b, h, len, d] = t.dims();
    if capacity == len {
        return t;
    }
    let buf = Tensor::<B, 4>::zeros([b, h, capacity, d], (&t.device(), t.dtype()));
    buf.slice_assign([0..b, 0..h, 0..len, 0..d], t)
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers; buffers grow by doubling.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache for `num_layers` layers that allocates room for `capacity` positions on the
    /// first call (the context plus every token to be generated), so decoding never reallocates.
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity,
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

    /// Positions the buffers of layer 0 hold room for (0 when empty).
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, Slot::capacity)
    }

    /// The cache of layer `layer`, if filled.
    pub fn layer(&self, layer: usize) -> Option<LayerKv<B>> {
        self.layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .map(Slot::view)
    }

    /// Appends new keys/values of `layer` and returns the full (cached + new) keys and values.
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, heads, new, head_dim]` → `[batch, heads, cached + new, head_dim]`
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let [b, h, new, d] = k.dims();
        let slot = match self.layers[layer].take() {
            None => Slot {
                k: with_room(k, self.capacity.max(new)),
                v: with_room(v, self.capacity.max(new)),
                len: new,
            },
            Some(mut slot) => {
                let end = slot.len + new;
                if end > slot.capacity() {
                    let room = end.max(2 * slot.capacity());
                    let old = slot.view();
                    slot.k = with_room(old.k, room);
                    slot.v = with_room(old.v, room);
                }
                let at = [0..b, 0..h, slot.len..end, 0..d];
                slot.k = slot.k.slice_assign(at.clone(), k);
                slot.v = slot.v.slice_assign(at, v);
                slot.len = end;
                slot
            }
        };
        let out = slot.view();
        self.layers[layer] = Some(slot);
        (out.k, out.v)
    }

    /// Keeps the batch rows `indices` (in that order), e.g. the parent beams of beam search.
    ///
    /// # Shapes
    /// - `indices`: `[new_batch]`
    pub fn select_batch(&mut self, indices: Tensor<B, 1, Int>) {
        for slot in self.layers.iter_mut().flatten() {
            slot.k = slot.k.clone().select(0, indices.clone());
            slot.v = slot.v.clone().select(0, indices.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    fn step(start: usize, n: usize) -> Tensor<B, 4> {
        let values: Vec<f32> = (0..2 * 3 * n * 4)
            .map(|i| (start * 100 + i) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [2, 3, n, 4]), &Default::default())
    }

    /// Appending into growing buffers gives exactly what concatenation gives.
    #[test]
    fn appends_equal_concatenation_across_growth_and_batch_selection() {
        for capacity in [0, 3, 64] {
            let mut cache = KvCache::<B>::with_capacity(1, capacity);
            let mut expect: Vec<Tensor<B, 4>> = Vec::new();
            for (i, n) in [5, 1, 1, 3, 1, 7].into_iter().enumerate() {
                let t = step(i, n);
                expect.push(t.clone());
                let (k, v) = cache.append(0, t.clone(), t.clone() * 2.0);
                let cat = Tensor::cat(expect.clone(), 2);
                k.into_data().assert_eq(&cat.clone().into_data(), true);
                v.into_data().assert_eq(&(cat * 2.0).into_data(), true);
            }
            assert_eq!(cache.len(), 18);
            assert!(cache.capacity() >= 18);
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(vec![1i64, 1], [2]),
                &Default::default(),
            );
            cache.select_batch(idx.clone());
            let cat = Tensor::cat(expect.clone(), 2).select(0, idx);
            let kv = cache.layer(0).expect("filled");
            kv.k.into_data().assert_eq(&cat.into_data(), true);
            let (k, _) = cache.append(0, step(9, 1), step(9, 1));
            assert_eq!(k.dims(), [2, 3, 19, 4]);
        }
    }
}
