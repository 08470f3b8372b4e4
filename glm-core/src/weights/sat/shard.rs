//! One torch zip checkpoint (`torch.save`, zip format), read without trusting it.
//!
//! At open: the central directory (zip64 aware) and every entry's local header are checked against
//! the file size; `data.pkl` is CRC-checked and parsed; every tensor's storage entry must exist, hold
//! exactly `numel × element size` bytes of the dtype the pickle names, and contain the tensor's whole
//! view (offset, sizes, strides). At load: the storage entry's CRC32 is verified before any byte is
//! used. A file cut short (no central directory) is scanned to name the storage, and so the tensors,
//! where the data stops. Every failure is an [`Error`] naming the file and, where there is one, the tensor.
//!
//! (Over 400 lines: the torch zip container (zip64 directory, CRC32, storage records) checked byte by byte so a damaged shard is an error, never zeros.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{DType, TensorData};

use super::pickle::{self, TensorView};
use crate::error::{Error, Result};

const LOCAL_SIG: [u8; 4] = *b"PK\x03\x04";
const CENTRAL_SIG: [u8; 4] = *b"PK\x01\x02";
const EOCD_SIG: [u8; 4] = *b"PK\x05\x06";
const EOCD64_SIG: [u8; 4] = *b"PK\x06\x06";
const EOCD64_LOC_SIG: [u8; 4] = *b"PK\x06\x07";
/// Largest `data.pkl` read while diagnosing a file without a central directory.
const MAX_DIAG_PICKLE: u64 = 256 << 20;

/// Where the bytes come from: a file (read on demand) or memory.
enum Source {
    File { file: Mutex<File>, len: u64 },
    Memory(Vec<u8>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Memory(v) => v.len() as u64,
        }
    }

    /// Reads `len` bytes at `offset`; the range must lie inside the file.
    fn read_at(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {offset}..{offset}+{len} lie past the end of the file ({} bytes)",
                    self.len()
                ),
            ));
        };
        let n = usize::try_from(len).map_err(|_| std::io::Error::other("range too large"))?;
        match self {
            Source::Memory(v) => {
                let (a, b) = (offset as usize, end as usize);
                Ok(v[a..b].to_vec())
            }
            Source::File { file, .. } => {
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = vec![0u8; n];
                f.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    }
}

/// One zip entry, located and bounds-checked.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    data_start: u64,
    size: u64,
    crc: u32,
}

/// A tensor of the shard: its storage entry and view, all checked at open.
#[derive(Debug, Clone)]
struct TensorInfo {
    entry: usize,
    storage_key: String,
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// Offset into the storage, in elements.
    offset: usize,
}

/// A torch zip checkpoint (`mp_rank_XX_model_states.pt`), its tensors verified on every read.
pub struct TorchShard {
    path: PathBuf,
    source: Source,
    entries: Vec<Entry>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for TorchShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchShard")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The element type of a torch storage class.
fn storage_dtype(type_name: &str) -> Option<DType> {
    Some(match type_name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        _ => return None,
    })
}

/// The central directory: (name, local header offset, size, crc, method, flags) per entry.
struct CentralEntry {
    name: String,
    local_offset: u64,
    size: u64,
    compressed: u64,
    crc: u32,
    method: u16,
    flags: u16,
}

