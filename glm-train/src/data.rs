//! Corpora: tokenized documents in a memory-mapped token file, the train/validation split and the
//! resumable stream of packed training sequences.
//!
//! - [`TokenStore`]: `NAME.tokens` (little-endian `u32` ids) + `NAME.offsets` (`u64` document
//!   boundaries), memory-mapped, so corpora larger than memory stream from disk.
//! - [`read_documents`]: plain text (documents separated by blank lines) and JSONL (`{"text": ..}`
//!   or pre-tokenized `{"ids": [..]}`) sources; [`read_instructions`]: JSONL `prompt` / `target`
//!   pairs (or `prompt_ids` / `target_ids`) for MIP.
//! - [`DataStream`]: documents in a seeded per-epoch order → objective segments → packed
//!   [`Sequence`]s; its whole position is a small serialisable [`DataState`].

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glm_core::dropout::splitmix64;
use glm_core::SpecialTokens;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::{Batch, Sequence};
use crate::error::{Error, Result};
use crate::objective::{
    gmask_segment, mask_segment, mip_segment, ObjectiveConfig, Segment, MIN_TEXT,
};
use crate::rng::Rng;

/// A tokenizer as the data pipeline sees it: text → ids.
pub type TokenizeFn<'a> = &'a (dyn Fn(&str) -> Result<Vec<u32>> + Sync);

/// A raw document: text to tokenize or ids already tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawDoc {
    /// Text.
    Text(String),
    /// Pre-tokenized ids.
    Ids(Vec<u32>),
}

impl RawDoc {
    /// Tokenizes if needed.
    pub fn into_ids(self, tokenize: Option<TokenizeFn<'_>>) -> Result<Vec<u32>> {
        match self {
            RawDoc::Ids(ids) => Ok(ids),
            RawDoc::Text(text) => match tokenize {
                Some(f) => f(&text),
                None => Err(Error::Data(
                    "a text corpus needs a tokenizer (data.tokenizer)".into(),
                )),
            },
        }
    }
}

fn json_ids(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
        .collect()
}

/// Reads the documents of a `.txt` file (blank-line separated) or a `.jsonl` file (`text` or
/// `ids` field per line).
pub fn read_documents(path: &Path) -> Result<Vec<RawDoc>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = BufReader::new(file);
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut docs = Vec::new();
    let mut current = String::new();
    for (line_no, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if jsonl {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| Error::Json {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", line_no + 1),
            };
            let v: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            if let Some(text) = v.get("text").and_then(Value::as_str) {
                docs.push(RawDoc::Text(text.to_string()));
            } else if let Some(ids) = v.get("ids").and_then(json_ids) {
                docs.push(RawDoc::Ids(ids));
            } else {
                return Err(bad(
                    "expected a \"text\" string or an \"ids\" array of u32".into()
                ));
            }
        } else if line.trim().is_empty() {
            if !current.trim().is_empty() {
                docs.push(RawDoc::Text(std::mem::take(&mut current)));
            }
            current.clear();
        } else {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(&line);
        }
    }
    if !current.trim().is_empty() {
        docs.push(RawDoc::Text(current));
    }
    Ok(docs)
}

/// One instruction pair (MIP), tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Target ids (the loss covers them and a final `<eop>`).
    pub target: Vec<u32>,
}

/// Reads JSONL instruction pairs: `{"prompt": "...", "target": "..."}` or
/// `{"prompt_ids": [..], "target_ids": [..]}`.
pub fn read_instructions(
    path: &Path,
    tokenize: Option<TokenizeFn<'_>>,
) -> Result<Vec<Instruction>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Json {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", line_no + 1),
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let field = |name: &str| -> Result<Vec<u32>> {
            if let Some(ids) = v.get(format!("{name}_ids")).and_then(json_ids) {
                return Ok(ids);
            }
            match v.get(name).and_then(Value::as_str) {
                Some(s) => RawDoc::Text(s.to_string()).into_ids(tokenize),
                None => Err(bad(format!(
                    "expected \"{name}\" (string) or \"{name}_ids\" (array)"
                ))),
            }
        };
        out.push(Instruction {
            prompt: field("prompt")?,
            target: field("target")?,
        });
    }
    Ok(out)
}

