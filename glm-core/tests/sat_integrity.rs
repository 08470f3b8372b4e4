//! Fault injection on original SAT shards (`mp_rank_XX_model_states.pt`, torch zip archives):
//! a flipped byte, a file cut short anywhere in its data, a missing or short storage entry, or a
//! tensor view past the end of its storage must each be a typed error naming the file and the
//! tensor — never zeros. The fixture shards are copied to a temp folder and damaged there; where the
//! damage goes is found by reading the zip with the small independent reader below, never hard-coded.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use glm_core::weights::{SatCheckpoint, TorchShard, WeightSource};
use glm_core::{Error, GlmModel, ModelOptions};

const SAT_FOLDERS: [&str; 4] = ["sat_tp1", "sat_tp2", "sat_tp2_int8", "sat_tp2_int4"];

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-sat-integrity-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The iteration folder a SAT checkpoint's `latest` names.
fn iteration(folder: &Path) -> String {
    std::fs::read_to_string(folder.join("latest"))
        .unwrap()
        .trim()
        .to_string()
}

/// Copies fixture SAT folder `name` to a temp folder; returns (copy, path of rank 0's shard).
fn copy_sat(name: &str, tag: &str) -> (PathBuf, PathBuf) {
    let src = fixtures().join(name);
    let it = iteration(&src);
    let dst = tmp_dir(tag);
    std::fs::copy(src.join("latest"), dst.join("latest")).unwrap();
    std::fs::create_dir_all(dst.join(&it)).unwrap();
    for e in std::fs::read_dir(src.join(&it)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(&it).join(e.file_name())).unwrap();
    }
    let shard = dst.join(&it).join("mp_rank_00_model_states.pt");
    assert!(shard.is_file(), "{} has no rank-0 shard", src.display());
    (dst, shard)
}

// ---- a small zip reader/writer, independent of the library ----

#[derive(Clone, Debug)]
struct ZipEntry {
    name: String,
    data_start: usize,
    data: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_le_bytes([b[i], b[i + 1]]) as usize
}
fn u32_at(b: &[u8], i: usize) -> usize {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
}
fn u64_at(b: &[u8], i: usize) -> usize {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize
}

/// Entries of a stored (uncompressed) zip, in central-directory order.
fn read_zip(bytes: &[u8]) -> Vec<ZipEntry> {
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .find(|&i| bytes[i..i + 4] == *b"PK\x05\x06")
        .expect("end of central directory");
    let (mut count, mut cd) = (u16_at(bytes, eocd + 10), u32_at(bytes, eocd + 16));
    if count == 0xffff || cd == 0xffff_ffff {
        let loc = eocd - 20;
        assert_eq!(&bytes[loc..loc + 4], b"PK\x06\x07");
        let rec = u64_at(bytes, loc + 8);
        count = u64_at(bytes, rec + 32);
        cd = u64_at(bytes, rec + 48);
    }
    let mut out = Vec::new();
    let mut p = cd;
    for _ in 0..count {
        assert_eq!(&bytes[p..p + 4], b"PK\x01\x02");
        let (csize, usize_) = (u32_at(bytes, p + 20), u32_at(bytes, p + 24));
        assert_eq!(u16_at(bytes, p + 10), 0, "stored entries only");
        assert_eq!(csize, usize_);
        let (nl, el, cl) = (
            u16_at(bytes, p + 28),
            u16_at(bytes, p + 30),
            u16_at(bytes, p + 32),
        );
        let local = u32_at(bytes, p + 42);
        let name = String::from_utf8(bytes[p + 46..p + 46 + nl].to_vec()).unwrap();
        assert_eq!(&bytes[local..local + 4], b"PK\x03\x04");
        let data_start = local + 30 + u16_at(bytes, local + 26) + u16_at(bytes, local + 28);
        out.push(ZipEntry {
            name,
            data_start,
            data: bytes[data_start..data_start + usize_].to_vec(),
        });
        p += 46 + nl + el + cl;
    }
    out
}

