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
//!
//! (Over 400 lines: corpus reading, tokenization, the data cache with its checksums, and the deterministic shuffling position a resume continues from.)

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glm_core::dropout::splitmix64;
use glm_core::weights::write_atomic_with;
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

/// Most documents a token store may hold (document indices are `u32`).
pub const MAX_DOCUMENTS: u64 = u32::MAX as u64;

/// Most tokens a token store may hold (its byte size must fit the address space).
pub const MAX_TOKENS: u64 = (usize::MAX / 4) as u64;

impl TokenStore {
    /// Writes documents to `PREFIX.tokens` / `PREFIX.offsets` (each file atomically; the offsets
    /// file is written last, so a store is complete iff it exists) and opens the result.
    pub fn write(prefix: &Path, docs: &[Vec<u32>]) -> Result<Self> {
        let (tok_path, off_path) = Self::paths(prefix);
        let cache = |reason: String| Error::Cache {
            path: off_path.clone(),
            reason,
        };
        if docs.len() as u64 > MAX_DOCUMENTS {
            return Err(cache(format!(
                "{} documents, at most {MAX_DOCUMENTS} fit a token store",
                docs.len()
            )));
        }
        let mut offsets: Vec<u64> = Vec::with_capacity(docs.len() + 1);
        let mut total = 0u64;
        offsets.push(0);
        for d in docs {
            total = total
                .checked_add(d.len() as u64)
                .filter(|&t| t <= MAX_TOKENS)
                .ok_or_else(|| cache(format!("more than {MAX_TOKENS} tokens")))?;
            offsets.push(total);
        }
        if let Some(dir) = prefix.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic_with(&tok_path, |w| {
            let mut bytes = Vec::new();
            for d in docs {
                bytes.clear();
                bytes.extend(d.iter().flat_map(|t| t.to_le_bytes()));
                w.write_all(&bytes).map_err(|e| Error::io(&tok_path, e))?;
            }
            Ok::<(), Error>(())
        })?;
        // The offsets file last: a store is complete iff it exists.
        write_atomic_with(&off_path, |w| {
            for o in &offsets {
                w.write_all(&o.to_le_bytes())
                    .map_err(|e| Error::io(&off_path, e))?;
            }
            Ok::<(), Error>(())
        })?;
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

    /// Opens (memory-maps) a store and checks its index: the offset table must start at 0, never
    /// decrease, hold at most [`MAX_DOCUMENTS`] documents and end at the token file's length in
    /// `u32`s. A damaged cache is an [`Error::Cache`] naming the file (sizes are checked before
    /// anything is allocated).
    pub fn open(prefix: &Path) -> Result<Self> {
        let (tok_path, off_path) = Self::paths(prefix);
        let bad = |path: &Path, reason: String| Error::Cache {
            path: path.to_path_buf(),
            reason,
        };
        let off_len = std::fs::metadata(&off_path)
            .map_err(|e| Error::io(&off_path, e))?
            .len();
        if !off_len.is_multiple_of(8) || off_len < 8 {
            return Err(bad(
                &off_path,
                format!("{off_len} bytes is not a u64 offset table (a multiple of 8, at least 8)"),
            ));
        }
        let docs = off_len / 8 - 1;
        if docs > MAX_DOCUMENTS {
            return Err(bad(
                &off_path,
                format!("{docs} documents, at most {MAX_DOCUMENTS} are supported"),
            ));
        }
        let off_bytes = std::fs::read(&off_path).map_err(|e| Error::io(&off_path, e))?;
        if off_bytes.len() as u64 != off_len {
            return Err(bad(
                &off_path,
                format!(
                    "changed while read ({off_len} then {} bytes)",
                    off_bytes.len()
                ),
            ));
        }
        let offsets: Vec<u64> = off_bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        if offsets.first() != Some(&0) {
            return Err(bad(&off_path, "the first offset is not 0".into()));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(bad(
                &off_path,
                format!("offset {} is smaller than offset {i}", i + 1),
            ));
        }
        let total = offsets.last().copied().unwrap_or(0);
        let want = total
            .checked_mul(4)
            .filter(|_| total <= MAX_TOKENS)
            .ok_or_else(|| {
                bad(
                    &off_path,
                    format!("{total} tokens, at most {MAX_TOKENS} are supported"),
                )
            })?;
        let file = File::open(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&tok_path, e))?.len();
        if len != want {
            return Err(bad(
                &tok_path,
                format!(
                    "{len} bytes do not match the offset table ({total} tokens = {want} bytes)"
                ),
            ));
        }
        let tokens = if len == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only and only read through this map; a concurrent
            // writer replaces the file by rename (a new inode) and never modifies it in place.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&tok_path, e))?;
            if map.len() as u64 != want {
                return Err(bad(
                    &tok_path,
                    format!("mapped {} bytes, expected {want}", map.len()),
                ));
            }
            Some(map)
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
            self.offsets.get(i.wrapping_add(1)),
            self.tokens.as_ref(),
        ) else {
            return &[];
        };
        // `open` checked every offset against the file size, so these cannot fail on a store it
        // accepted; stay total anyway.
        let range = usize::try_from(a)
            .ok()
            .and_then(|a| a.checked_mul(4))
            .zip(usize::try_from(b).ok().and_then(|b| b.checked_mul(4)));
        let Some(bytes) = range.and_then(|(a, b)| map.get(a..b)) else {
            return &[];
        };
        // The map is page aligned and every offset is a multiple of 4 bytes.
        bytemuck::try_cast_slice(bytes).unwrap_or(&[])
    }

    /// A fingerprint of the document boundaries (FNV-1a of the offset table, hex): documents
    /// added, removed or resized change it. Cheap (the table is in memory).
    pub fn fingerprint(&self) -> String {
        let mut h = 0xcbf2_9ce4_8422_2325;
        for o in &self.offsets {
            h = fnv1a(&o.to_le_bytes(), h);
        }
        format!("{h:016x}")
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

    /// Epoch counters come from checkpoints (user data): they only seed the shuffles, so they
    /// wrap instead of overflowing (identical to plain addition for every real run).
    fn reorder(&mut self) {
        self.order = self.docs.clone();
        Rng::derive(self.config.seed, self.state.epoch.wrapping_add(1000)).shuffle(&mut self.order);
        self.mip_order = (0..self.mip.len() as u32).collect();
        Rng::derive(
            self.config.seed,
            self.state.mip_epoch.wrapping_add(1_000_000),
        )
        .shuffle(&mut self.mip_order);
    }

    /// The current position.
    pub fn state(&self) -> &DataState {
        &self.state
    }

    /// Continues from a saved position. A position that does not fit this stream's documents
    /// or instructions (the corpus changed since it was saved) is an [`Error::Data`] and leaves
    /// the stream unchanged.
    pub fn restore(&mut self, state: DataState) -> Result<()> {
        let old = std::mem::replace(&mut self.state, state);
        self.reorder();
        let s = &self.state;
        let doc_len = self
            .order
            .get(s.cursor)
            .map(|&d| self.store.doc(d as usize).len());
        let problem = match doc_len {
            None => Some(format!(
                "document cursor {} is past the {} training documents",
                s.cursor,
                self.order.len()
            )),
            Some(len) if s.offset > len => Some(format!(
                "token offset {} is past the end of the current document ({len} tokens)",
                s.offset
            )),
            _ if s.mip_cursor > self.mip_order.len() => Some(format!(
                "instruction cursor {} is past the {} instructions",
                s.mip_cursor,
                self.mip_order.len()
            )),
            _ => None,
        };
        if let Some(p) = problem {
            self.state = old;
            self.reorder();
            return Err(Error::Data(format!(
                "cannot restore the data position: {p}"
            )));
        }
        Ok(())
    }

    fn current_text(&mut self) -> &[u32] {
        // Skip to a document with enough tokens left.
        let mut guard = 0usize;
        loop {
            let len = self
                .order
                .get(self.state.cursor)
                .map_or(0, |&d| self.store.doc(d as usize).len());
            if len.saturating_sub(self.state.offset) > MIN_TEXT {
                break;
            }
            self.state.offset = 0;
            self.state.cursor += 1;
            if self.state.cursor >= self.order.len() {
                self.state.cursor = 0;
                self.state.epoch = self.state.epoch.wrapping_add(1);
                self.reorder();
            }
            guard += 1;
            if guard > 2 * self.order.len() + 2 {
                break;
            }
        }
        let Some(&doc) = self.order.get(self.state.cursor) else {
            return &[];
        };
        self.store
            .doc(doc as usize)
            .get(self.state.offset..)
            .unwrap_or(&[])
    }

    fn next_instruction(&mut self) -> Option<&Instruction> {
        if self.mip.is_empty() {
            return None;
        }
        if self.state.mip_cursor >= self.mip_order.len() {
            self.state.mip_cursor = 0;
            self.state.mip_epoch = self.state.mip_epoch.wrapping_add(1);
            self.reorder();
        }
        let i = *self.mip_order.get(self.state.mip_cursor)? as usize;
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
        let window = obj.window(self.config.seq_len);
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
        self.state.sequences = self.state.sequences.wrapping_add(1);
        Sequence::pack(&segments, seq, self.config.specials.pad, dropout_seed)
    }

    /// The next batch of `batch` sequences.
    pub fn next_batch(&mut self, batch: usize) -> Batch {
        let seqs: Vec<Sequence> = (0..batch).map(|_| self.next_sequence()).collect();
        Batch::from_sequences(&seqs)
    }
}
