//! Metrics of `evaluation/metrics.py` and the group summary of `BaseTask.calc_group_metrics`.

use std::collections::HashMap;

/// Percentage of predictions equal to the label (`accuracy_metric`).
pub fn accuracy(predictions: &[usize], labels: &[i64]) -> f64 {
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    correct as f64 * 100.0 / predictions.len().max(1) as f64
}

/// `exp(min(20, Σ loss / words))` (`calculate_perplexity`).
pub fn perplexity(losses: &[f64], num_original_tokens: usize) -> f64 {
    (losses.iter().sum::<f64>() / num_original_tokens.max(1) as f64)
        .min(20.0)
        .exp()
}

/// Bits per byte: `loss / bytes / ln 2`.
pub fn bits_per_byte(loss: f64, utf8_bytes: usize) -> f64 {
    loss / utf8_bytes.max(1) as f64 / std::f64::consts::LN_2
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// SQuAD `normalize_answer`: lower-case, drop ASCII punctuation, replace the words a / an / the
/// by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !super::gen::PUNCTUATION.contains(*c))
        .collect();
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut word, &mut no_articles);
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD exact match (1 or 0).
pub fn exact_match(prediction: &str, truth: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(truth),
    ))
}

/// SQuAD token F1 in [0, 1].
pub fn f1(prediction: &str, truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let t = normalize_answer(truth);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let tt: Vec<&str> = t.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &tt {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0i64;
    for w in &pt {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pt.len() as f64;
    let recall = same as f64 / tt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// LAMBADA's exact match: equality after stripping.
pub fn strip_match(prediction: &str, truth: &str) -> f64 {
    f64::from(u8::from(prediction.trim() == truth.trim()))
}

/// `metric_max_over_ground_truths` (0 with no references).
pub fn max_over_references(
    metric: fn(&str, &str) -> f64,
    prediction: &str,
    truths: &[String],
) -> f64 {
    truths
        .iter()
        .map(|t| metric(prediction, t))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        .unwrap_or(0.0)
}

/// max / median / average over the files of a group.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GroupStats {
    /// Largest per-file value.
    pub max: f64,
    /// numpy median over files (mean of the two middle values for an even count).
    pub median: f64,
    /// Average weighted by each file's dataset length (samples; windows for `lm`).
    pub average: f64,
}

/// `calc_group_metrics` for one metric: `values[i]` of a file of `weights[i]` samples.
pub fn group_stats(values: &[f64], weights: &[usize]) -> Option<GroupStats> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let average = if total > 0.0 {
        values
            .iter()
            .zip(weights)
            .map(|(v, &w)| v * w as f64)
            .sum::<f64>()
            / total
    } else {
        f64::NAN
    };
    Some(GroupStats {
        max: sorted[n - 1],
        median,
        average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalize_answer("The  Cat, an apple!"), "cat apple");
        assert_eq!(normalize_answer("theatre"), "theatre");
        assert_eq!(exact_match("the cat", "Cat."), 1.0);
        assert!((f1("x b c", "b c d") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(max_over_references(exact_match, "x", &[]), 0.0);
    }

    #[test]
    fn group_stats_match_numpy() {
        let s = group_stats(&[20.0, 0.0], &[5, 3]).unwrap();
        assert_eq!((s.max, s.median, s.average), (20.0, 10.0, 12.5));
        assert!(group_stats(&[], &[]).is_none());
        assert_eq!(accuracy(&[1, 2], &[1, 1]), 50.0);
    }
}
