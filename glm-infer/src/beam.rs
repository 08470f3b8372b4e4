//! BeamSearchStrategy (GLM-130B `generation/strategies.py`, spec §4.3).
//!
//! Per step: f32 logits; invalid tokens, end tokens before `min_gen_length` and n-gram bans set to
//! −65504; `log_softmax + cumulative beam score`; the `(max(1, #end)+1)·num_beams` best candidates
//! over all beams (top-k in evaluation, a seeded multinomial draw in generate.py); walked in score
//! order: an end token finishes a beam with score / ((5 + len)/6)^lp, `len` = FULL sequence length
//! (context and `<sop>` included); other candidates continue until `num_beams` are kept.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::strategy::{log_softmax, softmax, Hypothesis, Strategy, FILTER_VALUE};

/// Beam-search parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamConfig {
    /// Beams kept per batch entry.
    pub num_beams: usize,
    /// Exponent of the OpenNMT length penalty.
    pub length_penalty: f32,
    /// Finalize adds the live beams to the finished list (generate.py: true).
    pub consider_end: bool,
    /// End tokens (`<eop>`, eos).
    pub end_tokens: Vec<u32>,
    /// Always-banned token ids.
    pub invalid_tokens: Vec<u32>,
    /// n-gram size that may not repeat (0 = off).
    pub no_repeat_ngram_size: usize,
    /// End tokens are banned until this many tokens were generated.
    pub min_gen_length: usize,
    /// `true`: top-k candidates (evaluation); `false`: sampled candidates (generate.py), seeded.
    pub deterministic: bool,
    /// Seed of the candidate draw when not deterministic.
    pub seed: u64,
}

impl Default for BeamConfig {
    /// generate.py's beam defaults: 4 beams, length penalty 1.0, n-gram size 3, no minimum
    /// length, sampled candidates seeded 1234, live beams kept at the end; no end tokens (the
    /// [`Glm`](crate::Glm) facade fills in the model's).
    fn default() -> Self {
        Self {
            num_beams: 4,
            length_penalty: 1.0,
            consider_end: true,
            end_tokens: Vec::new(),
            invalid_tokens: Vec::new(),
            no_repeat_ngram_size: 3,
            min_gen_length: 0,
            deterministic: false,
            seed: 1234,
        }
    }
}

type NgramBans = HashMap<Vec<i64>, Vec<i64>>;

#[derive(Debug, Clone)]
struct Finished {
    tokens: Vec<i64>,
    penalized: f32,
    raw: f32,
}

/// Beam search over a batch.
#[derive(Debug)]
pub struct BeamSearchStrategy {
    config: BeamConfig,
    rng: StdRng,
    /// Live beams per batch entry (rows of the token matrix are batch-major).
    live: Vec<usize>,
    scores: Vec<f32>,
    bans: Vec<NgramBans>,
    finished: Vec<Vec<Finished>>,
    done: Vec<bool>,
    length_generated: usize,
}

impl BeamSearchStrategy {
    /// Checks the parameters.
    pub fn new(config: BeamConfig) -> Result<Self> {
        if config.num_beams == 0 {
            return Err(Error::Strategy("num_beams must be ≥ 1".into()));
        }
        if !config.length_penalty.is_finite() {
            return Err(Error::Strategy("length_penalty must be finite".into()));
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            config,
            rng,
            live: Vec::new(),
            scores: Vec::new(),
            bans: Vec::new(),
            finished: Vec::new(),
            done: Vec::new(),
            length_generated: 0,
        })
    }

    /// OpenNMT divisor ((5 + len) / 6)^lp, computed in f64 as Python does, applied in f32.
    fn penalty(&self, len: usize) -> f32 {
        ((5.0 + len as f64) / 6.0).powf(self.config.length_penalty as f64) as f32
    }

    fn add_finished(&mut self, b: usize, tokens: Vec<i64>, raw: f32) {
        let penalized = raw / self.penalty(tokens.len());
        let list = &mut self.finished[b];
        // As the original: the new beam goes before every entry whose score is ≤ its own.
        let at = list
            .iter()
            .position(|f| penalized >= f.penalized)
            .unwrap_or(list.len());
        list.insert(
            at,
            Finished {
                tokens,
                penalized,
                raw,
            },
        );
        list.truncate(self.config.num_beams);
    }

    /// Candidate indices into the flattened `[live·vocab]` scores.
    fn candidates(&mut self, flat: &[f32], restrict: usize) -> Vec<usize> {
        let k = (self.config.end_tokens.len().max(1) + 1) * self.config.num_beams;
        let probs = softmax(flat);
        let probs = &probs[..restrict];
        let k = k.min(probs.len());
        if self.config.deterministic {
            let mut idx: Vec<usize> = (0..probs.len()).collect();
            idx.select_nth_unstable_by(k - 1, |&a, &b| {
                probs[b].total_cmp(&probs[a]).then(a.cmp(&b))
            });
            idx.truncate(k);
            idx
        } else {
            // multinomial without replacement
            let mut weights: Vec<f32> = probs.to_vec();
            let mut out = Vec::with_capacity(k);
            for _ in 0..k {
                let total: f32 = weights.iter().sum();
                if total <= 0.0 {
                    break;
                }
                let target = self.rng.random::<f32>() * total;
                let mut cum = 0f32;
                let mut pick = None;
                for (i, &w) in weights.iter().enumerate() {
                    if w > 0.0 {
                        cum += w;
                        pick = Some(i);
                        if cum > target {
                            break;
                        }
                    }
                }
                let Some(i) = pick else { break };
                out.push(i);
                weights[i] = 0.0;
            }
            out
        }
    }
}