/// A stored zip of `entries` (no data descriptors, no zip64: the fixtures are small).
fn write_zip(entries: &[ZipEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let crc = crc32fast::hash(&e.data);
        let offset = out.len() as u32;
        let header = |sig: &[u8], central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(sig);
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&[0u8; 4]); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&[0u8; 6]); // comment len, disk, internal attrs
                h.extend_from_slice(&[0u8; 4]); // external attrs
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(e.name.as_bytes());
            h
        };
        let local = header(b"PK\x03\x04", false);
        central.extend(header(b"PK\x01\x02", true));
        out.extend(local);
        out.extend_from_slice(&e.data);
    }
    let cd_offset = out.len() as u32;
    let n = entries.len() as u16;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The storage entry holding exactly the bytes of tensor `name` (found by content, so the pickle's
/// name → storage mapping is not taken from the library), with its index. Tensors whose bytes are
/// too short or not unique among the entries are skipped (`None`).
fn entry_of(entries: &[ZipEntry], shard: &TorchShard, name: &str) -> Option<usize> {
    let data = shard.load(name).unwrap();
    let bytes = data.as_bytes();
    if bytes.len() < 16 {
        return None;
    }
    let hits: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name.contains("/data/") && e.data == bytes)
        .map(|(i, _)| i)
        .collect();
    (hits.len() == 1).then(|| hits[0])
}

/// Asserts `e` is a corrupt-tensor error for `file` naming `tensor`, with the names in the message.
fn assert_names(e: &Error, file: &Path, tensor: &str, what: &str) {
    match e {
        Error::CorruptTensor {
            file: f, tensor: t, ..
        } => {
            assert_eq!(f, file, "{what}: wrong file in {e}");
            assert!(
                t.split("`, `").any(|n| n == tensor),
                "{what}: error names `{t}`, expected `{tensor}`: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(tensor) && msg.contains("mp_rank_00_model_states.pt"),
                "{msg}"
            );
        }
        other => panic!("{what}: expected a corrupt-tensor error naming `{tensor}`, got: {other}"),
    }
}

