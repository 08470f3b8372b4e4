//! Unigram segmentation: the best-scoring split of a normalized string into pieces.
//!
//! This is SentencePiece 0.2.x `Model::EncodeOptimized`, step for step, because ties and
//! rounding decide ids on real text:
//! - a forward DP over byte positions; start positions advance one UTF-8 character at a time,
//!   and from each start the trie yields candidates in increasing length;
//! - a candidate replaces the current best path ending at the same position only when its
//!   score is *strictly* greater, so on equal scores the earlier candidate stays;
//! - a piece's score is added in `f64` (the C++ `auto score` is a `double` because of the
//!   user-defined branch) and compared with the stored `f32` best, which is then stored
//!   rounded to `f32`;
//! - USER_DEFINED pieces score `len_bytes * max_score - 0.1`, where `max_score` is the max
//!   NORMAL score but never below `FLT_MIN` (so about `-0.1` for an all-negative vocabulary);
//! - when no piece covers exactly the first character, an `<unk>` node spanning that character
//!   scores `min_score - 10` (all in `f32`).

use std::cell::RefCell;

use crate::normalizer::utf8_char_len;
use crate::proto::{PieceProto, PieceType};
use crate::trie::Trie;

/// Penalty SentencePiece subtracts from the minimum score for an unknown character.
const UNK_PENALTY: f32 = 10.0;
const NONE: u32 = u32::MAX;

/// One piece of a segmentation: byte range in the normalized string and the piece id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start byte (inclusive).
    pub start: u32,
    /// End byte (exclusive).
    pub end: u32,
    /// Piece id (the `<unk>` id for unknown characters).
    pub id: u32,
}

/// Best path ending at one byte position.
#[derive(Debug, Clone, Copy)]
struct Node {
    score: f32,
    start: u32,
    id: u32,
}

thread_local! {
    /// Reused DP table: one encode call allocates nothing after the first on a thread.
    static LATTICE: RefCell<Vec<Node>> = const { RefCell::new(Vec::new()) };
}

/// Unigram model ready for Viterbi segmentation.
#[derive(Debug, Clone)]
pub struct Unigram {
    trie: Trie,
    /// Score of each trie entry, indexed by piece id (0 for pieces not in the trie).
    scores: Vec<f64>,
    unk_id: u32,
    unk_score: f32,
}

