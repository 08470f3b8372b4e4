//! SentencePiece's precompiled character map (`normalizer_spec.precompiled_charsmap`).
//!
//! Layout: `<u32 LE: trie size in bytes><Darts-clone double array><replacement strings>`.
//! The double array maps UTF-8 byte sequences to offsets into the replacement blob, where each
//! replacement is a NUL-terminated string. Normalization takes, at each position, the longest
//! key that is a prefix of the remaining input.
//!
//! The traversal below is the Darts-clone `commonPrefixSearch` arithmetic, unit for unit, so
//! that even odd inputs (a NUL byte, keys that walk into empty units) behave as in the C++
//! library; every array access is bounds-checked so a corrupt blob can only stop a match.

use crate::error::{Error, Result};

/// A decoded precompiled charsmap.
#[derive(Debug, Clone)]
pub struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    /// Splits and checks a charsmap blob. `source_name` is used in error messages.
    pub fn parse(blob: &[u8], source_name: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidModel {
            source_name: source_name.to_string(),
            field: "normalizer_spec.precompiled_charsmap".to_string(),
            reason: reason.to_string(),
        };
        if blob.len() <= 4 {
            return Err(invalid("blob shorter than its 4-byte header"));
        }
        let trie_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        let rest = &blob[4..];
        if trie_size >= rest.len() {
            return Err(invalid("trie size exceeds the blob"));
        }
        // Darts units are 4 bytes and the array is a whole number of 256-unit blocks.
        if trie_size < 1024 || !trie_size.is_multiple_of(1024) {
            return Err(invalid("trie size is not a positive multiple of 1024"));
        }
        let units: Vec<u32> = rest[..trie_size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let normalized = rest[trie_size..].to_vec();
        if !validate(&units, normalized.len()) {
            return Err(invalid("double array fails validation"));
        }
        Ok(Self { units, normalized })
    }

    /// Longest rule matching a prefix of `input`: `(bytes consumed, replacement)`.
    #[inline]
    pub fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        let mut best: Option<(usize, u32)> = None;
        let mut found = 0;
        let mut node_pos = offset(*self.units.first()?) as usize;
        for (i, &byte) in input.iter().enumerate() {
            node_pos ^= byte as usize;
            let Some(&unit) = self.units.get(node_pos) else {
                break;
            };
            if label(unit) != u32::from(byte) {
                break;
            }
            node_pos ^= offset(unit) as usize;
            if has_leaf(unit) {
                let Some(&leaf) = self.units.get(node_pos) else {
                    break;
                };
                // The C++ keeps the first MAX_RESULTS matches and takes the longest of those.
                if found < MAX_RESULTS {
                    best = Some((i + 1, value(leaf)));
                }
                found += 1;
            }
        }
        let (len, value) = best?;
        let tail = self
            .normalized
            .get(value as usize..)
            .filter(|t| !t.is_empty())?;
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        Some((len, &tail[..end]))
    }
}

/// `Normalizer::kMaxTrieResultsSize`.
const MAX_RESULTS: usize = 32;

/// Darts-clone `DoubleArray::validate(max_value)`: every transition stays inside the array,
/// every value points inside the replacement blob.
fn validate(units: &[u32], max_value: usize) -> bool {
    let size = units.len();
    let Some(&root) = units.first() else {
        return false;
    };
    if label(root) != 0
        || has_leaf(root)
        || offset(root) == 0
        || (offset(root) as usize | 0xff) >= size
    {
        return false;
    }
    for (i, &unit) in units.iter().enumerate().skip(1) {
        if label(unit) <= 0xff {
            let child = i ^ offset(unit) as usize;
            if (child | 0xff) >= size {
                return false;
            }
            if has_leaf(unit) && units.get(child).is_none_or(|&leaf| label(leaf) <= 0xff) {
                return false;
            }
        } else if value(unit) as usize >= max_value {
            return false;
        }
    }
    true
}

// Darts-clone unit encoding.
#[inline]
fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}
#[inline]
fn value(unit: u32) -> u32 {
    unit & ((1 << 31) - 1)
}
#[inline]
fn label(unit: u32) -> u32 {
    unit & ((1 << 31) | 0xff)
}
#[inline]
fn offset(unit: u32) -> u32 {
    (unit >> 10) << ((unit & (1 << 9)) >> 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_short_or_inconsistent_blobs() {
        assert!(CharsMap::parse(&[1, 0, 0], "t").is_err());
        assert!(CharsMap::parse(&[100, 0, 0, 0, 1, 2], "t").is_err());
        assert!(CharsMap::parse(&[3, 0, 0, 0, 1, 2, 3], "t").is_err());
        let mut garbage = vec![0, 4, 0, 0];
        garbage.extend_from_slice(&[0xff; 1024]);
        garbage.extend_from_slice(b"x\0");
        assert!(CharsMap::parse(&garbage, "t").is_err());
    }

    #[test]
    fn hand_built_trie_maps_a_to_b() {
        // Root at 0 with offset 1 (children at 1 ^ label); "a" (0x61) lives at 0x60 with a
        // leaf; its leaf unit (value 0 -> "b") at 0x60 ^ offset.
        let mut units = vec![0u32; 256];
        units[0] = 1 << 10; // offset 1, label 0
        let a = 1 ^ 0x61;
        units[a] = (1 << 10) | (1 << 8) | 0x61; // offset 1, has_leaf, label 'a'
        units[a ^ 1] = 1 << 31; // a value unit holding 0
        let mut blob = 1024u32.to_le_bytes().to_vec();
        blob.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        blob.extend_from_slice(b"b\0");
        let map = CharsMap::parse(&blob, "t").expect("valid");
        assert_eq!(map.longest_match(b"ax"), Some((1, &b"b"[..])));
        assert_eq!(map.longest_match(b"x"), None);
        assert_eq!(map.longest_match(b"\0"), None);
    }
}
