//! The laptop quickstart: train a small GLM on the bundled bilingual corpus with the synthetic
//! icetk tokenizer (no download), then fill `[MASK]` / `[gMASK]` prompts with it.
//!
//! `cargo run -p glm-examples --bin quickstart [-- OUT_DIR]` from the workspace root; a finished run
//! in OUT_DIR (default: `$TMPDIR/glm-quickstart`) is reloaded instead of retrained.

use std::path::PathBuf;

use glm_infer::GenerateOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("glm-quickstart"));
    let config = glm_core::data_dir::workspace_root().join("examples/configs/quickstart.json");
    println!(
        "training on the bundled corpus ({}), checkpoints in {}",
        config.display(),
        out.display()
    );
    let trained = glm_train::quickstart::quickstart(&config, &out, true)?;
    if let (Some(first), Some(last)) = (trained.metrics.first(), trained.metrics.last()) {
        println!(
            "loss {:.3} -> {:.3} over {} steps",
            first.loss,
            last.loss,
            trained.metrics.len()
        );
    }
    let plot = out.join(glm_train::plot::PLOT_FILE);
    if plot.is_file() {
        println!(
            "training plot (loss, learning rate, gradient norm): {}",
            plot.display()
        );
    }
    let glm = glm_infer::Glm::from_parts(trained.model, Some(trained.tokenizer));
    let prompts = [
        "The river runs to the [MASK] and the birds sing.",
        "The weather today is",
        "我们今天去[MASK]看看。",
        "学习是一件[gMASK]",
    ];
    for text in prompts {
        let out = glm.fill(text, &GenerateOptions::greedy(16))?;
        println!(
            "\nprompt : {text}\nanswer : {}\nblanks : {:?}",
            out.text, out.blanks
        );
    }
    Ok(())
}
