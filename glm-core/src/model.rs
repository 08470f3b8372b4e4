//! [`GlmModel`]: the GLM-130B network (SAT 0.2.12 `GLM130B`, spec §2).
//!
//! Plain embedding lookup (no scaling, no position embedding) → N DeepNorm layers → final LayerNorm
//! → logits tied to the word embedding (no bias).
//!
//! (Over 400 lines: the model type with its loaders, every forward variant (inference, cached, chosen rows, training) and the input checks they share.)

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};

use crate::attention::SelfAttention;
use crate::blank::GlmInput;
use crate::cache::KvCache;
use crate::config::GlmConfig;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::geglu::GeGlu;
use crate::layer::{GlmLayer, LayerInput};
use crate::layernorm::LayerNorm;
use crate::linear::GlmLinear;
use crate::parallel::{EmbeddingLayout, ShardDims, TpRank};
use crate::rotary::{Rotary, RotaryPrecision, RotaryTables};
use crate::weights::{check_source, load_float, param_specs, WeightSource};

/// Builds one linear layer from its name prefix and `(out, in)` shape (see [`GlmModel::build`]).
pub type LinearLoader<'a, B> = dyn FnMut(&str, usize, usize) -> Result<GlmLinear<B>> + 'a;

/// How to build a model: float dtype of parameters/activations and rotary table precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// Dtype of weights and activations (softmax and LayerNorm statistics are always f32).
    pub dtype: DType,
    /// Rotary tables: SAT-exact fp16 (default) or exact fp32.
    pub rotary: RotaryPrecision,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            rotary: RotaryPrecision::Fp16Sat,
        }
    }
}

/// What [`GlmModel::forward_with`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput<B: Backend> {
    /// Logits, `[batch, seq, vocab]` (or `[batch, 1, vocab]` with `last_only`).
    pub logits: Tensor<B, 3>,
    /// Output of every layer before the final LayerNorm, `[batch, seq, hidden]` each, if requested.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

/// Options of [`GlmModel::forward_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Keep every layer's output.
    pub hidden_states: bool,
    /// Compute logits for the last row only (what decoding needs; saves a vocab-sized GEMM per row).
    pub last_only: bool,
}

/// The GLM-130B model, generic over the burn backend.
#[derive(Module, Debug)]
pub struct GlmModel<B: Backend> {
    /// `transformer.word_embeddings.weight`, `[vocab, hidden]`; also the output projection.
    pub word_embeddings: Param<Tensor<B, 2>>,
    /// `transformer.layers.*`.
    pub layers: Vec<GlmLayer<B>>,
    /// `transformer.final_layernorm`.
    pub final_layernorm: LayerNorm<B>,
    rotary: Rotary<B>,
    #[module(skip)]
    config: GlmConfig,
    /// Layers streamed from the checkpoint (layer-streamed offload), if any.
    #[module(skip)]
    pub(crate) offload: Option<crate::offload::OffloadStore>,
    /// The tensor-parallel rank this model is (`None`: the whole model on one device).
    #[module(skip)]
    pub(crate) tp: Option<TpRank>,
}

impl<B: Backend> GlmModel<B> {
    /// The model's configuration.
    pub fn config(&self) -> &GlmConfig {
        &self.config
    }

    /// The rotary tables every layer uses.
    pub fn rotary(&self) -> &Rotary<B> {
        &self.rotary
    }

    /// The tensor-parallel rank this model is, if it holds one shard of a
    /// [`TensorParallel`](crate::parallel::TensorParallel) group.
    pub fn tensor_parallel_rank(&self) -> Option<&TpRank> {
        self.tp.as_ref()
    }

    /// Attention heads this model computes (all of them, or this rank's share).
    pub fn local_heads(&self) -> usize {
        self.tp
            .as_ref()
            .map_or(self.config.num_attention_heads, |tp| tp.dims().heads)
    }

    /// The group's first failure, if this is a tensor-parallel rank and any rank failed.
    fn tp_check(&self) -> Result<()> {
        self.tp.as_ref().map_or(Ok(()), TpRank::check)
    }

