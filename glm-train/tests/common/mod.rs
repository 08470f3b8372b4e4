//! Helpers shared by the training tests: a learnable pre-tokenized corpus and a tiny config.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use glm_train::config::TrainConfig;
use glm_train::Trainer;
use serde_json::json;

/// A fresh temporary folder for test `name`.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

/// A pre-tokenized corpus with learnable structure: runs of consecutive ids.
pub fn write_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.jsonl");
    let mut lines = String::new();
    for d in 0..60u32 {
        let start = 10 + (d * 37) % 800;
        let len = 20 + (d * 13) % 60;
        let ids: Vec<u32> = (0..len).map(|i| start + (i % 40)).collect();
        lines.push_str(&json!({ "ids": ids }).to_string());
        lines.push('\n');
    }
    std::fs::write(&path, lines).expect("corpus");
    path
}

/// A 2-layer, 64-wide GLM trained for 150 steps of 4 x 32 tokens.
pub fn tiny_config(corpus: &Path) -> TrainConfig {
    let v = json!({
        "model": {
            "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "inner_hidden_size": 128,
            "vocab_size": 1024, "max_sequence_length": 64,
            "special_tokens": {"[MASK]": 1000, "[gMASK]": 1001, "[sMASK]": 1002, "eod": 1003,
                "sop": 1004, "eop": 1005, "ENC": 1006, "dBLOCK": 1007, "eos": 2, "[pad]": 0}
        },
        "data": { "train": [corpus], "validation_fraction": 0.1 },
        "schedule": { "peak_lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 5 },
        "dropout": { "hidden": 0.0, "attention": 0.0 },
        "seq_len": 32, "batch_size": 4, "steps": 150, "seed": 1,
        "validate_every": 50, "validation_batches": 1
    });
    serde_json::from_value(v).expect("config")
}

/// Per-step training losses of `config` written under `dir`, one replica per device.
pub fn losses<B: AutodiffBackend>(
    config: TrainConfig,
    dir: &Path,
    devices: &[B::Device],
) -> Vec<f64> {
    let mut t = Trainer::<B>::new_data_parallel(config, dir, devices, false).expect("trainer");
    t.run().expect("run").iter().map(|l| l.loss).collect()
}
