//! A memory planner: what a GLM of a given config needs on each device, and whether it fits.
//!
//! [`plan`] counts, per tensor-parallel rank, the bytes of everything this implementation keeps on
//! a device while generating:
//!
//! - **weights** by kind, sharded as SAT shards them (spec §6): `query_key_value` and
//!   `dense_h_to_4h` column-parallel (rows ÷ N, biases ÷ N), `attention.dense` and `dense_4h_to_h`
//!   row-parallel (inputs ÷ N, full biases), LayerNorms replicated; INT8 one byte per weight, INT4
//!   `⌈in/2⌉` bytes per row, one F16 scale per output row per shard; the word embedding (tied LM
//!   head) never quantized, either vocab-parallel (`torch.chunk`: ⌈V/N⌉ rows, the last rank fewer)
//!   or replicated;
//! - **KV cache**: K and V of every layer, `batch × heads/N × sequence × head_dim` in the model dtype;
//! - **activation peak** of the prefill (`batch × sequence` tokens) and of one decode step: the
//!   largest set of live tensors inside one layer — residual, LayerNorm output, fused QKV and its
//!   rotated q/k/v, attention scores and probabilities in f32 (softmax in f32) plus the boolean mask,
//!   context, MLP `[value | gate]`, GeGLU output — or the final logits of the last rows (full
//!   vocabulary, f32), whichever is larger;
//! - **backend workspace**: a fixed allowance per device (CUDA context and library workspaces on a
//!   GPU, the process's own code and runtime on the CPU), given by the caller.
//!
//! With `offload`, layers stay in host memory and only as many as fit the budget (at least one,
//! the one being computed) are resident; the embedding, final LayerNorm and KV cache stay.
//!
//! Everything is exact integer arithmetic on the config; the tests check the GLM-130B README's
//! hardware table and measured peaks of small models.
//!
//! (Over 400 lines: the memory planner: every byte class of a device (weights by kind, KV cache, activations, workspace) and the fit searches.)

use serde::Serialize;

use crate::config::GlmConfig;
use crate::error::{Error, Result};

/// How the word embedding / tied LM head is laid out across tensor-parallel ranks.
pub use crate::parallel::EmbeddingLayout;

/// Weight format of the four linears of every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearFormat {
    /// Float, in the model dtype.
    Float,
    /// INT8 + F16 row scales.
    Int8,
    /// Packed INT4 + F16 row scales.
    Int4,
}

/// What to plan for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The model.
    pub config: GlmConfig,
    /// Bytes per element of float weights, activations and the KV cache (4 f32, 2 f16 / bf16).
    pub dtype_bytes: u64,
    /// The linears' format.
    pub linears: LinearFormat,
    /// Tensor-parallel degree (devices the model is split over).
    pub tensor_parallel: usize,
    /// Sequences generated together.
    pub batch: usize,
    /// Total tokens per sequence (prompt + generated).
    pub sequence_length: usize,
    /// Memory of each device; one value applies to every rank.
    pub device_memory: Vec<u64>,
    /// Layer-streamed offload.
    pub offload: bool,
    /// Embedding layout.
    pub embedding: EmbeddingLayout,
    /// Fixed allowance per device (backend context, libraries, process runtime).
    pub workspace: u64,
}

/// Weight bytes of one device, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct WeightBytes {
    /// The four linears of every layer (float, or integer values).
    pub linears: u64,
    /// Word embedding / tied LM head.
    pub embedding: u64,
    /// LayerNorm γ/β and linear biases.
    pub norms_biases: u64,
    /// INT8 / INT4 row scales.
    pub scales: u64,
}

impl WeightBytes {
    /// All weights.
    pub fn total(&self) -> u64 {
        self.linears + self.embedding + self.norms_biases + self.scales
    }
}

