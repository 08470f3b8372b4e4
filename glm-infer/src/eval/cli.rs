//! `glm evaluate TASK.yaml|DIR ... --model DIR`: the original `evaluate.py` from the command line,
//! with a progress bar per task (stderr), the original summary on stdout and a JSON report.

use std::io::Write;
use std::path::PathBuf;

use std::sync::Arc;

use burn::tensor::backend::Backend;
use glm_core::parallel::NodeGroup;

use super::config::TaskConfig;
use super::error::{EvalError, EvalResult};
use super::runner::{evaluate_tasks, load_tasks, EvalOptions, Observer};
use super::shard::Sharding;
use crate::cli::DeviceKind;

/// Arguments of `glm evaluate`.
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// Task YAML files, or folders searched recursively for `*.yaml`.
    #[arg(required = true)]
    pub tasks: Vec<PathBuf>,
    /// The model and how to load it (with --tensor-parallel every rank runs the harness; rank 0
    /// reports).
    #[command(flatten)]
    pub load: crate::cli::ModelArgs,
    /// Root of the task data (each task's `path` is relative to it), as evaluate.py's --data-path.
    #[arg(long, default_value = ".")]
    pub data_path: PathBuf,
    /// JSON report file.
    #[arg(long, default_value = "evaluation.json")]
    pub report: PathBuf,
    /// Keep every scored token's loss of `lm` tasks in the report.
    #[arg(long)]
    pub token_losses: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Layer-streamed offload.
    #[command(flatten)]
    pub offload: crate::cli::OffloadFlags,
    /// Exact fp32 rotary tables instead of the original's fp16 ones.
    #[arg(long)]
    pub rotary_fp32: bool,
    /// Multi-node evaluation: every node scores its share of each file, node 0 gathers the
    /// results and writes the report (the one a single process writes).
    #[command(flatten)]
    pub nodes: glm_core::parallel::nodes::NodeFlags,
}

/// The observer of the ranks other than 0: they report nothing.
struct Silent;

impl Observer for Silent {
    fn line(&mut self, _text: &str) {}
}

/// Prints report lines on stdout and draws one progress bar per task on stderr.
struct Console {
    bar: Option<indicatif::ProgressBar>,
    progress: bool,
}

impl Observer for Console {
    fn line(&mut self, text: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn task_started(&mut self, config: &TaskConfig, total: usize) {
        if !self.progress {
            return;
        }
        let bar = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(config.name.clone());
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    fn task_finished(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Runs `glm evaluate`.
pub fn run(args: EvaluateArgs) -> EvalResult<()> {
    struct Evaluate(EvaluateArgs);
    impl crate::cli::OnBackend for Evaluate {
        type Output = ();
        type Error = EvalError;
        fn run<B: Backend>(self, devices: &[B::Device]) -> EvalResult<()> {
            run_on::<B>(&self.0, devices)
        }
    }
    let device: DeviceKind = args.load.device.parse()?;
    let ranks = args.load.tensor_parallel.unwrap_or(1);
    crate::cli::dispatch(device, ranks, Evaluate(args))
}

fn run_on<B: Backend>(args: &EvaluateArgs, devices: &[B::Device]) -> EvalResult<()> {
    let spec = args.nodes.spec()?;
    if spec.is_some() && args.load.tensor_parallel.is_some_and(|n| n > 1) {
        return Err(EvalError::Usage(
            "--nodes and --tensor-parallel cannot be combined yet (one burn-collective server \
             per backend and process)"
                .into(),
        ));
    }
    let writer = spec.as_ref().is_none_or(|s| s.rank == 0);
    let mut console = Console {
        bar: None,
        progress: !args.no_progress && writer,
    };
    let mut silent = Silent;
    let observer: &mut dyn Observer = if writer { &mut console } else { &mut silent };
    // Task files first (as evaluate.py): a bad YAML fails before the model is loaded.
    let tasks = load_tasks(&args.tasks, observer)?;
    let options = crate::api::LoadOptions {
        rotary_fp32: args.rotary_fp32,
        offload: args.offload.clone(),
        ..args.load.load_options()?
    };
    let glm = crate::api::Glm::<B>::load_on_devices(&args.load.model, options, devices)?;
    let (model, codec) = (glm.model(), glm.codec());
    let nodes = match spec {
        Some(spec) => {
            // Every node must run the same tasks on the same data with the same options.
            let agreement = glm_core::parallel::nodes::agreement(
                format!(
                    "{tasks:?}|{}|{}|{}",
                    args.data_path.display(),
                    args.token_losses,
                    args.rotary_fp32
                )
                .as_bytes(),
            );
            let first = devices.first().cloned().unwrap_or_default();
            Some(Arc::new(NodeGroup::<B>::join(spec, &[first], agreement)?))
        }
        None => None,
    };
    let eval_options = EvalOptions {
        data_root: args.data_path.clone(),
        token_losses: args.token_losses,
        sharding: nodes.clone().map(|g| g as Arc<dyn Sharding>),
    };
    let report = match glm.tensor_parallel() {
        None => evaluate_tasks(model, codec, &tasks, &eval_options, observer)?,
        Some(group) => group.run(
            |rank0| evaluate_tasks(rank0, codec, &tasks, &eval_options, observer),
            |rank| evaluate_tasks(rank, codec, &tasks, &eval_options, &mut Silent).map(drop),
        )?,
    };
    if writer {
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| EvalError::Usage(format!("serializing the report: {e}")))?;
        glm_core::weights::write_atomic(&args.report, &json)?;
        eprintln!("report written to {}", args.report.display());
    }
    drop(eval_options);
    if let Some(group) = nodes.and_then(|g| Arc::try_unwrap(g).ok()) {
        group.finish()?;
    }
    Ok(())
}