/// The central directory entries and the offset where the directory starts (entry data ends there).
fn read_central_directory(src: &Source) -> std::result::Result<(Vec<CentralEntry>, u64), String> {
    let len = src.len();
    if len < 22 {
        return Err(format!("{len} bytes is too short for a zip file"));
    }
    let tail_len = len.min(22 + 65535);
    let tail = src
        .read_at(len - tail_len, tail_len)
        .map_err(|e| e.to_string())?;
    let eocd_rel = (0..=tail.len() - 22)
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD_SIG)
        .ok_or_else(|| "no zip end-of-central-directory record (file truncated?)".to_string())?;
    let eocd_pos = len - tail_len + eocd_rel as u64;
    let e = &tail[eocd_rel..];
    let mut count = u64::from(le16(e, 10));
    let mut cd_size = u64::from(le32(e, 12));
    let mut cd_offset = u64::from(le32(e, 16));
    let mut cd_end_limit = eocd_pos;
    if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        let loc_pos = eocd_pos
            .checked_sub(20)
            .ok_or_else(|| "zip64 locator missing".to_string())?;
        let loc = src.read_at(loc_pos, 20).map_err(|e| e.to_string())?;
        if loc[0..4] != EOCD64_LOC_SIG {
            return Err("zip64 end-of-central-directory locator missing".into());
        }
        let rec_pos = le64(&loc, 8);
        if rec_pos.checked_add(56).is_none_or(|end| end > loc_pos) {
            return Err("zip64 end-of-central-directory record out of range".into());
        }
        let rec = src.read_at(rec_pos, 56).map_err(|e| e.to_string())?;
        if rec[0..4] != EOCD64_SIG {
            return Err("zip64 end-of-central-directory record missing".into());
        }
        count = le64(&rec, 32);
        cd_size = le64(&rec, 40);
        cd_offset = le64(&rec, 48);
        cd_end_limit = rec_pos;
    }
    if cd_offset
        .checked_add(cd_size)
        .is_none_or(|end| end > cd_end_limit)
    {
        return Err(format!(
            "central directory ({cd_size} bytes at {cd_offset}) lies outside the file"
        ));
    }
    // Each central header is at least 46 bytes: a larger count cannot be right.
    if count > cd_size / 46 {
        return Err(format!(
            "central directory claims {count} entries in {cd_size} bytes"
        ));
    }
    let cd = src.read_at(cd_offset, cd_size).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(count as usize);
    let mut p = 0usize;
    for i in 0..count {
        let h = cd
            .get(p..p + 46)
            .ok_or_else(|| format!("central directory entry {i} is cut off"))?;
        if h[0..4] != CENTRAL_SIG {
            return Err(format!("central directory entry {i} has a bad signature"));
        }
        let flags = le16(h, 8);
        let method = le16(h, 10);
        let crc = le32(h, 16);
        let mut compressed = u64::from(le32(h, 20));
        let mut size = u64::from(le32(h, 24));
        let name_len = usize::from(le16(h, 28));
        let extra_len = usize::from(le16(h, 30));
        let comment_len = usize::from(le16(h, 32));
        let mut local_offset = u64::from(le32(h, 42));
        let var = cd
            .get(p + 46..p + 46 + name_len + extra_len + comment_len)
            .ok_or_else(|| format!("central directory entry {i} is cut off"))?;
        let name = String::from_utf8(var[..name_len].to_vec())
            .map_err(|_| format!("central directory entry {i} has a non-UTF-8 name"))?;
        // zip64 extra field: the 0xffffffff fields, in order size, compressed, offset.
        let mut extra = &var[name_len..name_len + extra_len];
        while extra.len() >= 4 {
            let id = le16(extra, 0);
            let n = usize::from(le16(extra, 2));
            let body = extra
                .get(4..4 + n)
                .ok_or_else(|| format!("entry `{name}`: bad extra field"))?;
            if id == 1 {
                let mut q = 0usize;
                let mut next = |field: &mut u64| -> std::result::Result<(), String> {
                    if *field == 0xffff_ffff {
                        let b = body
                            .get(q..q + 8)
                            .ok_or_else(|| format!("entry `{name}`: short zip64 field"))?;
                        *field = le64(b, 0);
                        q += 8;
                    }
                    Ok(())
                };
                next(&mut size)?;
                next(&mut compressed)?;
                next(&mut local_offset)?;
            }
            extra = &extra[4 + n..];
        }
        out.push(CentralEntry {
            name,
            local_offset,
            size,
            compressed,
            crc,
            method,
            flags,
        });
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok((out, cd_offset))
}

/// Locates an entry's data through its local header and checks it lies before `limit`.
fn locate(src: &Source, c: &CentralEntry, limit: u64) -> std::result::Result<Entry, String> {
    let name = &c.name;
    if c.flags & 1 != 0 {
        return Err(format!("entry `{name}` is encrypted"));
    }
    if c.method != 0 || c.compressed != c.size {
        return Err(format!(
            "entry `{name}` is compressed (method {}); torch writes stored entries",
            c.method
        ));
    }
    let h = src
        .read_at(c.local_offset, 30)
        .map_err(|_| format!("local header of `{name}` lies past the end of the file"))?;
    if h[0..4] != LOCAL_SIG {
        return Err(format!(
            "local header of `{name}` (at byte {}) has a bad signature",
            c.local_offset
        ));
    }
    let name_len = u64::from(le16(&h, 26));
    let extra_len = u64::from(le16(&h, 28));
    let local_name = src
        .read_at(c.local_offset + 30, name_len)
        .map_err(|_| format!("local header of `{name}` is cut off"))?;
    if local_name != name.as_bytes() {
        return Err(format!(
            "local header at byte {} names `{}`, the directory says `{name}`",
            c.local_offset,
            String::from_utf8_lossy(&local_name)
        ));
    }
    let data_start = c.local_offset + 30 + name_len + extra_len;
    if data_start.checked_add(c.size).is_none_or(|end| end > limit) {
        return Err(format!(
            "entry `{name}` ({} bytes at {data_start}) runs past the end of the data ({limit} bytes)",
            c.size
        ));
    }
    Ok(Entry {
        name: name.clone(),
        data_start,
        size: c.size,
        crc: c.crc,
    })
}

