//! The two-call API: [`Glm::load`] a checkpoint, then [`Glm::fill`] a text with blanks.
//!
//! ```
//! use glm_infer::{Glm, GenerateOptions, LoadOptions};
//!
//! let fixtures = glm_core::data_dir::data_dir("GLM_FIXTURES", "../shared/fixtures")?;
//! // A folder with config.json + model.safetensors (or a SAT checkpoint folder, or one
//! // safetensors file). Without a tokenizer, text is whitespace-separated token ids.
//! let glm = Glm::load(&fixtures, LoadOptions::default())?;
//! let out = glm.fill("11 12 13 [MASK] 14 15", &GenerateOptions::greedy(8))?;
//! assert_eq!(out.blanks.len(), 1);
//! println!("{}", out.text);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The backend defaults to the CPU ([`Cpu`]); `Glm::<B>::load_on(path, options, &device)` runs the
//! same model on any burn backend the crate is built with (wgpu, CUDA).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::DType;
use glm_core::parallel::{EmbeddingLayout, TensorParallel, TpLayout};
use glm_core::vocab::VocabMap;
use glm_core::{GlmConfig, GlmModel, ModelOptions, RotaryPrecision};

use crate::beam::{BeamConfig, BeamSearchStrategy};
use crate::cli::{Codec, OffloadFlags};
use crate::error::{Error, Result};
use crate::prompt::{build_prompt, TextCodec};
use crate::sampling::{BaseStrategy, SamplingConfig};
use crate::strategy::Strategy;
use crate::stream::TokenStream;

/// The CPU backend (burn's Flex), so users need not depend on `burn` to name it.
pub type Cpu = burn::backend::Flex;

/// How to load a model ([`Glm::load`]). `Default`: f32, float weights as stored, no tokenizer
/// (text is whitespace-separated token ids), everything resident.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Dtype of weights and activations (`F32`, `F16`, `BF16`).
    pub dtype: DType,
    /// Quantize a float checkpoint on load to INT4 / INT8 (`Some(4)` / `Some(8)`), as the
    /// original's `--quantization-bit-width`; quantized checkpoints load as they are.
    pub quantization_bit_width: Option<u32>,
    /// Tensor-parallel degree: `Some(n)` with `n > 1` splits the model over `n` ranks (threads,
    /// one device each: [`Glm::load_on_devices`]) exactly as SAT splits it; a SAT folder of `n`
    /// shards gives each rank its own file. INT4/INT8 quantize-on-load then computes each rank's
    /// scales over its own shard, as the original's `convert_tp.py`.
    pub tensor_parallel: Option<usize>,
    /// With tensor parallelism: every rank holds the whole word embedding (no communication for
    /// the lookup and the logits, `n` times its memory) instead of the original's
    /// vocabulary-parallel split.
    pub replicated_embedding: bool,
    /// The icetk SentencePiece model (`ice_text.model`); `None`: an `ice_text.model` next to the
    /// checkpoint if there is one, else integer-id text.
    pub tokenizer: Option<PathBuf>,
    /// Tokenizer mode: `icetk` (the GLM-130B release), `glm130b`, `chatglm6b`.
    pub tokenizer_mode: String,
    /// A `config.json` for a checkpoint folder that has none.
    pub config: Option<PathBuf>,
    /// Exact fp32 rotary tables instead of the original's fp16 ones.
    pub rotary_fp32: bool,
    /// Layer-streamed offload.
    pub offload: OffloadFlags,
    /// The sequence length an offload budget is planned for (default: the model's maximum).
    pub sequence_length: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quantization_bit_width: None,
            tensor_parallel: None,
            replicated_embedding: false,
            tokenizer: None,
            tokenizer_mode: "icetk".into(),
            config: None,
            rotary_fp32: false,
            offload: OffloadFlags::default(),
            sequence_length: None,
        }
    }
}

