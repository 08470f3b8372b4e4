//! `glm quantize`: converts a float GLM checkpoint into an INT8 / INT4 one, with a progress bar.
//!
//! ```text
//! cargo run --release -p glm-quant --example quantize -- INPUT OUTPUT \
//!     --quantization-bit-width 4|8 [--tensor-parallel N] [--float-dtype f16|f32]
//! ```
//! `INPUT`: a safetensors file, a folder with `model.safetensors` (+ `config.json`), or an original
//! SAT folder (`latest` + `mp_rank_XX_model_states.pt`, shards merged). `OUTPUT`: a folder that gets
//! `model.safetensors` (quantized linears as `.weight` I8 / packed int4 + `.weight_scale` F16,
//! marker `glm_quant` in the header) and a copy of `config.json`.
//! `--tensor-parallel N` computes the row-parallel scales per shard as the original does when it
//! runs on N GPUs (default: the SAT folder's shard count, else 1). `--float-dtype`: embeddings,
//! biases and LayerNorms (default f16, like the original checkpoints).

use std::process::ExitCode;

use burn::tensor::DType;
use glm_core::quantized::{convert_checkpoint, QuantizeOptions};
use indicatif::{ProgressBar, ProgressStyle};

fn usage() -> ExitCode {
    eprintln!(
        "usage: quantize INPUT OUTPUT --quantization-bit-width 4|8 [--tensor-parallel N] [--float-dtype f16|f32]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut positional = Vec::new();
    let (mut bits, mut tp, mut dtype) = (None, None, DType::F16);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quantization-bit-width" => bits = args.next().and_then(|v| v.parse::<u32>().ok()),
            "--tensor-parallel" => match args.next().and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if n > 0 => tp = Some(n),
                _ => return usage(),
            },
            "--float-dtype" => {
                dtype = match args.next().as_deref() {
                    Some("f16") => DType::F16,
                    Some("f32") => DType::F32,
                    _ => return usage(),
                }
            }
            "-h" | "--help" => return usage(),
            _ => positional.push(a),
        }
    }
    let ([input, output], Some(bits)) = (
        <[String; 2]>::try_from(positional).unwrap_or_default(),
        bits,
    ) else {
        return usage();
    };
    if input.is_empty() {
        return usage();
    }
    let mut options = match QuantizeOptions::from_bits(bits) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    options.tensor_parallel = tp;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tensors {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = convert_checkpoint(&input, &output, options, dtype, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("{:.1} MB  {}", p.bytes as f64 / 1e6, p.tensor));
    });
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!(
                "wrote {} ({} tensors, {} linears quantized to {}, {:.1} MB, tensor-parallel scales {})",
                r.path.display(),
                r.tensors,
                r.quantized,
                options.scheme,
                r.bytes as f64 / 1e6,
                r.tensor_parallel
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
