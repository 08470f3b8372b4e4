//! BaseStrategy (GLM-130B `generation/strategies.py` + SAT `top_k_logits`, spec §4.2): temperature,
//! invalid slices, top-k, top-p, then a seeded multinomial draw from the f32 softmax.
//! Greedy decoding is top-k = 1 (ties at the top survive the filter, as in the original).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::strategy::{softmax, Hypothesis, Strategy, DONE, FILTER_VALUE};

/// Sampling parameters (defaults = generate.sh: temperature 1, top-k 0, top-p 0.7).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Logits are divided by it first.
    pub temperature: f32,
    /// Keep only logits ≥ the k-th largest (0 = off).
    pub top_k: usize,
    /// Nucleus threshold (0 = off). Only valid for batch 1, as the original.
    pub top_p: f32,
    /// Token ids always set to the filter value.
    pub invalid_tokens: Vec<u32>,
    /// Tokens that end a row.
    pub end_tokens: Vec<u32>,
    /// RNG seed; equal seeds give equal outputs.
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// generate.py's defaults: temperature 1.0, top-k 0, top-p 0.7, seed 1234; no end tokens
    /// (the [`Glm`](crate::Glm) facade fills in the model's).
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
            invalid_tokens: Vec::new(),
            end_tokens: Vec::new(),
            seed: 1234,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding (top-k 1), as the evaluation code and the fixtures use.
    pub fn greedy(end_tokens: Vec<u32>) -> Self {
        Self {
            temperature: 1.0,
            top_k: 1,
            top_p: 0.0,
            invalid_tokens: Vec::new(),
            end_tokens,
            seed: 1234,
        }
    }
}

/// Sampling / greedy strategy.
#[derive(Debug)]
pub struct BaseStrategy {
    config: SamplingConfig,
    rng: StdRng,
    done: Vec<bool>,
}

impl BaseStrategy {
    /// Checks the parameters and seeds the RNG.
    pub fn new(config: SamplingConfig) -> Result<Self> {
        if !(config.temperature.is_finite() && config.temperature > 0.0) {
            return Err(Error::Strategy(format!(
                "temperature must be > 0, got {}",
                config.temperature
            )));
        }
        if !(0.0..=1.0).contains(&config.top_p) {
            return Err(Error::Strategy(format!(
                "top_p must be in [0, 1], got {}",
                config.top_p
            )));
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            config,
            rng,
            done: Vec::new(),
        })
    }

    /// The parameters.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Applies temperature, invalid tokens, top-k and top-p to one row, in the original order.
    pub fn filter(&self, row: &mut [f32], batch: usize) {
        let t = self.config.temperature;
        if t != 1.0 {
            row.iter_mut().for_each(|x| *x /= t);
        }
        for &id in &self.config.invalid_tokens {
            if let Some(x) = row.get_mut(id as usize) {
                *x = FILTER_VALUE;
            }
        }
        top_k_filter(row, self.config.top_k);
        if self.config.top_p > 0.0 && batch == 1 {
            top_p_filter(row, self.config.top_p);
        }
    }
}

/// Sets every logit strictly below the k-th largest to the filter value (ties survive).
pub fn top_k_filter(row: &mut [f32], k: usize) {
    if k == 0 || k >= row.len() {
        return;
    }
    let mut sorted: Vec<f32> = row.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    row.iter_mut()
        .filter(|x| **x < kth)
        .for_each(|x| *x = FILTER_VALUE);
}

/// Nucleus filter: sort descending, cumulative softmax, drop tokens whose cumulative probability
/// exceeds `p` — shifted by one so the first token crossing `p` (and always the top token) stays.
pub fn top_p_filter(row: &mut [f32], p: f32) {
    // Descending by logit, equal logits in index order: the order of a stable sort, reached by
    // an unstable sort of (logit, index) pairs (no two keys compare equal), which is several
    // times faster on a vocabulary-sized row than a stable sort through an index table.
    let mut order: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let sorted: Vec<f32> = order.iter().map(|&(x, _)| x).collect();
    let probs = softmax(&sorted);
    let mut cum = 0f32;
    for (rank, (prob, &(_, idx))) in probs.iter().zip(&order).enumerate() {
        // The cumulative sum BEFORE this token decides (the right shift).
        if rank > 0 && cum > p {
            if let Some(x) = row.get_mut(idx as usize) {
                *x = FILTER_VALUE;
            }
        }
        cum += prob;
    }
}

/// The original formulation of [`top_p_filter`] (stable sort of an index table, a removal mask
/// by rank): the reference the fast one is tested against.
pub fn top_p_filter_reference(row: &mut [f32], p: f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let sorted: Vec<f32> = order.iter().map(|&i| row[i]).collect();
    let probs = softmax(&sorted);
    let mut cum = 0f32;
    let mut remove = vec![false; row.len()];
    for (rank, prob) in probs.iter().enumerate() {
        if rank > 0 && cum > p {
            remove[rank] = true;
        }
        cum += prob;
    }
    for (rank, &idx) in order.iter().enumerate() {
        if remove[rank] {
            row[idx] = FILTER_VALUE;
        }
    }
}

impl Strategy for BaseStrategy {
    fn step(
        &mut self,
        logits: &[f32],
        vocab: usize,
        tokens: &mut Vec<Vec<i64>>,
    ) -> Option<Vec<usize>> {
        let batch = tokens.len();
        if self.done.len() != batch {
            self.done = vec![false; batch];
        }
        for (b, row_tokens) in tokens.iter_mut().enumerate() {
            let mut row = logits[b * vocab..(b + 1) * vocab].to_vec();
            self.filter(&mut row, batch);
            let probs = softmax(&row);
            let u: f32 = self.rng.random();
            let mut pred = sample(&probs, u) as i64;
            if self.done[b] {
                pred = DONE;
            } else if self.config.end_tokens.contains(&(pred as u32)) {
                self.done[b] = true;
            }
            row_tokens.push(pred);
        }
        None
    }

