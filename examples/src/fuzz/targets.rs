//! The fuzz targets: one per parser of a user file, each seeded from the valid fixtures (or, for
//! the training files, from files the project's own writers produce at start-up).
//!
//! | target | parser | seeds |
//! |---|---|---|
//! | `tokenizer_model` | `glm_tokenizer::Tokenizer::from_bytes` + encode / decode | `../shared/tokenizer/*.model`, cut to a few hundred pieces |
//! | `safetensors` | `SafetensorsFile::open` + every tensor + `GlmModel::from_source` | `model.safetensors` |
//! | `sat_checkpoint` | `SatCheckpoint::open` + every tensor + `GlmModel::from_source` | `sat_tp1`, `sat_tp2` shards |
//! | `config_json` | `GlmConfig::from_file` | `config.json` |
//! | `task_yaml` | `TaskConfig::from_file` (+ its sizes applied to fixture items) | `eval/tasks/*.yaml` |
//! | `eval_data` | `read_choice_file`, `read_generation_file`, `read_pile_file`, `read_text_document` (+ `mc::prepare_file`) | `eval/data/**` |
//! | `corpus_cache` | `TokenStore::open` + every document + `DataStream` | a store written by `TokenStore::write` |
//! | `checkpoint_meta` | `checkpoint::load_dir` + `restore_optim` + `DataStream::restore` | a checkpoint written by `checkpoint::save` |
//!
//! Inputs that stand for several files carry a one-byte selector in front (documented per target),
//! so a saved input replays on its own.
//!
//! (Over 400 lines: one fuzz target per user-facing parser (8 of them), each a short adapter; kept together so the table of targets reads in one place.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Flex;
use burn::module::ParamId;
use burn::tensor::{DType, Tensor, TensorData};
use glm_core::weights::{SafetensorsFile, SatCheckpoint, WeightSource};
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_infer::eval::data::{
    read_choice_file, read_generation_file, read_pile_file, read_text_document, ChoiceItem,
    TokenFields,
};
use glm_infer::eval::{gen, mc, TaskConfig, TaskKind};
use glm_infer::{IdCodec, TextCodec};
use glm_tokenizer::{Tokenizer, TokenizerOptions};
use glm_train::checkpoint::{self, CheckpointMeta, CorpusInfo};
use glm_train::data::{DataStream, StreamConfig, TokenStore};
use glm_train::objective::ObjectiveConfig;
use glm_train::optim::{AdamW, AdamWConfig};
use glm_train::params::ParamInfo;
use glm_train::schedule::LossScaler;

use super::mutate::{Format, Mutator, Rng};
use super::{zip, Target};

type Device = burn::tensor::Device<Flex>;

/// Where the seeds come from and where targets write their temporary files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Golden fixtures (`GLM_FIXTURES`, default `../shared/fixtures`).
    pub fixtures: PathBuf,
    /// Tokenizer models (`GLM_TOKENIZER_DIR`, default `../shared/tokenizer`).
    pub tokenizer: PathBuf,
    /// Scratch folder (one sub-folder per target).
    pub work: PathBuf,
}