/// Checked `offset + span of the view`, in elements; `None` on overflow.
fn view_end(offset: usize, shape: &[usize], stride: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(offset);
    }
    let mut last = offset;
    for (&n, &s) in shape.iter().zip(stride) {
        last = last.checked_add((n - 1).checked_mul(s)?)?;
    }
    last.checked_add(1)
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        out[i] = out[i + 1].saturating_mul(shape[i + 1]);
    }
    out
}

impl TorchShard {
    /// Opens a torch zip checkpoint file; `top_level_key` selects the state dict inside the
    /// pickled object (SAT: `module`), `None` takes the object itself.
    pub fn open(path: impl AsRef<Path>, top_level_key: Option<&str>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let source = Source::File {
            file: Mutex::new(file),
            len,
        };
        Self::from_source(path, source, top_level_key)
    }

    /// Parses a checkpoint held in memory; `path` is only used in error messages.
    pub fn from_bytes(
        path: impl Into<PathBuf>,
        bytes: Vec<u8>,
        top_level_key: Option<&str>,
    ) -> Result<Self> {
        Self::from_source(path.into(), Source::Memory(bytes), top_level_key)
    }

    fn from_source(path: PathBuf, source: Source, top_level_key: Option<&str>) -> Result<Self> {
        let (central, limit) = match read_central_directory(&source) {
            Ok(c) => c,
            Err(reason) => {
                return Err(diagnose_truncation(&path, &source, top_level_key)
                    .unwrap_or_else(|| Error::corrupt(&path, reason)))
            }
        };
        let located: Vec<std::result::Result<Entry, String>> =
            central.iter().map(|c| locate(&source, c, limit)).collect();
        let found = |pred: &dyn Fn(&str) -> bool| central.iter().position(|c| pred(&c.name));
        let pkl = found(&|n| n == "data.pkl" || n.ends_with("/data.pkl")).ok_or_else(|| {
            Error::corrupt(&path, "no data.pkl entry: not a torch zip checkpoint")
        })?;
        let prefix = central[pkl].name.trim_end_matches("data.pkl").to_string();
        let entry_at = |i: usize| -> Result<&Entry> {
            located[i]
                .as_ref()
                .map_err(|r| Error::corrupt(&path, r.clone()))
        };
        if let Some(bo) = found(&|n| n == format!("{prefix}byteorder")) {
            let b = read_verified(&path, &source, entry_at(bo)?, None)?;
            if b != b"little" {
                return Err(Error::corrupt(
                    &path,
                    format!(
                        "byteorder `{}` is not supported (only little-endian)",
                        String::from_utf8_lossy(&b)
                    ),
                ));
            }
        }
        let pkl_entry = entry_at(pkl)?;
        let pkl_bytes = read_verified(&path, &source, pkl_entry, None)?;
        let parsed = pickle::parse(&pkl_bytes)
            .map_err(|r| Error::corrupt(&path, format!("{}: {r}", pkl_entry.name)))?;
        let views = parsed
            .tensors(top_level_key)
            .map_err(|r| Error::corrupt(&path, format!("{}: {r}", pkl_entry.name)))?;
        let by_name: BTreeMap<&str, usize> = central
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut storage_dtypes: BTreeMap<String, DType> = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, view) in views {
            let info = check_view(&path, &name, &view, &prefix, &by_name, &located)?;
            match storage_dtypes.get(&info.storage_key) {
                Some(d) if *d != info.dtype => {
                    return Err(Error::CorruptTensor {
                        file: path,
                        tensor: name,
                        reason: format!(
                            "storage data/{} is used as {:?} and as {:?}",
                            info.storage_key, d, info.dtype
                        ),
                    })
                }
                _ => {
                    storage_dtypes.insert(info.storage_key.clone(), info.dtype);
                }
            }
            tensors.insert(name, info);
        }
        // Entries no tensor uses (version, serialization id) must still be intact zip entries.
        let entries = located
            .into_iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|r| Error::corrupt(&path, r))?;
        Ok(Self {
            path,
            source,
            entries,
            tensors,
        })
    }

    /// The file this shard was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// Stored dtype of `name`, if present.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.tensors.get(name).map(|t| t.dtype)
    }

    /// Reads `name`: its storage entry is CRC-checked, then the view is copied out.
    pub fn load(&self, name: &str) -> Result<TensorData> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let entry = &self.entries[t.entry];
        let storage = read_verified(&self.path, &self.source, entry, Some(name))?;
        let esize = t.dtype.size();
        let numel: usize = t.shape.iter().product();
        let bytes = if t.stride == contiguous_strides(&t.shape) || numel <= 1 {
            let start = t.offset * esize;
            let end = start + numel * esize;
            if start == 0 && end == storage.len() {
                storage
            } else {
                storage[start..end].to_vec()
            }
        } else {
            let mut out = Vec::with_capacity(numel * esize);
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let e: usize =
                    t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                out.extend_from_slice(&storage[e * esize..(e + 1) * esize]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out
        };
        Ok(TensorData::from_bytes_vec(bytes, t.shape.clone(), t.dtype))
    }

    /// CRC-checks every entry of the file (what [`load`](Self::load) does per tensor).
    pub fn verify(&self) -> Result<()> {
        for e in &self.entries {
            let tensor = self
                .tensors
                .iter()
                .find(|(_, t)| self.entries[t.entry].name == e.name)
                .map(|(n, _)| n.as_str());
            read_verified(&self.path, &self.source, e, tensor)?;
        }
        Ok(())
    }
}