/// Tokenized documents in two memory-mapped files.
#[derive(Debug)]
pub struct TokenStore {
    tokens: Option<Mmap>,
    offsets: Vec<u64>,
    path: PathBuf,
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(dir);
    Ok(())
}

impl TokenStore {
    /// Writes documents to `PREFIX.tokens` / `PREFIX.offsets` (each file atomically; the offsets
    /// file is written last, so a store is complete iff it exists) and opens the result.
    pub fn write(prefix: &Path, docs: &[Vec<u32>]) -> Result<Self> {
        let mut tokens: Vec<u8> = Vec::new();
        let mut offsets: Vec<u8> = Vec::with_capacity((docs.len() + 1) * 8);
        let mut total = 0u64;
        offsets.extend_from_slice(&0u64.to_le_bytes());
        for d in docs {
            for &t in d {
                tokens.extend_from_slice(&t.to_le_bytes());
            }
            total += d.len() as u64;
            offsets.extend_from_slice(&total.to_le_bytes());
        }
        let (tok_path, off_path) = Self::paths(prefix);
        if let Some(dir) = prefix.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic(&tok_path, &tokens)?;
        write_atomic(&off_path, &offsets)?;
        Self::open(prefix)
    }

    fn paths(prefix: &Path) -> (PathBuf, PathBuf) {
        let s = prefix.as_os_str().to_owned();
        let mut t = s.clone();
        t.push(".tokens");
        let mut o = s;
        o.push(".offsets");
        (PathBuf::from(t), PathBuf::from(o))
    }

    /// Whether a complete store exists at `prefix`.
    pub fn exists(prefix: &Path) -> bool {
        let (t, o) = Self::paths(prefix);
        t.is_file() && o.is_file()
    }

