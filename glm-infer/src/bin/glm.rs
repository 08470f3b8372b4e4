//! `glm`: GLM-130B from the command line (mirrors GLM-130B's generate.py flags).
//!
//! ```text
//! glm generate --model DIR [--tokenizer ice_text.model] --input-source interactive|FILE ...
//! glm quantize INPUT OUTPUT --quantization-bit-width 4|8 [--tensor-parallel N]
//! glm serve --model DIR [--tokenizer ice_text.model] [--host 127.0.0.1] [--port 8000] ...
//! glm convert INPUT OUTPUT [--format sat|safetensors] [--tensor-parallel N]
//!             [--quantization-bit-width 4|8] [--dtype f16] [--iteration IT]
//! glm init-random --out DIR [--preset tiny|small|base|glm-130b] [--layers K] [--vocab-size N]
//!                 [--quantization-bit-width 4|8] [--tensor-parallel N] [--dtype f16] [--seed S]
//! glm evaluate TASK.yaml|DIR ... --model DIR [--data-path ROOT] [--report FILE]
//! glm plan [--preset glm-130b | --config config.json] --device-memory 24GiB [--tensor-parallel N]
//!          [--quantization-bit-width 4|8] [--dtype f16] [--batch B] [--sequence-length S] [--offload] [--json]
//! ```
//!
//! (Over 400 lines: the `glm` command line: six subcommands' flags and their glue; the work is in the library.)

// No unwrap/expect outside tests: bad input is a typed error (docs/robustness.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use glm_core::parallel::TensorParallel;
use glm_core::{GlmConfig, GlmModel, SpecialTokens};
use glm_infer::cli::{load_config, Codec};
use glm_infer::{
    build_prompt, fill_blanks, BaseStrategy, BeamConfig, BeamSearchStrategy, Error, Glm,
    LoadOptions, Result, SamplingConfig, Strategy, TextCodec, TokenStream,
};

#[derive(Parser)]
#[command(
    name = "glm",
    version,
    about = "GLM-130B in Rust: blank filling and generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill `[MASK]` / `[sMASK]` / `[gMASK]` blanks (generate.py).
    Generate(GenerateArgs),
    /// Write a randomly initialised model folder (config.json + model.safetensors).
    InitRandom(InitArgs),
    /// Convert a float checkpoint into an INT8 / INT4 one (GLM-130B's scheme, bit-exact).
    Quantize(QuantizeArgs),
    /// Convert between an original SAT folder and safetensors, and between tensor-parallel
    /// degrees (GLM-130B's tools/convert_tp.py, bit-exact), optionally quantizing per shard.
    Convert(ConvertArgs),
    /// An OpenAI-compatible HTTP server with continuous batching and a blank-filling page.
    Serve(ServeArgs),
    /// Run GLM-130B evaluation tasks (task YAMLs / folders) against a model (evaluate.py).
    Evaluate(glm_infer::eval::cli::EvaluateArgs),
    /// Plan memory: what a model needs per device (weights by kind, KV cache, activations) and
    /// whether it fits.
    Plan(PlanArgs),
}

