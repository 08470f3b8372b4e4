//! `glm-train --config FILE --out DIR [--resume] [--device cpu|wgpu|cuda]`: trains a GLM and
//! writes `DIR/metrics.jsonl`, `DIR/checkpoints/`, `DIR/model.safetensors` and `DIR/config.json`.
//! With `data_parallel = n` in the config, the n replicas run on n CPU workers (`cpu`), on the one
//! wgpu adapter (`wgpu`) or on CUDA devices 0..n (`cuda`). `--nodes N --node-rank R
//! --orchestrator HOST:PORT` (or torchrun-style environment variables) makes this process node R
//! of an N-node job (docs/distributed.md).

// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Parser;
use glm_core::device::{dispatch, DeviceKind, OnBackend};
use glm_core::parallel::nodes::NodeFlags;
use glm_train::{TrainConfig, Trainer};

/// Train or fine-tune a GLM (blank-infilling objective, GLM-130B recipe).
#[derive(Parser, Debug)]
#[command(name = "glm-train", version)]
struct Args {
    /// Training configuration (JSON).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (metrics, checkpoints, final model).
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest valid checkpoint in OUT (an error listing what was found if none
    /// verifies; nothing in OUT is changed then).
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Backend: cpu, wgpu or cuda (the last two when built with `--features wgpu` / `cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Multi-node training (docs/distributed.md): this process is node NODE_RANK of NODES.
    #[command(flatten)]
    nodes: NodeFlags,
}

fn run(args: Args) -> glm_train::Result<()> {
    struct Train(Args, TrainConfig);
    impl OnBackend for Train {
        type Output = ();
        type Error = glm_train::Error;
        fn run<B: Backend>(self, devices: &[B::Device]) -> glm_train::Result<()> {
            train::<Autodiff<B>>(self.0, self.1, devices)
        }
    }
    let config = TrainConfig::from_file(&args.config)?;
    let kind: DeviceKind = args.device.parse()?;
    dispatch(kind, config.data_parallel, Train(args, config))
}

fn train<B: AutodiffBackend>(
    args: Args,
    config: TrainConfig,
    devices: &[B::Device],
) -> glm_train::Result<()> {
    let spec = args.nodes.spec()?;
    let writer = spec.as_ref().is_none_or(|s| s.rank == 0);
    let mut trainer = Trainer::<B>::new_on_nodes(config, &args.out, devices, args.resume, spec)?;
    trainer.progress = !args.quiet;
    let lines = trainer.run()?;
    if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
        eprintln!(
            "steps {}..{}: loss {:.4} -> {:.4}{}",
            first.step,
            last.step,
            first.loss,
            last.loss,
            last.val_loss
                .map(|v| format!(", validation loss {v:.4} (ppl {:.1})", v.exp()))
                .unwrap_or_default()
        );
    }
    if writer {
        eprintln!(
            "model written to {}",
            args.out.join("model.safetensors").display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    glm_core::parallel::nodes::quiet_collective_panics();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glm-train: {e}");
            ExitCode::FAILURE
        }
    }
}
