//! Streaming: the text pieces a step callback yields through `TokenStream` concatenate to the
//! decoded fill, on a random model with the synthetic icetk tokenizer's vocabulary.

use burn::backend::Flex;
use glm_core::{GlmConfig, GlmModel, ModelOptions, SpecialTokens};
use glm_infer::{build_prompt, fill_blanks, BaseStrategy, SamplingConfig, TextCodec, TokenStream};
use glm_tokenizer::Tokenizer;

#[test]
fn streamed_pieces_concatenate_to_the_decoded_blank() {
    let dir = glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder");
    let tok = Tokenizer::icetk(dir.join("ice_text_synth.model")).expect("tokenizer");
    let mut config = GlmConfig::tiny();
    config.vocab_size = 150_528;
    config.special_tokens = SpecialTokens::glm_130b();
    let model =
        GlmModel::<Flex>::random(&config, &Default::default(), ModelOptions::default(), 5).unwrap();
    let s = config.special_tokens;
    for (seed, text) in [
        (1u64, "北京是[MASK]的首都"),
        (2, "The cat sat on the [MASK] today."),
        (3, "中文和 English 混合[gMASK]"),
    ] {
        let prompt = build_prompt(text, &tok, &s, config.max_sequence_length).unwrap();
        let mut sampler = BaseStrategy::new(SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.0,
            invalid_tokens: vec![],
            end_tokens: s.end_tokens().to_vec(),
            seed,
        })
        .unwrap();
        let ctx = prompt.tokens.len() + 1;
        let mut stream = TokenStream::new(&tok, ctx, s.end_tokens().to_vec());
        let mut pieces = Vec::new();
        let out = fill_blanks(&model, &prompt, &mut sampler, ctx + 24, &mut |rows| {
            pieces.push(stream.push_rows(rows))
        })
        .unwrap();
        pieces.push(stream.finish());
        let streamed: String = pieces.concat();
        assert_eq!(streamed, tok.detokenize(&out.blanks[0][0]), "{text}");
        assert!(pieces
            .iter()
            .all(|p| std::str::from_utf8(p.as_bytes()).is_ok()));
    }
}
