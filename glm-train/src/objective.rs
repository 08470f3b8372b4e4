//! The GLM-130B pre-training objective (spec §8): blank infilling with `[MASK]` spans or a
//! `[gMASK]` suffix, plus multi-task instruction data (MIP), one *segment* per sample.
//!
//! Layout of a segment (GLM `blocklm_utils`, GLM-130B positions of spec §3.3):
//! - **`[MASK]`**: Part A = the text with every span replaced by one `[MASK]`; Part B = for each
//!   span in shuffled order `<sop> span` as input and `span <eop>` as targets. Part A positions
//!   are `0..|A|`; `<sop>` and every token of a span get the position of its `[MASK]`.
//! - **`[gMASK]`**: `prefix [gMASK] <sop> rest[..-1]`, targets `rest` from the `<sop>` row on (no
//!   `<eop>`), positions `0..len`.
//! - **MIP**: `prompt [gMASK] <sop> target`, targets `target <eop>`, positions `0..len`.
//!
//! Part A (everything before the first `<sop>`) is bidirectional, the rest causal
//! ([`glm_core::blank::glm_attention_mask`]); the loss covers exactly the Part-B rows.

use glm_core::SpecialTokens;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Mixture and span statistics of the objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Fraction of self-supervised samples that use `[MASK]` spans (`1 - gpt_prob`; 0.3).
    pub mask_ratio: f64,
    /// Fraction of a `[MASK]` sample's tokens covered by spans (`mask_prob`; 0.15).
    pub mask_prob: f64,
    /// Mean span length λ of the Poisson distribution (`average_block_length`; 3).
    pub span_lambda: f64,
    /// Longest span (Poisson draws are restricted to `1..=max_span`; GLM uses 39).
    pub max_span: usize,
    /// `[gMASK]`: the kept prefix is uniform in `[ceil(r·n), n-1]` tokens (r = this ratio; 0.2).
    pub gmask_min_prefix_ratio: f64,
    /// Fraction of samples drawn from the instruction (MIP) data when there is some (0.05).
    pub mip_ratio: f64,
    /// Window of `[MASK]` samples; 0 = a quarter of the sequence (`length_per_sample` 512 of 2048).
    pub mask_window: usize,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.3,
            mask_prob: 0.15,
            span_lambda: 3.0,
            max_span: 39,
            gmask_min_prefix_ratio: 0.2,
            mip_ratio: 0.05,
            mask_window: 0,
        }
    }
}

impl ObjectiveConfig {
    /// The longest `[MASK]` segment (Part A + Part B rows) in sequences of `seq_len`:
    /// [`ObjectiveConfig::mask_window`], or a quarter of the sequence (at least 8) when it is 0.
    pub fn window(&self, seq_len: usize) -> usize {
        if self.mask_window == 0 {
            (seq_len / 4).max(8)
        } else {
            self.mask_window
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let unit = [
            ("objective.mask_ratio", self.mask_ratio),
            ("objective.mip_ratio", self.mip_ratio),
            (
                "objective.gmask_min_prefix_ratio",
                self.gmask_min_prefix_ratio,
            ),
        ];
        for (field, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(field, format!("must be in [0, 1], got {v}")));
            }
        }
        if !(self.mask_prob > 0.0 && self.mask_prob < 0.9) {
            return Err(Error::config(
                "objective.mask_prob",
                format!("must be in (0, 0.9), got {}", self.mask_prob),
            ));
        }
        if !(self.span_lambda > 0.0 && self.span_lambda < 100.0) {
            return Err(Error::config(
                "objective.span_lambda",
                "must be in (0, 100)",
            ));
        }
        if self.max_span == 0 {
            return Err(Error::config("objective.max_span", "must be positive"));
        }
        Ok(())
    }
}

/// Which objective built a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SampleKind {
    /// `[MASK]` span corruption.
    Mask,
    /// `[gMASK]` prefix → generation.
    GMask,
    /// Instruction pair (prompt → target).
    Mip,
}

