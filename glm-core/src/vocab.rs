//! Compact vocabularies: a model that keeps only some of its tokenizer's ids.
//!
//! GLM-130B's icetk vocabulary has 150 528 ids; a small model trained on a small corpus uses a few
//! thousand of them, yet with the full layout the embedding and the tied LM head dominate its
//! memory and compute. A [`VocabMap`] lists the tokenizer ("outer") ids a model keeps, in
//! increasing order: the model's ("inner") id `i` is the `i`-th of them. The model, its config
//! (`vocab_size` = the number of kept ids, special tokens renumbered) and its weights live
//! entirely in inner ids; the map, saved as [`VOCAB_MAP_FILE`] beside `config.json`, translates
//! at the boundary, so users keep the tokenizer's ids on the outside.
//!
//! ```
//! use glm_core::vocab::VocabMap;
//! use glm_core::{GlmConfig, SpecialTokens};
//!
//! let mut outer = GlmConfig::tiny();
//! outer.vocab_size = 1024;
//! outer.special_tokens = SpecialTokens::with_base(1000, 2);
//! // Ids seen in a corpus, plus every special token and `<unk>` (id 1).
//! let map = VocabMap::for_config(&outer, [17, 5, 17, 600], Some(1)).unwrap();
//! let inner = map.compact_config(&outer).unwrap();
//! assert_eq!(inner.vocab_size, map.len());
//! // Kept in increasing order: 0 (pad), 1 (<unk>), 2 (eos), 5, 17, 600, then 1000..=1007.
//! assert_eq!(map.to_inner(600), Some(5));
//! assert_eq!(map.to_outer(5), Some(600));
//! assert_eq!(map.to_inner(601), None); // not kept
//! assert_eq!(map.to_inner_or_unknown(601).unwrap(), map.to_inner(1).unwrap());
//! assert_eq!(map.to_outer(inner.special_tokens.gmask), Some(outer.special_tokens.gmask));
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{GlmConfig, SpecialTokens};
use crate::error::{Error, Result};

/// File name of a saved [`VocabMap`] beside a model's `config.json`.
pub const VOCAB_MAP_FILE: &str = "vocab_map.json";

/// Largest `vocab_map.json` read (a map of every id of a 2^24-id vocabulary is ~150 MB).
const MAX_MAP_BYTES: u64 = 256 << 20;

/// The tokenizer ids a compact-vocabulary model keeps (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabMap {
    /// Size of the tokenizer's (outer) vocabulary.
    pub outer_vocab_size: usize,
    /// The outer id of each inner id, strictly increasing.
    pub outer_ids: Vec<u32>,
    /// Outer id that ids outside the map become (the tokenizer's `<unk>`); it is in the map.
    /// Without it, an id outside the map is an error.
    pub unknown: Option<u32>,
}

impl VocabMap {
    /// A map keeping `ids` (any order, repeats allowed) and `unknown` of an outer vocabulary of
    /// `outer_vocab_size` ids. An id outside the vocabulary is [`Error::InvalidInput`].
    pub fn new(
        outer_vocab_size: usize,
        ids: impl IntoIterator<Item = u32>,
        unknown: Option<u32>,
    ) -> Result<Self> {
        let mut outer_ids: Vec<u32> = ids.into_iter().chain(unknown).collect();
        outer_ids.sort_unstable();
        outer_ids.dedup();
        let map = Self {
            outer_vocab_size,
            outer_ids,
            unknown,
        };
        map.check().map_err(Error::InvalidInput)?;
        Ok(map)
    }

    /// A map for a model of config `outer` (its vocabulary and special ids, all kept) keeping
    /// `ids` and `unknown` as well.
    pub fn for_config(
        outer: &GlmConfig,
        ids: impl IntoIterator<Item = u32>,
        unknown: Option<u32>,
    ) -> Result<Self> {
        let s = &outer.special_tokens;
        let specials = [
            s.mask, s.gmask, s.smask, s.eod, s.sop, s.eop, s.enc, s.dblock, s.eos, s.pad,
        ];
        Self::new(outer.vocab_size, ids.into_iter().chain(specials), unknown)
    }