#[derive(clap::Args, Clone)]
struct GenerateArgs {
    // The model and how to load it.
    #[command(flatten)]
    load: glm_infer::cli::ModelArgs,
    /// `interactive` or a file with one prompt per line.
    #[arg(long, default_value = "interactive")]
    input_source: String,
    /// Folder for the answers (one file per prompt).
    #[arg(long, default_value = "samples")]
    output_path: PathBuf,
    /// Maximum total length (context + generated) of each blank.
    #[arg(long, default_value_t = 256)]
    out_seq_length: usize,
    /// Beam search: end tokens are banned until this many tokens.
    #[arg(long, default_value_t = 0)]
    min_gen_length: usize,
    /// BaseStrategy (sampling, greedy with --top-k 1) or BeamSearchStrategy.
    #[arg(long, default_value = "BaseStrategy")]
    sampling_strategy: String,
    #[arg(long, default_value_t = 4)]
    num_beams: usize,
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    #[arg(long, default_value_t = 3)]
    no_repeat_ngram_size: usize,
    /// Print every beam, not only the best.
    #[arg(long)]
    print_all_beams: bool,
    /// Beam search: take the top candidates instead of sampling them (the evaluation behaviour).
    #[arg(long)]
    deterministic: bool,
    #[arg(long = "top-k", alias = "top_k", default_value_t = 0)]
    top_k: usize,
    #[arg(long = "top-p", alias = "top_p", default_value_t = 0.7)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Input lines are `id<TAB>text`; answers go to `<id>.txt`.
    #[arg(long)]
    with_id: bool,
    /// Print to stderr, per prompt, the time to the first generated token (prefill) and the
    /// seconds per token after it (with several blanks, the later blanks' prefills count in it).
    #[arg(long)]
    timing: bool,
    /// Layer-streamed offload.
    #[command(flatten)]
    offload: glm_infer::cli::OffloadFlags,
    /// Exact fp32 rotary tables instead of the original's fp16 ones.
    #[arg(long)]
    rotary_fp32: bool,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// A safetensors file, a folder with model.safetensors (+ config.json), or an original SAT folder.
    input: PathBuf,
    /// Output folder (gets model.safetensors with the glm_quant marker and a copy of config.json).
    output: PathBuf,
    /// 4 or 8.
    #[arg(long)]
    quantization_bit_width: u32,
    /// Tensor-parallel degree of the row-parallel scales (default: the SAT folder's shard count, else 1).
    #[arg(long)]
    tensor_parallel: Option<usize>,
    /// dtype of embeddings, biases and LayerNorms: f16 (like the original checkpoints) or f32.
    #[arg(long, default_value = "f16")]
    float_dtype: String,
}

