//! Packing segments into fixed-length sequences and sequences into batches.
//!
//! A sequence holds one or more [`Segment`]s back to back, then padding. Each segment attends only
//! to itself (its Part A bidirectionally, the rest causally); padding keys are blocked for every
//! row and padding rows see nothing (their outputs are never used).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use glm_core::blank::GlmInput;

use crate::error::{Error, Result};
use crate::objective::Segment;

/// One packed sequence (host side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Input ids, `seq` long (padded with `pad`).
    pub tokens: Vec<u32>,
    /// Targets per row (0 where no loss).
    pub targets: Vec<u32>,
    /// Rows that carry loss.
    pub loss_mask: Vec<bool>,
    /// Position ids per row (0 on padding).
    pub position_ids: Vec<u32>,
    /// `[seq, seq]` attention mask, `true` = blocked.
    pub mask: Vec<bool>,
    /// `(offset, len, prefix_len)` of every segment.
    pub segments: Vec<(usize, usize, usize)>,
    /// Seed of this sequence's dropout masks.
    pub dropout_seed: u64,
}

impl Sequence {
    /// Packs `segments` (total length ≤ `seq`) and pads with `pad`.
    pub fn pack(segments: &[Segment], seq: usize, pad: u32, dropout_seed: u64) -> Self {
        let mut out = Sequence {
            tokens: Vec::with_capacity(seq),
            targets: Vec::with_capacity(seq),
            loss_mask: Vec::with_capacity(seq),
            position_ids: Vec::with_capacity(seq),
            mask: vec![true; seq * seq],
            segments: Vec::with_capacity(segments.len()),
            dropout_seed,
        };
        for s in segments {
            let offset = out.tokens.len();
            let n = s.len().min(seq - offset);
            out.tokens.extend_from_slice(&s.tokens[..n]);
            out.targets.extend_from_slice(&s.targets[..n]);
            out.loss_mask.extend_from_slice(&s.loss_mask[..n]);
            out.position_ids.extend_from_slice(&s.position_ids[..n]);
            for i in 0..n {
                for j in 0..n {
                    out.mask[(offset + i) * seq + offset + j] = !(j < s.prefix_len || j <= i);
                }
            }
            out.segments.push((offset, n, s.prefix_len));
            if offset + n >= seq {
                break;
            }
        }
        let pad_rows = seq - out.tokens.len();
        out.tokens.extend(std::iter::repeat_n(pad, pad_rows));
        out.targets.extend(std::iter::repeat_n(0, pad_rows));
        out.loss_mask.extend(std::iter::repeat_n(false, pad_rows));
        out.position_ids.extend(std::iter::repeat_n(0, pad_rows));
        out
    }

    /// Number of rows carrying loss.
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Length of the packed rows (without padding).
    pub fn used(&self) -> usize {
        self.segments.iter().map(|s| s.1).sum()
    }
}

/// A batch of packed sequences, ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Model inputs (`[batch, seq]` tokens / positions, `[batch, seq, seq]` mask).
    pub input: GlmInput,
    /// `[batch, seq]` targets.
    pub targets: Vec<u32>,
    /// `[batch, seq]` loss mask.
    pub loss_mask: Vec<bool>,
    /// Dropout seed of every row.
    pub dropout_seeds: Vec<u64>,
}

/// Device tensors of the loss rows of a batch.
#[derive(Debug, Clone)]
pub struct LossRows<B: Backend> {
    /// Flat row indices `b·seq + s` of the rows with loss, `[n]`.
    pub rows: Tensor<B, 1, Int>,
    /// Their targets, `[n]`.
    pub targets: Tensor<B, 1, Int>,
}