#[test]
fn intact_shards_verify_and_a_rewritten_zip_loads_identically() {
    for folder in SAT_FOLDERS {
        let ckpt = SatCheckpoint::open(fixtures().join(folder)).unwrap();
        ckpt.verify().unwrap();
        let (dir, shard_path) = copy_sat(folder, &format!("rewrite-{folder}"));
        let original = TorchShard::open(&shard_path, Some("module")).unwrap();
        let names = original.names();
        assert!(!names.is_empty(), "{folder}: no tensors");
        // Control for the writer used below: the same entries, re-zipped, load bit for bit.
        let entries = read_zip(&std::fs::read(&shard_path).unwrap());
        let copy = dir.join("rewritten.pt");
        std::fs::write(&copy, write_zip(&entries)).unwrap();
        let rewritten = TorchShard::open(&copy, Some("module")).unwrap();
        assert_eq!(rewritten.names(), names);
        for n in &names {
            let (a, b) = (original.load(n).unwrap(), rewritten.load(n).unwrap());
            assert_eq!(a.dtype, b.dtype, "{n}");
            assert_eq!(a.shape, b.shape, "{n}");
            assert_eq!(a.as_bytes(), b.as_bytes(), "{n}");
        }
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn a_flipped_byte_in_any_tensor_is_a_crc_error_naming_it() {
    let mut checked = 0;
    for folder in SAT_FOLDERS {
        let (dir, shard_path) = copy_sat(folder, &format!("flip-{folder}"));
        let pristine = std::fs::read(&shard_path).unwrap();
        let entries = read_zip(&pristine);
        let shard = TorchShard::open(&shard_path, Some("module")).unwrap();
        for name in shard.names() {
            let Some(i) = entry_of(&entries, &shard, &name) else {
                continue;
            };
            let mut bytes = pristine.clone();
            let at = entries[i].data_start + entries[i].data.len() / 2;
            bytes[at] ^= 0x10;
            std::fs::write(&shard_path, &bytes).unwrap();
            // The directory is intact, so the folder opens; the damaged tensor cannot be read.
            let ckpt = SatCheckpoint::open(&dir).unwrap();
            let e = ckpt.load_shard(&name, 0).unwrap_err();
            assert_names(&e, &shard_path, &name, &format!("{folder} flip in {name}"));
            assert!(e.to_string().contains("CRC"), "{e}");
            assert!(ckpt.verify().is_err());
            checked += 1;
        }
        std::fs::remove_dir_all(dir).ok();
    }
    assert!(checked > 0, "no tensor was damaged");
}

#[test]
fn loading_a_model_from_a_damaged_shard_fails_naming_the_tensor() {
    let cfg = config();
    let (dir, shard_path) = copy_sat("sat_tp1", "model");
    let pristine = std::fs::read(&shard_path).unwrap();
    let entries = read_zip(&pristine);
    let shard = TorchShard::open(&shard_path, Some("module")).unwrap();
    let spec = glm_core::weights::param_specs(&cfg)
        .into_iter()
        .find(|s| entry_of(&entries, &shard, &s.name).is_some())
        .expect("a model parameter with a unique storage");
    let i = entry_of(&entries, &shard, &spec.name).unwrap();
    let mut bytes = pristine;
    bytes[entries[i].data_start] ^= 0x01;
    std::fs::write(&shard_path, bytes).unwrap();
    let ckpt = SatCheckpoint::open(&dir).unwrap();
    let Err(e) =
        GlmModel::<Cpu>::from_source(&cfg, &ckpt, &Default::default(), ModelOptions::default())
    else {
        panic!("damaged checkpoint accepted");
    };
    assert_names(&e, &shard_path, &spec.name, "model load");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_shard_cut_short_inside_its_data_names_the_tensor_where_it_stops() {
    let mut checked = 0;
    for folder in SAT_FOLDERS {
        let (dir, shard_path) = copy_sat(folder, &format!("cut-{folder}"));
        let pristine = std::fs::read(&shard_path).unwrap();
        let entries = read_zip(&pristine);
        let shard = TorchShard::open(&shard_path, Some("module")).unwrap();
        // Tensors with a recognisable storage, in file order.
        let mut located: Vec<(usize, String)> = shard
            .names()
            .into_iter()
            .filter_map(|n| entry_of(&entries, &shard, &n).map(|i| (i, n)))
            .collect();
        located.sort_by_key(|(i, _)| entries[*i].data_start);
        assert!(located.len() >= 2, "{folder}: too few tensors");
        let picks = [0, located.len() / 2, located.len() - 1];
        for &k in &picks {
            let (i, name) = &located[k];
            let (start, len) = (entries[*i].data_start, entries[*i].data.len());
            let mut cuts = vec![start + 1, start + len / 2, start + len - 1];
            if k > 0 {
                // Inside the next entry's local header / padding: the data of `name` never starts.
                let prev = &entries[located[k - 1].0];
                cuts.push((prev.data_start + prev.data.len() + start) / 2);
            }
            for cut in cuts {
                std::fs::write(&shard_path, &pristine[..cut]).unwrap();
                let e = SatCheckpoint::open(&dir).unwrap_err();
                assert_names(&e, &shard_path, name, &format!("{folder} cut at {cut}"));
                assert!(e.to_string().contains("truncated"), "{e}");
                checked += 1;
            }
        }
        // Any cut at all, inside or outside the data, is an error (never a partial load).
        let step = (pristine.len() / 97).max(1);
        for cut in (0..pristine.len()).step_by(step) {
            std::fs::write(&shard_path, &pristine[..cut]).unwrap();
            assert!(
                SatCheckpoint::open(&dir).is_err(),
                "{folder}: cut at {cut} accepted"
            );
        }
        std::fs::remove_dir_all(dir).ok();
    }
    assert!(checked > 0);
}

#[test]
fn a_missing_or_short_storage_entry_is_named() {
    let mut checked = 0;
    for folder in SAT_FOLDERS {
        let (dir, shard_path) = copy_sat(folder, &format!("missing-{folder}"));
        let pristine = std::fs::read(&shard_path).unwrap();
        let entries = read_zip(&pristine);
        let shard = TorchShard::open(&shard_path, Some("module")).unwrap();
        let names = shard.names();
        let picks: Vec<(usize, String)> = [0, names.len() / 2, names.len() - 1]
            .iter()
            .filter_map(|&k| {
                let n = names.get(k)?;
                entry_of(&entries, &shard, n).map(|i| (i, n.clone()))
            })
            .collect();
        for (i, name) in picks {
            // Removed from the archive (a valid zip otherwise).
            let mut without = entries.clone();
            without.remove(i);
            std::fs::write(&shard_path, write_zip(&without)).unwrap();
            let e = SatCheckpoint::open(&dir).unwrap_err();
            assert_names(
                &e,
                &shard_path,
                &name,
                &format!("{folder}: no {}", entries[i].name),
            );
            assert!(e.to_string().contains("missing"), "{e}");
            // Present but one element short (its CRC matches the short data).
            let esize = shard.dtype(&name).unwrap().size();
            let mut short = entries.clone();
            let keep = short[i].data.len() - esize;
            short[i].data.truncate(keep);
            std::fs::write(&shard_path, write_zip(&short)).unwrap();
            let e = SatCheckpoint::open(&dir).unwrap_err();
            assert_names(
                &e,
                &shard_path,
                &name,
                &format!("{folder}: short {}", entries[i].name),
            );
            checked += 1;
        }
        std::fs::remove_dir_all(dir).ok();
    }
    assert!(checked > 0);
}

/// Rewrites the storage offset of tensor `name` in `data.pkl` (torch writes `BINPERSID` then the
/// offset as `BININT1`; the first such pair after the tensor's key is its own).
fn patch_offset(entries: &mut [ZipEntry], name: &str, offset: u8) {
    let pkl = entries
        .iter_mut()
        .find(|e| e.name.ends_with("/data.pkl"))
        .expect("data.pkl");
    // The key as pickled: BINUNICODE, length, UTF-8 (so a longer name with this prefix cannot match).
    let mut key = vec![b'X'];
    key.extend_from_slice(&(name.len() as u32).to_le_bytes());
    key.extend_from_slice(name.as_bytes());
    let key = key.as_slice();
    let at = pkl
        .data
        .windows(key.len())
        .position(|w| w == key)
        .expect("tensor key in data.pkl");
    let rel = pkl.data[at..]
        .windows(3)
        .position(|w| w == [b'Q', b'K', 0])
        .expect("BINPERSID + BININT1 0 after the key");
    pkl.data[at + rel + 2] = offset;
}

#[test]
fn an_f16_view_past_the_end_of_its_storage_is_named_not_zeros() {
    let mut checked = 0;
    for folder in SAT_FOLDERS {
        let (dir, shard_path) = copy_sat(folder, &format!("offset-{folder}"));
        let pristine = std::fs::read(&shard_path).unwrap();
        let entries = read_zip(&pristine);
        let shard = TorchShard::open(&shard_path, Some("module")).unwrap();
        // A small F16 tensor: its offset fits in one byte, past the end is reachable.
        let name = shard
            .names()
            .into_iter()
            .find(|n| {
                let numel: usize = shard.shape(n).unwrap().iter().product();
                shard.dtype(n) == Some(DType::F16) && (2..250).contains(&numel)
            })
            .expect("a small f16 tensor");
        let numel: usize = shard.shape(&name).unwrap().iter().product();
        for offset in [1, numel as u8, numel as u8 + 3] {
            let mut patched = entries.clone();
            patch_offset(&mut patched, &name, offset);
            std::fs::write(&shard_path, write_zip(&patched)).unwrap();
            let e = SatCheckpoint::open(&dir).unwrap_err();
            assert_names(
                &e,
                &shard_path,
                &name,
                &format!("{folder}: offset {offset}"),
            );
            checked += 1;
        }
        std::fs::remove_dir_all(dir).ok();
    }
    assert!(checked > 0);
}

#[test]
fn garbage_and_empty_shards_are_typed_errors() {
    let dir = tmp_dir("garbage");
    let it = dir.join("1");
    std::fs::create_dir_all(&it).unwrap();
    std::fs::write(dir.join("latest"), "1\n").unwrap();
    let shard = it.join("mp_rank_00_model_states.pt");
    let pristine = std::fs::read(
        fixtures()
            .join("sat_tp1")
            .join(iteration(&fixtures().join("sat_tp1")))
            .join("mp_rank_00_model_states.pt"),
    )
    .unwrap();
    let data_ranges: Vec<(usize, usize)> = read_zip(&pristine)
        .iter()
        .filter(|e| e.name.contains("/data/"))
        .map(|e| (e.data_start, e.data_start + e.data.len()))
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hit_data = 0;
    for round in 0..300 {
        let mut bytes = pristine.clone();
        for _ in 0..1 + round % 8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % bytes.len() as u64) as usize;
            bytes[at] = (state >> 32) as u8;
        }
        let data_changed = data_ranges
            .iter()
            .any(|&(a, b)| bytes[a..b] != pristine[a..b]);
        std::fs::write(&shard, &bytes).unwrap();
        // Never a panic; and a changed storage byte is always an error (open or load).
        let all_loaded = match SatCheckpoint::open(&dir) {
            Ok(ckpt) => ckpt.names().iter().all(|n| ckpt.load(n).is_ok()),
            Err(_) => false,
        };
        if data_changed {
            hit_data += 1;
            assert!(!all_loaded, "round {round}: damaged tensor data loaded");
        }
    }
    assert!(hit_data > 0, "no mutation landed in tensor data");
    for bytes in [Vec::new(), vec![0u8; 100], b"PK\x05\x06".to_vec()] {
        std::fs::write(&shard, &bytes).unwrap();
        assert!(matches!(
            SatCheckpoint::open(&dir),
            Err(Error::CorruptFile { .. } | Error::CorruptTensor { .. })
        ));
    }
    std::fs::remove_dir_all(dir).ok();
}
