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

/// One layer's buffers: `[row_capacity, heads, capacity, head_dim]`, the first `rows` batch rows
/// and `len` positions filled (what lies beyond is unspecified and never read).
#[derive(Debug, Clone)]
struct Slot<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
    rows: usize,
}

impl<B: Backend> Slot<B> {
    fn view(&self) -> LayerKv<B> {
        let cut = |t: &Tensor<B, 4>| {
            let t = t.clone();
            let t = if self.rows < t.dims()[0] {
                t.narrow(0, 0, self.rows)
            } else {
                t
            };
            t.narrow(2, 0, self.len)
        };
        LayerKv {
            k: cut(&self.k),
            v: cut(&self.v),
        }
    }

    fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    fn row_capacity(&self) -> usize {
        self.k.dims()[0]
    }

    /// Positions to grow to when `needed` must fit: geometric growth (amortised O(1) copies per
    /// appended position), at least `reserve`.
    fn grown_capacity(&self, needed: usize, reserve: usize) -> usize {
        needed
            .max(self.capacity() + self.capacity() / 2 + 16)
            .max(reserve)
    }
}

/// The KV cache of a whole model: one [`LayerKv`] per layer once the first call has run.
///
/// Besides decoding one batch (generation, beam search), it serves a continuous-batching engine:
/// sequences join ([`merge_batch`](Self::merge_batch)) and leave
/// ([`select_batch`](Self::select_batch)) a running batch, and
/// [`compact_positions`](Self::compact_positions) drops the padding that joins leave behind. On
/// the CPU backend these edit the buffers in place (moving only the rows and positions that
/// change) while room lasts ([`reserve`](Self::reserve); batch rows grow by doubling); other
/// backends copy through the generic tensor ops.
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
                let rows = slot.row_capacity();
                grow(slot, rows, positions);
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
        self.layers.first().and_then(|l| l.as_ref()).map(|l| l.rows)
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
                let slot = Slot {
                    k,
                    v,
                    len: new,
                    rows: batch,
                };
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
                    rows: batch,
                }
            }
        };
        let needed = slot.len + new;
        if slot.capacity() < needed {
            let (rows, grown) = (
                slot.row_capacity(),
                slot.grown_capacity(needed, self.reserve),
            );
            grow(&mut slot, rows, grown);
        }
        let at = slot.len;
        slot.k = write_block(slot.k, 0, at, k);
        slot.v = write_block(slot.v, 0, at, v);
        slot.len = needed;
        let view = slot.view();
        self.layers[layer] = Some(slot);
        (view.k, view.v)
    }

    /// Keeps the batch rows `indices` (in that order, repeats allowed), e.g. the parent beams of
    /// beam search or the sequences still running. An empty list or an index ≥ the cached batch
    /// size is a typed error (checked on the host; the cache is then unchanged). On an empty cache
    /// only the list is checked. On the CPU backend a list that only moves rows towards the front
    /// (`indices[j] ≥ j`, e.g. rows leaving a batch) moves just those rows in place.
    pub fn select_batch(&mut self, indices: &[usize]) -> Result<()> {
        if indices.is_empty() {
            return Err(Error::InvalidInput(
                "select_batch: no rows to keep (empty index list)".into(),
            ));
        }
        let Some(first) = self.layers.iter().flatten().next() else {
            return Ok(());
        };
        let batch = first.rows;
        if let Some(&bad) = indices.iter().find(|&&i| i >= batch) {
            return Err(Error::InvalidInput(format!(
                "select_batch: row {bad} is outside the cached batch of {batch}"
            )));
        }
        let forward_only = indices.iter().enumerate().all(|(j, &i)| i >= j);
        let ids: Vec<i64> = indices
            .iter()
            .map(|&i| i64::try_from(i).unwrap_or(i64::MAX))
            .collect();
        let device = first.k.device();
        let index_tensor =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [indices.len()]), &device);
        for entry in self.layers.iter_mut() {
            // Taken out of the slot so that its buffers are uniquely owned (edited in place).
            let Some(mut kv) = entry.take() else {
                continue;
            };
            let [_, heads, cap, head_dim] = kv.k.dims();
            let len = kv.len;
            let shape = [heads, cap, head_dim];
            let moved = |t: Tensor<B, 4>| {
                let t = if forward_only {
                    glm_quant::kernels::try_edit_bytes(t, |bytes, size| {
                        for (j, &i) in indices.iter().enumerate() {
                            if i != j {
                                move_row(bytes, size, shape, len, i, j);
                            }
                        }
                    })
                } else {
                    Err(t)
                };
                t.unwrap_or_else(|t| t.narrow(0, 0, batch).select(0, index_tensor.clone()))
            };
            kv.k = moved(kv.k);
            kv.v = moved(kv.v);
            kv.rows = indices.len();
            *entry = Some(kv);
        }
        Ok(())
    }

    /// Appends the rows of `other` to this cache's batch (continuous batching: a sequence
    /// prefilled on its own joins the running batch). The shorter side is padded with zero
    /// positions at the end, so both hold `max(len, other.len)` positions; the caller masks the
    /// padded positions of each row. Either side may be empty. Layer counts, heads and head sizes
    /// must agree (a typed error, the cache unchanged). With room for the rows and positions (left
    /// by departures or an earlier growth), the new rows are written in place on the CPU
    /// backend; otherwise the buffers grow (rows geometrically: doubling).
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
        }
        let (len, reserve) = (self.len().max(other.len()), self.reserve);
        for (entry, b) in self.layers.iter_mut().zip(&other.layers) {
            // Taken out of the slot so that its buffers are uniquely owned (written in place).
            let (Some(mut a), Some(b)) = (entry.take(), b.as_ref()) else {
                continue;
            };
            let rows = a.rows + b.rows;
            if a.row_capacity() < rows || a.capacity() < len {
                // Geometric growth: amortised O(1) row copies per joining row.
                let row_cap = if a.row_capacity() < rows {
                    rows.max(2 * a.rows)
                } else {
                    a.row_capacity()
                };
                let cap = if a.capacity() < len {
                    a.grown_capacity(len, reserve)
                } else {
                    a.capacity()
                };
                grow(&mut a, row_cap, cap);
            }
            let (old_rows, old_len) = (a.rows, a.len);
            let view = b.view();
            a.k = write_block(a.k, old_rows, 0, view.k);
            a.v = write_block(a.v, old_rows, 0, view.v);
            if b.len < len {
                a.k = zero_block(a.k, old_rows..rows, b.len..len);
                a.v = zero_block(a.v, old_rows..rows, b.len..len);
            }
            if old_len < len {
                a.k = zero_block(a.k, 0..old_rows, old_len..len);
                a.v = zero_block(a.v, 0..old_rows, old_len..len);
            }
            a.rows = rows;
            a.len = len;
            *entry = Some(a);
        }
        Ok(())
    }

    /// Keeps, in every batch row `r`, the cached positions `positions[r]` (increasing, each
    /// `< len`) moved to the front in that order, and zero padding after them: the cache then
    /// holds the longest list's count of positions. A continuous-batching engine drops with it
    /// the padding that joins and departures leave between a row's positions (attention only
    /// needs the positions' keys and values, not where they sit). A list per row, increasing
    /// indices below the cached length and at least one position in some row are checked (a
    /// typed error, the cache unchanged). In place on the CPU backend.
    pub fn compact_positions(&mut self, positions: &[Vec<usize>]) -> Result<()> {
        let Some(first) = self.layers.iter().flatten().next() else {
            return Err(Error::InvalidInput(
                "compact_positions: the cache is empty".into(),
            ));
        };
        let (rows, len) = (first.rows, first.len);
        if positions.len() != rows {
            return Err(Error::InvalidInput(format!(
                "compact_positions: {} position lists for a batch of {rows}",
                positions.len()
            )));
        }
        for (r, list) in positions.iter().enumerate() {
            let increasing = list.windows(2).all(|w| w[0] < w[1]);
            if !increasing || list.last().is_some_and(|&p| p >= len) {
                return Err(Error::InvalidInput(format!(
                    "compact_positions: row {r}'s positions must increase and stay below the \
                     cached {len}"
                )));
            }
        }
        let new_len = positions.iter().map(Vec::len).max().unwrap_or(0);
        if new_len == 0 {
            return Err(Error::InvalidInput(
                "compact_positions: no position kept in any row".into(),
            ));
        }
        for entry in self.layers.iter_mut() {
            // Taken out of the slot so that its buffers are uniquely owned (edited in place).
            let Some(mut slot) = entry.take() else {
                continue;
            };
            let [_, heads, cap, head_dim] = slot.k.dims();
            let shape = [heads, cap, head_dim];
            let compact = |t: Tensor<B, 4>| {
                glm_quant::kernels::try_edit_bytes(t, |bytes, size| {
                    for (r, list) in positions.iter().enumerate() {
                        compact_row(bytes, size, shape, r, list, new_len);
                    }
                })
                .unwrap_or_else(|t| gather_positions(t, positions, new_len))
            };
            slot.k = compact(slot.k);
            slot.v = compact(slot.v);
            slot.len = new_len;
            *entry = Some(slot);
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

/// Moves `slot` into buffers with room for `rows` batch rows and `capacity` positions (the filled
/// part copied once).
fn grow<B: Backend>(slot: &mut Slot<B>, rows: usize, capacity: usize) {
    let [_, heads, _, head_dim] = slot.k.dims();
    let (device, dtype) = (slot.k.device(), slot.k.dtype());
    let view = slot.view();
    let moved = |filled: Tensor<B, 4>| {
        let fresh = Tensor::<B, 4>::zeros([rows, heads, capacity, head_dim], &device).cast(dtype);
        write_block(fresh, 0, 0, filled)
    };
    slot.k = moved(view.k);
    slot.v = moved(view.v);
}

/// `buffer` (`[rows, heads, capacity, head_dim]`) with `block` (`[n, heads, p, head_dim]`)
/// written at batch row `row` and position `at`: in place on the CPU backend when the buffer is
/// uniquely owned, through `slice_assign` otherwise.
fn write_block<B: Backend>(
    buffer: Tensor<B, 4>,
    row: usize,
    at: usize,
    block: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [n, heads, p, head_dim] = block.dims();
    glm_quant::kernels::try_write_block(buffer, row, at, block).unwrap_or_else(|(buffer, block)| {
        buffer.slice_assign([row..row + n, 0..heads, at..at + p, 0..head_dim], block)
    })
}

/// `buffer` (`[rows, heads, capacity, head_dim]`) with zeros in batch rows `rows` and positions
/// `span` (in place on the CPU backend when possible).
fn zero_block<B: Backend>(
    buffer: Tensor<B, 4>,
    rows: std::ops::Range<usize>,
    span: std::ops::Range<usize>,
) -> Tensor<B, 4> {
    if rows.is_empty() || span.is_empty() {
        return buffer;
    }
    let [_, heads, cap, head_dim] = buffer.dims();
    let (r, s) = (rows.clone(), span.clone());
    glm_quant::kernels::try_edit_bytes(buffer, |bytes, size| {
        for row in r.clone() {
            for head in 0..heads {
                let at = ((row * heads + head) * cap + s.start) * head_dim * size;
                let end = at + s.len() * head_dim * size;
                if let Some(part) = bytes.get_mut(at..end) {
                    part.fill(0);
                }
            }
        }
    })
    .unwrap_or_else(|buffer| {
        let (device, dtype) = (buffer.device(), buffer.dtype());
        let zeros =
            Tensor::<B, 4>::zeros([rows.len(), heads, span.len(), head_dim], &device).cast(dtype);
        buffer.slice_assign([rows, 0..heads, span, 0..head_dim], zeros)
    })
}

/// Copies positions `0..len` of batch row `from` over batch row `to` (every head) in the bytes of
/// a `[rows, heads, cap, head_dim]` buffer of `size`-byte elements.
fn move_row(
    bytes: &mut [u8],
    size: usize,
    [heads, cap, head_dim]: [usize; 3],
    len: usize,
    from: usize,
    to: usize,
) {
    let row_bytes = heads * cap * head_dim * size;
    let filled = len * head_dim * size;
    for head in 0..heads {
        let at = |row: usize| row * row_bytes + head * cap * head_dim * size;
        let (src, dst) = (at(from), at(to));
        if src + filled <= bytes.len() && dst + filled <= bytes.len() {
            bytes.copy_within(src..src + filled, dst);
        }
    }
}

/// Moves positions `list` of batch row `row` to the front (in order) and zeroes positions
/// `list.len()..new_len`, every head, in the bytes of a `[rows, heads, cap, head_dim]` buffer.
/// `list` increases, so each move reads a position at or after the one it writes.
fn compact_row(
    bytes: &mut [u8],
    size: usize,
    [heads, cap, head_dim]: [usize; 3],
    row: usize,
    list: &[usize],
    new_len: usize,
) {
    let item = head_dim * size;
    for head in 0..heads {
        let base = ((row * heads + head) * cap) * item;
        for (to, &from) in list.iter().enumerate() {
            let (src, dst) = (base + from * item, base + to * item);
            if from != to && src + item <= bytes.len() {
                bytes.copy_within(src..src + item, dst);
            }
        }
        let (start, end) = (base + list.len() * item, base + new_len * item);
        if let Some(part) = bytes.get_mut(start..end) {
            part.fill(0);
        }
    }
}

/// The generic [`KvCache::compact_positions`]: per batch row, the kept positions selected and
/// zero-padded to the buffer's capacity, the rows concatenated.
fn gather_positions<B: Backend>(
    buffer: Tensor<B, 4>,
    positions: &[Vec<usize>],
    new_len: usize,
) -> Tensor<B, 4> {
    let [_, heads, cap, head_dim] = buffer.dims();
    let (device, dtype) = (buffer.device(), buffer.dtype());
    let cap = cap.max(new_len);
    let rows: Vec<Tensor<B, 4>> = positions
        .iter()
        .enumerate()
        .map(|(r, list)| {
            let ids: Vec<i64> = list
                .iter()
                .map(|&p| i64::try_from(p).unwrap_or(i64::MAX))
                .collect();
            let zeros =
                |n: usize| Tensor::<B, 4>::zeros([1, heads, n, head_dim], &device).cast(dtype);
            if ids.is_empty() {
                return zeros(cap);
            }
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [list.len()]), &device);
            let kept = buffer.clone().narrow(0, r, 1).select(2, index);
            if list.len() == cap {
                kept
            } else {
                Tensor::cat(vec![kept, zeros(cap - list.len())], 2)
            }
        })
        .collect();
    Tensor::cat(rows, 0)
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

    /// Every value of layer 0's keys and values (views: `rows × heads × len × head_dim`).
    fn values(cache: &KvCache<Flex>) -> (Vec<f32>, Vec<f32>) {
        let kv = cache.layer(0).expect("layer");
        (
            kv.k.into_data().to_vec().expect("f32"),
            kv.v.into_data().to_vec().expect("f32"),
        )
    }

    /// A one-layer cache of `batch` rows and `len` positions with distinct values
    /// `base + index` (keys) and `base + 0.5 + index` (values), `[batch, 2, len, 3]`.
    fn filled(batch: usize, len: usize, base: f32, reserve: usize) -> KvCache<Flex> {
        let device = Default::default();
        let t = |off: f32| {
            let n = batch * 2 * len * 3;
            let values: Vec<f32> = (0..n).map(|i| base + off + i as f32).collect();
            Tensor::<Flex, 4>::from_data(TensorData::new(values, [batch, 2, len, 3]), &device)
        };
        let mut c = KvCache::<Flex>::new(1);
        c.reserve(reserve);
        c.append(0, t(0.0), t(0.5));
        c
    }

    /// Row `r`, head `h`, position `p` of a `[rows, 2, len, 3]` list of values.
    fn at(all: &[f32], len: usize, r: usize, h: usize, p: usize) -> &[f32] {
        let i = ((r * 2 + h) * len + p) * 3;
        &all[i..i + 3]
    }

    /// Rows join a batch with room for them in place (the buffer does not move), leave it in place
    /// when they only move forward, and both give the same values as the generic ops (forced by
    /// sharing the buffers with a clone).
    #[test]
    fn joins_and_departures_move_only_the_rows_that_change() {
        for generic in [false, true] {
            // Three rows, the first of which leaves: room for one more row.
            let mut batch = KvCache::<Flex>::new(1);
            batch.merge_batch(filled(3, 4, 0.0, 8)).expect("first");
            let start = address(&batch);
            batch.select_batch(&[0]).expect("two leave");
            assert_eq!(address(&batch), start, "rows left in place");
            let hold = generic.then(|| batch.clone());
            // Two rows join where the departures left room.
            batch.merge_batch(filled(2, 6, 1000.0, 8)).expect("second");
            assert_eq!((batch.len(), batch.batch_size()), (6, Some(3)));
            if !generic {
                assert_eq!(address(&batch), start, "joined in place");
            }
            let (k, v) = values(&batch);
            let (k0, v0) = values(&filled(1, 4, 0.0, 0));
            let (k1, _) = values(&filled(2, 6, 1000.0, 0));
            for h in 0..2 {
                for p in 0..6 {
                    let first = if p < 4 {
                        at(&k0, 4, 0, h, p)
                    } else {
                        &[0.0; 3]
                    };
                    assert_eq!(at(&k, 6, 0, h, p), first, "row 0 head {h} pos {p}");
                    let first_v = if p < 4 {
                        at(&v0, 4, 0, h, p)
                    } else {
                        &[0.0; 3]
                    };
                    assert_eq!(at(&v, 6, 0, h, p), first_v, "row 0 value head {h} pos {p}");
                    for r in 0..2 {
                        assert_eq!(at(&k, 6, r + 1, h, p), at(&k1, 6, r, h, p));
                    }
                }
            }
            drop(hold);
            let hold = generic.then(|| batch.clone());
            // Row 0 leaves: rows 1 and 2 move forward.
            batch.select_batch(&[1, 2]).expect("leave");
            if !generic {
                assert_eq!(address(&batch), start, "left in place");
            }
            let (k, _) = values(&batch);
            assert_eq!(batch.batch_size(), Some(2));
            assert_eq!(k, k1, "the remaining rows, in order");
            drop(hold);
            // A reordering with repeats (beam search) takes the generic path and still holds.
            batch.select_batch(&[1, 1, 0]).expect("beams");
            let (k, _) = values(&batch);
            for h in 0..2 {
                for p in 0..6 {
                    assert_eq!(at(&k, 6, 0, h, p), at(&k1, 6, 1, h, p));
                    assert_eq!(at(&k, 6, 1, h, p), at(&k1, 6, 1, h, p));
                    assert_eq!(at(&k, 6, 2, h, p), at(&k1, 6, 0, h, p));
                }
            }
        }
    }

    /// Compaction keeps each row's listed positions in order at the front, zero after them, in
    /// place on `Flex` and the same through the generic ops; bad lists are typed errors that leave
    /// the cache unchanged.
    #[test]
    fn compaction_keeps_each_rows_positions_in_order() {
        let lists = vec![vec![0, 2, 5], vec![1, 3, 4, 6], vec![6]];
        for generic in [false, true] {
            let mut c = filled(3, 7, 0.0, 10);
            let (k_before, v_before) = values(&c);
            let start = address(&c);
            for bad in [
                vec![vec![0], vec![1]],
                vec![vec![2, 1], vec![0], vec![0]],
                vec![vec![0], vec![7], vec![0]],
                vec![vec![], vec![], vec![]],
            ] {
                assert!(c.compact_positions(&bad).is_err(), "{bad:?}");
            }
            assert_eq!(
                values(&c),
                (k_before.clone(), v_before.clone()),
                "unchanged"
            );
            let hold = generic.then(|| c.clone());
            c.compact_positions(&lists).expect("compact");
            if !generic {
                assert_eq!(address(&c), start, "in place");
            }
            assert_eq!((c.len(), c.batch_size()), (4, Some(3)));
            let (k, v) = values(&c);
            for (r, list) in lists.iter().enumerate() {
                for h in 0..2 {
                    for p in 0..4 {
                        let (want_k, want_v) = match list.get(p) {
                            Some(&q) => (at(&k_before, 7, r, h, q), at(&v_before, 7, r, h, q)),
                            None => (&[0.0f32; 3][..], &[0.0f32; 3][..]),
                        };
                        assert_eq!(at(&k, 4, r, h, p), want_k, "row {r} head {h} pos {p}");
                        assert_eq!(at(&v, 4, r, h, p), want_v, "row {r} head {h} pos {p}");
                    }
                }
            }
            drop(hold);
            // The compacted cache takes further steps in its room.
            let device = Default::default();
            let step = Tensor::<Flex, 4>::ones([3, 2, 1, 3], &device);
            let (k2, _) = c.append(0, step.clone(), step);
            assert_eq!(k2.dims(), [3, 2, 5, 3]);
        }
    }
}
