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
pub const NO_VALUE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    base: u32,
    check: u32,
    value: u32,
}

const EMPTY: Slot = Slot {
    base: 0,
    check: FREE,
    value: NO_VALUE,
};

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
        let mut builder = Builder::new();
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

    /// Follows `byte` from `node`, also returning the value stored at the new node
    /// (`u32::MAX` when no key ends there): one slot read per byte in the encoder's loop.
    #[inline(always)]
    pub fn step_with_value(&self, node: u32, byte: u8) -> Option<(u32, u32)> {
        let base = self.slots.get(node as usize)?.base;
        let next = base.checked_add(u32::from(byte))?;
        let slot = self.slots.get(next as usize)?;
        (slot.check == node && base != 0).then_some((next, slot.value))
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

/// Free slots further than this below the highest occupied slot are given up on, so a base search
/// never scans more than a bounded window (Darts-clone closes old blocks the same way).
const SEARCH_WINDOW: usize = 4096;
const NIL: u32 = u32::MAX;

struct Builder {
    slots: Vec<Slot>,
    /// Doubly linked list of the free slots still searched, in index order.
    next: Vec<u32>,
    prev: Vec<u32>,
    listed: Vec<bool>,
    head: u32,
    tail: u32,
    /// One past the highest occupied slot: the search window trails this, not the capacity.
    frontier: usize,
}

impl Builder {
    fn new() -> Self {
        let mut b = Self {
            slots: Vec::new(),
            next: Vec::new(),
            prev: Vec::new(),
            listed: Vec::new(),
            head: NIL,
            tail: NIL,
            frontier: 0,
        };
        b.grow(256);
        b.occupy(0, FREE - 1); // the root; no transition ever lands on slot 0 (bases are >= 1)
        b
    }

    /// Extends the array to `len` slots, appending the new ones to the free list.
    fn grow(&mut self, len: usize) {
        let old = self.slots.len();
        if len <= old {
            return;
        }
        let len = len.max(old + old / 4);
        self.slots.resize(len, EMPTY);
        self.next.resize(len, NIL);
        self.prev.resize(len, NIL);
        self.listed.resize(len, true);
        for i in old..len {
            let i32_ = i as u32;
            self.prev[i] = self.tail;
            match self.tail {
                NIL => self.head = i32_,
                t => self.next[t as usize] = i32_,
            }
            self.tail = i32_;
        }
    }

    fn unlink(&mut self, i: usize) {
        if !self.listed[i] {
            return;
        }
        self.listed[i] = false;
        let (p, n) = (self.prev[i], self.next[i]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
    }

    fn occupy(&mut self, i: usize, parent: u32) {
        self.slots[i].check = parent;
        self.frontier = self.frontier.max(i + 1);
        self.unlink(i);
    }

    /// Places every node with an explicit stack (piece length comes from the model file, so
    /// recursion depth must not depend on it).
    fn place_all(&mut self, entries: &[(&[u8], u32)]) {
        let mut stack: Vec<(u32, usize, usize, usize)> = vec![(0, 0, entries.len(), 0)];
        let mut labels: Vec<u8> = Vec::new();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        while let Some((node, mut lo, hi, depth)) = stack.pop() {
            if entries[lo].0.len() == depth {
                self.slots[node as usize].value = entries[lo].1;
                lo += 1;
            }
            if lo == hi {
                continue;
            }
            labels.clear();
            ranges.clear();
            let mut start = lo;
            while start < hi {
                let label = entries[start].0[depth];
                let mut end = start + 1;
                while end < hi && entries[end].0[depth] == label {
                    end += 1;
                }
                labels.push(label);
                ranges.push((start, end));
                start = end;
            }
            let base = self.find_base(&labels);
            self.slots[node as usize].base = base;
            for (&label, &(s, e)) in labels.iter().zip(&ranges) {
                let child = base + u32::from(label);
                self.occupy(child as usize, node);
                stack.push((child, s, e, depth + 1));
            }
        }
    }

    /// Smallest listed base (>= 1) whose slots for all `labels` are free.
    fn find_base(&mut self, labels: &[u8]) -> u32 {
        let first = labels[0] as usize;
        let last = labels[labels.len() - 1] as usize;
        let window_start = self.frontier.saturating_sub(SEARCH_WINDOW);
        while self.head != NIL && (self.head as usize) < window_start {
            let h = self.head as usize;
            self.unlink(h);
        }
        let mut p = self.head;
        loop {
            if p == NIL {
                let old = self.slots.len();
                self.grow(old + 256);
                p = old as u32;
            }
            let pos = p as usize;
            if pos > first {
                let base = pos - first;
                self.grow(base + last + 1);
                if labels
                    .iter()
                    .all(|&l| self.slots[base + l as usize].check == FREE)
                {
                    return base as u32;
                }
            }
            p = self.next[pos];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_all_keys_and_prefixes() {
        let words: Vec<&[u8]> = vec![
            b"a",
            b"ab",
            b"abc",
            b"b",
            b"\xe2\x96\x81",
            b"\xe2\x96\x81a",
            b"zzzz",
            b"\0x",
        ];
        let trie = Trie::build(
            words
                .iter()
                .enumerate()
                .map(|(i, w)| (*w, i as u32))
                .collect(),
        );
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
        let keys: Vec<Vec<u8>> = (0..=255u8)
            .flat_map(|a| [vec![a], vec![a, 255 - a]])
            .collect();
        let trie = Trie::build(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_slice(), i as u32))
                .collect(),
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(trie.get(k), Some(i as u32));
        }
    }
}