/// Reads an entry and checks its CRC32; errors name `tensor` when given.
fn read_verified(path: &Path, src: &Source, e: &Entry, tensor: Option<&str>) -> Result<Vec<u8>> {
    let fail = |reason: String| match tensor {
        Some(t) => Error::CorruptTensor {
            file: path.to_path_buf(),
            tensor: t.to_string(),
            reason,
        },
        None => Error::corrupt(path, reason),
    };
    let bytes = src
        .read_at(e.data_start, e.size)
        .map_err(|err| fail(format!("entry `{}`: {err}", e.name)))?;
    let crc = crc32fast::hash(&bytes);
    if crc != e.crc {
        return Err(fail(format!(
            "entry `{}` fails its CRC32 check (stored {:08x}, data {crc:08x}): the file is damaged",
            e.name, e.crc
        )));
    }
    Ok(bytes)
}

/// Checks one tensor's view against its storage entry.
fn check_view(
    path: &Path,
    name: &str,
    view: &TensorView,
    prefix: &str,
    by_name: &BTreeMap<&str, usize>,
    located: &[std::result::Result<Entry, String>],
) -> Result<TensorInfo> {
    let bad = |reason: String| Error::CorruptTensor {
        file: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let key = &view.storage.key;
    let dtype = storage_dtype(&view.storage.type_name).ok_or_else(|| Error::UnsupportedDtype {
        file: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: view.storage.type_name.clone(),
    })?;
    let entry_name = format!("{prefix}data/{key}");
    let &entry = by_name
        .get(entry_name.as_str())
        .ok_or_else(|| bad(format!("its storage entry `{entry_name}` is missing")))?;
    let esize = dtype.size() as u64;
    let size = located[entry].as_ref().map_err(|r| bad(r.clone()))?.size;
    let storage_numel = match view.storage.numel {
        Some(n) => {
            if n.checked_mul(esize) != Some(size) {
                return Err(bad(format!(
                    "storage `{entry_name}` holds {size} bytes, the pickle says {n} {:?} elements ({} bytes)",
                    dtype,
                    n.saturating_mul(esize)
                )));
            }
            n
        }
        None => {
            if !size.is_multiple_of(esize) {
                return Err(bad(format!(
                    "storage `{entry_name}` holds {size} bytes, not a whole number of {dtype:?} elements"
                )));
            }
            size / esize
        }
    };
    let to_usize = |v: u64, what: &str| {
        usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit in memory")))
    };
    let shape = view
        .size
        .iter()
        .map(|&v| to_usize(v, "dimension"))
        .collect::<Result<Vec<_>>>()?;
    let stride = view
        .stride
        .iter()
        .map(|&v| to_usize(v, "stride"))
        .collect::<Result<Vec<_>>>()?;
    let offset = to_usize(view.offset, "storage offset")?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let end = view_end(offset, &shape, &stride).ok_or_else(|| {
        bad(format!(
            "view (offset {offset}, shape {shape:?}, stride {stride:?}) overflows"
        ))
    })?;
    if end as u64 > storage_numel {
        return Err(bad(format!(
            "view (offset {offset}, shape {shape:?}, stride {stride:?}) needs {end} elements, storage `{entry_name}` holds {storage_numel}"
        )));
    }
    if numel as u64 > storage_numel {
        return Err(bad(format!(
            "{numel} elements read from a storage of {storage_numel} (overlapping view)"
        )));
    }
    Ok(TensorInfo {
        entry,
        storage_key: key.clone(),
        dtype,
        shape,
        stride,
        offset,
    })
}

/// For a file without a readable central directory: walk the local headers from the start, parse
/// `data.pkl`, and name the storage — and its tensors — where the data stops. `None` when the walk
/// finds nothing to blame (the caller then reports the directory problem itself).
fn diagnose_truncation(path: &Path, src: &Source, top_level_key: Option<&str>) -> Option<Error> {
    let len = src.len();
    let header = |at: u64| -> Option<(String, u64, u16, u64)> {
        let h = src.read_at(at, 30).ok()?;
        if h[0..4] != LOCAL_SIG {
            return None;
        }
        let name_len = u64::from(le16(&h, 26));
        let extra_len = u64::from(le16(&h, 28));
        let name = String::from_utf8(src.read_at(at + 30, name_len).ok()?).ok()?;
        let known_size = u64::from(le32(&h, 22));
        Some((
            name,
            at + 30 + name_len + extra_len,
            le16(&h, 6),
            known_size,
        ))
    };
    let (pkl_name, pkl_start, _, _) = header(0)?;
    if !(pkl_name == "data.pkl" || pkl_name.ends_with("/data.pkl")) {
        return None;
    }
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let avail = len.saturating_sub(pkl_start).min(MAX_DIAG_PICKLE);
    let pkl = src.read_at(pkl_start, avail).ok()?;
    let parsed = match pickle::parse(&pkl) {
        Ok(p) => p,
        Err(r) => {
            return Some(Error::corrupt(
                path,
                format!(
                    "no central directory, and `{pkl_name}` is unreadable: {r} (file truncated?)"
                ),
            ))
        }
    };
    let views = parsed.tensors(top_level_key).ok()?;
    // storage key → (expected bytes, tensors using it)
    let mut storages: BTreeMap<String, (Option<u64>, Vec<String>)> = BTreeMap::new();
    for (name, v) in &views {
        let bytes = storage_dtype(&v.storage.type_name)
            .zip(v.storage.numel)
            .and_then(|(d, n)| n.checked_mul(d.size() as u64));
        let e = storages
            .entry(v.storage.key.clone())
            .or_insert((bytes, Vec::new()));
        e.1.push(name.clone());
    }
    // Walk: each storage's size is known from the pickle; other entries are small, so the next
    // header is searched for within a short window.
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    let mut pos = pkl_start + parsed.consumed as u64;
    let window = 1u64 << 16;
    while pos < len {
        let chunk = src.read_at(pos, window.min(len - pos)).ok()?;
        let Some(rel) = chunk.windows(4).position(|w| w == LOCAL_SIG) else {
            break;
        };
        let at = pos + rel as u64;
        let Some((name, data_start, _, _)) = header(at) else {
            break;
        };
        let key = name
            .strip_prefix(&format!("{prefix}data/"))
            .map(str::to_string);
        match key.as_ref().and_then(|k| storages.get(k).map(|s| (k, s.0))) {
            Some((k, Some(size))) => {
                found.insert(k.clone(), data_start);
                if data_start.checked_add(size).is_none_or(|end| end > len) {
                    let tensors = &storages[k].1;
                    return Some(Error::CorruptTensor {
                        file: path.to_path_buf(),
                        tensor: tensors.join("`, `"),
                        reason: format!(
                            "file truncated: storage `{name}` needs bytes {data_start}..{} but the file ends at {len}",
                            data_start + size
                        ),
                    });
                }
                pos = data_start + size;
            }
            _ => pos = data_start,
        }
    }
    // No storage is cut: blame the first one whose header never came (truncated before it).
    // torch writes the storages in sorted key order, the order of this map.
    storages
        .iter()
        .find(|(k, _)| !found.contains_key(*k))
        .map(|(k, (_, tensors))| Error::CorruptTensor {
            file: path.to_path_buf(),
            tensor: tensors.join("`, `"),
            reason: format!(
                "file truncated or damaged: storage entry `{prefix}data/{k}` is missing and the zip directory is unreadable ({len} bytes)"
            ),
        })
}
