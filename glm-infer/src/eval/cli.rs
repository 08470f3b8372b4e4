//! `glm evaluate TASK.yaml|DIR ... --model DIR`: the original `evaluate.py` from the command line,
//! with a progress bar per task (stderr), the original summary on stdout and a JSON report.

use std::io::Write;
use std::path::PathBuf;

use burn::tensor::backend::Backend;

use super::config::TaskConfig;
use super::error::{EvalError, EvalResult};
use super::runner::{evaluate_tasks, load_tasks, EvalOptions, Observer};
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
    let mut console = Console {
        bar: None,
        progress: !args.no_progress,
    };
    // Task files first (as evaluate.py): a bad YAML fails before the model is loaded.
    let tasks = load_tasks(&args.tasks, &mut console)?;
    let options = crate::api::LoadOptions {
        rotary_fp32: args.rotary_fp32,
        offload: args.offload.clone(),
        ..args.load.load_options()?
    };
    let glm = crate::api::Glm::<B>::load_on_devices(&args.load.model, options, devices)?;
    let (model, codec) = (glm.model(), glm.codec());
    let eval_options = EvalOptions {
        data_root: args.data_path.clone(),
        token_losses: args.token_losses,
    };
    let report = match glm.tensor_parallel() {
        None => evaluate_tasks(model, codec, &tasks, &eval_options, &mut console)?,
        Some(group) => group.run(
            |rank0| evaluate_tasks(rank0, codec, &tasks, &eval_options, &mut console),
            |rank| evaluate_tasks(rank, codec, &tasks, &eval_options, &mut Silent).map(drop),
        )?,
    };
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| EvalError::Usage(format!("serializing the report: {e}")))?;
    glm_core::weights::write_atomic(&args.report, &json)?;
    eprintln!("report written to {}", args.report.display());
    Ok(())
}