/// The plan of one device (tensor-parallel rank).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevicePlan {
    /// Rank.
    pub rank: usize,
    /// Its memory.
    pub device_memory: u64,
    /// Resident weights.
    pub weights: WeightBytes,
    /// Weights of one layer on this rank (the unit offload moves).
    pub layer_bytes: u64,
    /// Layers resident (all of them without offload).
    pub resident_layers: usize,
    /// KV cache at `batch × sequence_length`.
    pub kv_cache: u64,
    /// Activation peak of the prefill.
    pub activation_prefill: u64,
    /// Activation peak of one decode step.
    pub activation_decode: u64,
    /// Backend workspace allowance.
    pub workspace: u64,
    /// Weights + KV cache + the larger activation peak + workspace.
    pub total: u64,
    /// `total <= device_memory`.
    pub fits: bool,
    /// `device_memory − total` (negative: short by that much).
    pub margin: i128,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Every device fits.
    pub fits: bool,
    /// The embedding layout assumed.
    pub embedding: EmbeddingLayout,
    /// The linears' format.
    pub linears: LinearFormat,
    /// Tensor-parallel degree.
    pub tensor_parallel: usize,
    /// Batch planned for.
    pub batch: usize,
    /// Sequence length planned for.
    pub sequence_length: usize,
    /// Layer-streamed offload.
    pub offload: bool,
    /// Per device.
    pub devices: Vec<DevicePlan>,
    /// The largest batch that fits at `sequence_length` (0: none).
    pub max_batch: usize,
    /// The longest sequence that fits at `batch` (capped at the config's `max_sequence_length`;
    /// 0: none).
    pub max_sequence_length: usize,
}

