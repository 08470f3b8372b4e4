//! The original SAT parameter names and shapes of a [`GlmConfig`].

use crate::config::GlmConfig;
use crate::parallel::ShardDims;

/// What kind of tensor a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A float tensor of exactly the listed shape.
    Float,
    /// One of the four big linear weights of a layer (may be stored quantized).
    LinearWeight,
}

/// Name, shape and kind of one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Original name, e.g. `transformer.layers.0.mlp.dense_h_to_4h.weight`.
    pub name: String,
    /// Shape in the original `[out, in]` convention.
    pub shape: Vec<usize>,
    /// Kind.
    pub kind: ParamKind,
}

/// Every parameter of the model, in checkpoint order.
pub fn param_specs(config: &GlmConfig) -> Vec<ParamSpec> {
    param_specs_for(config, &ShardDims::single(config))
}

/// Every parameter one tensor-parallel rank holds (`dims`), with the rank's shapes, in checkpoint
/// order.
pub fn param_specs_for(config: &GlmConfig, dims: &ShardDims) -> Vec<ParamSpec> {
    let h = config.hidden_size;
    let mut specs = Vec::with_capacity(2 + config.num_layers * 12 + 2);
    let mut push = |name: String, shape: Vec<usize>, kind: ParamKind| {
        specs.push(ParamSpec { name, shape, kind })
    };
    push(
        "transformer.word_embeddings.weight".into(),
        vec![dims.vocab.len(), h],
        ParamKind::Float,
    );
    for l in 0..config.num_layers {
        let p = format!("transformer.layers.{l}.");
        let linears = crate::layer::LINEAR_NAMES.map(|name| {
            let (out, inp) = dims.linear_dims(name);
            (name, out, inp)
        });
        for ln in ["input_layernorm", "post_attention_layernorm"] {
            push(format!("{p}{ln}.weight"), vec![h], ParamKind::Float);
            push(format!("{p}{ln}.bias"), vec![h], ParamKind::Float);
        }
        for (name, out, inp) in linears {
            push(
                format!("{p}{name}.weight"),
                vec![out, inp],
                ParamKind::LinearWeight,
            );
            push(format!("{p}{name}.bias"), vec![out], ParamKind::Float);
        }
    }
    push(
        "transformer.final_layernorm.weight".into(),
        vec![h],
        ParamKind::Float,
    );
    push(
        "transformer.final_layernorm.bias".into(),
        vec![h],
        ParamKind::Float,
    );
    specs
}

/// Buffers that checkpoints may carry but SAT never loads (the rotary `inv_freq` is recomputed).
pub fn is_ignored_name(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}
