//! Just enough of the zip format to take a torch `.pt` archive apart and put it back together
//! with correct CRCs, so the fuzzer can mutate `data.pkl` or one `data/<n>` storage entry and
//! still get past the archive checks into the pickle and storage validation.
//!
//! Only stored (uncompressed) entries, which is what `torch.save` writes.

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full name inside the archive (`<archive>/data.pkl`, `<archive>/data/0`, ...).
    pub name: String,
    /// Stored bytes.
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Reads the entries of a stored zip through its central directory (`None` if it is not one:
/// compressed entries, zip64-only sizes, bad signatures).
pub fn read(bytes: &[u8]) -> Option<Vec<Entry>> {
    let eocd = (0..bytes.len().checked_sub(21)?)
        .rev()
        .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))?;
    let count = u16_at(bytes, eocd + 10)?;
    let mut at = u32_at(bytes, eocd + 16)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if !bytes.get(at..)?.starts_with(b"PK\x01\x02") {
            return None;
        }
        let method = u16_at(bytes, at + 10)?;
        let size = u32_at(bytes, at + 20)?;
        let name_len = u16_at(bytes, at + 28)?;
        let extra_len = u16_at(bytes, at + 30)?;
        let comment_len = u16_at(bytes, at + 32)?;
        let local = u32_at(bytes, at + 42)?;
        if method != 0 || size == 0xffff_ffff || local == 0xffff_ffff {
            return None;
        }
        let name = String::from_utf8(bytes.get(at + 46..at + 46 + name_len)?.to_vec()).ok()?;
        if !bytes.get(local..)?.starts_with(b"PK\x03\x04") {
            return None;
        }
        let data_at = local + 30 + u16_at(bytes, local + 26)? + u16_at(bytes, local + 28)?;
        let data = bytes.get(data_at..data_at + size)?.to_vec();
        out.push(Entry { name, data });
        at += 46 + name_len + extra_len + comment_len;
    }
    Some(out)
}

/// CRC-32 (IEEE), as zip stores it.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, slot) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Writes stored entries as a zip archive, each entry's data aligned to 64 bytes as torch does.
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let push16 = |v: &mut Vec<u8>, x: usize| v.extend_from_slice(&(x as u16).to_le_bytes());
    let push32 = |v: &mut Vec<u8>, x: usize| v.extend_from_slice(&(x as u32).to_le_bytes());
    for e in entries {
        let offset = out.len();
        let crc = crc32(&e.data) as usize;
        let header_end = offset + 30 + e.name.len();
        // Extra field: id 0x4246 ("FB", as torch), 4-byte header, padding to a 64-byte boundary.
        let pad = (64 - (header_end + 4) % 64) % 64;
        out.extend_from_slice(b"PK\x03\x04");
        push16(&mut out, 20);
        push16(&mut out, 0);
        push16(&mut out, 0);
        push16(&mut out, 0);
        push16(&mut out, 0x21);
        push32(&mut out, crc);
        push32(&mut out, e.data.len());
        push32(&mut out, e.data.len());
        push16(&mut out, e.name.len());
        push16(&mut out, 4 + pad);
        out.extend_from_slice(e.name.as_bytes());
        push16(&mut out, 0x4246);
        push16(&mut out, pad);
        out.extend(std::iter::repeat_n(b'Z', pad));
        out.extend_from_slice(&e.data);

        central.extend_from_slice(b"PK\x01\x02");
        push16(&mut central, 0x031e);
        push16(&mut central, 20);
        push16(&mut central, 0);
        push16(&mut central, 0);
        push16(&mut central, 0);
        push16(&mut central, 0x21);
        push32(&mut central, crc);
        push32(&mut central, e.data.len());
        push32(&mut central, e.data.len());
        push16(&mut central, e.name.len());
        for _ in 0..4 {
            push16(&mut central, 0);
        }
        push32(&mut central, 0);
        push32(&mut central, offset);
        central.extend_from_slice(e.name.as_bytes());
    }
    let cd_offset = out.len();
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    push16(&mut out, 0);
    push16(&mut out, 0);
    push16(&mut out, entries.len());
    push16(&mut out, entries.len());
    push32(&mut out, central.len());
    push32(&mut out, cd_offset);
    push16(&mut out, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn write_then_read_round_trips() {
        let entries = vec![
            Entry {
                name: "a/data.pkl".into(),
                data: b"\x80\x02}q\x00.".to_vec(),
            },
            Entry {
                name: "a/data/0".into(),
                data: vec![1, 2, 3, 4, 5],
            },
        ];
        let bytes = write(&entries);
        assert_eq!(read(&bytes), Some(entries));
    }
}
