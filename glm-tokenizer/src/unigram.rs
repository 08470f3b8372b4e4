//! Unigram segmentation: the best-scoring split of a normalized string into pieces.
//!
//! This is SentencePiece 0.2.3 `Model::EncodeOptimized`, step for step, because ties and
//! float rounding decide ids on real text (0.2.0 and 0.1.x differ from it on long or
//! repetitive strings; the golden data follows 0.2.3):
//! - a forward DP over byte positions; start positions advance one UTF-8 character at a time,
//!   and from each start the trie yields candidates in increasing length;
//! - all scores are `f32`; a candidate replaces the best path ending at the same position
//!   only when its score is *strictly* greater, so on equal scores the earlier one stays;
//! - USER_DEFINED pieces score `f32(0.1 * (len_bytes - 1))`, above any log-probability, so
//!   they always win and longer ones are preferred;
//! - when no piece covers exactly the first character, an `<unk>` node spanning that character
//!   scores `min_score - 10` (min over NORMAL pieces);
//! - when the running score at a start position leaves ±100000, every reached node from there
//!   to the frontier is shifted by it (keeps precision on long inputs, and changes rounding
//!   exactly as the C++ does).

use std::cell::RefCell;

use crate::normalizer::utf8_char_len;
use crate::proto::{PieceProto, PieceType};
use crate::trie::{Trie, NO_VALUE};

/// Penalty SentencePiece subtracts from the minimum score for an unknown character.
const UNK_PENALTY: f32 = 10.0;
/// Running scores beyond ±this are rebased to 0 (`kScoreResetThreshold`).
const SCORE_RESET_THRESHOLD: f32 = 100_000.0;
const NONE: u32 = u32::MAX;
/// Longest normalized input segmented in one lattice (positions must fit in u32).
const MAX_CHUNK: usize = (u32::MAX - 8) as usize;
/// Stands in the score table for USER_DEFINED pieces (real scores are finite).
const USER_DEFINED_MARK: f32 = f32::INFINITY;

/// One piece of a segmentation: byte range in the normalized string and the piece id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start byte (inclusive).
    pub start: u64,
    /// End byte (exclusive).
    pub end: u64,
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
    /// Score of each NORMAL piece, indexed by piece id; `USER_DEFINED_MARK` for USER_DEFINED
    /// pieces, which are scored by length instead.
    scores: Vec<f32>,
    /// Id given to unknown characters (`u32::MAX` when the model has no `<unk>`).
    unk_id: u32,
    unk_score: f32,
}

impl Unigram {
    /// Builds the model from the vocabulary. NORMAL and USER_DEFINED pieces are matchable;
    /// UNUSED pieces are skipped by the C++ loop, so they are simply left out of the trie.
    pub fn new(pieces: &[PieceProto], unk_id: u32) -> Self {
        let mut min_score = f32::MAX;
        for p in pieces.iter().filter(|p| p.kind == PieceType::Normal) {
            min_score = min_score.min(p.score);
        }
        let mut scores = vec![0.0f32; pieces.len()];
        let mut entries = Vec::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            scores[id] = match p.kind {
                PieceType::Normal => p.score,
                PieceType::UserDefined => USER_DEFINED_MARK,
                _ => continue,
            };
            entries.push((p.piece.as_bytes(), id as u32));
        }
        Self {
            trie: Trie::build(entries),
            scores,
            unk_id,
            unk_score: min_score - UNK_PENALTY,
        }
    }

    /// Segments `normalized`, appending the pieces in order to `out`.
    pub fn encode(&self, normalized: &[u8], out: &mut Vec<Segment>) {
        // Positions are stored as u32. SentencePiece refuses inputs of 4 GiB and more; here
        // they are segmented in independent chunks cut at character boundaries.
        let mut rest = normalized;
        let mut offset = 0u64;
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_CHUNK);
            while cut > 1 && cut < rest.len() && (rest[cut] & 0xc0) == 0x80 {
                cut -= 1;
            }
            let first = out.len();
            LATTICE.with(|cell| match cell.try_borrow_mut() {
                Ok(mut lattice) => self.viterbi(&rest[..cut], &mut lattice, out),
                // Only reachable through re-entrancy, which this crate never does.
                Err(_) => self.viterbi(&rest[..cut], &mut Vec::new(), out),
            });
            for seg in &mut out[first..] {
                seg.start += offset;
                seg.end += offset;
            }
            offset += cut as u64;
            rest = &rest[cut..];
        }
    }

    fn viterbi(&self, text: &[u8], lattice: &mut Vec<Node>, out: &mut Vec<Segment>) {
        let n = text.len();
        lattice.clear();
        lattice.resize(
            n + 1,
            Node {
                score: 0.0,
                start: NONE,
                id: NONE,
            },
        );
        let trie = &self.trie;
        let mut max_frontier = 0usize;
        let mut pos = 0usize;
        while pos < n {
            let mut base_score = lattice[pos].score;
            if !(-SCORE_RESET_THRESHOLD..=SCORE_RESET_THRESHOLD).contains(&base_score) {
                let offset = base_score;
                for (i, node) in lattice
                    .iter_mut()
                    .enumerate()
                    .take(max_frontier.max(pos) + 1)
                    .skip(pos)
                {
                    if i == pos || node.start != NONE {
                        node.score -= offset;
                    }
                }
                base_score = 0.0;
            }
            let mblen = utf8_char_len(text[pos]).min(n - pos);
            let mut has_single_node = false;
            let mut node = trie.root();
            let mut end = pos;
            for &byte in &text[pos..] {
                let Some((next, id)) = trie.step_with_value(node, byte) else {
                    break;
                };
                node = next;
                end += 1;
                if id != NO_VALUE {
                    max_frontier = max_frontier.max(end);
                    let mut score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                    if score == USER_DEFINED_MARK {
                        score = (0.1f64 * (end - pos - 1) as f64) as f32;
                    }
                    let candidate = score + base_score;
                    let target = &mut lattice[end];
                    if target.start == NONE || candidate > target.score {
                        *target = Node {
                            score: candidate,
                            start: pos as u32,
                            id,
                        };
                    }
                    has_single_node |= end - pos == mblen;
                }
            }
            if !has_single_node {
                max_frontier = max_frontier.max(pos + mblen);
                let candidate = self.unk_score + base_score;
                let target = &mut lattice[pos + mblen];
                if target.start == NONE || candidate > target.score {
                    *target = Node {
                        score: candidate,
                        start: pos as u32,
                        id: self.unk_id,
                    };
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
            out.push(Segment {
                start: u64::from(node.start),
                end: end as u64,
                id: node.id,
            });
            end = node.start as usize;
        }
        out[first..].reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: PieceType) -> PieceProto {
        PieceProto {
            piece: text.to_string(),
            score,
            kind,
        }
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
