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
        if trie_size > rest.len() {
            return Err(invalid("trie size exceeds the blob"));
        }
        if trie_size % 4 != 0 || trie_size == 0 {
            return Err(invalid("trie size is not a positive multiple of 4"));
        }
        let units = rest[..trie_size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { units, normalized: rest[trie_size..].to_vec() })
    }

    /// Longest rule matching a prefix of `input`: `(bytes consumed, replacement)`.
    #[inline]
    pub fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        let mut best: Option<(usize, u32)> = None;
        let mut node_pos = offset(*self.units.first()?) as usize;
        for (i, &byte) in input.iter().enumerate() {
            node_pos ^= byte as usize;
            let Some(&unit) = self.units.get(node_pos) else { break };
            if label(unit) != u32::from(byte) {
                break;
            }
            node_pos ^= offset(unit) as usize;
            if has_leaf(unit) {
                let Some(&leaf) = self.units.get(node_pos) else { break };
                best = Some((i + 1, value(leaf)));
            }
        }
        let (len, value) = best?;
        let start = (value as usize).min(self.normalized.len());
        let tail = &self.normalized[start..];
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        Some((len, &tail[..end]))
    }
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
    }

    #[test]
    fn garbage_trie_never_panics() {
        let mut blob = vec![8, 0, 0, 0];
        blob.extend_from_slice(&[0xff; 8]);
        blob.extend_from_slice(b"x");
        let map = CharsMap::parse(&blob, "t").expect("well-formed header");
        for input in [&b"abc"[..], b"\0", b"\xff\xff\xff", b""] {
            let _ = map.longest_match(input);
        }
    }
}