    fn is_done(&self) -> bool {
        !self.done.is_empty() && self.done.iter().all(|&d| d)
    }

    fn finalize(&mut self, tokens: Vec<Vec<i64>>) -> Vec<Vec<Hypothesis>> {
        self.done.clear();
        tokens
            .into_iter()
            .map(|t| {
                vec![Hypothesis {
                    tokens: t,
                    penalized_score: None,
                    raw_score: None,
                }]
            })
            .collect()
    }

    fn end_tokens(&self) -> &[u32] {
        &self.config.end_tokens
    }
}

/// Inverse-CDF draw: the first index whose cumulative probability exceeds `u·total`
/// (zero-probability tokens are never drawn).
fn sample(probs: &[f32], u: f32) -> usize {
    let total: f32 = probs.iter().sum();
    let target = u * total;
    let mut cum = 0f32;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last_nonzero = i;
            if cum > target {
                return i;
            }
        }
    }
    last_nonzero
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_ties_and_filters_the_rest() {
        let mut row = vec![1.0, 3.0, 2.0, 3.0, 0.5];
        top_k_filter(&mut row, 2);
        assert_eq!(
            row,
            vec![FILTER_VALUE, 3.0, FILTER_VALUE, 3.0, FILTER_VALUE]
        );
        let mut row = vec![1.0, 3.0, 2.0];
        top_k_filter(&mut row, 2);
        assert_eq!(row, vec![FILTER_VALUE, 3.0, 2.0]);
        let mut row = vec![1.0, 3.0];
        top_k_filter(&mut row, 0);
        assert_eq!(row, vec![1.0, 3.0]);
    }

    #[test]
    fn fast_top_p_equals_the_reference_bit_for_bit() {
        // Random rows with many ties (quantized logits) and filtered entries, several p.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in [1usize, 2, 7, 100, 8192] {
            for p in [0.0f32, 0.1, 0.5, 0.9, 0.999, 1.0] {
                let row: Vec<f32> = (0..len)
                    .map(|_| match next() % 10 {
                        0 => FILTER_VALUE,
                        r => (next() % 64) as f32 * 0.25 - 8.0 + r as f32 * 1e-3 * (r % 2) as f32,
                    })
                    .collect();
                let (mut fast, mut reference) = (row.clone(), row);
                top_p_filter(&mut fast, p);
                top_p_filter_reference(&mut reference, p);
                assert_eq!(
                    fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    reference.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "len {len}, p {p}"
                );
            }
        }
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_the_threshold() {
        // probs ≈ [0.6652, 0.2447, 0.0900] for logits [2, 1, 0].
        let mut row = vec![0.0, 2.0, 1.0];
        top_p_filter(&mut row, 0.5);
        assert_eq!(
            row,
            vec![FILTER_VALUE, 2.0, FILTER_VALUE],
            "top token always kept"
        );
        let mut row = vec![0.0, 2.0, 1.0];
        top_p_filter(&mut row, 0.7);
        assert_eq!(
            row,
            vec![FILTER_VALUE, 2.0, 1.0],
            "0.665 < 0.7: the second token crosses and stays"
        );
        let mut row = vec![0.0, 2.0, 1.0];
        top_p_filter(&mut row, 0.95);
        assert_eq!(row, vec![0.0, 2.0, 1.0]);
    }

    #[test]
    fn temperature_then_filters_in_order() {
        let s = BaseStrategy::new(SamplingConfig {
            temperature: 2.0,
            top_k: 2,
            top_p: 0.0,
            invalid_tokens: vec![1],
            end_tokens: vec![],
            seed: 0,
        })
        .unwrap();
        let mut row = vec![4.0, 10.0, 2.0, 6.0];
        s.filter(&mut row, 1);
        // /2 → [2, 5, 1, 3]; id 1 banned → top-2 of [2, -65504, 1, 3] keeps 3 and 2.
        assert_eq!(row, vec![2.0, FILTER_VALUE, FILTER_VALUE, 3.0]);
    }

    #[test]
    fn greedy_picks_the_argmax_and_marks_end_tokens() {
        let mut s = BaseStrategy::new(SamplingConfig::greedy(vec![3])).unwrap();
        let mut tokens = vec![vec![0i64], vec![0]];
        s.step(
            &[0.1, 0.9, 0.2, 0.0, /* row 1 */ 0.0, 0.0, 0.0, 5.0],
            4,
            &mut tokens,
        );
        assert_eq!(tokens, vec![vec![0, 1], vec![0, 3]]);
        assert!(!s.is_done());
        s.step(&[0.0, 0.0, 0.0, 9.0, 1.0, 0.0, 0.0, 0.0], 4, &mut tokens);
        assert_eq!(tokens[1], vec![0, 3, DONE], "finished rows get -1");
        assert!(s.is_done());
    }

    #[test]
    fn sampling_is_reproducible_under_a_seed() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.0,
            invalid_tokens: vec![],
            end_tokens: vec![],
            seed: 7,
        };
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |cfg: SamplingConfig| {
            let mut s = BaseStrategy::new(cfg).unwrap();
            let mut tokens = vec![vec![]];
            for _ in 0..20 {
                s.step(&logits, 50, &mut tokens);
            }
            tokens
        };
        assert_eq!(run(cfg.clone()), run(cfg.clone()));
        assert_ne!(run(cfg.clone()), run(SamplingConfig { seed: 8, ..cfg }));
        assert!(BaseStrategy::new(SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::greedy(vec![])
        })
        .is_err());
    }
}
