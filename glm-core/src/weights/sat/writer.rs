//! Writing `torch.save` files as SAT stores its shards: a zip archive (stored, zip64 when large)
//! holding `<stem>/data.pkl` — a protocol-2 pickle of `{"module": OrderedDict(name → tensor)}`,
//! each tensor a `torch._utils._rebuild_tensor_v2` of its own storage — `<stem>/data/<n>` (the raw
//! little-endian bytes, 64-byte aligned as torch aligns them), `<stem>/byteorder` and
//! `<stem>/version`. What [`TorchShard`](super::TorchShard) reads and `torch.load` loads.

use std::io::Write;
use std::path::Path;

use burn::tensor::{DType, TensorData};

use crate::error::{Error, Result};

/// One tensor of a shard: name, dtype and shape (the data comes later, one tensor at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchEntry {
    /// State-dict key.
    pub name: String,
    /// Element type (F32, F16, BF16, I8).
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TorchEntry {
    fn storage_class(&self) -> Result<&'static str> {
        Ok(match self.dtype {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            DType::I8 => "CharStorage",
            other => {
                return Err(Error::InvalidInput(format!(
                    "tensor `{}`: cannot write {other:?} to a torch file",
                    self.name
                )))
            }
        })
    }

    fn numel(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "tensor `{}`: {:?} overflows",
                    self.name, self.shape
                ))
            })
    }
}

