//! The quickstart's check that the model learned: sentences of the bundled corpus with one word
//! or a short span replaced by `[MASK]`, filled greedily and compared token for token with the
//! original text — on documents the model trained on ("held-in") and on held-out ones.
//!
//! ```
//! use glm_examples::quickstart::{fill_items, ItemOptions};
//!
//! // Two documents of model ids; every piece starts a word here.
//! let docs = vec![vec![5u32, 6, 7, 8, 9, 10], vec![11, 12, 13]];
//! let piece = |id: u32| Some(format!("\u{2581}w{id}"));
//! let options = ItemOptions { window: 16, per_document: 1, max_items: 10, mask: 99, seed: 7 };
//! let items = fill_items(&docs, &[0, 1], &options, &piece);
//! assert_eq!(items.len(), 2);
//! for item in &items {
//!     let doc = &docs[item.document as usize];
//!     // The context is the document with the answer's span replaced by one [MASK].
//!     let at = item.context.iter().position(|&t| t == 99).unwrap();
//!     let mut restored = item.context.clone();
//!     restored.splice(at..=at, item.answer.iter().copied());
//!     assert_eq!(&restored, doc);
//! }
//! ```

use burn::tensor::backend::Backend;
use glm_core::blank::MaskKind;
use glm_core::GlmModel;
use glm_infer::{fill_blanks, BaseStrategy, Prompt, SamplingConfig};
use glm_train::rng::Rng;

/// One blank to fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillItem {
    /// Index of the document it was cut from.
    pub document: u32,
    /// The document's first [`ItemOptions::window`] tokens with the span replaced by one `[MASK]`.
    pub context: Vec<u32>,
    /// The masked span (the exact answer).
    pub answer: Vec<u32>,
}

/// How [`fill_items`] cuts items.
#[derive(Debug, Clone, Copy)]
pub struct ItemOptions {
    /// Longest context taken from the start of a document (the training objective's `[MASK]`
    /// window).
    pub window: usize,
    /// Items per document (distinct spans).
    pub per_document: usize,
    /// Most items in all.
    pub max_items: usize,
    /// The model's `[MASK]` id.
    pub mask: u32,
    /// Seed of the span choice.
    pub seed: u64,
}

/// Longest answer in tokens (a word of several pieces, or two short words).
const MAX_ANSWER: usize = 4;

/// Whether the text of a piece holds a letter or digit (not only punctuation or spaces).
fn has_letter(piece: &str) -> bool {
    piece.chars().any(char::is_alphanumeric)
}

/// Whether a piece starts a word: SentencePiece's `▁` prefix, or a first character that is not
/// an ASCII letter or digit (a CJK character or punctuation stands on its own).
fn starts_word(piece: &str) -> bool {
    match piece.chars().next() {
        Some('\u{2581}') => true,
        Some(c) => !c.is_ascii_alphanumeric(),
        None => true,
    }
}

/// Cuts up to `options.per_document` items from each of `docs` (indices into `documents`), in
/// order, until `options.max_items`. A span is one word (a word-starting piece and the pieces
/// continuing it, see `piece`: model id → its SentencePiece text) or, one time in three, two
/// adjacent words; it never starts the context, holds a letter or digit, and has at most four
/// tokens. Deterministic in `options.seed`.
pub fn fill_items(
    documents: &[Vec<u32>],
    docs: &[u32],
    options: &ItemOptions,
    piece: &dyn Fn(u32) -> Option<String>,
) -> Vec<FillItem> {
    let mut items = Vec::new();
    for &d in docs {
        if items.len() >= options.max_items {
            break;
        }
        let Some(doc) = documents.get(d as usize) else {
            continue;
        };
        let ids = &doc[..doc.len().min(options.window)];
        let pieces: Vec<String> = ids.iter().map(|&t| piece(t).unwrap_or_default()).collect();
        // Word boundaries: [start, end) of each word after the first token.
        let starts: Vec<usize> = (1..ids.len())
            .filter(|&i| starts_word(&pieces[i]))
            .collect();
        let words: Vec<(usize, usize)> = starts
            .iter()
            .enumerate()
            .map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(ids.len())))
            .collect();
        let mut rng = Rng::derive(options.seed, u64::from(d));
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        for (k, &(s, e)) in words.iter().enumerate() {
            let two = rng.below(3) == 0;
            let e = match words.get(k + 1) {
                Some(&(_, e2)) if two => e2,
                _ => e,
            };
            if e - s <= MAX_ANSWER && pieces[s..e].iter().any(|p| has_letter(p)) {
                candidates.push((s, e));
            }
        }
        rng.shuffle(&mut candidates);
        let mut taken: Vec<(usize, usize)> = Vec::new();
        for (s, e) in candidates {
            if taken.len() >= options.per_document || items.len() >= options.max_items {
                break;
            }
            if taken.iter().any(|&(a, b)| s < b && a < e) {
                continue;
            }
            taken.push((s, e));
            let mut context = ids[..s].to_vec();
            context.push(options.mask);
            context.extend_from_slice(&ids[e..]);
            items.push(FillItem {
                document: d,
                context,
                answer: ids[s..e].to_vec(),
            });
        }
    }
    items
}