impl Paths {
    /// The fixture folders from the environment (or the defaults) and `work` for scratch files.
    pub fn from_env(work: impl Into<PathBuf>) -> Result<Self, String> {
        let dir =
            |var, default| glm_core::data_dir::data_dir(var, default).map_err(|e| e.to_string());
        Ok(Self {
            fixtures: dir("GLM_FIXTURES", "../shared/fixtures")?,
            tokenizer: dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")?,
            work: work.into(),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Every target, set up (seeds read or generated, scratch folders created).
pub fn all_targets(paths: &Paths) -> Result<Vec<Box<dyn Target>>, String> {
    mkdir(&paths.work)?;
    let config = GlmConfig::from_file(paths.fixtures.join("config.json")).map_err(err)?;
    Ok(vec![
        Box::new(TokenizerModel::new(paths)?),
        Box::new(Safetensors::new(paths, &config)?),
        Box::new(SatShards::new(paths, &config)?),
        Box::new(ConfigJson::new(paths)?),
        Box::new(TaskYaml::new(paths, &config)?),
        Box::new(EvalData::new(paths, &config)?),
        Box::new(CorpusCache::new(paths, &config)?),
        Box::new(CheckpointMetaTarget::new(paths, &config)?),
    ])
}

// ---------------------------------------------------------------------------------------------
// Protobuf helpers (seed reduction of the tokenizer models).

fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Top-level fields of a protobuf message: `(field, raw bytes of the whole field)`; only
/// length-delimited and varint fields (all a SentencePiece model has at the top level).
fn proto_fields(bytes: &[u8]) -> Option<Vec<(u64, u8, Vec<u8>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => {
                let start = pos;
                varint(bytes, &mut pos)?;
                out.push((field, wire, bytes.get(start..pos)?.to_vec()));
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
                out.push((field, wire, bytes.get(pos..pos.checked_add(len)?)?.to_vec()));
                pos += len;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn put_field(field: u64, wire: u8, body: &[u8], out: &mut Vec<u8>) {
    put_varint(field << 3 | u64::from(wire), out);
    if wire == 2 {
        put_varint(body.len() as u64, out);
    }
    out.extend_from_slice(body);
}

/// A smaller copy of a SentencePiece model: the first `head` and last `tail` pieces, the trainer
/// spec, and the normalizer spec with or without its precompiled charsmap.
fn reduce_model(bytes: &[u8], head: usize, tail: usize, charsmap: bool) -> Option<Vec<u8>> {
    let fields = proto_fields(bytes)?;
    let pieces = fields.iter().filter(|f| f.0 == 1).count();
    let mut out = Vec::new();
    let mut index = 0;
    for (field, wire, body) in &fields {
        if *field == 1 {
            if index < head || index + tail >= pieces {
                put_field(1, *wire, body, &mut out);
            }
            index += 1;
        } else if *field == 3 && !charsmap {
            let mut spec = Vec::new();
            for (f, w, b) in proto_fields(body)? {
                if f != 2 {
                    put_field(f, w, &b, &mut spec);
                }
            }
            put_field(3, 2, &spec, &mut out);
        } else {
            put_field(*field, *wire, body, &mut out);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------

/// `Tokenizer::from_bytes` in the GLM-130B, icetk and ChatGLM-6B layouts, then encoding and
/// decoding with whatever loaded.
struct TokenizerModel {
    mutator: Mutator,
}

const SAMPLE_TEXT: &str = "Hello  World!\n\tdef f():  return 1  \u{3000}你好，世界 [MASK] [gMASK] <sop> ①½ é\u{301} \u{0}";

impl TokenizerModel {
    fn new(paths: &Paths) -> Result<Self, String> {
        let load = |name: &str| read(&paths.tokenizer.join(name));
        let base = load("ice_text_synth.model")?;
        let chatglm = load("ice_text_synth_chatglm6b.model")?;
        let keep_ws = load("ice_text_synth_keep_ws.model")?;
        let reduce = |bytes: &[u8], tail, charsmap| {
            reduce_model(bytes, 300, tail, charsmap)
                .ok_or_else(|| "tokenizer model is not a protobuf of pieces and specs".to_string())
        };
        // ChatGLM-6B stores its 344 GLM pieces at the end of the file: keep them.
        let base_pieces = proto_fields(&base)
            .map(|f| f.iter().filter(|f| f.0 == 1).count())
            .unwrap_or(0);
        let chatglm_pieces = proto_fields(&chatglm)
            .map(|f| f.iter().filter(|f| f.0 == 1).count())
            .unwrap_or(0);
        let extra = chatglm_pieces.saturating_sub(base_pieces);
        let seeds = vec![
            reduce(&base, 0, true)?,
            reduce(&base, 0, false)?,
            reduce(&chatglm, extra, false)?,
            reduce(&keep_ws, 0, false)?,
        ];
        Ok(Self {
            mutator: Mutator::new(seeds, Format::Binary, &[]),
        })
    }
}

impl Target for TokenizerModel {
    fn name(&self) -> &'static str {
        "tokenizer_model"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        self.mutator.seeds.clone()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        self.mutator.generate(rng)
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut loaded = 0;
        let mut first_error = None;
        for options in [
            TokenizerOptions::glm130b(),
            TokenizerOptions::icetk(),
            TokenizerOptions::chatglm6b(),
        ] {
            match Tokenizer::from_bytes(input, "fuzz.model", options) {
                Ok(tok) => {
                    loaded += 1;
                    let ids = tok.encode(SAMPLE_TEXT);
                    let _ = tok.decode(&ids);
                    let n = tok.vocab_size() as u32;
                    let _ = tok.decode(&[0, 1, n.wrapping_sub(1), n, u32::MAX, tok.gmask_id()]);
                    let mut stream = tok.stream_decoder();
                    for &id in ids.iter().chain(&[n, u32::MAX]) {
                        let _ = stream.push(id);
                    }
                    let _ = stream.finish();
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        match (loaded, first_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Header bytes of a safetensors file: `(8 + header length, within the file)`.
fn safetensors_header_end(bytes: &[u8]) -> Option<usize> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(len).ok()?.checked_add(8)?;
    (end <= bytes.len()).then_some(end)
}

/// `SafetensorsFile::open`, every tensor's shape / dtype / data, then a model built from it.
struct Safetensors {
    seed: Vec<u8>,
    header_end: usize,
    header: Mutator,
    bytes: Mutator,
    config: GlmConfig,
    file: PathBuf,
    device: Device,
}

impl Safetensors {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let seed = read(&paths.fixtures.join("model.safetensors"))?;
        let header_end =
            safetensors_header_end(&seed).ok_or("model.safetensors has no valid header")?;
        let header_text = seed[8..header_end].to_vec();
        let dictionary = [
            "F16",
            "F32",
            "BF16",
            "F64",
            "I64",
            "I32",
            "U8",
            "BOOL",
            "F8_E4M3",
            "dtype",
            "shape",
            "data_offsets",
            "__metadata__",
            "transformer.word_embeddings.weight",
            "transformer.final_layernorm.weight",
            "transformer.layers.0.attention.dense.weight",
            "transformer.layers.99.mlp.dense_h_to_4h.bias",
            "mixins.rotary-embedding.rotary_emb.inv_freq",
        ];
        let dir = paths.work.join("safetensors");
        mkdir(&dir)?;
        Ok(Self {
            header: Mutator::new(vec![header_text], Format::Text, &dictionary),
            bytes: Mutator::new(vec![seed.clone()], Format::Binary, &[]),
            seed,
            header_end,
            config: config.clone(),
            file: dir.join("model.safetensors"),
            device: Default::default(),
        })
    }
}

impl Target for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        vec![self.seed.clone()]
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let data = &self.seed[self.header_end..];
        match rng.below(100) {
            // The header as JSON text, re-framed with its new length.
            0..=44 => {
                let mut header = self.header.seeds[0].clone();
                self.header.mutate(rng, &mut header);
                let mut out = (header.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&header);
                out.extend_from_slice(data);
                out
            }
            // Raw bytes of the length prefix and header.
            45..=79 => {
                let mut head = self.seed[..self.header_end].to_vec();
                self.bytes.mutate(rng, &mut head);
                head.extend_from_slice(data);
                head
            }
            // Anywhere in the file (data truncated, flipped, ...).
            _ => self.bytes.generate(rng),
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        write(&self.file, input)?;
        let file = SafetensorsFile::open(&self.file).map_err(err)?;
        for name in file.names() {
            let _ = file.shape(&name);
            let _ = file.dtype(&name);
            file.load(&name).map_err(err)?;
        }
        let dtype = if input.len().is_multiple_of(2) {
            DType::F32
        } else {
            DType::F16
        };
        let options = ModelOptions {
            dtype,
            ..ModelOptions::default()
        };
        GlmModel::<Flex>::from_source(&self.config, &file, &self.device, options).map_err(err)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// `SatCheckpoint::open`, every (merged) tensor, then a model built from it.
///
/// Input: byte 0 selects the layout (0: TP=1 shard; 1 / 2: rank 0 / 1 of the TP=2 folder, the
/// other rank valid), the rest is that shard's `.pt` file.
struct SatShards {
    tp1: Vec<u8>,
    tp2: [Vec<u8>; 2],
    entries: [Vec<zip::Entry>; 3],
    bytes: Mutator,
    pickle: Mutator,
    config: GlmConfig,
    folder: PathBuf,
    device: Device,
}

const SAT_SHARD: [&str; 2] = ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"];

impl SatShards {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let shard = |tp: &str, rank: usize| -> Result<Vec<u8>, String> {
            let folder = paths.fixtures.join(tp);
            let latest = std::fs::read_to_string(folder.join("latest")).map_err(err)?;
            read(&folder.join(latest.trim()).join(SAT_SHARD[rank]))
        };
        let tp1 = shard("sat_tp1", 0)?;
        let tp2 = [shard("sat_tp2", 0)?, shard("sat_tp2", 1)?];
        let entries = |b: &[u8]| zip::read(b).ok_or("SAT shard is not a stored zip archive");
        let entries = [entries(&tp1)?, entries(&tp2[0])?, entries(&tp2[1])?];
        let pickles: Vec<Vec<u8>> = entries
            .iter()
            .flat_map(|es| es.iter().filter(|e| e.name.ends_with("data.pkl")))
            .map(|e| e.data.clone())
            .collect();
        let folder = paths.work.join("sat");
        mkdir(&folder)?;
        Ok(Self {
            bytes: Mutator::new(
                vec![tp1.clone(), tp2[0].clone(), tp2[1].clone()],
                Format::Binary,
                &[],
            ),
            pickle: Mutator::new(pickles, Format::Binary, &[]),
            tp1,
            tp2,
            entries,
            config: config.clone(),
            folder,
            device: Default::default(),
        })
    }

    fn shard(&self, layout: usize) -> &[u8] {
        match layout {
            0 => &self.tp1,
            1 => &self.tp2[0],
            _ => &self.tp2[1],
        }
    }
}

impl Target for SatShards {
    fn name(&self) -> &'static str {
        "sat_checkpoint"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        (0..2u8)
            .map(|layout| {
                let mut v = vec![layout];
                v.extend_from_slice(self.shard(layout.into()));
                v
            })
            .collect()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let layout = rng.below(3);
        let body = match rng.below(100) {
            // The archive's raw bytes.
            0..=39 => {
                let mut b = self.shard(layout).to_vec();
                self.bytes.mutate(rng, &mut b);
                b
            }
            // data.pkl mutated, archive rebuilt with correct CRCs.
            40..=79 => {
                let mut entries = self.entries[layout].clone();
                if let Some(e) = entries.iter_mut().find(|e| e.name.ends_with("data.pkl")) {
                    self.pickle.mutate(rng, &mut e.data);
                }
                zip::write(&entries)
            }
            // Storage entries: truncated, grown, flipped, removed, duplicated or renamed.
            _ => {
                let mut entries = self.entries[layout].clone();
                let n = entries.len();
                let i = rng.below(n);
                match rng.below(5) {
                    0 => {
                        let len = entries[i].data.len();
                        entries[i].data.truncate(rng.below(len + 1));
                    }
                    1 => {
                        let extra = rng.small_count(8) * 2;
                        entries[i].data.extend(std::iter::repeat_n(0x3c, extra));
                    }
                    2 => {
                        entries.remove(i);
                    }
                    3 => {
                        let j = rng.below(n);
                        let data = entries[j].data.clone();
                        entries[i].data = data;
                    }
                    _ => {
                        let j = rng.below(n);
                        let name = entries[j].name.clone();
                        entries[j].name = std::mem::replace(&mut entries[i].name, name);
                    }
                }
                if let Some(e) = entries.get_mut(rng.below(n)) {
                    if rng.percent(30) {
                        self.bytes.byte_mutation(rng, &mut e.data);
                    }
                }
                zip::write(&entries)
            }
        };
        let mut out = vec![layout as u8];
        out.extend_from_slice(&body);
        out
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let (&layout, shard) = input.split_first().ok_or("empty input")?;
        let iter = self.folder.join("1000");
        mkdir(&iter)?;
        write(&self.folder.join("latest"), b"1000")?;
        match layout % 3 {
            0 => {
                write(&iter.join(SAT_SHARD[0]), shard)?;
                let _ = std::fs::remove_file(iter.join(SAT_SHARD[1]));
            }
            rank => {
                let rank = usize::from(rank) - 1;
                write(&iter.join(SAT_SHARD[rank]), shard)?;
                write(&iter.join(SAT_SHARD[1 - rank]), &self.tp2[1 - rank])?;
            }
        }
        let ckpt = SatCheckpoint::open(&self.folder).map_err(err)?;
        for name in ckpt.names() {
            let _ = ckpt.shape(&name);
            ckpt.load(&name).map_err(err)?;
        }
        GlmModel::<Flex>::from_source(&self.config, &ckpt, &self.device, ModelOptions::default())
            .map_err(err)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// `GlmConfig::from_file` and the sizes derived from it.
struct ConfigJson {
    mutator: Mutator,
    file: PathBuf,
}

impl ConfigJson {
    fn new(paths: &Paths) -> Result<Self, String> {
        let mut seeds = vec![read(&paths.fixtures.join("config.json"))?];
        for c in [GlmConfig::tiny(), GlmConfig::glm_130b()] {
            seeds.push(serde_json::to_vec_pretty(&c).map_err(err)?);
        }
        let dictionary = [
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "inner_hidden_size",
            "vocab_size",
            "max_sequence_length",
            "layernorm_epsilon",
            "rotary_base",
            "special_tokens",
            "[MASK]",
            "[gMASK]",
            "eos",
            "[pad]",
        ];
        let dir = paths.work.join("config");
        mkdir(&dir)?;
        Ok(Self {
            mutator: Mutator::new(seeds, Format::Text, &dictionary),
            file: dir.join("config.json"),
        })
    }
}

impl Target for ConfigJson {
    fn name(&self) -> &'static str {
        "config_json"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        self.mutator.seeds.clone()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        self.mutator.generate(rng)
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        write(&self.file, input)?;
        let c = GlmConfig::from_file(&self.file).map_err(err)?;
        let _ = (
            c.inner_size(),
            c.head_dim(),
            c.deepnorm_alpha(),
            c.num_parameters(),
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// A `gen` task file using every key the parser knows (seed; the fixtures have `mul` and `lm`).
const GEN_TASK: &str = "name: \"TinyGen\"\ntype: \"gen\"\nmodule: \"evaluation.GenerationTask\"\npath: \"tiny_gen\"\nfile-pattern:\n  validation: \"**/val.jsonl\"\n  test: \"**/test.jsonl\"\nmax_seq_length: 64\nmax_gen_length: 8\nmin_gen_length: 1\nsampling_strategy: BeamSearchStrategy\nnum_beams: 2\nlength_penalty: 0.5\nno_repeat_ngram_size: 2\nuse_task_mask: true\nunidirectional: false\nmicro-batch-size: 1\nmetrics: [EM, F1]\n";

/// `TaskConfig::from_file`, then the parsed sizes applied to fixture items (truncation,
/// choice layouts, generation contexts), as the runner would.
struct TaskYaml {
    mutator: Mutator,
    file: PathBuf,
    items: Vec<ChoiceItem>,
    config: GlmConfig,
}

impl TaskYaml {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let tasks = paths.fixtures.join("eval/tasks");
        let mut seeds = Vec::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&tasks)
            .map_err(err)?
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names {
            seeds.push(read(&p)?);
        }
        seeds.push(GEN_TASK.as_bytes().to_vec());
        let dictionary = [
            "name",
            "type",
            "path",
            "module",
            "file-pattern",
            "file_pattern",
            "max-seq-length",
            "max_seq_length",
            "max_gen_length",
            "min_gen_length",
            "generation-length",
            "micro-batch-size",
            "micro_batch_size",
            "use_task_mask",
            "use_multitask_encoding",
            "unidirectional",
            "sampling_strategy",
            "BaseStrategy",
            "BeamSearchStrategy",
            "num_beams",
            "length_penalty",
            "no_repeat_ngram_size",
            "metrics",
            "no-tokenized",
            "mul",
            "gen",
            "lm",
            "other",
            "EM",
            "Accuracy",
            "PPL",
            "tasks.lambada.task.LAMBADA",
            "tasks.mmlu.task.MMLU",
            "tasks.language-modeling.pile.Pile",
            "**/*.jsonl",
        ];
        let dir = paths.work.join("task");
        mkdir(&dir)?;
        let items = fixture_choice_items(paths, config)?;
        Ok(Self {
            mutator: Mutator::new(seeds, Format::Text, &dictionary),
            file: dir.join("task.yaml"),
            items,
            config: config.clone(),
        })
    }
}

/// The multiple-choice items of the fixture data (token ids), to apply parsed settings to.
fn fixture_choice_items(paths: &Paths, config: &GlmConfig) -> Result<Vec<ChoiceItem>, String> {
    let mut items = Vec::new();
    for p in jsonl_files(&paths.fixtures.join("eval/data"))? {
        let fields = TokenFields {
            path: &p,
            codec: &IdCodec,
            vocab_size: config.vocab_size,
        };
        if let Ok(mut more) = read_choice_file(&fields) {
            items.append(&mut more);
        }
    }
    if items.is_empty() {
        return Err("no multiple-choice item in the fixture data".into());
    }
    Ok(items)
}

/// Every `.jsonl` / `.txt` file under `dir`, sorted.
fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(err)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl" || x == "txt") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Target for TaskYaml {
    fn name(&self) -> &'static str {
        "task_yaml"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        self.mutator.seeds.clone()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        self.mutator.generate(rng)
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        write(&self.file, input)?;
        let task = TaskConfig::from_file(&self.file).map_err(err)?;
        let _ = task.python_repr("data");
        let _ = task.file_pattern.groups();
        let specials = &self.config.special_tokens;
        // What the runner does with the sizes before any model call (errors are fine here:
        // the sizes were accepted by the parser, the items may not fit them).
        let _ = mc::prepare_file(
            &self.items,
            task.max_seq_length,
            task.choice_encoding(),
            specials,
            &self.file,
        );
        if let TaskKind::Generation(g) = &task.kind {
            for item in &self.items {
                let text = gen::truncate_text(&item.text, task.max_seq_length, g.max_gen_length);
                let _ = gen::build_generation_context(
                    text,
                    g.max_gen_length,
                    task.use_task_mask,
                    task.unidirectional,
                    specials,
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// The evaluation data readers, with the id codec (fixture vocabulary) and the icetk tokenizer
/// (its own vocabulary), then multiple-choice truncation / layout.
struct EvalData {
    mutator: Mutator,
    jsonl: PathBuf,
    txt: PathBuf,
    tokenizer: Tokenizer,
    config: GlmConfig,
    max_seq_length: usize,
}

impl EvalData {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let mut seeds = Vec::new();
        for p in jsonl_files(&paths.fixtures.join("eval/data"))? {
            seeds.push(read(&p)?);
        }
        let dictionary = [
            "inputs",
            "choices",
            "label",
            "targets",
            "text",
            "inputs_pretokenized",
            "choices_pretokenized",
            "targets_pretokenized",
            "text_pretokenized",
            "meta",
            "pile_set_name",
            "[MASK]",
            "[gMASK]",
        ];
        let tokenizer = Tokenizer::from_file(
            paths.tokenizer.join("ice_text_synth.model"),
            TokenizerOptions::glm130b(),
        )
        .map_err(err)?;
        let mc_task =
            TaskConfig::from_file(&paths.fixtures.join("eval/tasks/tiny_mc.yaml")).map_err(err)?;
        let dir = paths.work.join("eval_data");
        mkdir(&dir)?;
        Ok(Self {
            mutator: Mutator::new(seeds, Format::Text, &dictionary),
            jsonl: dir.join("data.jsonl"),
            txt: dir.join("data.txt"),
            tokenizer,
            config: config.clone(),
            max_seq_length: mc_task.max_seq_length,
        })
    }
}

impl Target for EvalData {
    fn name(&self) -> &'static str {
        "eval_data"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        self.mutator.seeds.clone()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        self.mutator.generate(rng)
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        write(&self.jsonl, input)?;
        write(&self.txt, input)?;
        let codecs: [(&dyn TextCodec, usize); 2] = [
            (&IdCodec, self.config.vocab_size),
            (&self.tokenizer, self.tokenizer.vocab_size()),
        ];
        let specials = &self.config.special_tokens;
        let mut accepted = false;
        let mut first_error = None;
        let mut note = |r: Result<(), String>| match r {
            Ok(()) => accepted = true,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        };
        for (codec, vocab_size) in codecs {
            let fields = TokenFields {
                path: &self.jsonl,
                codec,
                vocab_size,
            };
            note(read_choice_file(&fields).map_err(err).and_then(|items| {
                for (use_multitask_encoding, use_task_mask) in
                    [(false, false), (true, false), (false, true)]
                {
                    mc::prepare_file(
                        &items,
                        self.max_seq_length,
                        mc::ChoiceEncoding {
                            use_multitask_encoding,
                            use_task_mask,
                        },
                        specials,
                        &self.jsonl,
                    )
                    .map_err(err)?;
                }
                Ok(())
            }));
            note(read_generation_file(&fields).map_err(err).map(|items| {
                for item in &items {
                    let text = gen::truncate_text(&item.text, self.max_seq_length, 8);
                    let _ = gen::build_generation_context(text, 8, true, false, specials);
                }
            }));
            note(read_pile_file(&fields).map(drop).map_err(err));
            let fields = TokenFields {
                path: &self.txt,
                ..fields
            };
            note(read_text_document(&fields).map(drop).map_err(err));
        }
        match (accepted, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Deterministic documents for the generated corpus (ids below the fixture's text vocabulary).
fn corpus_docs(config: &GlmConfig) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(0xC0FFEE);
    let text_vocab = config
        .special_tokens
        .mask
        .clamp(16, config.vocab_size as u32) as usize;
    (0..12)
        .map(|d| {
            let len = if d == 3 { 0 } else { 8 + rng.below(160) };
            (0..len)
                .map(|_| 10 + rng.below(text_vocab - 10) as u32)
                .collect()
        })
        .collect()
}

fn stream_config(config: &GlmConfig) -> StreamConfig {
    StreamConfig {
        seq_len: 32,
        objective: ObjectiveConfig::default(),
        specials: config.special_tokens,
        seed: 5,
        min_segment: 8,
    }
}

/// `TokenStore::open`, every document, and a `DataStream` over the store.
///
/// Input: byte 0 selects what is mutated (0: the `.offsets` file, 1: the `.tokens` file, 2:
/// both, as `u32 LE offsets length | offsets | tokens`), the rest is the file(s).
struct CorpusCache {
    offsets: Vec<u8>,
    tokens: Vec<u8>,
    bytes: Mutator,
    prefix: PathBuf,
    config: GlmConfig,
}

impl CorpusCache {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let seed_prefix = paths.work.join("corpus_seed").join("corpus");
        TokenStore::write(&seed_prefix, &corpus_docs(config)).map_err(err)?;
        let offsets = read(&seed_prefix.with_extension("offsets"))?;
        let tokens = read(&seed_prefix.with_extension("tokens"))?;
        let dir = paths.work.join("corpus");
        mkdir(&dir)?;
        Ok(Self {
            bytes: Mutator::new(vec![offsets.clone(), tokens.clone()], Format::Binary, &[]),
            offsets,
            tokens,
            prefix: dir.join("corpus"),
            config: config.clone(),
        })
    }
}

impl Target for CorpusCache {
    fn name(&self) -> &'static str {
        "corpus_cache"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        let mut both = vec![2u8];
        both.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        both.extend_from_slice(&self.offsets);
        both.extend_from_slice(&self.tokens);
        vec![both]
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mode = rng.below(3);
        let mut offsets = self.offsets.clone();
        let mut tokens = self.tokens.clone();
        if mode != 1 {
            self.bytes.mutate(rng, &mut offsets);
        }
        if mode != 0 {
            self.bytes.mutate(rng, &mut tokens);
        }
        let mut out = vec![mode as u8];
        match mode {
            0 => out.extend_from_slice(&offsets),
            1 => out.extend_from_slice(&tokens),
            _ => {
                out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
                out.extend_from_slice(&offsets);
                out.extend_from_slice(&tokens);
            }
        }
        out
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let (&mode, rest) = input.split_first().ok_or("empty input")?;
        let (offsets, tokens) = match mode % 3 {
            0 => (rest, &self.tokens[..]),
            1 => (&self.offsets[..], rest),
            _ => {
                let n = rest
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or("input shorter than its length prefix")?;
                let body = &rest[4..];
                (&body[..n.min(body.len())], &body[n.min(body.len())..])
            }
        };
        write(&self.prefix.with_extension("offsets"), offsets)?;
        write(&self.prefix.with_extension("tokens"), tokens)?;
        let store = TokenStore::open(&self.prefix).map_err(err)?;
        let n = store.len();
        let _ = store.num_tokens();
        for i in 0..=n {
            let _ = store.doc(i);
        }
        let docs = (0..n as u32).collect();
        let mut stream = DataStream::new(
            Arc::new(store),
            docs,
            Arc::new(Vec::new()),
            stream_config(&self.config),
        )
        .map_err(err)?;
        let _ = stream.next_batch(2);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// `checkpoint::load_dir` on a checkpoint whose `meta.json` is the input, then what a resume does
/// with it: `restore_optim` and `DataStream::restore` + the next batch. The stream position is
/// also restored from the input parsed directly (a resume on a changed corpus sees such
/// positions even when the checksum matches).
struct CheckpointMetaTarget {
    mutator: Mutator,
    dir: PathBuf,
    optim: AdamW<Flex>,
    stream: DataStream,
    device: Device,
}

impl CheckpointMetaTarget {
    fn new(paths: &Paths, config: &GlmConfig) -> Result<Self, String> {
        let device: Device = Default::default();
        let store = TokenStore::write(
            &paths.work.join("checkpoint_corpus").join("corpus"),
            &corpus_docs(config),
        )
        .map_err(err)?;
        let corpus = CorpusInfo {
            documents: store.len() as u64,
            tokens: store.num_tokens(),
            fingerprint: store.fingerprint(),
            instructions: 0,
            vocab_map: None,
        };
        let n = store.len() as u32;
        let mut stream = DataStream::new(
            Arc::new(store),
            (0..n).collect(),
            Arc::new(Vec::new()),
            stream_config(config),
        )
        .map_err(err)?;
        let start = stream.clone();
        for _ in 0..3 {
            let _ = stream.next_sequence();
        }
        let shapes = [("w", vec![4usize, 3]), ("b", vec![5])];
        let infos: Vec<ParamInfo> = shapes
            .iter()
            .map(|(name, shape)| ParamInfo {
                name: name.to_string(),
                id: ParamId::new(),
                shape: shape.clone(),
            })
            .collect();
        let master = shapes
            .iter()
            .map(|(_, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
                Tensor::<Flex, 1>::from_data(TensorData::new(values, [n]), &device)
            })
            .collect();
        let optim = AdamW::new(AdamWConfig::default(), infos, master);
        let meta = CheckpointMeta {
            step: 3,
            updates: 0,
            scaler: LossScaler::fixed(),
            data: stream.state().clone(),
            fingerprint: "fuzz".into(),
            corpus,
            state_bytes: 0,
            state_checksum: String::new(),
            params: Vec::new(),
            checksum: String::new(),
        };
        let root = paths.work.join("checkpoint");
        let _ = std::fs::remove_dir_all(&root);
        let dir = checkpoint::save(&root, meta, &optim, 2).map_err(err)?;
        let seed = read(&dir.join("meta.json"))?;
        let dictionary = [
            "step",
            "updates",
            "scaler",
            "config",
            "initial_scale",
            "window",
            "hysteresis",
            "min_scale",
            "factor",
            "dynamic",
            "scale",
            "good_steps",
            "hysteresis_left",
            "skipped",
            "data",
            "epoch",
            "cursor",
            "offset",
            "rng",
            "s",
            "mip_epoch",
            "mip_cursor",
            "sequences",
            "fingerprint",
            "checksum",
            "state_checksum",
            "state_bytes",
            "corpus",
            "documents",
            "tokens",
            "instructions",
            "params",
        ];
        Ok(Self {
            mutator: Mutator::new(vec![seed], Format::Text, &dictionary),
            dir,
            optim,
            stream: start,
            device,
        })
    }
}

/// Recomputes `meta.json`'s self-checksum as the file format defines it: FNV-1a 64 of the text
/// with the first `"checksum": "…"` value emptied, written into that value as 16 hex digits.
fn fix_meta_checksum(text: &mut Vec<u8>) {
    const KEY: &[u8] = b"\"checksum\": \"";
    let Some(start) = text.windows(KEY.len()).position(|w| w == KEY) else {
        return;
    };
    let value = start + KEY.len();
    let Some(len) = text[value..].iter().position(|&b| b == b'"') else {
        return;
    };
    text.drain(value..value + len);
    let sum = glm_train::data::fnv1a(text, 0xcbf2_9ce4_8422_2325);
    text.splice(value..value, format!("{sum:016x}").into_bytes());
}

impl Target for CheckpointMetaTarget {
    fn name(&self) -> &'static str {
        "checkpoint_meta"
    }

    fn seed_inputs(&self) -> Vec<Vec<u8>> {
        self.mutator.seeds.clone()
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mut input = self.mutator.generate(rng);
        // Half the inputs carry a matching self-checksum, so they get past it.
        if rng.percent(50) {
            fix_meta_checksum(&mut input);
        }
        input
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        if let Ok(meta) = serde_json::from_slice::<CheckpointMeta>(input) {
            let mut stream = self.stream.clone();
            if stream.restore(meta.data).is_ok() {
                let _ = stream.next_batch(2);
            }
        }
        write(&self.dir.join("meta.json"), input)?;
        let ckpt = checkpoint::load_dir(&self.dir).map_err(err)?;
        let mut optim = self.optim.clone();
        ckpt.restore_optim(&mut optim, &self.device).map_err(err)?;
        let mut stream = self.stream.clone();
        stream.restore(ckpt.meta.data.clone()).map_err(err)?;
        let _ = stream.next_batch(2);
        Ok(())
    }
}