#[derive(clap::Args)]
struct ServeArgs {
    // The model and how to load it (with --tensor-parallel the engine's every forward runs on
    // all ranks).
    #[command(flatten)]
    load: glm_infer::cli::ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients send.
    #[arg(long, default_value = "glm")]
    model_name: String,
    /// Most sequences decoded together (continuous batching; a beam request counts its beams).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most requests waiting (beyond: 429 with Retry-After).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    #[arg(long, default_value_t = 1024)]
    max_prompt_tokens: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    max_blanks: usize,
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a request may take (0: no limit).
    #[arg(long, default_value_t = 300)]
    request_timeout: u64,
    /// Seconds in-flight requests get after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// A safetensors file, a folder with model.safetensors (+ config.json), or an original SAT folder.
    input: PathBuf,
    /// Output folder: `latest` + `<iteration>/mp_rank_XX_model_states.pt` (sat) or
    /// model.safetensors (safetensors), plus config.json.
    output: PathBuf,
    /// sat or safetensors.
    #[arg(long, default_value = "sat")]
    format: String,
    /// sat: the number of ranks to split into (default: the input's degree, 1 for safetensors);
    /// safetensors with --quantization-bit-width: the degree of the per-shard scales.
    #[arg(long)]
    tensor_parallel: Option<usize>,
    /// Quantize the four linears of every layer per shard (4 or 8); a quantized input keeps its
    /// scheme.
    #[arg(long)]
    quantization_bit_width: Option<u32>,
    /// dtype of the float tensors: f16 (the original checkpoints), bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// sat: the iteration folder named by `latest` (default: the input's, else `release`).
    #[arg(long)]
    iteration: Option<String>,
    /// config.json of an input folder that has none.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InitArgs {
    /// Output folder (gets config.json + model.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// tiny, small, base, or glm-130b (hidden 12288, 96 heads, inner 32768, vocab 150528).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// A config.json to draw instead of a preset (e.g. a shared/bench config).
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Override the number of layers (e.g. a 2-layer full-width GLM-130B slice).
    #[arg(long)]
    layers: Option<usize>,
    /// Override the vocabulary size (e.g. 150528 to match an icetk tokenizer).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Use GLM-130B's special ids (150000.., eos 20002).
    #[arg(long)]
    glm130b_specials: bool,
    /// Write the four linears of every layer as INT4 / INT8 (GLM-130B's scheme) instead of float.
    #[arg(long)]
    quantization_bit_width: Option<u32>,
    /// Tensor-parallel degree the row-parallel INT scales are computed for.
    #[arg(long)]
    tensor_parallel: Option<usize>,
    /// dtype of the float tensors: f32, f16 or bf16 (default: f16 for glm-130b, else f32).
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    glm_core::parallel::nodes::quiet_collective_panics();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::InitRandom(args) => init_random(args),
        Command::Plan(args) => plan(args),
        Command::Quantize(args) => quantize(args),
        Command::Convert(args) => convert(args),
        Command::Serve(args) => serve(args),
        Command::Evaluate(args) => glm_infer::eval::cli::run(args).map_err(Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A progress bar over the tensors of a streamed checkpoint write.
fn tensor_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tensors {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn show_progress(bar: &indicatif::ProgressBar, p: &glm_core::quantized::ConvertProgress<'_>) {
    bar.set_length(p.total as u64);
    bar.set_position(p.done as u64);
    bar.set_message(p.tensor.to_string());
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    let quant =
        glm_infer::cli::quantize_options(Some(args.quantization_bit_width), args.tensor_parallel)?
            .ok_or_else(|| Error::Usage("--quantization-bit-width is required".into()))?;
    let float_dtype = glm_infer::cli::parse_dtype(&args.float_dtype)?;
    let bar = tensor_bar();
    let report = glm_core::quantized::convert_checkpoint(
        &args.input,
        &args.output,
        quant,
        float_dtype,
        &mut |p| show_progress(&bar, p),
    );
    bar.finish_and_clear();
    let report = report?;
    println!(
        "wrote {} ({} tensors, {} linears quantized)",
        report.path.display(),
        report.tensors,
        report.quantized
    );
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    struct Serve(ServeArgs);
    impl glm_infer::cli::OnBackend for Serve {
        type Output = ();
        type Error = Error;
        fn run<B: Backend>(self, devices: &[B::Device]) -> Result<()> {
            let args = self.0;
            let options = args.load.load_options()?;
            let glm = Glm::<B>::load_on_devices(&args.load.model, options, devices)?;
            let addr: std::net::SocketAddr = format!("{}:{}", args.host, args.port)
                .parse()
                .map_err(|e| {
                    Error::Usage(format!("--host {} --port {}: {e}", args.host, args.port))
                })?;
            let options = glm_infer::serve::ServeOptions {
                addr,
                model_name: args.model_name,
                max_batch_rows: args.max_batch,
                queue_capacity: args.max_queue,
                max_prompt_tokens: args.max_prompt_tokens,
                max_new_tokens: args.max_new_tokens,
                max_blanks: args.max_blanks,
                max_body_bytes: args.max_body_bytes,
                request_timeout: (args.request_timeout > 0)
                    .then(|| std::time::Duration::from_secs(args.request_timeout)),
                shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
            };
            glm_infer::serve::serve(glm, options)
        }
    }
    let ranks = args.load.tensor_parallel.unwrap_or(1);
    glm_infer::cli::dispatch(args.load.device.parse()?, ranks, Serve(args))
}

fn convert(args: ConvertArgs) -> Result<()> {
    let input_dir = if args.input.is_dir() {
        args.input.clone()
    } else {
        args.input
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    };
    let config = load_config(&input_dir, args.config.as_deref())?;
    let source = glm_core::quantized::open_checkpoint(&args.input)?;
    let float_dtype = glm_infer::cli::parse_dtype(&args.dtype)?;
    std::fs::create_dir_all(&args.output).map_err(|e| Error::Io {
        path: args.output.clone(),
        source: e,
    })?;
    let canonical = |p: &std::path::Path| {
        std::fs::canonicalize(p).map_err(|e| Error::Io {
            path: p.to_path_buf(),
            source: e,
        })
    };
    if canonical(&input_dir)? == canonical(&args.output)? {
        return Err(Error::Usage(format!(
            "{}: the output folder is the input's folder; converting in place would replace the \
             checkpoint, choose another output folder",
            args.output.display()
        )));
    }
    let bar = tensor_bar();
    let scheme = args
        .quantization_bit_width
        .map(glm_core::quantized::QuantScheme::from_bits)
        .transpose()
        .map_err(|e| Error::Usage(format!("--quantization-bit-width: {e}")))?;
    let summary = match args.format.as_str() {
        "sat" => {
            let source_tp = glm_core::weights::SatCheckpoint::open(&args.input)
                .map(|c| c.tensor_parallel())
                .unwrap_or(1);
            let options = glm_core::weights::tp_convert::SatWriteOptions {
                tensor_parallel: args.tensor_parallel.unwrap_or(source_tp),
                quantization: scheme,
                float_dtype,
                iteration: args.iteration.clone(),
            };
            let report = glm_core::weights::tp_convert::write_sat_checkpoint(
                source.as_ref(),
                &config,
                &args.output,
                &options,
                &mut |p| {
                    bar.set_length(p.total as u64);
                    bar.set_position(p.done as u64);
                    bar.set_message(format!("rank {} {}", p.rank, p.tensor));
                },
            );
            bar.finish_and_clear();
            let report = report?;
            format!(
                "{} shards of {} tensors, {:.2} GB",
                report.shards.len(),
                report.tensors,
                report.bytes as f64 / 1e9
            )
        }
        "safetensors" => {
            let quant = glm_infer::cli::quantize_options(
                args.quantization_bit_width,
                args.tensor_parallel,
            )?;
            let report = glm_core::weights::convert::stream_safetensors(
                source.as_ref(),
                &args.output.join("model.safetensors"),
                quant,
                float_dtype,
                &mut |p| show_progress(&bar, p),
            );
            bar.finish_and_clear();
            let report = report?;
            format!(
                "{} tensors, {} linears quantized, {:.2} GB",
                report.tensors,
                report.quantized,
                report.bytes as f64 / 1e9
            )
        }
        other => {
            return Err(Error::Usage(format!(
                "--format {other}: expected sat or safetensors"
            )))
        }
    };
    config.save(args.output.join("config.json"))?;
    println!("wrote {} ({summary})", args.output.display());
    Ok(())
}

#[derive(clap::Args, Clone)]
struct PlanArgs {
    /// tiny, small, base or glm-130b (or --config).
    #[arg(long, default_value = "glm-130b")]
    preset: String,
    /// A config.json instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// f32, f16 or bf16: float weights, activations and KV cache.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// 4 or 8: INT4 / INT8 linears.
    #[arg(long)]
    quantization_bit_width: Option<u32>,
    /// Devices the model is split over.
    #[arg(long, default_value_t = 1)]
    tensor_parallel: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens per sequence (prompt + generated).
    #[arg(long, default_value_t = 2048)]
    sequence_length: usize,
    /// Memory of a device (e.g. 24GiB, 40GB); repeat once per device, or give one for all.
    #[arg(long, required = true)]
    device_memory: Vec<String>,
    /// Layer-streamed offload: layers stay in host memory, as many as fit are resident.
    #[arg(long)]
    offload: bool,
    /// Keep the whole word embedding on every rank instead of splitting it by vocabulary.
    #[arg(long)]
    replicated_embedding: bool,
    /// Fixed allowance per device for the backend (context, library workspaces, runtime).
    #[arg(long, default_value = "512MiB")]
    workspace: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn plan(args: PlanArgs) -> Result<()> {
    use glm_core::plan::{gib, parse_bytes, EmbeddingLayout, LinearFormat, PlanRequest};
    let mut config = match &args.config {
        Some(path) => GlmConfig::from_file(path)?,
        None => preset(&args.preset)?,
    };
    if let Some(layers) = args.layers {
        config.num_layers = layers;
    }
    let dtype = glm_infer::cli::parse_dtype(&args.dtype)?;
    let linears = match args.quantization_bit_width {
        None => LinearFormat::Float,
        Some(8) => LinearFormat::Int8,
        Some(4) => LinearFormat::Int4,
        Some(b) => {
            return Err(Error::Usage(format!(
                "--quantization-bit-width {b}: expected 4 or 8"
            )))
        }
    };
    let usage = |flag: &str, e: glm_core::Error| Error::Usage(format!("{flag}: {e}"));
    let device_memory = args
        .device_memory
        .iter()
        .map(|m| parse_bytes(m).map_err(|e| usage("--device-memory", e)))
        .collect::<Result<Vec<u64>>>()?;
    let request = PlanRequest {
        config,
        dtype_bytes: dtype.size() as u64,
        linears,
        tensor_parallel: args.tensor_parallel,
        batch: args.batch,
        sequence_length: args.sequence_length,
        device_memory,
        offload: args.offload,
        embedding: if args.replicated_embedding {
            EmbeddingLayout::Replicated
        } else {
            EmbeddingLayout::VocabParallel
        },
        workspace: parse_bytes(&args.workspace).map_err(|e| usage("--workspace", e))?,
    };
    let p = glm_core::plan::plan(&request).map_err(|e| Error::Usage(e.to_string()))?;
    if args.json {
        let text = serde_json::to_string_pretty(&p)
            .map_err(|e| Error::Usage(format!("cannot encode the plan: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "{} layers, {:?} linears, {} per float, tensor parallel {}, batch {} x {} tokens, embedding {}{}",
        request.config.num_layers,
        p.linears,
        args.dtype,
        p.tensor_parallel,
        p.batch,
        p.sequence_length,
        match p.embedding {
            EmbeddingLayout::VocabParallel => "vocab-parallel",
            EmbeddingLayout::Replicated => "replicated",
        },
        if p.offload { ", offload" } else { "" }
    );
    println!(
        "{:>4} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}  verdict",
        "rank",
        "linears",
        "embedding",
        "norms+bias",
        "scales",
        "kv cache",
        "act prefill",
        "act decode",
        "workspace",
        "total"
    );
    for d in &p.devices {
        let w = &d.weights;
        let verdict = if d.fits {
            format!("fits ({} free)", gib(d.margin.max(0) as u64))
        } else {
            format!("DOES NOT FIT (short {})", gib((-d.margin).max(0) as u64))
        };
        println!(
            "{:>4} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}  {verdict} of {}{}",
            d.rank,
            gib(w.linears),
            gib(w.embedding),
            gib(w.norms_biases),
            gib(w.scales),
            gib(d.kv_cache),
            gib(d.activation_prefill),
            gib(d.activation_decode),
            gib(d.workspace),
            gib(d.total),
            gib(d.device_memory),
            if p.offload {
                format!(", {} of {} layers resident", d.resident_layers, request.config.num_layers)
            } else {
                String::new()
            }
        );
    }
    println!(
        "{}: largest batch at {} tokens = {}, longest sequence at batch {} = {}",
        if p.fits { "FITS" } else { "DOES NOT FIT" },
        p.sequence_length,
        p.max_batch,
        p.batch,
        p.max_sequence_length
    );
    Ok(())
}

fn preset(name: &str) -> Result<GlmConfig> {
    Ok(match name {
        "tiny" => GlmConfig::tiny(),
        "small" => GlmConfig::small(),
        "base" => GlmConfig::base(),
        "glm-130b" | "glm130b" => GlmConfig::glm_130b(),
        other => {
            return Err(Error::Usage(format!(
                "unknown preset `{other}` (tiny, small, base, glm-130b)"
            )))
        }
    })
}

fn init_random(args: InitArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => GlmConfig::from_file(path)?,
        None => preset(&args.preset)?,
    };
    if args.glm130b_specials {
        config.special_tokens = SpecialTokens::glm_130b();
    }
    if let Some(v) = args.vocab_size {
        config.vocab_size = v;
    }
    if let Some(layers) = args.layers {
        config.num_layers = layers;
    }
    check_init_config(&config, args.vocab_size.is_some())?;
    let quant =
        glm_infer::cli::quantize_options(args.quantization_bit_width, args.tensor_parallel)?;
    let default_dtype = if config.hidden_size >= 12288 {
        "f16"
    } else {
        "f32"
    };
    let float_dtype = glm_infer::cli::parse_dtype(args.dtype.as_deref().unwrap_or(default_dtype))?;
    let source = glm_core::weights::RandomSource::new(&config, args.seed)?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::Io {
        path: args.out.clone(),
        source: e,
    })?;
    // The config goes last: a folder with a config always has its model next to it.
    let config_path = args.out.join("config.json");
    match std::fs::remove_file(&config_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: config_path,
                source: e,
            })
        }
        _ => {}
    }
    let bar = tensor_bar();
    let report = glm_core::quantized::stream_safetensors(
        &source,
        &args.out.join("model.safetensors"),
        quant,
        float_dtype,
        &mut |p| show_progress(&bar, p),
    );
    bar.finish_and_clear();
    let report = report?;
    config.save(&config_path)?;
    println!(
        "wrote {} ({} parameters, {} tensors, {} linears quantized, {:.2} GB)",
        args.out.display(),
        config.num_parameters(),
        report.tensors,
        report.quantized,
        report.bytes as f64 / 1e9
    );
    Ok(())
}

/// Everything `init-random` checks before it creates a folder or allocates a tensor: the config
/// within glm-core's limits (an absurd `--vocab-size` is refused here, not by the allocator) and
/// every special-token id inside the vocabulary.
fn check_init_config(config: &GlmConfig, vocab_from_flag: bool) -> Result<()> {
    let flag = |e: String| {
        if vocab_from_flag {
            Error::Usage(format!("--vocab-size {}: {e}", config.vocab_size))
        } else {
            Error::Usage(e)
        }
    };
    config.validate().map_err(|e| flag(e.to_string()))?;
    let s = &config.special_tokens;
    let specials = [
        ("[MASK]", s.mask),
        ("[gMASK]", s.gmask),
        ("[sMASK]", s.smask),
        ("eod", s.eod),
        ("sop", s.sop),
        ("eop", s.eop),
        ("ENC", s.enc),
        ("dBLOCK", s.dblock),
        ("eos", s.eos),
        ("pad", s.pad),
    ];
    if let Some((name, id)) = specials
        .iter()
        .find(|(_, id)| *id as usize >= config.vocab_size)
    {
        return Err(flag(format!(
            "the special token {name} (id {id}) is outside a vocabulary of {} ids",
            config.vocab_size
        )));
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    struct Generate(GenerateArgs);
    impl glm_infer::cli::OnBackend for Generate {
        type Output = ();
        type Error = Error;
        fn run<B: Backend>(self, devices: &[B::Device]) -> Result<()> {
            run::<B>(&self.0, devices)
        }
    }
    let ranks = args.load.tensor_parallel.unwrap_or(1);
    glm_infer::cli::dispatch(args.load.device.parse()?, ranks, Generate(args))
}

fn make_strategy(args: &GenerateArgs, end_tokens: Vec<u32>) -> Result<Box<dyn Strategy>> {
    match args.sampling_strategy.as_str() {
        "BaseStrategy" => Ok(Box::new(BaseStrategy::new(SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            invalid_tokens: vec![],
            end_tokens,
            seed: args.seed,
        })?)),
        "BeamSearchStrategy" => Ok(Box::new(BeamSearchStrategy::new(BeamConfig {
            num_beams: args.num_beams,
            length_penalty: args.length_penalty,
            consider_end: true,
            end_tokens,
            invalid_tokens: vec![],
            no_repeat_ngram_size: args.no_repeat_ngram_size,
            min_gen_length: args.min_gen_length,
            deterministic: args.deterministic,
            seed: args.seed,
        })?)),
        other => Err(Error::Usage(format!(
            "unknown strategy {other} (BaseStrategy, BeamSearchStrategy)"
        ))),
    }
}

fn run<B: Backend>(args: &GenerateArgs, devices: &[B::Device]) -> Result<()> {
    let config = load_config(&args.load.model, args.load.config.as_deref())?;
    // `Glm::load_on` checks the tokenizer and the quantization flags before any weight is read.
    let options = LoadOptions {
        rotary_fp32: args.rotary_fp32,
        offload: args.offload.clone(),
        sequence_length: Some(args.out_seq_length),
        ..args.load.load_options()?
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "loading {} ({} parameters)",
        args.load.model.display(),
        config.num_parameters()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let glm = Glm::<B>::load_on_devices(&args.load.model, options, devices);
    spinner.finish_and_clear();
    let glm = glm?;
    let codec = glm.codec();
    let engine = Engine {
        model: glm.model(),
        group: glm.tensor_parallel(),
    };
    if args.out_seq_length > config.max_sequence_length {
        return Err(Error::Usage(format!(
            "--out-seq-length {} exceeds the model's max_sequence_length {}",
            args.out_seq_length, config.max_sequence_length
        )));
    }
    let mut strategy = make_strategy(args, config.special_tokens.end_tokens().to_vec())?;
    // Under tensor parallelism every other rank keeps its own strategy across the inputs, built
    // alike, so that its random state follows rank 0's.
    let followers = (1..engine.group.map_or(1, |g| g.world()))
        .map(|_| make_strategy(args, config.special_tokens.end_tokens().to_vec()).map(Mutex::new))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.output_path).map_err(|e| Error::Io {
        path: args.output_path.clone(),
        source: e,
    })?;

    if args.input_source == "interactive" {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let mut n = 0;
        loop {
            print!("Please Input Query (stop to exit) >>> ");
            let _ = std::io::stdout().flush();
            let Some(line) = lines.next() else {
                println!();
                break;
            };
            let line = line.map_err(|e| Error::Io {
                path: "<stdin>".into(),
                source: e,
            })?;
            let line = line.trim_end_matches(['\r', '\n']);
            if line == "stop" {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let strategies = Strategies {
                lead: strategy.as_mut(),
                followers: &followers,
            };
            if let Err(e) = process(args, &engine, codec, strategies, line, n, true) {
                eprintln!("error: {e}");
            }
            n += 1;
        }
    } else {
        let path = PathBuf::from(&args.input_source);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let strategies = Strategies {
                lead: strategy.as_mut(),
                followers: &followers,
            };
            process(args, &engine, codec, strategies, line, n, false)?;
        }
    }
    Ok(())
}

/// The model `glm generate` runs: on one device, or a tensor-parallel group (`model` is then rank
/// 0's shard).
struct Engine<'a, B: Backend> {
    model: &'a GlmModel<B>,
    group: Option<&'a TensorParallel<B>>,
}

/// The strategy of rank 0 and those of the other ranks (none on one device).
struct Strategies<'a> {
    lead: &'a mut dyn Strategy,
    followers: &'a [Mutex<Box<dyn Strategy>>],
}

