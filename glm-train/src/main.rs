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
use glm_core::parallel::NodeSpec;
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
    /// Number of nodes (processes, usually one per machine) of a multi-node job
    /// (docs/distributed.md); default: `GLM_NNODES` / `NNODES`, else a single-process run.
    #[arg(long)]
    nodes: Option<u32>,
    /// This node's rank, 0..NODES (default: `GLM_NODE_RANK` / `NODE_RANK`). Node 0 hosts the
    /// orchestrator and writes the run's files.
    #[arg(long)]
    node_rank: Option<u32>,
    /// HOST:PORT of the orchestrator, i.e. of node 0 (default: `GLM_ORCHESTRATOR`, or
    /// `MASTER_ADDR:MASTER_PORT`).
    #[arg(long)]
    orchestrator: Option<String>,
    /// The address the other nodes reach this node at (default: `GLM_NODE_HOST`, else the
    /// interface that routes to the orchestrator).
    #[arg(long)]
    node_host: Option<String>,
    /// Port of this node's tensor data service (default: `GLM_NODE_PORT`, else a free port).
    #[arg(long)]
    node_port: Option<u16>,
    /// Seconds a collective waits for the other nodes before the job is declared stuck
    /// (default: `GLM_COLLECTIVE_TIMEOUT`, else 600). A node that dies is reported at once.
    #[arg(long)]
    collective_timeout: Option<f64>,
}

impl Args {
    /// The multi-node job of the flags and the environment (`None`: a single process).
    fn node_spec(&self) -> glm_train::Result<Option<NodeSpec>> {
        Ok(NodeSpec::from_flags(
            self.nodes,
            self.node_rank,
            self.orchestrator.clone(),
            self.node_host.clone(),
            self.node_port,
            self.collective_timeout,
        )?)
    }
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
    let spec = args.node_spec()?;
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