impl Batch {
    /// Stacks sequences of equal length.
    pub fn from_sequences(seqs: &[Sequence]) -> Self {
        let seq = seqs.first().map(|s| s.tokens.len()).unwrap_or(0);
        let mut input = GlmInput {
            batch: seqs.len(),
            seq,
            tokens: Vec::with_capacity(seqs.len() * seq),
            position_ids: Vec::with_capacity(seqs.len() * seq),
            mask: Vec::with_capacity(seqs.len() * seq * seq),
        };
        let mut targets = Vec::new();
        let mut loss_mask = Vec::new();
        for s in seqs {
            input.tokens.extend_from_slice(&s.tokens);
            input.position_ids.extend_from_slice(&s.position_ids);
            input.mask.extend_from_slice(&s.mask);
            targets.extend_from_slice(&s.targets);
            loss_mask.extend_from_slice(&s.loss_mask);
        }
        Batch {
            input,
            targets,
            loss_mask,
            dropout_seeds: seqs.iter().map(|s| s.dropout_seed).collect(),
        }
    }

    /// Checks the loss fields against the input: `targets` and `loss_mask` one entry per row
    /// (`batch·seq`), one dropout seed per sample, every target of a loss row below `vocab`.
    pub fn check_targets(&self, vocab: usize) -> Result<()> {
        let rows = self
            .input
            .batch
            .checked_mul(self.input.seq)
            .ok_or_else(|| Error::Data("batch × seq overflows".into()))?;
        let fields = [
            ("targets", self.targets.len(), rows),
            ("loss_mask", self.loss_mask.len(), rows),
            ("dropout_seeds", self.dropout_seeds.len(), self.input.batch),
        ];
        for (field, len, want) in fields {
            if len != want {
                return Err(Error::Data(format!(
                    "batch field `{field}` has {len} entries, expected {want} (batch {} × seq {})",
                    self.input.batch, self.input.seq
                )));
            }
        }
        let bad = self
            .loss_mask
            .iter()
            .zip(&self.targets)
            .enumerate()
            .find(|(_, (&m, &t))| m && t as usize >= vocab);
        if let Some((row, (_, &t))) = bad {
            return Err(Error::Data(format!(
                "batch target id {t} of row {row} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
    }

    /// Splits into `parts` batches of consecutive rows (`batch` must be divisible by `parts`).
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        let (b, s) = (self.input.batch, self.input.seq);
        let per = b / parts.max(1);
        (0..parts)
            .map(|p| {
                let rows = p * per..(p + 1) * per;
                Batch {
                    input: GlmInput {
                        batch: per,
                        seq: s,
                        tokens: self.input.tokens[rows.start * s..rows.end * s].to_vec(),
                        position_ids: self.input.position_ids[rows.start * s..rows.end * s]
                            .to_vec(),
                        mask: self.input.mask[rows.start * s * s..rows.end * s * s].to_vec(),
                    },
                    targets: self.targets[rows.start * s..rows.end * s].to_vec(),
                    loss_mask: self.loss_mask[rows.start * s..rows.end * s].to_vec(),
                    dropout_seeds: self.dropout_seeds[rows].to_vec(),
                }
            })
            .collect()
    }

    /// Number of rows carrying loss.
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Number of non-padding tokens.
    pub fn num_tokens(&self, pad_rows_blocked: bool) -> usize {
        let s = self.input.seq;
        if !pad_rows_blocked {
            return self.input.tokens.len();
        }
        // A row is padding iff it cannot see itself.
        (0..self.input.batch * s)
            .filter(|&r| {
                let (b, i) = (r / s, r % s);
                !self.input.mask[b * s * s + i * s + i]
            })
            .count()
    }

    /// Loss rows and targets on `device`.
    pub fn loss_rows<B: Backend>(&self, device: &B::Device) -> LossRows<B> {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (r, (&m, &t)) in self.loss_mask.iter().zip(&self.targets).enumerate() {
            if m {
                rows.push(r as i64);
                targets.push(t as i64);
            }
        }
        let n = rows.len();
        LossRows {
            rows: Tensor::from_data(TensorData::new(rows, [n]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n]), device),
        }
    }
}
