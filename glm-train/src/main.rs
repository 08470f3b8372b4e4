//! `glm-train --config FILE --out DIR [--resume] [--device cpu|wgpu|cuda]`: trains a GLM and
//! writes `DIR/metrics.jsonl`, `DIR/checkpoints/`, `DIR/model.safetensors` and `DIR/config.json`.
//! With `data_parallel = n` in the config, the n replicas run on n CPU workers (`cpu`), on the one
//! wgpu adapter (`wgpu`) or on CUDA devices 0..n (`cuda`).

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use glm_core::device::DeviceKind;
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
    /// Continue from the newest checkpoint in OUT.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Backend: cpu, wgpu or cuda (the last two when built with `--features wgpu` / `cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn run(args: Args) -> glm_train::Result<()> {
    let config = TrainConfig::from_file(&args.config)?;
    let kind: DeviceKind = args.device.parse()?;
    match kind {
        #[cfg(feature = "flex")]
        DeviceKind::Cpu => {
            train::<Autodiff<burn::backend::Flex>>(args, config, &[Default::default()])
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            train::<Autodiff<burn::backend::Wgpu>>(args, config, &[Default::default()])
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let available = glm_core::device::cuda_preflight()?;
            let replicas = config.data_parallel.max(1);
            if replicas > available {
                return Err(glm_train::Error::config(
                    "data_parallel",
                    format!("{replicas} replicas but only {available} CUDA device(s)"),
                ));
            }
            let devices: Vec<_> = (0..replicas)
                .map(|index| burn::backend::cuda::CudaDevice { index })
                .collect();
            train::<Autodiff<burn::backend::Cuda>>(args, config, &devices)
        }
        #[allow(unreachable_patterns)]
        other => Err(other.not_compiled_in().into()),
    }
}

fn train<B: AutodiffBackend>(
    args: Args,
    config: TrainConfig,
    devices: &[B::Device],
) -> glm_train::Result<()> {
    let mut trainer = Trainer::<B>::new_data_parallel(config, &args.out, devices, args.resume)?;
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
    eprintln!(
        "model written to {}",
        args.out.join("model.safetensors").display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glm-train: {e}");
            ExitCode::FAILURE
        }
    }
}