/// How to decode.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    /// Sampling / greedy ([`BaseStrategy`]); empty `end_tokens` mean the model's (`eop`, eos).
    Sampling(SamplingConfig),
    /// Beam search ([`BeamSearchStrategy`]); empty `end_tokens` mean the model's.
    Beam(BeamConfig),
}

/// How to generate ([`Glm::fill`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// New tokens the blanks may use together (the original's `--out-seq-length` minus the
    /// prompt; capped by the model's `max_sequence_length`).
    pub max_new_tokens: usize,
    /// The strategy.
    pub decoding: Decoding,
}

impl Default for GenerateOptions {
    /// generate.py's defaults: sampling at temperature 1, top-p 0.7, seed 1234; 128 new tokens.
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            decoding: Decoding::Sampling(SamplingConfig::default()),
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding (top-k 1) with `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            decoding: Decoding::Sampling(SamplingConfig::greedy(Vec::new())),
        }
    }

    /// Beam search with `num_beams` (other settings: [`BeamConfig::default`]).
    pub fn beams(num_beams: usize, max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            decoding: Decoding::Beam(BeamConfig {
                num_beams,
                ..BeamConfig::default()
            }),
        }
    }
}

/// What [`Glm::fill`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    /// The text with every blank filled (best beam).
    pub text: String,
    /// Each blank's fill, in order (best beam).
    pub blanks: Vec<String>,
    /// The full token sequence (best beam).
    pub tokens: Vec<u32>,
}

/// One item of [`Glm::stream`].
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// New text of the blank being filled.
    Piece(String),
    /// The finished fill (the last item).
    Done(Fill),
}

/// The iterator [`Glm::stream`] returns.
#[derive(Debug)]
pub struct Stream {
    rx: std::sync::mpsc::Receiver<Result<StreamItem>>,
}

impl Iterator for Stream {
    type Item = Result<StreamItem>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// A loaded model with its tokenizer: on one device, or split over tensor-parallel ranks
/// ([`LoadOptions::tensor_parallel`]); every method works the same on both.
pub struct Glm<B: Backend = Cpu> {
    /// The model, or rank 0's shard under tensor parallelism.
    model: GlmModel<B>,
    /// The tensor-parallel group, if the model is split.
    group: Option<Arc<TensorParallel<B>>>,
    codec: Codec,
}

impl<B: Backend> std::fmt::Debug for Glm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glm")
            .field("config", self.model.config())
            .finish()
    }
}

impl Glm<Cpu> {
    /// Loads `path` on the CPU: a folder with `config.json` + `model.safetensors`, a SAT
    /// checkpoint folder (`latest` + `mp_rank_XX_model_states.pt`, with `config.json` or
    /// [`LoadOptions::config`]), or a `.safetensors` file with a `config.json` beside it. The
    /// tokenizer is checked against the config's special ids.
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        Self::load_on(path, options, &Default::default())
    }
}

impl<B: Backend> Glm<B> {
    /// [`Glm::load`] on `device` of backend `B`.
    pub fn load_on(
        path: impl AsRef<Path>,
        options: LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_on_devices(path, options, std::slice::from_ref(device))
    }

    /// [`Glm::load`] on `devices` of backend `B`: one per tensor-parallel rank (or one shared by
    /// every rank); without tensor parallelism the first one.
    pub fn load_on_devices(
        path: impl AsRef<Path>,
        options: LoadOptions,
        devices: &[B::Device],
    ) -> Result<Self> {
        let device = devices
            .first()
            .ok_or_else(|| Error::Usage("no device to load the model on".into()))?;
        let path = path.as_ref();
        let folder = if path.is_file() {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        } else {
            path.to_path_buf()
        };
        if path.is_file() && path.file_name().is_some_and(|n| n != "model.safetensors") {
            return Err(Error::Usage(format!(
                "{}: a model file must be named model.safetensors inside its folder (with config.json)",
                path.display()
            )));
        }
        let config: GlmConfig = crate::cli::load_config(&folder, options.config.as_deref())?;
        let tokenizer = options.tokenizer.clone().or_else(|| {
            let beside = folder.join("ice_text.model");
            beside.is_file().then_some(beside)
        });
        let vocab_map = VocabMap::load_beside(&folder)?;
        if let Some(map) = &vocab_map {
            map.check_config(&config, &folder.join(glm_core::vocab::VOCAB_MAP_FILE))?;
        }
        let codec = crate::cli::load_codec(
            tokenizer.as_deref(),
            &options.tokenizer_mode,
            &config,
            vocab_map,
        )?;
        let model_options = ModelOptions {
            dtype: options.dtype,
            rotary: if options.rotary_fp32 {
                RotaryPrecision::Fp32
            } else {
                RotaryPrecision::Fp16Sat
            },
        };
        let world = options.tensor_parallel.unwrap_or(1);
        if world > 1 {
            let quant = crate::cli::quantize_options(options.quantization_bit_width, None)?;
            let group = crate::cli::load_parallel::<B>(
                &folder,
                &config,
                devices,
                model_options,
                quant,
                &options.offload,
                TpLayout::new(world).with_embedding(if options.replicated_embedding {
                    EmbeddingLayout::Replicated
                } else {
                    EmbeddingLayout::VocabParallel
                }),
            )?;
            return Ok(Self {
                model: group.ranks()[0].clone(),
                group: Some(Arc::new(group)),
                codec,
            });
        }
        let quant =
            crate::cli::quantize_options(options.quantization_bit_width, options.tensor_parallel)?;
        let model = crate::cli::load_model::<B>(
            &folder,
            &config,
            device,
            model_options,
            quant,
            &options.offload,
            options
                .sequence_length
                .unwrap_or(config.max_sequence_length),
        )?;
        Ok(Self {
            model,
            group: None,
            codec,
        })
    }

    /// `self` for a model trained with a compact vocabulary ([`VocabMap`]): text is tokenized
    /// with the tokenizer's ids and translated into the model's through `map`, and back.
    pub fn with_vocab_map(mut self, map: VocabMap) -> Self {
        self.codec = self.codec.with_vocab_map(map);
        self
    }

    /// A model and codec built elsewhere (e.g. [`GlmModel::random`] with integer-id text).
    pub fn from_parts(model: GlmModel<B>, tokenizer: Option<glm_tokenizer::Tokenizer>) -> Self {
        let codec = match tokenizer {
            Some(t) => Codec::Ice(Box::new(t)),
            None => Codec::Ids(crate::prompt::IdCodec),
        };
        Self {
            model,
            group: None,
            codec,
        }
    }

    /// A tensor-parallel group and a codec built elsewhere.
    pub fn from_group(
        group: TensorParallel<B>,
        tokenizer: Option<glm_tokenizer::Tokenizer>,
    ) -> Self {
        let mut glm = Self::from_parts(group.ranks()[0].clone(), tokenizer);
        glm.group = Some(Arc::new(group));
        glm
    }

    /// The model; under tensor parallelism rank 0's shard, whose forwards need every rank: run
    /// them through [`tensor_parallel`](Self::tensor_parallel) (alone they return
    /// [`glm_core::Error::TensorParallel`]).
    pub fn model(&self) -> &GlmModel<B> {
        &self.model
    }

    /// The tensor-parallel group, if the model is split over ranks.
    pub fn tensor_parallel(&self) -> Option<&TensorParallel<B>> {
        self.group.as_deref()
    }

    /// Runs `lead` on rank 0 (the calling thread) and `follow` on the other ranks of the
    /// tensor-parallel group, or `lead` alone on a model on one device.
    fn on_ranks<T>(
        &self,
        lead: impl FnOnce(&GlmModel<B>) -> Result<T>,
        follow: impl Fn(&GlmModel<B>) -> Result<()> + Sync,
    ) -> Result<T> {
        match &self.group {
            None => lead(&self.model),
            Some(group) => group.run(lead, follow),
        }
    }

    /// The text codec: the tokenizer, or whitespace-separated ids.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The model's configuration.
    pub fn config(&self) -> &GlmConfig {
        self.model.config()
    }

    /// Text → ids (the tokenizer, or whitespace-separated ids).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.codec.tokenize(text)
    }

    /// Ids → text.
    pub fn detokenize(&self, ids: &[u32]) -> String {
        self.codec.detokenize(ids)
    }

    fn strategy(&self, options: &GenerateOptions) -> Result<Box<dyn Strategy>> {
        let ends = self.config().special_tokens.end_tokens().to_vec();
        Ok(match &options.decoding {
            Decoding::Sampling(c) => {
                let mut c = c.clone();
                if c.end_tokens.is_empty() {
                    c.end_tokens = ends;
                }
                Box::new(BaseStrategy::new(c)?)
            }
            Decoding::Beam(c) => {
                let mut c = c.clone();
                if c.end_tokens.is_empty() {
                    c.end_tokens = ends;
                }
                Box::new(BeamSearchStrategy::new(c)?)
            }
        })
    }

    /// [`fill_streaming`](Self::fill_streaming) as an iterator: the pieces of text arrive while
    /// the model generates them on a worker thread (the model is shared, not copied: burn tensors
    /// are reference-counted); the last item is the whole [`Fill`]. Dropping the iterator early
    /// lets the worker finish the current fill and discards it.
    pub fn stream(&self, text: &str, options: &GenerateOptions) -> Stream
    where
        B: 'static,
        GlmModel<B>: Send,
        Codec: Send,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<StreamItem>>(16);
        let worker = Glm {
            model: self.model.clone(),
            group: self.group.clone(),
            codec: self.codec.clone(),
        };
        let (text, options) = (text.to_string(), options.clone());
        std::thread::spawn(move || {
            let piece_tx = tx.clone();
            let result = worker.fill_streaming(&text, &options, |piece| {
                let _ = piece_tx.send(Ok(StreamItem::Piece(piece.to_string())));
            });
            let _ = tx.send(result.map(StreamItem::Done));
        });
        Stream { rx }
    }

    /// Fills every `[MASK]` / `[sMASK]` of `text` left to right (or continues it after an
    /// appended `[gMASK]` when it has none), as generate.py does.
    pub fn fill(&self, text: &str, options: &GenerateOptions) -> Result<Fill> {
        self.fill_streaming(text, options, |_| {})
    }

    /// [`fill`](Self::fill), handing each new piece of text of the blank being filled to
    /// `on_piece` as it is decoded (UTF-8 safe; sampling only — beam search has no single
    /// running text, so `on_piece` is not called for it).
    pub fn fill_streaming(
        &self,
        text: &str,
        options: &GenerateOptions,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Fill> {
        let config = self.config();
        let specials = config.special_tokens;
        let prompt = build_prompt(text, &self.codec, &specials, config.max_sequence_length)?;
        let out_seq_length = prompt
            .tokens
            .len()
            .saturating_add(1)
            .saturating_add(options.max_new_tokens)
            .min(config.max_sequence_length);
        let mut strategy = self.strategy(options)?;
        let ends = strategy.end_tokens().to_vec();
        let stream_text = matches!(options.decoding, Decoding::Sampling(_));
        let mut streamer: Option<(usize, TokenStream)> = None;
        let codec = &self.codec;
        let mut on_step = |rows: &[Vec<i64>]| {
            if !stream_text {
                return;
            }
            let Some(row) = rows.first() else { return };
            let ctx = row
                .iter()
                .take_while(|&&t| t != i64::from(specials.sop))
                .count()
                + 1;
            match codec.tokenizer() {
                Some(_) => {
                    let s = match &mut streamer {
                        Some((c, s)) if *c == ctx => s,
                        _ => match TokenStream::for_codec(codec, ctx, ends.clone()) {
                            Some(s) => &mut streamer.insert((ctx, s)).1,
                            None => return,
                        },
                    };
                    let piece = s.push_rows(rows);
                    if !piece.is_empty() {
                        on_piece(&piece);
                    }
                }
                None => {
                    if let Some(&last) = row.last().filter(|&&t| t >= 0) {
                        on_piece(&format!("{} ", codec.detokenize(&[last as u32])));
                    }
                }
            }
        };
        let result = match &self.group {
            None => crate::fill::fill_blanks(
                &self.model,
                &prompt,
                strategy.as_mut(),
                out_seq_length,
                &mut on_step,
            )?,
            Some(group) => {
                // Every other rank runs its own strategy, built alike (same seed).
                let followers = (1..group.world())
                    .map(|_| self.strategy(options).map(Mutex::new))
                    .collect::<Result<Vec<_>>>()?;
                crate::fill::fill_blanks_parallel(
                    group,
                    &prompt,
                    strategy.as_mut(),
                    &followers,
                    out_seq_length,
                    &mut on_step,
                )?
            }
        };
        let tokens = result.sequences.first().cloned().unwrap_or_default();
        let blanks = result
            .blanks
            .first()
            .map(|b| b.iter().map(|ids| self.detokenize(ids)).collect())
            .unwrap_or_default();
        Ok(Fill {
            text: self.detokenize(&tokens),
            blanks,
            tokens,
        })
    }

    /// The next-token logits after `text` in generate.py's layout (`[gMASK]` appended when the
    /// text has no mask; the first blank's context + `<sop>`): the full vocabulary, f32, in id
    /// order — what a strategy samples the first generated token from.
    pub fn logits(&self, text: &str) -> Result<Vec<f32>> {
        let config = self.config();
        let specials = config.special_tokens;
        let prompt = build_prompt(text, &self.codec, &specials, config.max_sequence_length)?;
        let blank = glm_core::blank::BlankInput::from_context(&prompt.tokens, &specials)?;
        let input = blank.to_input(config)?;
        let options = glm_core::ForwardOptions {
            hidden_states: false,
            last_only: true,
        };
        let out = self.on_ranks(
            |model| Ok(model.forward_input(&input, options)?),
            |model| Ok(model.forward_input(&input, options).map(drop)?),
        )?;
        out.logits
            .cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Prompt(format!("reading logits: {e:?}")))
    }

    /// `log P(continuation | context)`: the sum of the continuation tokens' log-probabilities when
    /// it is generated after `context` + `[gMASK]` (the multiple-choice scoring layout of the
    /// evaluation harness with `use_task_mask`), in f32. Needs the `eval` feature (on by default).
    #[cfg(feature = "eval")]
    pub fn score(&self, context: &str, continuation: &str) -> Result<f32> {
        let specials = self.config().special_tokens;
        let context = self.tokenize(context)?;
        let choice = self.tokenize(continuation)?;
        if choice.is_empty() {
            return Err(Error::Usage("the continuation has no tokens".into()));
        }
        let encoding = crate::eval::mc::ChoiceEncoding {
            use_task_mask: true,
            ..Default::default()
        };
        let (tokens, position_ids, mask, targets) = crate::eval::mc::build_choice_sample(
            &context,
            std::slice::from_ref(&choice),
            false,
            encoding,
            &specials,
        )
        .map_err(Error::Usage)?;
        let input = glm_core::blank::GlmInput {
            batch: 1,
            seq: tokens.len(),
            tokens,
            position_ids,
            mask,
        };
        let pairs: Vec<(usize, u32)> = targets
            .first()
            .map(|rows| rows.iter().copied().zip(choice.iter().copied()).collect())
            .unwrap_or_default();
        let pairs = [pairs];
        let score = |model: &GlmModel<B>| {
            crate::eval::score::token_log_probs(
                model,
                &input,
                &pairs,
                crate::eval::score::SoftmaxDtype::F32,
            )
            .map_err(Error::from)
        };
        let values = self.on_ranks(score, |model| score(model).map(drop))?;
        Ok(values.first().map_or(0.0, |v| v.iter().sum()))
    }
}