/// One training sample in the blank-infilling layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Input ids.
    pub tokens: Vec<u32>,
    /// Target id of every row (0 where the row carries no loss).
    pub targets: Vec<u32>,
    /// Whether a row carries loss (exactly the rows from the first `<sop>` on).
    pub loss_mask: Vec<bool>,
    /// Position ids (1-D, spec §3.3).
    pub position_ids: Vec<u32>,
    /// Length of Part A (bidirectional prefix; the first `<sop>` is at this index).
    pub prefix_len: usize,
    /// The objective that built it.
    pub kind: SampleKind,
    /// `[MASK]` only: the spans as `(start, len)` in the ORIGINAL text, in text order.
    pub spans: Vec<(usize, usize)>,
}

impl Segment {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of rows carrying loss.
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// Shortest text a segment is built from (a `[MASK]` sample needs a span and a kept token).
pub const MIN_TEXT: usize = 2;

/// Samples span lengths (Poisson(λ) restricted to `1..=max_span`) covering `round(prob·n)`
/// tokens (at least one); the last span is cut to hit the total exactly.
pub fn sample_span_lengths(n: usize, config: &ObjectiveConfig, rng: &mut Rng) -> Vec<usize> {
    let target =
        ((config.mask_prob * n as f64).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut lengths = Vec::new();
    let mut total = 0;
    while total < target {
        let mut len = rng.poisson(config.span_lambda);
        let mut tries = 0;
        while (len == 0 || len > config.max_span) && tries < 64 {
            len = rng.poisson(config.span_lambda);
            tries += 1;
        }
        let len = len.clamp(1, config.max_span).min(target - total);
        lengths.push(len);
        total += len;
    }
    // Every span needs a gap of at least one kept token before the next one.
    while !lengths.is_empty()
        && lengths.iter().sum::<usize>() + lengths.len() - 1 > n.saturating_sub(1)
    {
        lengths.pop();
    }
    lengths
}

/// Places spans of the given lengths in a text of `n` tokens, in random order of lengths, with at
/// least one kept token between two spans; returns `(start, len)` sorted by start.
pub fn place_spans(n: usize, lengths: &[usize], rng: &mut Rng) -> Vec<(usize, usize)> {
    let k = lengths.len();
    if k == 0 {
        return Vec::new();
    }
    let masked: usize = lengths.iter().sum();
    // Free slots once the mandatory gaps are taken out.
    let slots = n - masked - (k - 1);
    let mut places: Vec<usize> = (0..k).map(|_| rng.below(slots + 1)).collect();
    places.sort_unstable();
    let mut order: Vec<usize> = lengths.to_vec();
    rng.shuffle(&mut order);
    let mut spans = Vec::with_capacity(k);
    let mut offset = 0;
    for (place, len) in places.into_iter().zip(order) {
        let start = place + offset;
        spans.push((start, len));
        offset += len + 1;
    }
    spans
}

/// Builds a `[MASK]` segment of at most `max_len` rows from the start of `text`; returns it and
/// the number of text tokens it consumed (`None` if `text` or `max_len` is too short).
pub fn mask_segment(
    text: &[u32],
    max_len: usize,
    config: &ObjectiveConfig,
    specials: &SpecialTokens,
    rng: &mut Rng,
) -> Option<(Segment, usize)> {
    // A segment of n text tokens and k spans has n + 2k rows.
    let mut n = text.len().min(max_len);
    loop {
        if n < MIN_TEXT + 1 || max_len < MIN_TEXT + 2 {
            return None;
        }
        let lengths = sample_span_lengths(n, config, rng);
        if lengths.is_empty() {
            return None;
        }
        if n + 2 * lengths.len() > max_len {
            n = max_len - 2 * lengths.len();
            continue;
        }
        let spans = place_spans(n, &lengths, rng);
        return Some((build_mask_layout(&text[..n], &spans, specials, rng), n));
    }
}

/// The `[MASK]` layout for given spans (sorted `(start, len)`, non-overlapping); Part-B order is
/// shuffled with `rng`.
pub fn build_mask_layout(
    text: &[u32],
    spans: &[(usize, usize)],
    specials: &SpecialTokens,
    rng: &mut Rng,
) -> Segment {
    let mut tokens = Vec::with_capacity(text.len() + 2 * spans.len());
    let mut mask_at = Vec::with_capacity(spans.len());
    let mut i = 0;
    let mut next = 0;
    while i < text.len() {
        if next < spans.len() && spans[next].0 == i {
            mask_at.push(tokens.len());
            tokens.push(specials.mask);
            i += spans[next].1;
            next += 1;
        } else {
            tokens.push(text[i]);
            i += 1;
        }
    }
    let prefix_len = tokens.len();
    let mut position_ids: Vec<u32> = (0..prefix_len as u32).collect();
    let mut targets = vec![0u32; prefix_len];
    let mut loss_mask = vec![false; prefix_len];
    let mut order: Vec<usize> = (0..spans.len()).collect();
    rng.shuffle(&mut order);
    for s in order {
        let (start, len) = spans[s];
        let span = &text[start..start + len];
        tokens.push(specials.sop);
        tokens.extend_from_slice(span);
        targets.extend_from_slice(span);
        targets.push(specials.eop);
        position_ids.extend(std::iter::repeat_n(mask_at[s] as u32, len + 1));
        loss_mask.extend(std::iter::repeat_n(true, len + 1));
    }
    Segment {
        tokens,
        targets,
        loss_mask,
        position_ids,
        prefix_len,
        kind: SampleKind::Mask,
        spans: spans.to_vec(),
    }
}

/// Builds a `[gMASK]` segment of at most `max_len` rows from the start of `text`: a prefix of
/// uniform length in `[ceil(r·n), n-1]` is kept, the rest generated. Returns the segment and the
/// number of text tokens consumed.
pub fn gmask_segment(
    text: &[u32],
    max_len: usize,
    config: &ObjectiveConfig,
    specials: &SpecialTokens,
    rng: &mut Rng,
) -> Option<(Segment, usize)> {
    let n = text.len().min(max_len.saturating_sub(1));
    if n < MIN_TEXT {
        return None;
    }
    let lo = ((config.gmask_min_prefix_ratio * n as f64).ceil() as usize).clamp(1, n - 1);
    let prefix = rng.range_inclusive(lo, n - 1);
    Some((gmask_layout(&text[..n], prefix, specials), n))
}

/// The `[gMASK]` layout of `text` with a kept prefix of `prefix` tokens (`1 ≤ prefix < len`).
pub fn gmask_layout(text: &[u32], prefix: usize, specials: &SpecialTokens) -> Segment {
    let n = text.len();
    let mut tokens = Vec::with_capacity(n + 1);
    tokens.extend_from_slice(&text[..prefix]);
    tokens.push(specials.gmask);
    tokens.push(specials.sop);
    tokens.extend_from_slice(&text[prefix..n - 1]);
    let prefix_len = prefix + 1;
    let mut targets = vec![0u32; prefix_len];
    targets.extend_from_slice(&text[prefix..]);
    let mut loss_mask = vec![false; prefix_len];
    loss_mask.extend(std::iter::repeat_n(true, n - prefix));
    Segment {
        position_ids: (0..tokens.len() as u32).collect(),
        tokens,
        targets,
        loss_mask,
        prefix_len,
        kind: SampleKind::GMask,
        spans: Vec::new(),
    }
}

/// Builds an instruction segment `prompt [gMASK] <sop> target` (targets `target <eop>`) of at
/// most `max_len` rows: the target is cut at the end and the prompt from the LEFT when too long.
pub fn mip_segment(
    prompt: &[u32],
    target: &[u32],
    max_len: usize,
    specials: &SpecialTokens,
) -> Option<Segment> {
    if max_len < 4 || target.is_empty() {
        return None;
    }
    let t = target.len().min(max_len - 3);
    let p = prompt.len().min(max_len - 2 - t);
    let prompt = &prompt[prompt.len() - p..];
    let target = &target[..t];
    let mut tokens = Vec::with_capacity(p + 2 + t);
    tokens.extend_from_slice(prompt);
    tokens.push(specials.gmask);
    tokens.push(specials.sop);
    tokens.extend_from_slice(target);
    let prefix_len = p + 1;
    let mut targets = vec![0u32; prefix_len];
    targets.extend_from_slice(target);
    targets.push(specials.eop);
    let mut loss_mask = vec![false; prefix_len];
    loss_mask.extend(std::iter::repeat_n(true, t + 1));
    Some(Segment {
        position_ids: (0..tokens.len() as u32).collect(),
        tokens,
        targets,
        loss_mask,
        prefix_len,
        kind: SampleKind::Mip,
        spans: Vec::new(),
    })
}