/// Protocol-2 pickle writer for the handful of opcodes a state dict needs.
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }
    fn mark(&mut self) {
        self.op(b'(');
    }
    fn str(&mut self, s: &str) {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
    }
    fn int(&mut self, v: usize) {
        if let Ok(b) = u8::try_from(v) {
            self.op(b'K');
            self.0.push(b);
        } else if let Ok(w) = u16::try_from(v) {
            self.op(b'M');
            self.0.extend_from_slice(&w.to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.op(b'J');
            self.0.extend_from_slice(&i.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, with a zero byte so it stays positive.
            let mut bytes = (v as u64).to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes.last().is_some_and(|&b| b >= 0x80) {
                bytes.push(0);
            }
            self.op(0x8a);
            self.0.push(bytes.len() as u8);
            self.0.extend_from_slice(&bytes);
        }
    }
    fn tuple_of(&mut self, values: &[usize]) {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.op(b't');
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

/// The pickle of `{"module": OrderedDict(...)}` over `entries`, storage keys `0, 1, …`.
fn state_dict_pickle(entries: &[TorchEntry]) -> Result<Vec<u8>> {
    let mut p = Pickle(Vec::new());
    p.op(0x80);
    p.0.push(2);
    p.op(b'}');
    p.mark();
    p.str("module");
    p.empty_ordered_dict();
    p.mark();
    for (key, e) in entries.iter().enumerate() {
        p.str(&e.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.mark();
        // Persistent id: ('storage', torch.<Type>Storage, key, 'cpu', numel).
        p.mark();
        p.str("storage");
        p.global("torch", e.storage_class()?);
        p.str(&key.to_string());
        p.str("cpu");
        p.int(e.numel()?);
        p.op(b't');
        p.op(b'Q');
        p.int(0);
        p.tuple_of(&e.shape);
        let mut stride = vec![1usize; e.shape.len()];
        for i in (0..e.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].saturating_mul(e.shape[i + 1]);
        }
        p.tuple_of(&stride);
        p.op(0x89);
        p.empty_ordered_dict();
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    p.op(b'u');
    p.op(b'.');
    Ok(p.0)
}

/// A zip entry written so far: what the central directory repeats.
struct ZipEntry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

const U32_MAX: u64 = 0xFFFF_FFFF;

/// A stored (uncompressed) zip archive written front to back.
struct ZipWriter<'a> {
    out: &'a mut dyn Write,
    at: u64,
    entries: Vec<ZipEntry>,
}

impl ZipWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// One entry, its data aligned to 64 bytes (torch's padding extra field `FB`).
    fn entry(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let size = data.len() as u64;
        let crc = crc32fast::hash(data);
        let zip64 = size >= U32_MAX;
        let mut extra = Vec::new();
        if zip64 {
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
        }
        let header_end = self.at + 30 + name.len() as u64 + extra.len() as u64;
        let pad = (64 - (header_end + 4) % 64) % 64;
        extra.extend_from_slice(&0x4246u16.to_le_bytes());
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.resize(extra.len() + pad as usize, 0);
        let offset = self.at;
        let small = |v: u64| if zip64 { U32_MAX as u32 } else { v as u32 };
        let mut h = Vec::with_capacity(30 + name.len() + extra.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // flags, method, time, date
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&small(size).to_le_bytes());
        h.extend_from_slice(&small(size).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        self.put(&h)?;
        self.put(data)?;
        self.entries.push(ZipEntry {
            name: name.to_string(),
            crc,
            size,
            offset,
        });
        Ok(())
    }

    /// The central directory and the end records (zip64 ones when needed).
    fn finish(mut self) -> std::io::Result<u64> {
        let cd_start = self.at;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let big_size = e.size >= U32_MAX;
            let big_offset = e.offset >= U32_MAX;
            let mut extra = Vec::new();
            if big_size || big_offset {
                let mut fields = Vec::new();
                if big_size {
                    fields.extend_from_slice(&e.size.to_le_bytes());
                    fields.extend_from_slice(&e.size.to_le_bytes());
                }
                if big_offset {
                    fields.extend_from_slice(&e.offset.to_le_bytes());
                }
                extra.extend_from_slice(&1u16.to_le_bytes());
                extra.extend_from_slice(&(fields.len() as u16).to_le_bytes());
                extra.extend_from_slice(&fields);
            }
            let size = if big_size { U32_MAX } else { e.size } as u32;
            let offset = if big_offset { U32_MAX } else { e.offset } as u32;
            let version: u16 = if extra.is_empty() { 20 } else { 45 };
            let mut h = Vec::new();
            h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            h.extend_from_slice(&version.to_le_bytes());
            h.extend_from_slice(&version.to_le_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // flags, method, time, date
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            h.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
            h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            h.extend_from_slice(&offset.to_le_bytes());
            h.extend_from_slice(e.name.as_bytes());
            h.extend_from_slice(&extra);
            self.put(&h)?;
        }
        let cd_size = self.at - cd_start;
        let count = entries.len() as u64;
        let zip64 = cd_start >= U32_MAX || cd_size >= U32_MAX || count >= 0xFFFF;
        if zip64 {
            let record = self.at;
            let mut r = Vec::new();
            r.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            r.extend_from_slice(&44u64.to_le_bytes());
            r.extend_from_slice(&45u16.to_le_bytes());
            r.extend_from_slice(&45u16.to_le_bytes());
            r.extend_from_slice(&[0; 8]); // this disk, disk of the directory
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&cd_size.to_le_bytes());
            r.extend_from_slice(&cd_start.to_le_bytes());
            r.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&record.to_le_bytes());
            r.extend_from_slice(&1u32.to_le_bytes());
            self.put(&r)?;
        }
        let clamp16 = |v: u64| if zip64 { 0xFFFF } else { v as u16 };
        let clamp32 = |v: u64| if zip64 { U32_MAX as u32 } else { v as u32 };
        let mut end = Vec::new();
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&[0; 4]); // this disk, disk of the directory
        end.extend_from_slice(&clamp16(count).to_le_bytes());
        end.extend_from_slice(&clamp16(count).to_le_bytes());
        end.extend_from_slice(&clamp32(cd_size).to_le_bytes());
        end.extend_from_slice(&clamp32(cd_start).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.put(&end)?;
        Ok(self.at)
    }
}

/// Writes a SAT shard (`torch.save({"module": state_dict})`) at `path`, atomically: `entries`
/// gives every tensor's name, dtype and shape up front (the pickle comes first, as torch writes
/// it), `data(i)` the bytes of entry `i` when its turn comes (one tensor in memory at a time).
/// Returns the file size. A tensor whose data does not match its entry is an error naming it.
pub fn write_torch_shard(
    path: &Path,
    entries: &[TorchEntry],
    data: &mut dyn FnMut(usize) -> Result<TensorData>,
) -> Result<u64> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidInput(format!("{}: not a file name", path.display())))?
        .to_string();
    let pickle = state_dict_pickle(entries)?;
    crate::weights::write_atomic_with(path, |out| -> Result<u64> {
        let io = |e| Error::io(path, e);
        let mut zip = ZipWriter {
            out,
            at: 0,
            entries: Vec::new(),
        };
        zip.entry(&format!("{stem}/data.pkl"), &pickle)
            .map_err(io)?;
        zip.entry(&format!("{stem}/byteorder"), b"little")
            .map_err(io)?;
        for (i, e) in entries.iter().enumerate() {
            let t = data(i)?;
            let bytes = e.numel()? * e.dtype.size();
            if t.dtype != e.dtype || t.shape.to_vec() != e.shape || t.as_bytes().len() != bytes {
                return Err(Error::InvalidInput(format!(
                    "tensor `{}`: {:?} {:?} given for an entry of {:?} {:?}",
                    e.name, t.dtype, t.shape, e.dtype, e.shape
                )));
            }
            zip.entry(&format!("{stem}/data/{i}"), t.as_bytes())
                .map_err(io)?;
        }
        zip.entry(&format!("{stem}/version"), b"3\n").map_err(io)?;
        zip.finish().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_ints_use_the_smallest_opcode() {
        let mut p = Pickle(Vec::new());
        p.int(7);
        p.int(300);
        p.int(70_000);
        p.int(3_000_000_000);
        assert_eq!(&p.0[..2], &[b'K', 7]);
        assert_eq!(&p.0[2..5], &[b'M', 0x2c, 0x01]);
        assert_eq!(&p.0[5..10], &[b'J', 0x70, 0x11, 0x01, 0x00]);
        // 3e9 = 0xB2D05E00: LONG1 of 5 bytes with a sign byte.
        assert_eq!(&p.0[10..], &[0x8a, 5, 0x00, 0x5e, 0xd0, 0xb2, 0x00]);
    }
}