impl Unigram {
    /// Builds the model from the vocabulary. NORMAL and USER_DEFINED pieces are matchable;
    /// UNUSED pieces are skipped by the C++ loop, so they are simply left out of the trie.
    pub fn new(pieces: &[PieceProto], unk_id: u32) -> Self {
        let mut min_score = f32::MAX;
        let mut max_score = f32::MIN_POSITIVE; // C++ FLT_MIN: the smallest *positive* float
        for p in pieces.iter().filter(|p| p.kind == PieceType::Normal) {
            min_score = min_score.min(p.score);
            max_score = max_score.max(p.score);
        }
        let mut scores = vec![0.0f64; pieces.len()];
        let mut entries = Vec::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            let score = match p.kind {
                PieceType::Normal => f64::from(p.score),
                PieceType::UserDefined => f64::from(p.piece.len() as f32 * max_score) - 0.1,
                _ => continue,
            };
            scores[id] = score;
            entries.push((p.piece.as_bytes(), id as u32));
        }
        Self { trie: Trie::build(entries), scores, unk_id, unk_score: min_score - UNK_PENALTY }
    }

    /// Segments `normalized`, appending the pieces in order to `out`.
    pub fn encode(&self, normalized: &[u8], out: &mut Vec<Segment>) {
        if normalized.is_empty() {
            return;
        }
        LATTICE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut lattice) => self.viterbi(normalized, &mut lattice, out),
            // Only reachable through re-entrancy, which this crate never does.
            Err(_) => self.viterbi(normalized, &mut Vec::new(), out),
        });
    }

    fn viterbi(&self, text: &[u8], lattice: &mut Vec<Node>, out: &mut Vec<Segment>) {
        let n = text.len();
        lattice.clear();
        lattice.resize(n + 1, Node { score: 0.0, start: NONE, id: NONE });
        let trie = &self.trie;
        let mut pos = 0usize;
        while pos < n {
            let base_score = lattice[pos].score;
            let base_score_f64 = f64::from(base_score);
            let mblen = utf8_char_len(text[pos]).min(n - pos);
            let mut has_single_node = false;
            let mut node = trie.root();
            let mut end = pos;
            while end < n {
                match trie.step(node, text[end]) {
                    Some(next) => node = next,
                    None => break,
                }
                end += 1;
                if let Some(id) = trie.value(node) {
                    let candidate = self.scores[id as usize] + base_score_f64;
                    let target = &mut lattice[end];
                    if target.start == NONE || candidate > f64::from(target.score) {
                        *target = Node { score: candidate as f32, start: pos as u32, id };
                    }
                    has_single_node |= end - pos == mblen;
                }
            }
            if !has_single_node {
                let candidate = self.unk_score + base_score;
                let target = &mut lattice[pos + mblen];
                if target.start == NONE || candidate > target.score {
                    *target = Node { score: candidate, start: pos as u32, id: self.unk_id };
                }
            }
            pos += mblen;
        }
        let first = out.len();
        let mut end = n;
        while end > 0 {
            let node = lattice[end];
            if node.start == NONE {
                break; // unreachable: every character boundary has at least the <unk> path
            }
            out.push(Segment { start: node.start, end: end as u32, id: node.id });
            end = node.start as usize;
        }
        out[first..].reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: PieceType) -> PieceProto {
        PieceProto { piece: text.to_string(), score, kind }
    }

    fn ids(model: &Unigram, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        model.encode(text.as_bytes(), &mut out);
        out.iter().map(|s| s.id).collect()
    }

    #[test]
    fn prefers_higher_total_score() {
        let pieces = vec![
            piece("<unk>", 0.0, PieceType::Unknown),
            piece("a", -1.0, PieceType::Normal),
            piece("b", -1.0, PieceType::Normal),
            piece("ab", -1.5, PieceType::Normal),
        ];
        let m = Unigram::new(&pieces, 0);
        assert_eq!(ids(&m, "ab"), vec![3]);
        assert_eq!(ids(&m, "ba"), vec![2, 1]);
    }

    #[test]
    fn ties_keep_the_earlier_candidate() {
        // "aa" + "a" and "a" + "aa" score the same; the path found first ends at 3 via start 0
        // ("aa" then "a" is found when starting at 2, after "a"+"aa" from start 1).
        let pieces = vec![
            piece("<unk>", 0.0, PieceType::Unknown),
            piece("a", -1.0, PieceType::Normal),
            piece("aa", -2.0, PieceType::Normal),
        ];
        let m = Unigram::new(&pieces, 0);
        // start 0: "a"->1 (-1), "aa"->2 (-2). start 1: "a"->2 ties (-2, kept "aa"),
        // "aa"->3 (-3). start 2: "a"->3 ties (-3, kept start 1).
        assert_eq!(ids(&m, "aaa"), vec![1, 2]);
    }

    #[test]
    fn unknown_characters_and_user_defined() {
        let pieces = vec![
            piece("<unk>", 0.0, PieceType::Unknown),
            piece("a", -1.0, PieceType::Normal),
            piece("<n>", 0.0, PieceType::UserDefined),
            piece("<", -0.5, PieceType::Normal),
            piece("n", -0.5, PieceType::Normal),
            piece(">", -0.5, PieceType::Normal),
            piece("z", -1.0, PieceType::Unused),
        ];
        let m = Unigram::new(&pieces, 0);
        assert_eq!(ids(&m, "a<n>"), vec![1, 2]);
        assert_eq!(ids(&m, "a€z"), vec![1, 0, 0]);
    }
}
