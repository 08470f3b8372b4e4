//! The CPU host training step (`glm_train::host`) against burn's autodiff on the same model and
//! batch: loss and every parameter gradient, on odd shapes (3 heads of 6, inner 10, vocabulary
//! 53, rows of different prefix lengths, padding without loss), with and without the embedding
//! shrink. The training golden test (`train_step.rs`) checks the step against the original.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use glm_core::blank::{glm_attention_mask, GlmInput};
use glm_core::{GlmConfig, GlmModel};
use glm_train::batch::Batch;
use glm_train::init::{deepnorm_model, InitConfig};
use glm_train::params::{assign_params, param_grads, param_infos, param_values};
use glm_train::step::{loss_sum, ForwardConfig};
use serde_json::json;

type B = Autodiff<Flex>;

/// A small deterministic generator (xorshift) for the test's inputs.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn config(layers: usize, heads: usize, head_dim: usize, inner: usize, vocab: usize) -> GlmConfig {
    let base = vocab as u64 - 8;
    serde_json::from_value(json!({
        "num_layers": layers, "hidden_size": heads * head_dim, "num_attention_heads": heads,
        "inner_hidden_size": inner, "vocab_size": vocab, "max_sequence_length": 40,
        "special_tokens": {"[MASK]": base, "[gMASK]": base + 1, "[sMASK]": base + 2,
            "eod": base + 3, "sop": base + 4, "eop": base + 5, "ENC": base + 6, "dBLOCK": base + 7,
            "eos": 2, "[pad]": 0}
    }))
    .expect("config")
}

/// A DeepNorm-initialised model with every parameter (LayerNorm γ/β and biases included)
/// perturbed, so no gradient is trivially zero or one.
fn model(config: &GlmConfig, gen: &mut Gen) -> GlmModel<B> {
    let device = Default::default();
    let m =
        deepnorm_model::<B>(config, &InitConfig::default(), 7, DType::F32, &device).expect("model");
    let values: Vec<Tensor<Flex, 1>> = param_values::<B, _>(&m)
        .into_iter()
        .map(|t| {
            let base: Vec<f32> = t.inner().into_data().to_vec().expect("f32");
            let n = base.len();
            let v: Vec<f32> = base.iter().map(|x| x + 0.2 * gen.unit()).collect();
            Tensor::from_data(TensorData::new(v, [n]), &device)
        })
        .collect();
    assign_params::<B, _>(m, &values)
}

/// Rows of `seq` with prefix lengths `prefixes` (Part A bidirectional, then causal), the last
/// `pad` rows of each sequence without loss, random ids and targets.
fn batch(seq: usize, prefixes: &[usize], pad: usize, vocab: usize, gen: &mut Gen) -> Batch {
    let mut input = GlmInput {
        batch: prefixes.len(),
        seq,
        tokens: Vec::new(),
        position_ids: Vec::new(),
        mask: Vec::new(),
    };
    let (mut targets, mut loss_mask) = (Vec::new(), Vec::new());
    for &prefix in prefixes {
        for s in 0..seq {
            input.tokens.push(gen.below(vocab) as u32);
            input.position_ids.push(s.min(prefix) as u32);
            targets.push(gen.below(vocab) as u32);
            loss_mask.push(s >= prefix && s < seq - pad);
        }
        input.mask.extend(glm_attention_mask(seq, prefix));
    }
    Batch {
        input,
        targets,
        loss_mask,
        dropout_seeds: vec![0; prefixes.len()],
    }
}

fn host(t: Tensor<Flex, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

/// Host step and autodiff agree on the loss and on every gradient (each within 2·10⁻⁴ of the
/// largest magnitude of its parameter's gradient, plus 10⁻⁶).
fn compare(config: &GlmConfig, batch: &Batch, shrink: f64, factor: f64, gen: &mut Gen) {
    let model = model(config, gen);
    let forward = ForwardConfig {
        shrink_alpha: shrink,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
    };
    let sum = loss_sum(&model, batch, &forward)
        .expect("batch")
        .expect("targets");
    let loss_ref: f32 = sum.clone().into_scalar();
    let reference = param_grads::<B, _>(&model, &sum.mul_scalar(factor).backward());
    let (loss, grads) =
        glm_train::host::loss_and_grads(&model, batch, factor, &forward).expect("host step");
    let rel = (loss - f64::from(loss_ref)).abs() / f64::from(loss_ref).abs();
    assert!(rel < 1e-5, "loss {loss} against autodiff {loss_ref}");
    let infos = param_infos::<B, _>(&model);
    assert_eq!(grads.len(), infos.len());
    assert_eq!(reference.len(), infos.len());
    for ((info, g), r) in infos.iter().zip(grads).zip(reference) {
        let (g, r) = (host(g), host(r));
        assert_eq!(g.len(), r.len(), "{}", info.name);
        let scale = r.iter().fold(0f32, |a, &x| a.max(x.abs()));
        assert!(scale > 0.0, "{}: autodiff gradient is all zero", info.name);
        for (i, (a, b)) in g.iter().zip(&r).enumerate() {
            assert!(
                (a - b).abs() <= 2e-4 * scale + 1e-6,
                "{}[{i}]: host {a} against autodiff {b} (largest {scale})",
                info.name
            );
        }
    }
}

#[test]
fn host_step_matches_autodiff() {
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    let config = config(3, 3, 6, 10, 53);
    let b = batch(13, &[4, 1, 9], 2, 53, &mut gen);
    compare(&config, &b, 1.0, 0.37, &mut gen);
    compare(&config, &b, 0.25, 1.0, &mut gen);
}

#[test]
fn host_step_matches_autodiff_on_one_row_and_wide_heads() {
    let mut gen = Gen(0x1234_5678_9abc_def1);
    let config = config(1, 2, 16, 36, 101);
    let b = batch(7, &[3], 0, 101, &mut gen);
    compare(&config, &b, 1.0, 1.0, &mut gen);
}

#[test]
fn dropout_and_empty_batches_take_the_generic_path() {
    let mut gen = Gen(42);
    let config = config(1, 2, 4, 8, 29);
    let m = model(&config, &mut gen);
    let mut b = batch(6, &[2, 3], 0, 29, &mut gen);
    let dropout = ForwardConfig {
        shrink_alpha: 1.0,
        hidden_dropout: 0.1,
        attention_dropout: 0.0,
    };
    assert!(glm_train::host::loss_and_grads(&m, &b, 1.0, &dropout).is_none());
    b.loss_mask.iter_mut().for_each(|m| *m = false);
    assert!(glm_train::host::loss_and_grads(&m, &b, 1.0, &ForwardConfig::eval()).is_none());
}