/// The last `n − 1` tokens — for n = 1 the original's `t[-0:]` is the WHOLE sequence (its known bug).
fn ngram_key(tokens: &[i64], n: usize) -> Vec<i64> {
    if n == 1 {
        tokens.to_vec()
    } else {
        tokens[tokens.len().saturating_sub(n - 1)..].to_vec()
    }
}

impl Strategy for BeamSearchStrategy {
    fn step(
        &mut self,
        logits: &[f32],
        vocab: usize,
        tokens: &mut Vec<Vec<i64>>,
    ) -> Option<Vec<usize>> {
        let nb = self.config.num_beams;
        if self.live.is_empty() {
            // First call: one row per batch entry.
            let batch = tokens.len();
            self.live = vec![1; batch];
            self.scores = vec![0.0; batch];
            self.bans = vec![NgramBans::new(); batch];
            self.finished = vec![Vec::new(); batch];
            self.done = vec![false; batch];
        }
        let ngram = self.config.no_repeat_ngram_size;
        let seq_len = tokens.first().map_or(0, |t| t.len());
        let mut new_tokens = Vec::new();
        let mut parents = Vec::new();
        let mut new_scores = Vec::new();
        let mut new_bans = Vec::new();
        let mut new_live = Vec::with_capacity(self.live.len());
        let mut row0 = 0;
        for b in 0..self.live.len() {
            let live = self.live[b];
            // Scores of every (beam, token) of this batch entry.
            let mut flat = Vec::with_capacity(live * vocab);
            for beam in 0..live {
                let r = row0 + beam;
                let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
                for &id in &self.config.invalid_tokens {
                    if let Some(x) = row.get_mut(id as usize) {
                        *x = FILTER_VALUE;
                    }
                }
                if self.config.min_gen_length > self.length_generated {
                    for &id in &self.config.end_tokens {
                        if let Some(x) = row.get_mut(id as usize) {
                            *x = FILTER_VALUE;
                        }
                    }
                }
                if ngram > 0 && seq_len > ngram {
                    let key = ngram_key(&tokens[r], ngram);
                    if let Some(banned) = self.bans[r].get(&key) {
                        for &t in banned {
                            if let Some(x) = row.get_mut(t as usize) {
                                *x = FILTER_VALUE;
                            }
                        }
                    }
                }
                let prev = self.scores[r];
                flat.extend(log_softmax(&row).into_iter().map(|s| s + prev));
            }
            let restrict = if live < nb { vocab } else { live * vocab };
            let mut cands = self.candidates(&flat, restrict);
            // Sort by score, descending (stable on equal scores).
            cands.sort_by(|&a, &c| flat[c].total_cmp(&flat[a]));
            let mut kept = 0;
            for &idx in &cands {
                let (parent, token) = (row0 + idx / vocab, (idx % vocab) as i64);
                let score = flat[idx];
                let mut beam = tokens[parent].clone();
                beam.push(token);
                if !self.done[b] && self.config.end_tokens.contains(&(token as u32)) {
                    self.add_finished(b, beam, score);
                } else if kept < nb {
                    if ngram > 0 {
                        let mut bans = self.bans[parent].clone();
                        let key = ngram_key(&tokens[parent], ngram);
                        bans.entry(key).or_default().push(token);
                        new_bans.push(bans);
                    } else {
                        new_bans.push(NgramBans::new());
                    }
                    new_tokens.push(beam);
                    parents.push(parent);
                    new_scores.push(score);
                    kept += 1;
                } else {
                    break;
                }
            }
            new_live.push(kept);
            row0 += live;
        }
        *tokens = new_tokens;
        self.scores = new_scores;
        self.bans = new_bans;
        self.live = new_live;
        self.length_generated += 1;
        let mut row0 = 0;
        for b in 0..self.live.len() {
            let live = self.live[b];
            let best = self.scores[row0..row0 + live]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if self.finished[b].len() == nb
                && self.finished[b]
                    .last()
                    .is_some_and(|w| w.penalized >= best / self.penalty(seq_len + 1))
            {
                self.done[b] = true;
            }
            row0 += live;
        }
        Some(parents)
    }

    fn is_done(&self) -> bool {
        !self.done.is_empty() && self.done.iter().all(|&d| d)
    }

    fn finalize(&mut self, tokens: Vec<Vec<i64>>) -> Vec<Vec<Hypothesis>> {
        let mut out = Vec::with_capacity(self.live.len());
        let mut row0 = 0;
        for b in 0..self.live.len() {
            let live = self.live[b];
            if self.config.consider_end && !self.done[b] {
                for (row, score) in tokens[row0..row0 + live]
                    .iter()
                    .zip(self.scores[row0..row0 + live].to_vec())
                {
                    self.add_finished(b, row.clone(), score);
                }
            }
            if self.config.consider_end {
                out.push(
                    self.finished[b]
                        .iter()
                        .map(|f| Hypothesis {
                            tokens: f.tokens.clone(),
                            penalized_score: Some(f.penalized),
                            raw_score: Some(f.raw),
                        })
                        .collect(),
                );
            } else {
                out.push(
                    (row0..row0 + live)
                        .map(|r| Hypothesis {
                            tokens: tokens[r].clone(),
                            penalized_score: None,
                            raw_score: Some(self.scores[r]),
                        })
                        .collect(),
                );
            }
            row0 += live;
        }
        self.live.clear();
        self.scores.clear();
        self.bans.clear();
        self.finished.clear();
        self.done.clear();
        self.length_generated = 0;
        out
    }

    fn end_tokens(&self) -> &[u32] {
        &self.config.end_tokens
    }
}
