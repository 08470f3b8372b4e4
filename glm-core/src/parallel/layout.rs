//! How SAT splits GLM-130B over `world` tensor-parallel ranks (spec §6, `tools/convert_tp.py`),
//! as shapes and byte slices: what one rank holds of every parameter.

use std::ops::Range;

use burn::tensor::TensorData;

use crate::config::GlmConfig;
use crate::error::{Error, Result};
use crate::weights::{split_rule, SplitRule};

/// Where the word embedding (and the tied LM head) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingLayout {
    /// As the original: rank `r` holds the `torch.chunk` vocabulary rows `r` (a contiguous id
    /// range). The lookup masks the ids outside the range and all-reduces the rows (one
    /// `[batch, seq, hidden]` all-reduce per forward); the LM head computes the rank's logits and
    /// gathers them (an all-reduce of the zero-padded `[batch, rows, vocab]` logits). Memory:
    /// `vocab / world · hidden` per rank.
    #[default]
    VocabParallel,
    /// Every rank holds the whole embedding: no communication for the lookup or the logits, `world`
    /// times the embedding memory (GLM-130B: 3.7 GB in fp16 on every rank).
    Replicated,
}

/// A tensor-parallel degree and the embedding layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpLayout {
    /// Number of ranks.
    pub world: usize,
    /// Where the word embedding lives.
    pub embedding: EmbeddingLayout,
}

impl TpLayout {
    /// `world` ranks, vocabulary-parallel embedding (the original's layout).
    pub fn new(world: usize) -> Self {
        Self {
            world,
            embedding: EmbeddingLayout::VocabParallel,
        }
    }

    /// The same degree with `embedding`.
    pub fn with_embedding(mut self, embedding: EmbeddingLayout) -> Self {
        self.embedding = embedding;
        self
    }

