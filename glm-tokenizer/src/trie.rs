//! A byte-level double-array trie over vocabulary pieces.
//!
//! The unigram encoder walks it once per start position and sees every piece that starts
//! there in order of increasing length, exactly the enumeration SentencePiece's
//! `EncodeOptimized` does with its Darts trie; the normalizer uses a second one for
//! longest-match of user-defined symbols. A transition is two array reads
//! (`next = base[node] + byte`, valid iff `check[next] == node`), so the walk allocates nothing.

/// Slot is free (no node lives there).
const FREE: u32 = u32::MAX;
/// No piece ends at this node.
const NO_VALUE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    base: u32,
    check: u32,
    value: u32,
}

const EMPTY: Slot = Slot { base: 0, check: FREE, value: NO_VALUE };

/// Immutable double-array trie mapping byte strings to `u32` values.
#[derive(Debug, Clone)]
pub struct Trie {
    slots: Vec<Slot>,
}

impl Trie {
    /// Builds a trie from `(key, value)` pairs. Keys must be non-empty; for duplicate keys the
    /// first value wins.
    pub fn build(mut entries: Vec<(&[u8], u32)>) -> Self {
        entries.retain(|(k, _)| !k.is_empty());
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        let mut builder = Builder { slots: vec![Slot { check: FREE - 1, ..EMPTY }], first_free: 1 };
        if !entries.is_empty() {
            builder.place_all(&entries);
        }
        let mut slots = builder.slots;
        while slots.last().is_some_and(|s| s.check == FREE) {
            slots.pop();
        }
        slots.shrink_to_fit();
        Self { slots }
    }

    /// Root node id.
    #[inline]
    pub fn root(&self) -> u32 {
        0
    }

    /// Follows `byte` from `node`; `None` when no key continues that way.
    #[inline(always)]
    pub fn step(&self, node: u32, byte: u8) -> Option<u32> {
        // SAFETY-free indexing: `node` always comes from `root` or a previous `step`.
        let base = self.slots.get(node as usize)?.base;
        let next = base.checked_add(u32::from(byte))?;
        let slot = self.slots.get(next as usize)?;
        (slot.check == node && base != 0).then_some(next)
    }

    /// Value of the key ending at `node`, if any.
    #[inline(always)]
    pub fn value(&self, node: u32) -> Option<u32> {
        let v = self.slots.get(node as usize)?.value;
        (v != NO_VALUE).then_some(v)
    }

    /// Longest key that is a prefix of `input`: `(length, value)`.
    pub fn longest_prefix(&self, input: &[u8]) -> Option<(usize, u32)> {
        let mut node = self.root();
        let mut best = None;
        for (i, &b) in input.iter().enumerate() {
            match self.step(node, b) {
                Some(next) => node = next,
                None => break,
            }
            if let Some(v) = self.value(node) {
                best = Some((i + 1, v));
            }
        }
        best
    }

    /// Exact lookup.
    #[cfg(test)]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let mut node = self.root();
        for &b in key {
            node = self.step(node, b)?;
        }
        self.value(node)
    }
}

struct Builder {
    slots: Vec<Slot>,
    /// Every slot below this index is occupied.
    first_free: usize,
}

impl Builder {
    fn ensure(&mut self, len: usize) {
        if self.slots.len() < len {
            self.slots.resize(len.max(self.slots.len() * 2), EMPTY);
        }
    }

    /// Places every node, breadth-agnostic, with an explicit stack (piece length comes from the
    /// model file, so recursion depth must not depend on it).
    fn place_all(&mut self, entries: &[(&[u8], u32)]) {
        let mut stack: Vec<(u32, usize, usize, usize)> = vec![(0, 0, entries.len(), 0)];
        let mut children: Vec<(u8, usize, usize)> = Vec::new();
        while let Some((node, mut lo, hi, depth)) = stack.pop() {
            if entries[lo].0.len() == depth {
                self.slots[node as usize].value = entries[lo].1;
                lo += 1;
            }
            if lo == hi {
                continue;
            }
            children.clear();
            let mut start = lo;
            while start < hi {
                let label = entries[start].0[depth];
                let mut end = start + 1;
                while end < hi && entries[end].0[depth] == label {
                    end += 1;
                }
                children.push((label, start, end));
                start = end;
            }
            let base = self.find_base(&children);
            self.slots[node as usize].base = base;
            for &(label, _, _) in &children {
                self.slots[(base + u32::from(label)) as usize].check = node;
            }
            while self.first_free < self.slots.len() && self.slots[self.first_free].check != FREE {
                self.first_free += 1;
            }
            for &(label, s, e) in &children {
                stack.push((base + u32::from(label), s, e, depth + 1));
            }
        }
    }

    fn find_base(&mut self, children: &[(u8, usize, usize)]) -> u32 {
        let first = children[0].0 as usize;
        let last = children[children.len() - 1].0 as usize;
        let mut pos = self.first_free.max(first + 1);
        loop {
            self.ensure(pos + (last - first) + 1);
            if self.slots[pos].check == FREE {
                let base = pos - first;
                if children.iter().all(|&(l, _, _)| self.slots[base + l as usize].check == FREE) {
                    return base as u32;
                }
            }
            pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_all_keys_and_prefixes() {
        let words: Vec<&[u8]> = vec![b"a", b"ab", b"abc", b"b", b"\xe2\x96\x81", b"\xe2\x96\x81a", b"zzzz", b"\0x"];
        let trie = Trie::build(words.iter().enumerate().map(|(i, w)| (*w, i as u32)).collect());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(trie.get(w), Some(i as u32), "{w:?}");
        }
        assert_eq!(trie.get(b"zz"), None);
        assert_eq!(trie.get(b"abcd"), None);
        assert_eq!(trie.longest_prefix(b"abd"), Some((2, 1)));
        assert_eq!(trie.longest_prefix(b"q"), None);
    }

    #[test]
    fn empty_trie_matches_nothing() {
        let trie = Trie::build(Vec::new());
        assert_eq!(trie.longest_prefix(b"abc"), None);
        assert_eq!(trie.get(b""), None);
    }

    #[test]
    fn dense_alphabet() {
        let keys: Vec<Vec<u8>> = (0..=255u8).flat_map(|a| [vec![a], vec![a, 255 - a]]).collect();
        let trie = Trie::build(keys.iter().enumerate().map(|(i, k)| (k.as_slice(), i as u32)).collect());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(trie.get(k), Some(i as u32));
        }
    }
}
