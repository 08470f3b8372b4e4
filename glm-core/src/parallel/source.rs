//! One rank's view of a checkpoint: every tensor as the rank holds it.

use std::path::Path;

use burn::tensor::TensorData;

use super::layout::{EmbeddingLayout, ShardDims};
use crate::error::Result;
use crate::weights::{is_ignored_name, WeightSource};

/// A checkpoint seen by one tensor-parallel rank: [`WeightSource`] with the rank's shapes.
///
/// A SAT folder saved for this very degree hands each rank its own `mp_rank_XX` file's tensors
/// (no merge, nothing else read); any other source (a safetensors file, a SAT folder of another
/// degree, merged on read) is sliced as SAT splits it ([`ShardDims::slice`]). A replicated
/// embedding is read whole.
pub struct RankSource<'a> {
    inner: &'a dyn WeightSource,
    dims: ShardDims,
}

impl<'a> RankSource<'a> {
    /// The view of `inner` that the rank `dims` describes.
    pub fn new(inner: &'a dyn WeightSource, dims: ShardDims) -> Self {
        Self { inner, dims }
    }

    /// Checks that every tensor of the checkpoint splits for this rank (e.g. per-shard INT scales
    /// computed for another degree do not): the first tensor that does not is the error.
    pub fn check(&self) -> Result<()> {
        for name in self.inner.names() {
            if is_ignored_name(&name) || self.stored_shape(&name).is_some() {
                continue;
            }
            if let Some(full) = self.inner.shape(&name) {
                self.dims.local_shape(&name, &full)?;
            }
        }
        Ok(())
    }

    fn stored_shape(&self, name: &str) -> Option<Vec<usize>> {
        if !self.stored(name) {
            return None;
        }
        self.inner
            .stored_shard_shape(name, self.dims.rank, self.dims.world)
    }

    /// Whether `name` is read from the rank's own stored shard.
    fn stored(&self, name: &str) -> bool {
        let replicated_embedding = self.dims.embedding == EmbeddingLayout::Replicated
            && name == "transformer.word_embeddings.weight";
        !replicated_embedding && !is_ignored_name(name)
    }
}

impl WeightSource for RankSource<'_> {
    fn location(&self) -> &Path {
        self.inner.location()
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(shape) = self.stored_shape(name) {
            return Some(shape);
        }
        let full = self.inner.shape(name)?;
        if is_ignored_name(name) {
            return Some(full);
        }
        self.dims.local_shape(name, &full).ok()
    }

    fn load(&self, name: &str) -> Result<TensorData> {
        let (rank, world) = (self.dims.rank, self.dims.world);
        if self.stored(name) {
            if let Some(data) = self.inner.stored_shard(name, rank, world) {
                return data;
            }
        }
        let full = self.inner.load(name)?;
        if is_ignored_name(name) {
            return Ok(full);
        }
        let copied = self.dims.split(name, &full.shape)?.is_some();
        let local = self.dims.slice(name, full)?;
        if copied {
            // The rank holds its own copy of the slice: the mapped pages can go.
            self.inner.release(name);
        }
        Ok(local)
    }

    fn release(&self, name: &str) {
        self.inner.release(name);
    }

    fn prefetch(&self, name: &str) {
        self.inner.prefetch(name);
    }
}
