//! Fill blanks with the golden fixture model: greedy, then 4-beam search, on the CPU backend.

use burn::backend::Flex;
use glm_core::weights::SafetensorsFile;
use glm_core::{GlmConfig, GlmModel, ModelOptions};
use glm_infer::{
    build_prompt, fill_blanks, BaseStrategy, BeamConfig, BeamSearchStrategy, IdCodec,
    SamplingConfig, TextCodec,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = glm_examples::fixture_dir()?;
    let config = GlmConfig::from_file(dir.join("config.json"))?;
    let weights = SafetensorsFile::open(dir.join("model.safetensors"))?;
    let model = GlmModel::<Flex>::from_source(
        &config,
        &weights,
        &Default::default(),
        ModelOptions::default(),
    )?;
    let s = config.special_tokens;
    for text in [
        "585 293 517 710 791 149 356 721 701 231",
        "89 423 699 113 509 [MASK] 308 300 324 588 785 932",
    ] {
        let prompt = build_prompt(text, &IdCodec, &s, config.max_sequence_length)?;
        let budget = prompt.tokens.len() + 1 + 12;
        let mut greedy = BaseStrategy::new(SamplingConfig::greedy(s.end_tokens().to_vec()))?;
        let out = fill_blanks(&model, &prompt, &mut greedy, budget, &mut |_| {})?;
        println!("prompt : {}", prompt.raw_text);
        println!("greedy : {}", IdCodec.detokenize(&out.sequences[0]));
        let mut beam = BeamSearchStrategy::new(BeamConfig {
            num_beams: 4,
            length_penalty: 1.0,
            consider_end: true,
            end_tokens: s.end_tokens().to_vec(),
            invalid_tokens: vec![],
            no_repeat_ngram_size: 3,
            min_gen_length: 0,
            deterministic: true,
            seed: 0,
        })?;
        let out = fill_blanks(&model, &prompt, &mut beam, budget, &mut |_| {})?;
        for (i, h) in out.iterations[0].hypotheses.iter().enumerate() {
            println!(
                "beam {i} ({:+.4}): {}",
                h.penalized_score.unwrap_or(f32::NAN),
                IdCodec.detokenize(&out.blanks[i][0])
            );
        }
        println!();
    }
    Ok(())
}