fn mul(values: &[u64]) -> u64 {
    values.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// Rows of `torch.chunk(rows, n)` on `rank`: ⌈rows/n⌉ each, the last ranks fewer (possibly 0).
pub fn chunk_rows(rows: usize, n: usize, rank: usize) -> usize {
    let chunk = rows.div_ceil(n.max(1));
    rows.saturating_sub(chunk.saturating_mul(rank)).min(chunk)
}

struct Shapes {
    h: u64,
    f: u64,
    heads: u64,
    head_dim: u64,
    layers: u64,
    vocab: u64,
}

impl PlanRequest {
    fn check(&self) -> Result<Shapes> {
        self.config.validate()?;
        let c = &self.config;
        let n = self.tensor_parallel;
        let bad = |m: String| Err(Error::InvalidInput(m));
        if n == 0 || self.batch == 0 || self.sequence_length == 0 || self.dtype_bytes == 0 {
            return bad(
                "tensor-parallel degree, batch, sequence length and dtype size must be at least 1"
                    .into(),
            );
        }
        if !c.num_attention_heads.is_multiple_of(n) {
            return bad(format!(
                "tensor-parallel degree {n} does not divide the {} attention heads",
                c.num_attention_heads
            ));
        }
        if !c.inner_size().is_multiple_of(n) {
            return bad(format!(
                "tensor-parallel degree {n} does not divide the inner size {}",
                c.inner_size()
            ));
        }
        if self.device_memory.len() > 1 && self.device_memory.len() != n {
            return bad(format!(
                "{} device memories for a tensor-parallel degree of {n} (give one, or one per device)",
                self.device_memory.len()
            ));
        }
        let u = |x: usize| x as u64;
        Ok(Shapes {
            h: u(c.hidden_size),
            f: u(c.inner_size()),
            heads: u(c.num_attention_heads),
            head_dim: u(c.head_dim()),
            layers: u(c.num_layers),
            vocab: u(c.vocab_size),
        })
    }

    fn linear_bytes(&self, rows: u64, inputs: u64) -> (u64, u64) {
        match self.linears {
            LinearFormat::Float => (mul(&[rows, inputs, self.dtype_bytes]), 0),
            LinearFormat::Int8 => (mul(&[rows, inputs]), mul(&[rows, 2])),
            LinearFormat::Int4 => (mul(&[rows, inputs.div_ceil(2)]), mul(&[rows, 2])),
        }
    }

    /// (linears, scales, norms+biases) of one layer on one rank.
    fn layer(&self, s: &Shapes) -> (u64, u64, u64) {
        let n = self.tensor_parallel as u64;
        let parts = [
            (3 * s.h / n, s.h, 3 * s.h / n), // query_key_value: column-parallel
            (s.h, s.h / n, s.h),             // attention.dense: row-parallel, full bias
            (2 * s.f / n, s.h, 2 * s.f / n), // dense_h_to_4h: column-parallel
            (s.h, s.f / n, s.h),             // dense_4h_to_h: row-parallel, full bias
        ];
        let (mut lin, mut scales, mut bias) = (0u64, 0u64, 0u64);
        for (rows, inputs, b) in parts {
            let (w, sc) = self.linear_bytes(rows, inputs);
            lin = lin.saturating_add(w);
            scales = scales.saturating_add(sc);
            bias = bias.saturating_add(b);
        }
        let norms = 4 * s.h; // two LayerNorms, γ and β
        (
            lin,
            scales,
            bias.saturating_add(norms).saturating_mul(self.dtype_bytes),
        )
    }

    fn embedding_rows(&self, s: &Shapes, rank: usize) -> u64 {
        match self.embedding {
            EmbeddingLayout::Replicated => s.vocab,
            EmbeddingLayout::VocabParallel => {
                chunk_rows(s.vocab as usize, self.tensor_parallel, rank) as u64
            }
        }
    }

    fn kv_cache(&self, s: &Shapes, batch: u64, seq: u64) -> u64 {
        let n = self.tensor_parallel as u64;
        mul(&[
            2,
            s.layers,
            batch,
            s.heads / n,
            seq,
            s.head_dim,
            self.dtype_bytes,
        ])
    }

    /// Peak live activation bytes of a forward of `rows` new tokens per sequence over `keys`
    /// positions, logits for the last row of each sequence.
    fn activations(&self, s: &Shapes, batch: u64, rows: u64, keys: u64) -> u64 {
        let n = self.tensor_parallel as u64;
        let e = self.dtype_bytes;
        let tokens = batch.saturating_mul(rows);
        let heads = s.heads / n;
        // Attention: residual + LN out (h), fused QKV and rotated q/k/v (2 × 3h/N), context
        // (h/N), partial output (h); scores + probabilities in f32 and the boolean mask.
        let attn_tokens = mul(&[tokens, 3 * s.h + 6 * s.h / n + s.h / n, e]);
        let attn_scores = mul(&[batch, heads, rows, keys, 4 * 2 + 1]);
        // MLP: residual + LN out (h), [value | gate] (2f/N), GeGLU (f/N), output (h).
        let mlp = mul(&[tokens, 3 * s.h + 3 * s.f / n, e]);
        // Logits of the last row of each sequence, full vocabulary (gathered), f32, and the
        // log-softmax / sampling copy.
        let logits = mul(&[batch, s.vocab, 4, 2]);
        attn_tokens.saturating_add(attn_scores).max(mlp).max(logits)
    }

    fn device(&self, s: &Shapes, rank: usize, batch: u64, seq: u64) -> DevicePlan {
        let (lin, scales, nb) = self.layer(s);
        let layer_bytes = lin.saturating_add(scales).saturating_add(nb);
        let embedding = mul(&[self.embedding_rows(s, rank), s.h, self.dtype_bytes]);
        let final_ln = 2 * s.h * self.dtype_bytes;
        let memory = self
            .device_memory
            .get(rank)
            .or(self.device_memory.first())
            .copied()
            .unwrap_or(0);
        let kv_cache = self.kv_cache(s, batch, seq);
        let activation_prefill = self.activations(s, batch, seq, seq);
        let activation_decode = self.activations(s, batch, 1, seq);
        let fixed = embedding
            .saturating_add(final_ln)
            .saturating_add(kv_cache)
            .saturating_add(activation_prefill.max(activation_decode))
            .saturating_add(self.workspace);
        let resident_layers = if self.offload {
            // At least the layer being computed; as many more as the budget holds.
            let room = memory.saturating_sub(fixed);
            (room / layer_bytes.max(1)).clamp(1, s.layers) as usize
        } else {
            s.layers as usize
        };
        let r = resident_layers as u64;
        let weights = WeightBytes {
            linears: lin.saturating_mul(r),
            embedding,
            norms_biases: nb.saturating_mul(r).saturating_add(final_ln),
            scales: scales.saturating_mul(r),
        };
        let total = weights
            .total()
            .saturating_add(kv_cache)
            .saturating_add(activation_prefill.max(activation_decode))
            .saturating_add(self.workspace);
        DevicePlan {
            rank,
            device_memory: memory,
            weights,
            layer_bytes,
            resident_layers,
            kv_cache,
            activation_prefill,
            activation_decode,
            workspace: self.workspace,
            total,
            fits: total <= memory,
            margin: i128::from(memory) - i128::from(total),
        }
    }

    fn fits_at(&self, s: &Shapes, batch: u64, seq: u64) -> bool {
        (0..self.tensor_parallel).all(|r| self.device(s, r, batch, seq).fits)
    }
}

/// Plans `request` (see the module docs).
///
/// # Errors
/// An invalid config, a tensor-parallel degree that does not divide the heads or the inner size,
/// zero sizes, or a device-memory list that is neither one value nor one per rank.
pub fn plan(request: &PlanRequest) -> Result<Plan> {
    let s = request.check()?;
    let (b, seq) = (request.batch as u64, request.sequence_length as u64);
    let devices: Vec<DevicePlan> = (0..request.tensor_parallel)
        .map(|r| request.device(&s, r, b, seq))
        .collect();
    let fits = devices.iter().all(|d| d.fits);
    // Largest batch at this length / longest sequence at this batch: both grow memory
    // monotonically, so a doubling search then bisection finds them.
    let largest = |cap: u64, at: &dyn Fn(u64) -> bool| -> u64 {
        if !at(1) {
            return 0;
        }
        let mut lo = 1u64;
        let mut hi = 2u64;
        while hi <= cap && at(hi) {
            lo = hi;
            hi = hi.saturating_mul(2);
        }
        let mut hi = hi.min(cap.saturating_add(1));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if at(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let max_batch = largest(1 << 20, &|x| request.fits_at(&s, x, seq)) as usize;
    let max_sequence_length = largest(request.config.max_sequence_length as u64, &|x| {
        request.fits_at(&s, b, x)
    }) as usize;
    Ok(Plan {
        fits,
        embedding: request.embedding,
        linears: request.linears,
        tensor_parallel: request.tensor_parallel,
        batch: request.batch,
        sequence_length: request.sequence_length,
        offload: request.offload,
        devices,
        max_batch,
        max_sequence_length,
    })
}

/// Parses a memory size: `24GiB`, `40G` / `40GB` (decimal), `512MiB`, `1.5TiB`, or plain bytes.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::InvalidInput(format!("`{text}`: expected a size such as 24GiB")))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::InvalidInput(format!(
                "`{text}`: unknown unit `{other}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(Error::InvalidInput(format!("`{text}`: out of range")));
    }
    Ok(bytes.round() as u64)
}

/// `bytes` as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_chunk_rows() {
        // torch.chunk(10, 4) → 3, 3, 3, 1; torch.chunk(9, 4) → 3, 3, 3, 0.
        let rows: Vec<usize> = (0..4).map(|r| chunk_rows(10, 4, r)).collect();
        assert_eq!(rows, vec![3, 3, 3, 1]);
        let rows: Vec<usize> = (0..4).map(|r| chunk_rows(9, 4, r)).collect();
        assert_eq!(rows, vec![3, 3, 3, 0]);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_bytes("40GB").unwrap(), 40_000_000_000);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("GiB").is_err());
    }
}