impl<B: Backend> Engine<'_, B> {
    /// `fill_blanks` on the model, or on every rank of the group.
    fn fill(
        &self,
        prompt: &glm_infer::Prompt,
        strategies: Strategies<'_>,
        out_seq_length: usize,
        on_step: &mut glm_infer::generate::StepCallback<'_>,
    ) -> Result<glm_infer::FillResult> {
        let Strategies { lead, followers } = strategies;
        match self.group {
            None => fill_blanks(self.model, prompt, lead, out_seq_length, on_step),
            Some(group) => glm_infer::fill::fill_blanks_parallel(
                group,
                prompt,
                lead,
                followers,
                out_seq_length,
                on_step,
            ),
        }
    }
}

fn process<B: Backend>(
    args: &GenerateArgs,
    engine: &Engine<'_, B>,
    codec: &Codec,
    strategies: Strategies<'_>,
    line: &str,
    n: usize,
    stream: bool,
) -> Result<()> {
    let (id, raw) = if args.with_id {
        let (id, raw) = line.split_once('\t').ok_or_else(|| {
            Error::Usage(format!("--with-id: line {} has no TAB: {line:?}", n + 1))
        })?;
        (Some(id.to_string()), raw)
    } else {
        (None, line)
    };
    let config = engine.model.config();
    let prompt = build_prompt(
        raw,
        codec,
        &config.special_tokens,
        config.max_sequence_length,
    )?;
    println!("\nInput: {}", prompt.raw_text);
    let end_tokens = strategies.lead.end_tokens().to_vec();
    let streaming = stream && args.sampling_strategy == "BaseStrategy";
    // Step times for --timing: one per decoding step (the first includes the prefill).
    let start = std::time::Instant::now();
    let mut steps: Vec<std::time::Duration> = Vec::new();
    let result = match (streaming, codec.tokenizer()) {
        (true, Some(_)) => {
            // Stream the blank being filled as its tokens arrive.
            let mut streamer: Option<(usize, TokenStream)> = None;
            let mut out = std::io::stdout();
            let r = engine.fill(&prompt, strategies, args.out_seq_length, &mut |rows| {
                steps.push(start.elapsed());
                let Some(row) = rows.first() else {
                    return;
                };
                let ctx = row
                    .iter()
                    .take_while(|&&t| t != config.special_tokens.sop as i64)
                    .count()
                    + 1;
                let s = match &mut streamer {
                    Some((c, s)) if *c == ctx => s,
                    _ => match TokenStream::for_codec(codec, ctx, end_tokens.clone()) {
                        Some(s) => {
                            print!("\n[blank] ");
                            &mut streamer.insert((ctx, s)).1
                        }
                        None => return,
                    },
                };
                print!("{}", s.push_rows(rows));
                let _ = out.flush();
            });
            if let Some((_, mut s)) = streamer {
                println!("{}", s.finish());
            }
            r?
        }
        _ => engine.fill(&prompt, strategies, args.out_seq_length, &mut |_| {
            steps.push(start.elapsed())
        })?,
    };
    if args.timing {
        if let Some((first, last)) = steps.first().zip(steps.last()) {
            let rest = steps.len() - 1;
            let per_token = if rest > 0 {
                format!(
                    ", then {:.6} s/token over {rest} tokens",
                    (*last - *first).as_secs_f64() / rest as f64
                )
            } else {
                String::new()
            };
            eprintln!(
                "timing: first token after {:.6} s (prefill){per_token}",
                first.as_secs_f64()
            );
        }
    }
    let answers: Vec<String> = result
        .sequences
        .iter()
        .map(|s| codec.detokenize(s))
        .collect();
    if args.print_all_beams && answers.len() > 1 {
        for (i, a) in answers.iter().enumerate() {
            println!("Output beam {i}: {a}");
        }
    } else if let Some(a) = answers.first() {
        println!("Output: {a}");
    }
    let name = match id {
        Some(id) => format!("{}.txt", sanitize(&id)),
        None => format!(
            "{:04}-{}.txt",
            n,
            sanitize(&raw.chars().take(20).collect::<String>())
        ),
    };
    let mut body = answers.join("\n");
    body.push('\n');
    glm_core::weights::write_atomic(&args.output_path.join(name), body.as_bytes())?;
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