    /// Opens (memory-maps) a store and checks its index.
    pub fn open(prefix: &Path) -> Result<Self> {
        let (tok_path, off_path) = Self::paths(prefix);
        let off_bytes = std::fs::read(&off_path).map_err(|e| Error::io(&off_path, e))?;
        if off_bytes.len() % 8 != 0 || off_bytes.len() < 8 {
            return Err(Error::Data(format!(
                "{}: not a u64 offset table",
                off_path.display()
            )));
        }
        let offsets: Vec<u64> = off_bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let file = File::open(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&tok_path, e))?.len();
        let total = *offsets.last().unwrap_or(&0);
        if len != total * 4 || offsets.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Data(format!(
                "{}: {} bytes do not match the offset table ({} tokens)",
                tok_path.display(),
                len,
                total
            )));
        }
        let tokens = if len == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only and only read through this map; a concurrent
            // writer replaces the file by rename (a new inode) and never modifies it in place.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&tok_path, e))?)
        };
        Ok(Self {
            tokens,
            offsets,
            path: prefix.to_path_buf(),
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there is no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total tokens.
    pub fn num_tokens(&self) -> u64 {
        *self.offsets.last().unwrap_or(&0)
    }

    /// The location of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ids of document `i` (empty if out of range).
    pub fn doc(&self, i: usize) -> &[u32] {
        let (Some(&a), Some(&b), Some(map)) = (
            self.offsets.get(i),
            self.offsets.get(i + 1),
            self.tokens.as_ref(),
        ) else {
            return &[];
        };
        let bytes = &map[a as usize * 4..b as usize * 4];
        // The map is page aligned and every offset is a multiple of 4 bytes.
        bytemuck::try_cast_slice(bytes).unwrap_or(&[])
    }
}

/// FNV-1a 64-bit hash (cache keys).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Tokenizes `sources` into a token store under `cache_dir` (reused when the sources and the
/// tokenizer tag are unchanged).
pub fn prepare_corpus(
    sources: &[PathBuf],
    tokenize: Option<TokenizeFn<'_>>,
    tokenizer_tag: &str,
    cache_dir: &Path,
) -> Result<TokenStore> {
    let mut key = fnv1a(tokenizer_tag.as_bytes(), 0xcbf2_9ce4_8422_2325);
    for s in sources {
        let bytes = std::fs::read(s).map_err(|e| Error::io(s, e))?;
        key = fnv1a(&bytes, key ^ bytes.len() as u64);
    }
    let prefix = cache_dir.join(format!("corpus-{key:016x}"));
    if TokenStore::exists(&prefix) {
        if let Ok(store) = TokenStore::open(&prefix) {
            return Ok(store);
        }
    }
    let mut docs = Vec::new();
    for s in sources {
        for d in read_documents(s)? {
            let ids = d.into_ids(tokenize)?;
            if !ids.is_empty() {
                docs.push(ids);
            }
        }
    }
    TokenStore::write(&prefix, &docs)
}

/// Splits document indices into (train, validation): document `i` goes to validation with
/// probability `fraction`, decided by a hash of `(seed, i)`; with at least two documents and a
/// positive fraction both sides are non-empty.
pub fn split_documents(num_docs: usize, fraction: f64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    let cut = (fraction.clamp(0.0, 1.0) * 1_000_000.0) as u64;
    for i in 0..num_docs {
        if splitmix64(seed ^ splitmix64(i as u64 + 0x5EED)) % 1_000_000 < cut {
            val.push(i as u32);
        } else {
            train.push(i as u32);
        }
    }
    if fraction > 0.0 && num_docs >= 2 {
        if val.is_empty() {
            if let Some(d) = train.pop() {
                val.push(d);
            }
        } else if train.is_empty() {
            if let Some(d) = val.pop() {
                train.push(d);
            }
        }
    }
    (train, val)
}

/// The position of a [`DataStream`] (everything a checkpoint needs to continue it exactly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataState {
    /// Passes over the training documents completed.
    pub epoch: u64,
    /// Index into this epoch's document order.
    pub cursor: usize,
    /// Tokens of the current document already used.
    pub offset: usize,
    /// Objective RNG.
    pub rng: Rng,
    /// MIP passes completed.
    pub mip_epoch: u64,
    /// Index into this MIP epoch's order.
    pub mip_cursor: usize,
    /// Sequences produced so far (seeds dropout).
    pub sequences: u64,
}

/// Settings of a [`DataStream`].
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Sequence length.
    pub seq_len: usize,
    /// Objective.
    pub objective: ObjectiveConfig,
    /// Special token ids.
    pub specials: SpecialTokens,
    /// Seed of orders, objective draws and dropout.
    pub seed: u64,
    /// Segments shorter than this are not started; the rest of the sequence is padding.
    pub min_segment: usize,
}

/// The resumable stream of packed training sequences.
#[derive(Debug, Clone)]
pub struct DataStream {
    store: Arc<TokenStore>,
    docs: Vec<u32>,
    mip: Arc<Vec<Instruction>>,
    config: StreamConfig,
    order: Vec<u32>,
    mip_order: Vec<u32>,
    state: DataState,
}

impl DataStream {
    /// A stream over the documents `docs` of `store` (and MIP pairs `mip`), at the start.
    pub fn new(
        store: Arc<TokenStore>,
        docs: Vec<u32>,
        mip: Arc<Vec<Instruction>>,
        config: StreamConfig,
    ) -> Result<Self> {
        let usable = docs.iter().any(|&d| store.doc(d as usize).len() > MIN_TEXT);
        if !usable {
            return Err(Error::Data(format!(
                "no document with more than {MIN_TEXT} tokens among {} documents",
                docs.len()
            )));
        }
        if config.seq_len < 8 {
            return Err(Error::config("seq_len", "must be at least 8"));
        }
        let state = DataState {
            epoch: 0,
            cursor: 0,
            offset: 0,
            rng: Rng::derive(config.seed, 1),
            mip_epoch: 0,
            mip_cursor: 0,
            sequences: 0,
        };
        let mut s = Self {
            store,
            docs,
            mip,
            config,
            order: Vec::new(),
            mip_order: Vec::new(),
            state,
        };
        s.reorder();
        Ok(s)
    }