    /// Checks that `config` splits over this degree: whole heads per rank, an inner size that
    /// divides (GeGLU halves stay aligned), and a vocabulary whose `torch.chunk` gives every rank
    /// a chunk (the last may be smaller). A typed error names the field otherwise.
    pub fn check(&self, config: &GlmConfig) -> Result<()> {
        let world = self.world;
        let bad = |field: &'static str, reason: String| Error::InvalidConfig { field, reason };
        if world == 0 {
            return Err(bad(
                "tensor_parallel",
                "the degree must be at least 1".into(),
            ));
        }
        let heads = config.num_attention_heads;
        if !heads.is_multiple_of(world) {
            return Err(bad(
                "num_attention_heads",
                format!("{heads} heads do not split over {world} tensor-parallel ranks"),
            ));
        }
        let inner = config.inner_size();
        if !inner.is_multiple_of(world) {
            return Err(bad(
                "inner_hidden_size",
                format!("{inner} does not split over {world} tensor-parallel ranks"),
            ));
        }
        if self.embedding == EmbeddingLayout::VocabParallel {
            let vocab = config.vocab_size;
            if chunk_range(vocab, world, world - 1).is_none() {
                return Err(bad(
                    "vocab_size",
                    format!(
                        "torch.chunk splits {vocab} rows into fewer than {world} chunks (use the \
                         replicated embedding)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What rank `rank` holds (after [`check`](Self::check)).
    pub fn shard(&self, config: &GlmConfig, rank: usize) -> Result<ShardDims> {
        self.check(config)?;
        if rank >= self.world {
            return Err(Error::InvalidInput(format!(
                "rank {rank} of a tensor-parallel degree {}",
                self.world
            )));
        }
        let vocab = match self.embedding {
            EmbeddingLayout::VocabParallel => chunk_range(config.vocab_size, self.world, rank)
                .ok_or_else(|| {
                    Error::InvalidInput(format!("rank {rank} holds no vocabulary rows"))
                })?,
            EmbeddingLayout::Replicated => 0..config.vocab_size,
        };
        Ok(ShardDims {
            rank,
            world: self.world,
            heads: config.num_attention_heads / self.world,
            hidden: config.hidden_size,
            head_dim: config.head_dim(),
            inner: config.inner_size() / self.world,
            vocab_size: config.vocab_size,
            vocab,
            embedding: self.embedding,
        })
    }
}

/// `torch.chunk(n, parts)[rank]` as a range: chunks of `ceil(n / parts)`, the last one smaller;
/// `None` when torch.chunk returns fewer than `rank + 1` chunks (or `parts` is 0).
pub fn chunk_range(n: usize, parts: usize, rank: usize) -> Option<Range<usize>> {
    if parts == 0 || rank >= parts {
        return None;
    }
    let size = n.div_ceil(parts);
    let start = size.checked_mul(rank)?;
    if start >= n && !(n == 0 && rank == 0) {
        return None;
    }
    Some(start..start.saturating_add(size).min(n))
}

/// The sizes one tensor-parallel rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDims {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Attention heads on this rank (`heads / world`).
    pub heads: usize,
    /// Hidden size (every rank sees the whole hidden state).
    pub hidden: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// GeGLU inner size on this rank (`inner / world`).
    pub inner: usize,
    /// The whole vocabulary.
    pub vocab_size: usize,
    /// The embedding rows this rank holds (all of them when replicated).
    pub vocab: Range<usize>,
    /// Where the embedding lives.
    pub embedding: EmbeddingLayout,
}

impl ShardDims {
    /// The whole model on one device.
    pub fn single(config: &GlmConfig) -> Self {
        Self {
            rank: 0,
            world: 1,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            head_dim: config.head_dim(),
            inner: config.inner_size(),
            vocab_size: config.vocab_size,
            vocab: 0..config.vocab_size,
            embedding: EmbeddingLayout::Replicated,
        }
    }

    /// Width of this rank's attention (`heads · head_dim`).
    pub fn attention_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `(out, in)` of a layer's linear on this rank, by name suffix (`attention.query_key_value`,
    /// `attention.dense`, `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`).
    pub fn linear_dims(&self, suffix: &str) -> (usize, usize) {
        let (h, a, i) = (self.hidden, self.attention_width(), self.inner);
        match suffix {
            "attention.query_key_value" => (3 * a, h),
            "attention.dense" => (h, a),
            "mlp.dense_h_to_4h" => (2 * i, h),
            _ => (h, i),
        }
    }

    /// The part of the full tensor `name` (of `full` shape) this rank holds, as the split rule
    /// of `name` says: `(dim, ranges)` where `ranges` are the kept index ranges along `dim`
    /// (two for GeGLU halves), or `None` for a tensor kept whole.
    pub fn split(&self, name: &str, full: &[usize]) -> Result<Option<(usize, Vec<Range<usize>>)>> {
        if self.world == 1 && split_rule(name) != SplitRule::PerShard {
            return Ok(None);
        }
        let bad = |reason: String| Error::InvalidInput(format!("tensor `{name}`: {reason}"));
        let (r, w) = (self.rank, self.world);
        let even = |n: usize| -> Result<Range<usize>> {
            if !n.is_multiple_of(w) {
                return Err(bad(format!("{n} does not split over {w} ranks")));
            }
            let size = n / w;
            Ok(size * r..size * (r + 1))
        };
        let dim0 = *full
            .first()
            .ok_or_else(|| bad("a scalar cannot be split".into()))?;
        if name == "transformer.word_embeddings.weight" {
            return Ok(match self.embedding {
                EmbeddingLayout::Replicated => None,
                EmbeddingLayout::VocabParallel => Some((0, vec![self.vocab.clone()])),
            });
        }
        Ok(match split_rule(name) {
            SplitRule::Replicated => None,
            SplitRule::Rows => Some((0, vec![even(dim0)?])),
            SplitRule::Columns => {
                let cols = *full
                    .get(1)
                    .ok_or_else(|| bad(format!("column split needs a matrix, got {full:?}")))?;
                Some((1, vec![even(cols)?]))
            }
            SplitRule::GluHalves => {
                if dim0 % 2 != 0 {
                    return Err(bad(format!("GeGLU tensor has an odd row count {dim0}")));
                }
                let half = dim0 / 2;
                let part = even(half)?;
                Some((0, vec![part.clone(), half + part.start..half + part.end]))
            }
            // `[shards, out]` scales of a row-parallel weight: this rank's row when the
            // checkpoint was quantized for this degree; `[out]` scales are kept whole.
            SplitRule::PerShard => match full {
                [_] | [1, _] => None,
                [s, _] if *s == w => Some((0, std::iter::once(r..r + 1).collect())),
                _ => {
                    return Err(bad(format!(
                        "per-shard scales {full:?} were computed for another tensor-parallel \
                         degree than {w}: quantize again for this degree"
                    )))
                }
            },
        })
    }

    /// The shape this rank holds of the full tensor `name` (per-shard scales `[shards, out]`
    /// become this rank's `[out]`).
    pub fn local_shape(&self, name: &str, full: &[usize]) -> Result<Vec<usize>> {
        let mut shape = full.to_vec();
        if let Some((dim, ranges)) = self.split(name, full)? {
            if let Some(d) = shape.get_mut(dim) {
                *d = ranges.iter().map(|r| r.len()).sum();
            }
        }
        if split_rule(name) == SplitRule::PerShard && shape.len() == 2 {
            shape.remove(0);
        }
        Ok(shape)
    }

    /// This rank's slice of the full tensor `name` (any dtype; a copy of the kept bytes, or the
    /// tensor itself when it is kept whole).
    pub fn slice(&self, name: &str, full: TensorData) -> Result<TensorData> {
        let shape = full.shape.to_vec();
        let local = self.local_shape(name, &shape)?;
        let Some((dim, ranges)) = self.split(name, &shape)? else {
            return Ok(if local == shape {
                full
            } else {
                TensorData::from_bytes_vec(full.as_bytes().to_vec(), local, full.dtype)
            });
        };
        let bytes = slice_bytes(full.as_bytes(), &shape, full.dtype.size(), dim, &ranges)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "tensor `{name}`: {} bytes do not hold shape {shape:?} of {:?}",
                    full.as_bytes().len(),
                    full.dtype
                ))
            })?;
        Ok(TensorData::from_bytes_vec(bytes, local, full.dtype))
    }
}

/// The bytes of `ranges` along `dim` of a row-major tensor of `shape` (elements of `esize`
/// bytes), concatenated in order; `None` when `bytes` does not hold the shape or a range is out
/// of bounds.
pub(crate) fn slice_bytes(
    bytes: &[u8],
    shape: &[usize],
    esize: usize,
    dim: usize,
    ranges: &[Range<usize>],
) -> Option<Vec<u8>> {
    let extent = *shape.get(dim)?;
    let outer: usize = shape[..dim]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let inner: usize = shape[dim + 1..]
        .iter()
        .try_fold(esize, |a, &d| a.checked_mul(d))?;
    if outer.checked_mul(extent)?.checked_mul(inner)? != bytes.len() {
        return None;
    }
    if ranges.iter().any(|r| r.start > r.end || r.end > extent) {
        return None;
    }
    let kept: usize = ranges.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(outer * kept * inner);
    for o in 0..outer {
        let base = o * extent * inner;
        for r in ranges {
            out.extend_from_slice(&bytes[base + r.start * inner..base + r.end * inner]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ranges_follow_torch_chunk() {
        // torch.chunk(torch.arange(10), 4) -> sizes 3, 3, 3, 1.
        let sizes: Vec<_> = (0..4)
            .map(|r| chunk_range(10, 4, r).map(|c| c.len()))
            .collect();
        assert_eq!(sizes, [Some(3), Some(3), Some(3), Some(1)]);
        // torch.chunk(torch.arange(9), 4) -> sizes 3, 3, 3: only three chunks.
        assert_eq!(chunk_range(9, 4, 2), Some(6..9));
        assert_eq!(chunk_range(9, 4, 3), None);
        assert_eq!(chunk_range(8, 2, 1), Some(4..8));
        assert_eq!(chunk_range(8, 0, 0), None);
    }

    #[test]
    fn slices_rows_columns_and_two_ranges() {
        // [3, 4] of u8 values 0..12.
        let bytes: Vec<u8> = (0..12).collect();
        let cols = slice_bytes(&bytes, &[3, 4], 1, 1, std::slice::from_ref(&(1..3)));
        assert_eq!(cols, Some(vec![1, 2, 5, 6, 9, 10]));
        let rows = slice_bytes(&bytes, &[3, 4], 1, 0, &[0..1, 2..3]);
        assert_eq!(rows, Some(vec![0, 1, 2, 3, 8, 9, 10, 11]));
        assert_eq!(
            slice_bytes(&bytes, &[3, 5], 1, 0, std::slice::from_ref(&(0..1))),
            None
        );
        assert_eq!(
            slice_bytes(&bytes, &[3, 4], 1, 0, std::slice::from_ref(&(2..4))),
            None
        );
    }
}