    /// Dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.word_embeddings.val().dtype()
    }

    /// Logits for the given inputs.
    ///
    /// Checks the inputs first (see [`forward_with`](Self::forward_with)): a typed error, never a
    /// backend panic or garbage, for inconsistent shapes or ids out of range.
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, seq]` (ids < vocab, positions < max_sequence_length)
    /// - `mask`: `[batch | 1, 1, seq, seq]`, `true` = blocked (the original boolean convention)
    /// - output: `[batch, seq, vocab]`
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
    ) -> Result<Tensor<B, 3>> {
        Ok(self
            .forward_with(tokens, position_ids, mask, None, ForwardOptions::default())?
            .logits)
    }

    /// Like [`forward`](Self::forward) through the KV cache: the new rows attend to every cached
    /// key plus the new ones, and their keys/values are appended to `cache`.
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, new]`
    /// - `mask`: `[batch | 1, 1, new, cached + new]`
    /// - output: `[batch, new, vocab]`
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        Ok(self
            .forward_with(
                tokens,
                position_ids,
                mask,
                Some(cache),
                ForwardOptions::default(),
            )?
            .logits)
    }

    /// The general forward pass (optional cache, hidden states, last-row logits).
    ///
    /// Before anything runs on the device, the inputs are checked (see
    /// [`check_tensors`](Self::check_tensors)): shapes from the tensors' dims (free), id ranges
    /// with one small min/max reduction read back to the host. On error the cache is untouched.
    pub fn forward_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
        options: ForwardOptions,
    ) -> Result<ForwardOutput<B>> {
        self.check_tensors(&tokens, &position_ids, &mask, cache.as_deref())?;
        self.forward_checked(tokens, position_ids, mask, cache, options, None)
    }

    /// [`forward_with`](Self::forward_with) for a batch of sequences of different lengths padded
    /// at the end (e.g. prompts prefilled together): the logits of one position per batch row,
    /// `last[i]` for row `i` (its last real token), as `last_only` gives for unpadded rows. The
    /// caller's mask blocks the padded keys of every real row; what the padded rows compute is
    /// not used. A `last` list of the wrong length or with a position outside the rows is a typed
    /// error (nothing runs).
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, seq]`; `mask`: `[batch | 1, 1, seq, cached + seq]`
    /// - `last`: `batch` positions `< seq` → logits `[batch, 1, vocab]`
    pub fn forward_last_at(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
        last: &[usize],
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = tokens.dims();
        if last.len() != batch || last.iter().any(|&p| p >= seq) {
            return Err(Error::InvalidInput(format!(
                "forward_last_at: {} last positions {last:?} for {batch} rows of {seq}",
                last.len()
            )));
        }
        self.check_tensors(&tokens, &position_ids, &mask, cache.as_deref())?;
        let options = ForwardOptions::default();
        let out = self.forward_checked(tokens, position_ids, mask, cache, options, Some(last))?;
        Ok(out.logits)
    }

    /// [`forward_with`](Self::forward_with) on host-side inputs: `input` is validated on the host
    /// ([`GlmInput::validate`]: lengths, ids, positions; no device round trip) and uploaded.
    pub fn forward_input(
        &self,
        input: &GlmInput,
        options: ForwardOptions,
    ) -> Result<ForwardOutput<B>> {
        input.validate(&self.config)?;
        let device = self.word_embeddings.val().device();
        let (tokens, position_ids, mask) = input.try_to_tensors::<B>(&device)?;
        self.forward_checked(tokens, position_ids, mask, None, options, None)
    }

    /// Checks device-side inputs against this model and `cache`: tokens and positions `[batch,
    /// seq]` with `batch, seq ≥ 1`, mask `[batch | 1, 1, seq, cached + seq]`, the cache (if any)
    /// of this model's layers and of the same batch, token ids in `0..vocab_size` and positions in
    /// `0..max_sequence_length`.
    ///
    /// `max_sequence_length` bounds the positions (the rotary tables), not the number of rows:
    /// padded evaluation batches and `[MASK]` generation (every generated row at the mask's
    /// position) legitimately run longer, as in the original. Prompt lengths are checked where
    /// prompts are built (glm-infer, [`BlankInput::validate`](crate::blank::BlankInput::validate)).
    ///
    /// Shapes are read from the tensors' dims; the id ranges take one min/max reduction over the
    /// ids, read back to the host (a few bytes; ids live only on the device here).
    pub fn check_tensors(
        &self,
        tokens: &Tensor<B, 2, Int>,
        position_ids: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<&KvCache<B>>,
    ) -> Result<()> {
        let [batch, seq] = tokens.dims();
        if batch == 0 || seq == 0 {
            return Err(Error::InvalidInput(format!(
                "empty input: tokens have shape [{batch}, {seq}]"
            )));
        }
        if position_ids.dims() != [batch, seq] {
            return Err(Error::InvalidInput(format!(
                "position ids have shape {:?}, tokens [{batch}, {seq}]",
                position_ids.dims()
            )));
        }
        let cached = match cache {
            Some(cache) => {
                cache.check_compatible(
                    self.config.num_layers,
                    self.local_heads(),
                    self.config.head_dim(),
                    batch,
                )?;
                cache.len()
            }
            None => 0,
        };
        let keys = cached.checked_add(seq).ok_or_else(|| {
            Error::InvalidInput(format!("{cached} cached + {seq} new rows overflow"))
        })?;
        let [mask_batch, mask_heads, mask_rows, mask_keys] = mask.dims();
        if !(mask_batch == batch || mask_batch == 1)
            || mask_heads != 1
            || mask_rows != seq
            || mask_keys != keys
        {
            return Err(Error::InvalidInput(format!(
                "mask has shape {:?}, expected [{batch} | 1, 1, {seq}, {keys}]",
                mask.dims()
            )));
        }
        // One reduction: [[min t, max t], [min p, max p]] over the flattened ids.
        let n = batch * seq;
        let ids = Tensor::cat(
            vec![
                tokens.clone().reshape([1, n]),
                position_ids.clone().reshape([1, n]),
            ],
            0,
        );
        let bounds = Tensor::cat(vec![ids.clone().min_dim(1), ids.max_dim(1)], 1).into_data();
        let bounds: Vec<i64> = bounds.iter::<i64>().collect();
        let [t_min, t_max, p_min, p_max] = bounds[..] else {
            return Err(Error::InvalidInput(format!(
                "id range check returned {} values",
                bounds.len()
            )));
        };
        self.check_range(
            "token id",
            t_min,
            t_max,
            self.config.vocab_size,
            "vocab_size",
        )?;
        self.check_range(
            "position id",
            p_min,
            p_max,
            self.config.max_sequence_length,
            "max_sequence_length",
        )
    }

    fn check_range(&self, what: &str, min: i64, max: i64, end: usize, field: &str) -> Result<()> {
        let end_i64 = i64::try_from(end).unwrap_or(i64::MAX);
        if min < 0 || max >= end_i64 {
            let bad = if min < 0 { min } else { max };
            return Err(Error::InvalidInput(format!(
                "{what} {bad} is outside 0..{end} ({field})"
            )));
        }
        Ok(())
    }

    /// The forward pass on inputs already checked against this model; with `at`, the logits of
    /// position `at[i]` of each row `i` only (checked by the caller).
    fn forward_checked(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
        options: ForwardOptions,
        at: Option<&[usize]>,
    ) -> Result<ForwardOutput<B>> {
        let [batch, seq] = tokens.dims();
        self.in_host_pool(batch.saturating_mul(seq), || {
            let x = self.embed_checked(tokens);
            let (mut x, hidden_states) =
                self.run_layers(x, position_ids, mask, cache, options.hidden_states)?;
            if let Some(at) = at {
                let rows = at
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| x.clone().narrow(0, i, 1).narrow(1, p, 1))
                    .collect();
                x = Tensor::cat(rows, 0);
            } else if options.last_only {
                let seq = x.dims()[1];
                x = x.narrow(1, seq.saturating_sub(1), 1);
            }
            let logits = self.logits(self.final_layernorm.forward(x));
            self.tp_check()?;
            Ok(ForwardOutput {
                logits,
                hidden_states,
            })
        })
    }

    /// Runs `f` (a whole forward pass over `rows` token rows) through
    /// [`run_on_host_pool`](crate::host_pool::run_on_host_pool) when the model computes on the
    /// host (the CPU backend) without tensor parallelism, directly otherwise; the other workers
    /// spin for decode-sized passes (at most
    /// [`F32_GEMV_MAX_ROWS`](glm_quant::kernels::host_f32::F32_GEMV_MAX_ROWS) rows: the skinny
    /// kernels' sizes, no OpenBLAS).
    /// Tensor-parallel ranks stay on their own threads (their collectives block; more ranks than
    /// workers would wait on each other).
    fn in_host_pool<R: Send>(&self, rows: usize, f: impl FnOnce() -> R + Send) -> R {
        if self.tp.is_none() && crate::parallel::runs_on_host::<B>() {
            let decode = rows <= glm_quant::kernels::host_f32::F32_GEMV_MAX_ROWS;
            crate::host_pool::run_on_host_pool(decode, f)
        } else {
            f()
        }
    }

    /// Every layer in order (resident or streamed), optionally keeping each output.
    fn run_layers(
        &self,
        mut x: Tensor<B, 3>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
        keep: bool,
    ) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>)> {
        let mut hidden_states = Vec::new();
        // Rotary angles, mask and cache: built once, shared by every layer.
        let mut input = LayerInput::new(
            &self.rotary,
            position_ids,
            self.local_heads(),
            mask,
            cache,
            None,
        )
        .with_tp(self.tp.as_ref());
        self.tp_check()?;
        for l in 0..self.config.num_layers {
            x = self.with_layer(l, |layer| layer.forward(x, &mut input))?;
            // A failed rank leaves shape-correct placeholders behind: stop here.
            self.tp_check()?;
            if keep {
                hidden_states.push(x.clone());
            }
        }
        Ok((x, hidden_states))
    }

    /// The cached forward with the logits of ONE chosen row per batch entry (`rows[b]`, e.g. each
    /// sample's last context row of a ragged batch): the layers, then the final LayerNorm and the
    /// LM head on those rows only. Inputs are checked as in [`forward_cached`](Self::forward_cached).
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, seq]`; `mask`: `[batch | 1, 1, seq, cached + seq]`
    /// - `rows`: `batch` row indices below `seq`
    /// - output: `[batch, 1, vocab]`
    pub fn forward_cached_rows(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: &mut KvCache<B>,
        rows: &[usize],
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = tokens.dims();
        if rows.len() != batch {
            return Err(Error::InvalidInput(format!(
                "{} rows chosen for a batch of {batch}",
                rows.len()
            )));
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= seq) {
            return Err(Error::InvalidInput(format!(
                "row {bad} is outside a sequence of {seq}"
            )));
        }
        self.check_tensors(&tokens, &position_ids, &mask, Some(&*cache))?;
        self.in_host_pool(batch.saturating_mul(seq), || {
            let device = tokens.device();
            let x = self.embed_checked(tokens);
            let (x, _) = self.run_layers(x, position_ids, mask, Some(cache), false)?;
            let hidden = x.dims()[2];
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [batch]), &device)
                .reshape([batch, 1, 1])
                .expand([batch, 1, hidden]);
            let logits = self.logits(self.final_layernorm.forward(x.gather(1, idx)));
            self.tp_check()?;
            Ok(logits)
        })
    }

    /// The inference forward up to the final LayerNorm, without the logits: what scoring chosen
    /// rows needs ([`logits`](Self::logits) on the rows it picks). Inputs are checked as in
    /// [`forward`](Self::forward); offloaded layers are streamed.
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, seq]`; `mask`: `[batch | 1, 1, seq, seq]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward_normed(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
    ) -> Result<Tensor<B, 3>> {
        self.check_tensors(&tokens, &position_ids, &mask, None)?;
        let [batch, seq] = tokens.dims();
        self.in_host_pool(batch.saturating_mul(seq), || {
            let x = self.embed_checked(tokens);
            let (x, _) = self.run_layers(x, position_ids, mask, None, false)?;
            Ok(self.final_layernorm.forward(x))
        })
    }

    /// The training forward pass: embedding lookup with the embedding-gradient shrink, dropout
    /// where the original has it (embedding output, attention probabilities, attention and MLP
    /// outputs), the layers and the final LayerNorm. Returns the normalised hidden states; apply
    /// [`logits`](Self::logits) to the rows that carry a loss (saves the vocab GEMM elsewhere).
    ///
    /// `shrink_alpha` is the embedding gradient shrink α (spec §8, 0.1 for GLM-130B, 1 = off): the
    /// forward value is unchanged, the gradient reaching the embedding through the LOOKUP is
    /// scaled by α (`h·α + h.detach()·(1−α)`); the tied output projection is not shrunk.
    /// With `Dropout::disabled()` and α = 1 this equals the inference forward.
    ///
    /// # Shapes
    /// - `tokens`, `position_ids`: `[batch, seq]`
    /// - `mask`: `[batch | 1, 1, seq, seq]`, `true` = blocked
    /// - output: `[batch, seq, hidden]` (after the final LayerNorm)
    ///
    /// This is the training hot path and trusts its inputs: the batch must have been checked on the
    /// host ([`GlmInput::validate`], what glm-train's batcher builds from) — out-of-range ids
    /// panic in the backend's lookup or read garbage. [`try_forward_train`](Self::try_forward_train)
    /// checks device-side inputs first.
    ///
    /// # Panics
    /// On a layer-streamed (offloaded) model, which is for inference only.
    pub fn forward_train(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        shrink_alpha: f64,
        dropout: &mut Dropout,
    ) -> Tensor<B, 3> {
        let mut x = self.embed_checked(tokens);
        if shrink_alpha != 1.0 {
            x = x.clone() * shrink_alpha + x.detach() * (1.0 - shrink_alpha);
        }
        x = dropout.hidden(x);
        // Training runs on resident models (glm-train never builds an offloaded one); a model
        // from `from_source_offloaded` is for inference and `try_forward_train` refuses it.
        assert!(
            self.offload.is_none() && self.tp.is_none(),
            "forward_train on a layer-streamed (offloaded) or tensor-parallel model: those are for \
             inference"
        );
        let mut input = LayerInput::new(
            &self.rotary,
            position_ids,
            self.local_heads(),
            mask,
            None,
            Some(dropout),
        );
        for layer in &self.layers {
            x = layer.forward(x, &mut input);
        }
        self.final_layernorm.forward(x)
    }

    /// [`forward_train`](Self::forward_train) after [`check_tensors`](Self::check_tensors) (one
    /// min/max reduction over the ids).
    pub fn try_forward_train(
        &self,
        tokens: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        shrink_alpha: f64,
        dropout: &mut Dropout,
    ) -> Result<Tensor<B, 3>> {
        if self.offload.is_some() || self.tp.is_some() {
            return Err(Error::InvalidInput(
                "a layer-streamed (offloaded) or tensor-parallel model is for inference; train a \
                 resident model on one device (data parallelism: glm-train)"
                    .into(),
            ));
        }
        self.check_tensors(&tokens, &position_ids, &mask, None)?;
        Ok(self.forward_train(tokens, position_ids, mask, shrink_alpha, dropout))
    }

    /// Word-embedding lookup (no scaling, no position embedding); ids outside `0..vocab_size` are
    /// a typed error (one min/max reduction read back to the host).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` → `[batch, seq, hidden]`
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        let [batch, seq] = tokens.dims();
        if batch == 0 || seq == 0 {
            return Err(Error::InvalidInput(format!(
                "empty input: tokens have shape [{batch}, {seq}]"
            )));
        }
        let flat = tokens.clone().reshape([1, batch * seq]);
        let bounds = Tensor::cat(vec![flat.clone().min_dim(1), flat.max_dim(1)], 1).into_data();
        let bounds: Vec<i64> = bounds.iter::<i64>().collect();
        let [min, max] = bounds[..] else {
            return Err(Error::InvalidInput(format!(
                "id range check returned {} values",
                bounds.len()
            )));
        };
        self.check_range("token id", min, max, self.config.vocab_size, "vocab_size")?;
        Ok(self.embed_checked(tokens))
    }

    fn embed_checked(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let Some(tp) = self.vocab_parallel() else {
            return burn::tensor::module::embedding(self.word_embeddings.val(), tokens);
        };
        // SAT's VocabParallelEmbedding: ids outside this rank's rows look up row 0 and are
        // zeroed, then the ranks' rows are summed (each id has exactly one non-zero row).
        let [batch, seq] = tokens.dims();
        let hidden = self.config.hidden_size;
        let rows = &tp.dims().vocab;
        let (start, end) = (rows.start as i64, rows.end as i64);
        let outside = tokens
            .clone()
            .lower_elem(start)
            .bool_or(tokens.clone().greater_equal_elem(end));
        let local = (tokens - start).mask_fill(outside.clone(), 0);
        let rows = burn::tensor::module::embedding(self.word_embeddings.val(), local);
        let rows = rows.mask_fill(
            outside
                .reshape([batch, seq, 1])
                .expand([batch, seq, hidden]),
            0.0,
        );
        tp.all_reduce(rows)
    }

    /// The tensor-parallel rank, when it holds a vocabulary-parallel embedding over several ranks.
    fn vocab_parallel(&self) -> Option<&TpRank> {
        self.tp.as_ref().filter(|tp| {
            tp.dims().world > 1 && tp.dims().embedding == EmbeddingLayout::VocabParallel
        })
    }

    /// Tied output projection: `h · Eᵀ`, no bias. On a vocabulary-parallel tensor-parallel rank
    /// each rank computes the logits of its rows and they are gathered (an all-reduce of the
    /// zero-padded logits, exact), so every rank returns the whole vocabulary.
    ///
    /// # Shapes
    /// - `normed`: `[batch, seq, hidden]` (after the final LayerNorm) → `[batch, seq, vocab]`
    pub fn logits(&self, normed: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = normed.dims();
        let vocab = self.config.vocab_size;
        let x = normed.reshape([batch * seq, hidden]);
        let w = self.word_embeddings.val();
        // CPU fast path (Flex, f32: the skinny GEMM up to 16 rows, the own prefill GEMM or
        // OpenBLAS above); the generic matmul otherwise.
        let y = match glm_quant::kernels::try_linear_f32(x, &w, None) {
            Ok(y) => y,
            Err(x) => x.matmul(w.transpose()),
        };
        let y = match self.vocab_parallel() {
            None => y,
            Some(tp) => {
                let rows = &tp.dims().vocab;
                let n = batch * seq;
                let device = y.device();
                let dtype = y.dtype();
                let mut parts = Vec::with_capacity(3);
                if rows.start > 0 {
                    parts.push(Tensor::zeros([n, rows.start], (&device, dtype)));
                }
                parts.push(y);
                if rows.end < vocab {
                    parts.push(Tensor::zeros([n, vocab - rows.end], (&device, dtype)));
                }
                tp.all_reduce(Tensor::cat(parts, 1))
            }
        };
        y.reshape([batch, seq, vocab])
    }

    /// An empty KV cache sized for this model (this rank's heads on a tensor-parallel rank).
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.num_layers)
    }

    /// Loads a model from a checkpoint under the original names, converting to `options.dtype`.
    ///
    /// Checks the whole checkpoint first (missing / unexpected tensors, layer count, shapes,
    /// dtypes), so nothing is allocated on the device for a bad file.
    pub fn from_source(
        config: &GlmConfig,
        source: &dyn WeightSource,
        device: &B::Device,
        options: ModelOptions,
    ) -> Result<Self> {
        config.validate()?;
        config.validate_rotary(options.rotary)?;
        let specs = param_specs(config);
        check_source(source, &specs, config.num_layers, &|_| false)?;
        let fetch = |name: &str| load_float(source, name, options.dtype);
        Self::build(
            config,
            device,
            options,
            &mut |name, _shape| fetch(name),
            &mut |prefix, _out, _in| {
                Ok(GlmLinear::new(
                    Tensor::from_data(fetch(&format!("{prefix}.weight"))?, (device, options.dtype)),
                    Tensor::from_data(fetch(&format!("{prefix}.bias"))?, (device, options.dtype)),
                ))
            },
        )
    }

    /// A model with random weights: GLM's DeepNorm init drawn on the host by
    /// [`RandomSource`](crate::weights::RandomSource) (weights N(0, gain/√fan_in) with gain
    /// (2N)^-½ for the value rows, `attention.dense` and the MLP, 1 elsewhere; biases 0;
    /// LayerNorm γ=1 β=0; spec §8). The same seed gives the same weights as the checkpoint
    /// `glm init-random` streams to disk, on every backend.
    pub fn random(
        config: &GlmConfig,
        device: &B::Device,
        options: ModelOptions,
        seed: u64,
    ) -> Result<Self> {
        let source = crate::weights::RandomSource::new(config, seed)?;
        Self::from_source(config, &source, device, options)
    }

    /// Assembles a model: `fetch(name, shape)` gives every non-linear tensor (embedding,
    /// LayerNorms) in the model dtype, `linear(prefix, out, in)` builds each of the four linears
    /// of every layer (float or quantized: this is where glm-quant plugs in).
    pub fn build(
        config: &GlmConfig,
        device: &B::Device,
        options: ModelOptions,
        fetch: &mut dyn FnMut(&str, &[usize]) -> Result<TensorData>,
        linear: &mut LinearLoader<'_, B>,
    ) -> Result<Self> {
        Self::build_first(
            config,
            &ShardDims::single(config),
            device,
            options,
            fetch,
            linear,
            config.num_layers,
        )
    }

    /// [`build`](Self::build) with only the first `resident` layers (offload streams the rest),
    /// of the sizes `dims` holds (one tensor-parallel rank, or the whole model).
    pub(crate) fn build_first(
        config: &GlmConfig,
        dims: &ShardDims,
        device: &B::Device,
        options: ModelOptions,
        fetch: &mut dyn FnMut(&str, &[usize]) -> Result<TensorData>,
        linear: &mut LinearLoader<'_, B>,
        resident: usize,
    ) -> Result<Self> {
        config.validate()?;
        config.validate_rotary(options.rotary)?;
        let h = config.hidden_size;
        let dtype = options.dtype;
        let final_layernorm = {
            let mut t1 = |name: String| -> Result<Tensor<B, 1>> {
                Ok(Tensor::from_data(fetch(&name, &[h])?, (device, dtype)))
            };
            LayerNorm::new(
                t1("transformer.final_layernorm.weight".into())?,
                t1("transformer.final_layernorm.bias".into())?,
                config.layernorm_epsilon,
            )
        };
        let mut layers = Vec::with_capacity(resident);
        for l in 0..resident.min(config.num_layers) {
            layers.push(Self::assemble_layer(
                config, dims, l, device, dtype, fetch, linear,
            )?);
        }
        let emb = fetch("transformer.word_embeddings.weight", &[dims.vocab.len(), h])?;
        let rotary = RotaryTables::new(
            config.head_dim(),
            config.max_sequence_length,
            config.rotary_base,
            options.rotary,
        )?
        .to_device(device, options.dtype);
        Ok(Self {
            word_embeddings: Param::from_tensor(Tensor::from_data(emb, (device, dtype))),
            layers,
            final_layernorm,
            rotary,
            config: config.clone(),
            offload: None,
            tp: None,
        })
    }

    /// Builds layer `l` from `fetch` (its LayerNorms, model dtype) and `linear` (its four linears):
    /// what [`build`](Self::build) does per layer and what layer-streamed offload does before a
    /// layer's forward.
    pub(crate) fn assemble_layer(
        config: &GlmConfig,
        dims: &ShardDims,
        l: usize,
        device: &B::Device,
        dtype: DType,
        fetch: &mut dyn FnMut(&str, &[usize]) -> Result<TensorData>,
        linear: &mut LinearLoader<'_, B>,
    ) -> Result<GlmLayer<B>> {
        let h = config.hidden_size;
        let p = format!("transformer.layers.{l}.");
        let mut linear = |suffix: &str| {
            let (out, inp) = dims.linear_dims(suffix);
            linear(&format!("{p}{suffix}"), out, inp)
        };
        let mut ln = |name: &str| -> Result<LayerNorm<B>> {
            let mut t1 = |part: &str| -> Result<Tensor<B, 1>> {
                Ok(Tensor::from_data(
                    fetch(&format!("{p}{name}.{part}"), &[h])?,
                    (device, dtype),
                ))
            };
            Ok(LayerNorm::new(
                t1("weight")?,
                t1("bias")?,
                config.layernorm_epsilon,
            ))
        };
        let input_layernorm = ln("input_layernorm")?;
        let post_attention_layernorm = ln("post_attention_layernorm")?;
        Ok(GlmLayer {
            input_layernorm,
            attention: SelfAttention {
                query_key_value: linear("attention.query_key_value")?,
                dense: linear("attention.dense")?,
                num_heads: dims.heads,
                layer_id: l,
            },
            post_attention_layernorm,
            mlp: GeGlu {
                dense_h_to_4h: linear("mlp.dense_h_to_4h")?,
                dense_4h_to_h: linear("mlp.dense_4h_to_h")?,
            },
            deepnorm_alpha: config.deepnorm_alpha(),
        })
    }

    /// Every parameter under its original name (host copies, in the model dtype). Fails only when
    /// a quantized weight cannot be read back from its device tensors.
    pub fn named_tensors(&self) -> Result<BTreeMap<String, TensorData>> {
        if let Some(store) = &self.offload {
            return Err(Error::InvalidInput(format!(
                "only {} of {} layers are resident (layer-streamed offload): save the checkpoint \
                 the model streams from instead",
                store.resident_layers(),
                self.config.num_layers
            )));
        }
        let mut out = BTreeMap::new();
        out.insert(
            "transformer.word_embeddings.weight".to_string(),
            self.word_embeddings.val().into_data(),
        );
        let put_ln = |out: &mut BTreeMap<String, TensorData>, p: String, ln: &LayerNorm<B>| {
            out.insert(format!("{p}.weight"), ln.weight.val().into_data());
            out.insert(format!("{p}.bias"), ln.bias.val().into_data());
        };
        put_ln(
            &mut out,
            "transformer.final_layernorm".into(),
            &self.final_layernorm,
        );
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("transformer.layers.{l}.");
            put_ln(
                &mut out,
                format!("{p}input_layernorm"),
                &layer.input_layernorm,
            );
            put_ln(
                &mut out,
                format!("{p}post_attention_layernorm"),
                &layer.post_attention_layernorm,
            );
            for (name, lin) in layer.linears() {
                lin.export(&format!("{p}{name}"), &mut out)?;
            }
        }
        Ok(out)
    }

    /// Saves every parameter as safetensors under the original names, converted to `dtype`
    /// (atomic: temp + rename). A quantized model keeps its integer weights and scales (see
    /// `save_quantized_safetensors`); `dtype` then applies to the float tensors.
    pub fn save_safetensors(&self, path: impl AsRef<std::path::Path>, dtype: DType) -> Result<()> {
        if self.quantization().is_some() {
            // Integer weights must stay integers and carry the scheme marker.
            return self.save_quantized_safetensors(path, dtype);
        }
        let tensors = self
            .named_tensors()?
            .into_iter()
            .map(|(k, v)| (k, v.convert_dtype(dtype)))
            .collect();
        crate::weights::save_safetensors(path.as_ref(), &tensors, None)
    }

    /// Checks host-side inputs against this model (ids < vocab, positions < max length).
    pub fn check_input(&self, tokens: &[u32], position_ids: &[u32]) -> Result<()> {
        crate::blank::check_ids("token id", tokens, self.config.vocab_size, "vocab_size")?;
        crate::blank::check_ids(
            "position id",
            position_ids,
            self.config.max_sequence_length,
            "max_sequence_length",
        )
    }
}
