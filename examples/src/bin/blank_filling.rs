//! Fill blanks with the golden fixture model on the CPU backend: greedy through the two-call API
//! (`Glm::load` + `Glm::fill`), then every beam of a 4-beam search through the building blocks
//! (`build_prompt` + `fill_blanks` + `BeamSearchStrategy`) on the same loaded model.

use glm_infer::{
    build_prompt, fill_blanks, BeamConfig, BeamSearchStrategy, GenerateOptions, Glm, LoadOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let glm = Glm::load(glm_examples::fixture_dir()?, LoadOptions::default())?;
    let config = glm.config().clone();
    let s = config.special_tokens;
    for text in [
        "585 293 517 710 791 149 356 721 701 231",
        "89 423 699 113 509 [MASK] 308 300 324 588 785 932",
    ] {
        let greedy = glm.fill(text, &GenerateOptions::greedy(12))?;
        let prompt = build_prompt(text, glm.codec(), &s, config.max_sequence_length)?;
        println!("prompt : {}", prompt.raw_text);
        println!("greedy : {}", greedy.text);
        let mut beam = BeamSearchStrategy::new(BeamConfig {
            num_beams: 4,
            deterministic: true,
            seed: 0,
            end_tokens: s.end_tokens().to_vec(),
            ..BeamConfig::default()
        })?;
        let budget = prompt.tokens.len() + 1 + 12;
        let out = fill_blanks(glm.model(), &prompt, &mut beam, budget, &mut |_| {})?;
        for (i, h) in out.iterations[0].hypotheses.iter().enumerate() {
            println!(
                "beam {i} ({:+.4}): {}",
                h.penalized_score.unwrap_or(f32::NAN),
                glm.detokenize(&out.blanks[i][0])
            );
        }
        println!();
    }
    Ok(())
}
