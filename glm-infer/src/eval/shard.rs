//! Sharded evaluation over the nodes of a multi-node job (`glm evaluate --nodes N`): each node
//! scores its share of every data file (whole micro-batches, so every number is computed exactly
//! as in a single-process run), then the per-sample results are gathered so that every node holds
//! all of them and node 0 writes the same report a single process would.

use std::fmt::Debug;

use burn::tensor::backend::Backend;
use glm_core::parallel::NodeGroup;

use super::error::{EvalError, EvalResult};

/// Splits work units over several processes and gathers per-sample results.
pub trait Sharding: Send + Sync + Debug {
    /// This process's part, `0..parts`.
    fn rank(&self) -> usize;
    /// Number of parts (processes).
    fn parts(&self) -> usize;
    /// Whether work unit `unit` (a micro-batch, a generation item) is computed here.
    fn owns(&self, unit: usize) -> bool {
        unit % self.parts().max(1) == self.rank()
    }
    /// Every process passes one entry per sample, `Some(words)` for the samples it computed;
    /// every process gets every sample's words. Each sample must be computed by exactly one
    /// process (an error otherwise).
    fn gather(&self, local: Vec<Option<Vec<u32>>>) -> EvalResult<Vec<Vec<u32>>>;
}

/// Words (u32) travel as two exact 16-bit halves in f32, summed with zeros from the processes
/// that do not own them: bit-exact whatever they encode (f32 bits of a log-probability, ids).
impl<B: Backend> Sharding for NodeGroup<B> {
    fn rank(&self) -> usize {
        NodeGroup::rank(self) as usize
    }

    fn parts(&self) -> usize {
        self.nodes() as usize
    }

    fn gather(&self, local: Vec<Option<Vec<u32>>>) -> EvalResult<Vec<Vec<u32>>> {
        // Round 1: one count per sample, + 1 for "present" (an owner with an empty result).
        let counts: Vec<f32> = local
            .iter()
            .map(|l| l.as_ref().map_or(0.0, |w| w.len() as f32 + 1.0))
            .collect();
        let counts = self.all_reduce_host(&counts)?;
        let mut offsets = Vec::with_capacity(counts.len());
        let mut total = 0usize;
        let owners = |c: f32| -> EvalResult<usize> {
            if c < 1.0 || c.fract() != 0.0 {
                return Err(EvalError::Usage(format!(
                    "sharded evaluation: a sample was computed by no node ({c})"
                )));
            }
            Ok(c as usize - 1)
        };
        for (i, &c) in counts.iter().enumerate() {
            let len = owners(c)?;
            if let Some(Some(mine)) = local.get(i) {
                if mine.len() != len {
                    return Err(EvalError::Usage(format!(
                        "sharded evaluation: sample {i} was computed by more than one node"
                    )));
                }
            }
            offsets.push((total, len));
            total += len;
        }
        // Round 2: the words, each at its sample's offset.
        let mut payload = vec![0f32; 2 * total];
        for (l, &(at, len)) in local.iter().zip(&offsets) {
            if let Some(words) = l {
                for (k, w) in words.iter().take(len).enumerate() {
                    payload[2 * (at + k)] = (w >> 16) as f32;
                    payload[2 * (at + k) + 1] = (w & 0xFFFF) as f32;
                }
            }
        }
        let payload = self.all_reduce_host(&payload)?;
        Ok(offsets
            .iter()
            .map(|&(at, len)| {
                (at..at + len)
                    .map(|k| ((payload[2 * k] as u32) << 16) | (payload[2 * k + 1] as u32))
                    .collect()
            })
            .collect())
    }
}

/// Every sample's result in order: this process's own (`local[i]` is `Some` for the samples it
/// computed) and, with `sharding`, the other processes' (gathered; the observer advances by
/// those). An error unless every sample has a result.
pub(crate) fn complete_words(
    sharding: Option<&dyn Sharding>,
    local: Vec<Option<Vec<u32>>>,
    observer: &mut dyn super::Observer,
) -> EvalResult<Vec<Vec<u32>>> {
    let n = local.len();
    let all = match sharding {
        None => local.into_iter().collect::<Option<Vec<_>>>(),
        Some(sh) => {
            let mine = local.iter().filter(|l| l.is_some()).count();
            let all = sh.gather(local)?;
            observer.advance(all.len().saturating_sub(mine));
            Some(all)
        }
    };
    all.filter(|a| a.len() == n)
        .ok_or_else(|| EvalError::Usage(format!("not every one of {n} samples was computed")))
}

/// [`complete_words`] for f32 results (carried as their bits: exact).
pub(crate) fn complete_f32(
    sharding: Option<&dyn Sharding>,
    local: Vec<Option<Vec<f32>>>,
    observer: &mut dyn super::Observer,
) -> EvalResult<Vec<Vec<f32>>> {
    let words = local
        .into_iter()
        .map(|l| l.map(|v| v.iter().map(|x| x.to_bits()).collect()))
        .collect();
    Ok(complete_words(sharding, words, observer)?
        .into_iter()
        .map(|w| w.into_iter().map(f32::from_bits).collect())
        .collect())
}