    /// What is wrong with the map, if anything.
    fn check(&self) -> std::result::Result<(), String> {
        if self.outer_ids.is_empty() {
            return Err("the map keeps no id".into());
        }
        if let Some(w) = self.outer_ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "outer_ids must be strictly increasing, found {} then {}",
                w[0], w[1]
            ));
        }
        if let Some(&last) = self.outer_ids.last() {
            if last as usize >= self.outer_vocab_size {
                return Err(format!(
                    "outer id {last} is outside the outer vocabulary of {} ids",
                    self.outer_vocab_size
                ));
            }
        }
        if let Some(u) = self.unknown {
            if self.outer_ids.binary_search(&u).is_err() {
                return Err(format!("the unknown id {u} is not in outer_ids"));
            }
        }
        Ok(())
    }

    /// Number of kept ids (the model's `vocab_size`).
    pub fn len(&self) -> usize {
        self.outer_ids.len()
    }

    /// Whether the map keeps no id (never true for a map built or loaded here).
    pub fn is_empty(&self) -> bool {
        self.outer_ids.is_empty()
    }

    /// The inner id of outer id `outer`, if kept.
    pub fn to_inner(&self, outer: u32) -> Option<u32> {
        self.outer_ids
            .binary_search(&outer)
            .ok()
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The inner id of `outer`, or of [`VocabMap::unknown`] when `outer` is not kept; an id that
    /// is neither is [`Error::InvalidInput`] naming it.
    pub fn to_inner_or_unknown(&self, outer: u32) -> Result<u32> {
        self.to_inner(outer)
            .or_else(|| self.unknown.and_then(|u| self.to_inner(u)))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "token id {outer} is not in the model's compact vocabulary of {} ids (and the map has no unknown id)",
                    self.len()
                ))
            })
    }

    /// The outer id of inner id `inner` (`None` beyond the map).
    pub fn to_outer(&self, inner: u32) -> Option<u32> {
        self.outer_ids.get(inner as usize).copied()
    }

    /// Outer ids → inner ids ([`VocabMap::to_inner_or_unknown`] for each).
    pub fn ids_to_inner(&self, outer: &[u32]) -> Result<Vec<u32>> {
        outer.iter().map(|&t| self.to_inner_or_unknown(t)).collect()
    }

    /// Inner ids → outer ids; an id beyond the map is [`Error::InvalidInput`] naming it.
    pub fn ids_to_outer(&self, inner: &[u32]) -> Result<Vec<u32>> {
        inner
            .iter()
            .map(|&t| {
                self.to_outer(t).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "inner token id {t} is outside the compact vocabulary of {} ids",
                        self.len()
                    ))
                })
            })
            .collect()
    }

    /// The special tokens of `outer` in inner ids; a special that is not kept is
    /// [`Error::InvalidConfig`].
    pub fn inner_specials(&self, outer: &SpecialTokens) -> Result<SpecialTokens> {
        map_specials(outer, |field, id| {
            self.to_inner(id).ok_or_else(|| Error::InvalidConfig {
                field,
                reason: format!("special token id {id} is not in the compact vocabulary"),
            })
        })
    }

    /// The compact model's config: `outer` with `vocab_size` = [`VocabMap::len`] and the special
    /// tokens renumbered. `outer.vocab_size` must be the map's outer size.
    pub fn compact_config(&self, outer: &GlmConfig) -> Result<GlmConfig> {
        if outer.vocab_size != self.outer_vocab_size {
            return Err(Error::InvalidConfig {
                field: "vocab_size",
                reason: format!(
                    "the compact vocabulary maps {} outer ids, the config has {}",
                    self.outer_vocab_size, outer.vocab_size
                ),
            });
        }
        let mut inner = outer.clone();
        inner.vocab_size = self.len();
        inner.special_tokens = self.inner_specials(&outer.special_tokens)?;
        inner.validate()?;
        Ok(inner)
    }

    /// The special tokens of a compact model in outer ids (the inverse of
    /// [`VocabMap::inner_specials`]); an id beyond the map is [`Error::InvalidConfig`].
    pub fn outer_specials(&self, inner: &SpecialTokens) -> Result<SpecialTokens> {
        map_specials(inner, |field, id| {
            self.to_outer(id).ok_or_else(|| Error::InvalidConfig {
                field,
                reason: format!(
                    "special token id {id} is beyond the compact vocabulary of {} ids",
                    self.len()
                ),
            })
        })
    }

    /// A short hash of the kept ids (FNV-1a, hex): two maps with the same ids have the same one.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in (self.outer_vocab_size as u64)
            .to_le_bytes()
            .into_iter()
            .chain(self.outer_ids.iter().flat_map(|t| t.to_le_bytes()))
            .chain(self.unknown.map_or([0xff; 4], |u| u.to_le_bytes()))
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Checks that the map fits the compact model config `inner` (its `vocab_size` equals the
    /// number of kept ids); a mismatch is [`Error::ConfigMismatch`] naming `file`.
    pub fn check_config(&self, inner: &GlmConfig, file: &Path) -> Result<()> {
        if inner.vocab_size != self.len() {
            return Err(Error::ConfigMismatch {
                file: file.to_path_buf(),
                reason: format!(
                    "the vocabulary map keeps {} ids but the model's vocab_size is {}",
                    self.len(),
                    inner.vocab_size
                ),
            });
        }
        Ok(())
    }

    /// Reads `dir/`[`VOCAB_MAP_FILE`] if present (`Ok(None)` when absent). A damaged or
    /// inconsistent file is [`Error::CorruptFile`] naming it.
    pub fn load_beside(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(VOCAB_MAP_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Self::from_file(&path).map(Some)
    }

    /// Reads and checks a saved map.
    pub fn from_file(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_MAP_BYTES {
            return Err(Error::corrupt(
                path,
                format!("{len} bytes, more than a vocabulary map can take ({MAX_MAP_BYTES})"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map: Self =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(path, e.to_string()))?;
        map.check().map_err(|reason| Error::corrupt(path, reason))?;
        Ok(map)
    }

    /// Writes the map to `dir/`[`VOCAB_MAP_FILE`] atomically and returns the path.
    pub fn save_beside(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(VOCAB_MAP_FILE);
        let json = serde_json::to_vec(self).map_err(|e| Error::InvalidInput(e.to_string()))?;
        crate::weights::write_atomic(&path, &json)?;
        Ok(path)
    }
}

/// `s` with every id passed through `f` (which gets the field's config name for its errors).
fn map_specials(
    s: &SpecialTokens,
    f: impl Fn(&'static str, u32) -> Result<u32>,
) -> Result<SpecialTokens> {
    Ok(SpecialTokens {
        mask: f("special_tokens.[MASK]", s.mask)?,
        gmask: f("special_tokens.[gMASK]", s.gmask)?,
        smask: f("special_tokens.[sMASK]", s.smask)?,
        eod: f("special_tokens.eod", s.eod)?,
        sop: f("special_tokens.sop", s.sop)?,
        eop: f("special_tokens.eop", s.eop)?,
        enc: f("special_tokens.ENC", s.enc)?,
        dblock: f("special_tokens.dBLOCK", s.dblock)?,
        eos: f("special_tokens.eos", s.eos)?,
        pad: f("special_tokens.[pad]", s.pad)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outer() -> GlmConfig {
        let mut c = GlmConfig::tiny();
        c.vocab_size = 500;
        c.special_tokens = SpecialTokens::with_base(480, 3);
        c
    }

    #[test]
    fn round_trips_and_renumbers_specials() {
        let c = outer();
        let map = VocabMap::for_config(&c, [9, 400, 9, 20], Some(1)).unwrap();
        // 9, 20, 400, the unknown 1, pad 0, eos 3, eight specials 480..488.
        assert_eq!(map.len(), 3 + 1 + 1 + 1 + 8);
        for (inner, &outer) in map.outer_ids.iter().enumerate() {
            assert_eq!(map.to_inner(outer), Some(inner as u32));
            assert_eq!(map.to_outer(inner as u32), Some(outer));
        }
        let inner = map.compact_config(&c).unwrap();
        assert_eq!(inner.vocab_size, map.len());
        assert_eq!(
            map.outer_specials(&inner.special_tokens).unwrap(),
            c.special_tokens
        );
        assert_eq!(
            map.to_inner_or_unknown(401).unwrap(),
            map.to_inner(1).unwrap()
        );
        assert!(map.ids_to_outer(&[map.len() as u32]).is_err());
    }

    #[test]
    fn bad_maps_are_errors() {
        assert!(VocabMap::new(10, [3, 10], None).is_err());
        assert!(VocabMap::new(10, [], None).is_err());
        let map = VocabMap::new(10, [2, 5], None).unwrap();
        assert!(map.to_inner_or_unknown(3).is_err());
        let dir = std::env::temp_dir().join(format!("glm-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = map.save_beside(&dir).unwrap();
        assert_eq!(VocabMap::load_beside(&dir).unwrap(), Some(map));
        std::fs::write(
            &path,
            br#"{"outer_vocab_size":10,"outer_ids":[5,2],"unknown":null}"#,
        )
        .unwrap();
        let err = VocabMap::load_beside(&dir).unwrap_err().to_string();
        assert!(
            err.contains(VOCAB_MAP_FILE) && err.contains("increasing"),
            "{err}"
        );
        std::fs::write(
            &path,
            br#"{"outer_vocab_size":10,"outer_ids":[2,5],"unknown":7}"#,
        )
        .unwrap();
        assert!(VocabMap::load_beside(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_special_outside_the_map_is_a_config_error() {
        let c = outer();
        let map = VocabMap::new(500, [1, 2, 3], None).unwrap();
        assert!(matches!(
            map.compact_config(&c),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