/// Fills `item` greedily with `model` (at most the answer's length plus four tokens) and returns
/// the fill (model ids, without the end token).
pub fn fill_item<B: Backend>(
    model: &GlmModel<B>,
    item: &FillItem,
) -> Result<Vec<u32>, glm_infer::Error> {
    let config = model.config();
    let prompt = Prompt {
        tokens: item.context.clone(),
        kind: MaskKind::Mask,
        raw_text: String::new(),
    };
    let mut strategy = BaseStrategy::new(SamplingConfig::greedy(
        config.special_tokens.end_tokens().to_vec(),
    ))?;
    let budget =
        (item.context.len() + 1 + item.answer.len() + MAX_ANSWER).min(config.max_sequence_length);
    let result = fill_blanks(model, &prompt, &mut strategy, budget, &mut |_| {})?;
    Ok(result
        .blanks
        .first()
        .and_then(|beam| beam.first())
        .cloned()
        .unwrap_or_default())
}

/// The fraction of `items` whose fill equals the answer exactly (0 for no item), with each
/// item's fill.
pub fn exact_fraction<B: Backend>(
    model: &GlmModel<B>,
    items: &[FillItem],
) -> Result<(f64, Vec<Vec<u32>>), glm_infer::Error> {
    let fills = items
        .iter()
        .map(|item| fill_item(model, item))
        .collect::<Result<Vec<_>, _>>()?;
    let exact = items
        .iter()
        .zip(&fills)
        .filter(|(item, fill)| item.answer == **fill)
        .count();
    let fraction = if items.is_empty() {
        0.0
    } else {
        exact as f64 / items.len() as f64
    };
    Ok((fraction, fills))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(id: u32) -> Option<String> {
        // 1: "▁The", 2: "▁riv", 3: "er" (continues), 4: ",", 5: "▁runs", 6: "。"
        Some(
            match id {
                1 => "\u{2581}The",
                2 => "\u{2581}riv",
                3 => "er",
                4 => ",",
                5 => "\u{2581}runs",
                _ => "。",
            }
            .to_string(),
        )
    }

    #[test]
    fn spans_are_whole_words_with_letters_and_never_the_first_token() {
        let doc = vec![1, 2, 3, 4, 5, 6];
        let documents = vec![doc.clone()];
        for seed in 0..50 {
            let options = ItemOptions {
                window: 64,
                per_document: 3,
                max_items: 10,
                mask: 99,
                seed,
            };
            let items = fill_items(&documents, &[0], &options, &pieces);
            assert!(!items.is_empty());
            for item in &items {
                let at = item.context.iter().position(|&t| t == 99).unwrap();
                assert!(at >= 1, "the first token is never masked");
                // "er" never starts or ends a span alone; "," or "。" alone is never one.
                assert_ne!(item.answer.first(), Some(&3));
                assert!(item.answer != [4] && item.answer != [6]);
                if item.answer.contains(&2) {
                    assert!(item.answer.contains(&3), "a word is masked whole");
                }
                assert_eq!(item.context.len() + item.answer.len() - 1, doc.len());
            }
        }
    }

    #[test]
    fn window_and_limits_hold() {
        let documents = vec![vec![1, 2, 3, 5, 5, 5, 5, 5], vec![1, 5, 5]];
        let options = ItemOptions {
            window: 4,
            per_document: 2,
            max_items: 3,
            mask: 99,
            seed: 1,
        };
        let items = fill_items(&documents, &[0, 1], &options, &pieces);
        assert!(items.len() <= 3);
        assert!(items.iter().filter(|i| i.document == 0).count() <= 2);
        for item in items.iter().filter(|i| i.document == 0) {
            assert_eq!(item.context.len() + item.answer.len() - 1, 4);
        }
    }
}
