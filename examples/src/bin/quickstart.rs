//! The laptop quickstart: train a small GLM on the bundled bilingual corpus with the synthetic
//! icetk tokenizer (no download), check how well it fills `[MASK]` blanks in sentences it trained
//! on and in held-out ones, and show a few fills.
//!
//! `cargo run -p glm-examples --bin quickstart [-- OUT_DIR]` from the workspace root; a finished run
//! in OUT_DIR (default: `$TMPDIR/glm-quickstart`) is reloaded instead of retrained. The last line
//! is one JSON object: `{"heldin_exact", "heldout_exact", "val_loss", "train_seconds"}`.

use std::path::PathBuf;

use glm_examples::quickstart::{exact_fraction, fill_items, FillItem, ItemOptions};
use glm_infer::GenerateOptions;

/// Held-in items (one per training document, up to this many).
const HELD_IN: usize = 60;
/// Items per held-out document.
const HELD_OUT_PER_DOC: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("glm-quickstart"));
    let config_path = glm_core::data_dir::workspace_root().join("examples/configs/quickstart.json");
    let config = glm_train::TrainConfig::from_file(&config_path)?;
    println!(
        "training on the bundled corpus ({}), checkpoints in {}",
        config_path.display(),
        out.display()
    );
    let trained = glm_train::quickstart::quickstart(&config_path, &out, true)?;
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
    let model_config = trained.model.config().clone();
    let mut glm = glm_infer::Glm::from_parts(trained.model, Some(trained.tokenizer.clone()));
    if let Some(map) = &trained.vocab_map {
        println!(
            "compact vocabulary: {} of the tokenizer's {} ids",
            map.len(),
            map.outer_vocab_size
        );
        glm = glm.with_vocab_map(map.clone());
    }

    // Blanks cut from documents it trained on and from held-out ones.
    let documents: Vec<Vec<u32>> = (0..trained.documents.len())
        .map(|d| trained.documents.doc(d).to_vec())
        .collect();
    let map = trained.vocab_map.clone();
    let tokenizer = trained.tokenizer;
    let piece = move |id: u32| {
        let outer = match &map {
            Some(m) => m.to_outer(id)?,
            None => id,
        };
        tokenizer.id_to_piece(outer).map(str::to_string)
    };
    // A [MASK] segment of training holds its text, `<sop>` and the span: the same budget here.
    let window = config.objective.window(config.seq_len).saturating_sub(2);
    let mask = model_config.special_tokens.mask;
    let held_in = fill_items(
        &documents,
        &trained.train_docs,
        &ItemOptions {
            window,
            per_document: 1,
            max_items: HELD_IN,
            mask,
            seed: config.seed,
        },
        &piece,
    );
    let held_out = fill_items(
        &documents,
        &trained.validation_docs,
        &ItemOptions {
            window,
            per_document: HELD_OUT_PER_DOC,
            max_items: usize::MAX,
            mask,
            seed: config.seed,
        },
        &piece,
    );
    let (heldin_exact, in_fills) = exact_fraction(glm.model(), &held_in)?;
    let (heldout_exact, out_fills) = exact_fraction(glm.model(), &held_out)?;
    let show = |title: &str, items: &[FillItem], fills: &[Vec<u32>], n: usize| {
        println!("\n{title}");
        for (item, fill) in items.iter().zip(fills).take(n) {
            let mark = if item.answer == *fill { "ok  " } else { "miss" };
            let at = item.context.iter().position(|&t| t == mask);
            let (before, after) = match at {
                Some(at) => (&item.context[..at], &item.context[at + 1..]),
                None => (&item.context[..], &[][..]),
            };
            let context = format!(
                "{} [MASK] {}",
                glm.detokenize(before),
                glm.detokenize(after)
            );
            println!(
                "  {mark} {}\n       fill: {:?}   original: {:?}",
                context.replace('\n', " "),
                glm.detokenize(fill),
                glm.detokenize(&item.answer)
            );
        }
    };
    show(
        "sentences it trained on ([MASK] = the blank):",
        &held_in,
        &in_fills,
        6,
    );
    show("held-out sentences:", &held_out, &out_fills, 4);
    println!(
        "\nexact fills: {}/{} sentences it trained on ({:.0}%), {}/{} held-out ({:.0}%)",
        (heldin_exact * held_in.len() as f64).round(),
        held_in.len(),
        heldin_exact * 100.0,
        (heldout_exact * held_out.len() as f64).round(),
        held_out.len(),
        heldout_exact * 100.0
    );

    // A free continuation of a corpus-style prompt.
    for text in ["The color of snow is[gMASK]", "一加二等于[gMASK]"] {
        let fill = glm.fill(text, &GenerateOptions::greedy(16))?;
        println!("\nprompt : {text}\nanswer : {}", fill.text);
    }

    let line = serde_json::json!({
        "heldin_exact": heldin_exact,
        "heldout_exact": heldout_exact,
        "val_loss": trained.val_loss,
        "train_seconds": (trained.train_seconds * 10.0).round() / 10.0,
    });
    println!("\n{line}");
    Ok(())
}
