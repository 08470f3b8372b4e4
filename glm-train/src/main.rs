//! `glm-train --config FILE --out DIR [--resume]`: trains a GLM on the CPU (Flex backend) and
//! writes `DIR/metrics.jsonl`, `DIR/checkpoints/`, `DIR/model.safetensors` and `DIR/config.json`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
}

type Backend = burn::backend::Autodiff<burn::backend::Flex>;

fn run(args: Args) -> glm_train::Result<()> {
    let config = TrainConfig::from_file(&args.config)?;
    let device = Default::default();
    let mut trainer = Trainer::<Backend>::new(config, &args.out, &device, args.resume)?;
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