    fn reorder(&mut self) {
        self.order = self.docs.clone();
        Rng::derive(self.config.seed, 1000 + self.state.epoch).shuffle(&mut self.order);
        self.mip_order = (0..self.mip.len() as u32).collect();
        Rng::derive(self.config.seed, 1_000_000 + self.state.mip_epoch)
            .shuffle(&mut self.mip_order);
    }

    /// The current position.
    pub fn state(&self) -> &DataState {
        &self.state
    }

    /// Continues from a saved position.
    pub fn restore(&mut self, state: DataState) {
        self.state = state;
        self.reorder();
    }

    fn current_text(&mut self) -> &[u32] {
        // Skip to a document with enough tokens left.
        let mut guard = 0usize;
        loop {
            let doc = self.order[self.state.cursor] as usize;
            let len = self.store.doc(doc).len();
            if len.saturating_sub(self.state.offset) > MIN_TEXT {
                break;
            }
            self.state.offset = 0;
            self.state.cursor += 1;
            if self.state.cursor >= self.order.len() {
                self.state.cursor = 0;
                self.state.epoch += 1;
                self.reorder();
            }
            guard += 1;
            if guard > 2 * self.order.len() + 2 {
                break;
            }
        }
        let doc = self.order[self.state.cursor] as usize;
        &self.store.doc(doc)[self.state.offset..]
    }

    fn next_instruction(&mut self) -> Option<&Instruction> {
        if self.mip.is_empty() {
            return None;
        }
        if self.state.mip_cursor >= self.mip_order.len() {
            self.state.mip_cursor = 0;
            self.state.mip_epoch += 1;
            self.reorder();
        }
        let i = self.mip_order[self.state.mip_cursor] as usize;
        self.state.mip_cursor += 1;
        self.mip.get(i)
    }

    /// The next segment of at most `max_len` rows (`None` if nothing fits).
    pub fn next_segment(&mut self, max_len: usize) -> Option<Segment> {
        let obj = self.config.objective.clone();
        let specials = self.config.specials;
        if !self.mip.is_empty() && self.state.rng.bernoulli(obj.mip_ratio) {
            let pair = self.next_instruction()?.clone();
            if let Some(s) = mip_segment(&pair.prompt, &pair.target, max_len, &specials) {
                return Some(s);
            }
        }
        let use_mask = self.state.rng.bernoulli(obj.mask_ratio);
        let window = if obj.mask_window == 0 {
            (self.config.seq_len / 4).max(8)
        } else {
            obj.mask_window
        };
        let mut rng = self.state.rng.clone();
        let text = self.current_text().to_vec();
        let built = if use_mask {
            mask_segment(&text, window.min(max_len), &obj, &specials, &mut rng)
                .or_else(|| gmask_segment(&text, max_len, &obj, &specials, &mut rng))
        } else {
            gmask_segment(&text, max_len, &obj, &specials, &mut rng)
        };
        self.state.rng = rng;
        let (segment, consumed) = built?;
        self.state.offset += consumed;
        Some(segment)
    }

    /// The next packed sequence.
    pub fn next_sequence(&mut self) -> Sequence {
        let seq = self.config.seq_len;
        let min = self.config.min_segment.clamp(4, seq);
        let mut segments = Vec::new();
        let mut used = 0;
        while seq - used >= min {
            match self.next_segment(seq - used) {
                Some(s) => {
                    used += s.len();
                    segments.push(s);
                }
                None => break,
            }
        }
        let dropout_seed = splitmix64(self.config.seed ^ splitmix64(self.state.sequences ^ 0xD50F));
        self.state.sequences += 1;
        Sequence::pack(&segments, seq, self.config.specials.pad, dropout_seed)
    }

    /// The next batch of `batch` sequences.
    pub fn next_batch(&mut self, batch: usize) -> Batch {
        let seqs: Vec<Sequence> = (0..batch).map(|_| self.next_sequence()).collect();
        Batch::from_sequences(&seqs)
    }
}
