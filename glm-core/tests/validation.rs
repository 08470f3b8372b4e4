//! Issue 10, defects 4 and 5: absurd config sizes and inconsistent or out-of-range inputs are
//! typed errors (never an overflow panic, an abort, a NaN table or a backend panic). Every size and
//! id comes from the fixture config (`GLM_FIXTURES`) and its cases.

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{config, ints, ints2, mask4, read_json, Cpu};
use glm_core::blank::{BlankInput, GlmInput, MaskKind};
use glm_core::config::limits;
use glm_core::rotary::RotaryTables;
use glm_core::{Error, ForwardOptions, GlmConfig, GlmModel, ModelOptions, RotaryPrecision};

fn model() -> GlmModel<Cpu> {
    GlmModel::random(&config(), &Default::default(), ModelOptions::default(), 7)
        .expect("random model of the fixture config")
}

/// Every fixture case as a host-side input.
fn cases() -> Vec<(String, GlmInput)> {
    let json = read_json("cases.json");
    let cases: Vec<(String, GlmInput)> = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let tokens = ints2(&c["tokens"]);
            let batch = tokens.len();
            let seq = tokens.first().map_or(0, Vec::len);
            (
                c["name"].as_str().expect("name").to_string(),
                GlmInput {
                    batch,
                    seq,
                    tokens: tokens.concat(),
                    position_ids: ints2(&c["position_ids"]).concat(),
                    mask: mask4(&c["attention_mask"]),
                },
            )
        })
        .collect();
    assert!(!cases.is_empty(), "cases.json has no cases");
    cases
}

fn tensors(
    input: &GlmInput,
) -> (
    Tensor<Cpu, 2, Int>,
    Tensor<Cpu, 2, Int>,
    Tensor<Cpu, 4, Bool>,
) {
    input
        .try_to_tensors::<Cpu>(&Default::default())
        .expect("consistent fixture input")
}

fn assert_config_error<T: std::fmt::Debug>(result: glm_core::Result<T>, field: &str) {
    match result {
        Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "wrong field named"),
        other => panic!("expected InvalidConfig naming {field}, got {other:?}"),
    }
}

fn assert_input_error<T: std::fmt::Debug>(result: glm_core::Result<T>, needle: &str) {
    match result {
        Err(Error::InvalidInput(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected InvalidInput ({needle}), got {other:?}"),
    }
}

// ---------------------------------------------------------------- defect 4: unchecked sizes

#[test]
fn absurd_sizes_are_typed_errors_naming_the_field() {
    let base = config();
    base.validate().expect("fixture config is valid");
    type Mutation = Box<dyn Fn(&mut GlmConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("hidden_size", Box::new(|c| c.hidden_size = usize::MAX / 2)),
        (
            "hidden_size",
            Box::new(|c| {
                // No explicit inner size: SAT's default 4h·2/3 must not overflow either.
                c.inner_hidden_size = None;
                c.hidden_size = usize::MAX / 2;
            }),
        ),
        ("num_layers", Box::new(|c| c.num_layers = usize::MAX)),
        (
            "num_attention_heads",
            Box::new(|c| c.num_attention_heads = usize::MAX),
        ),
        (
            "inner_hidden_size",
            Box::new(|c| c.inner_hidden_size = Some(usize::MAX)),
        ),
        ("vocab_size", Box::new(|c| c.vocab_size = usize::MAX / 2)),
        (
            "max_sequence_length",
            Box::new(|c| c.max_sequence_length = usize::MAX),
        ),
        (
            // Each size below its own limit, their product (the embedding) above the tensor cap.
            "vocab_size",
            Box::new(|c| {
                c.vocab_size = limits::MAX_VOCAB_SIZE;
                c.hidden_size =
                    limits::MAX_HIDDEN_SIZE / c.num_attention_heads * c.num_attention_heads;
                c.inner_hidden_size = Some(c.hidden_size);
            }),
        ),
    ];
    let mut ran = 0;
    for (field, mutate) in &cases {
        let mut c = base.clone();
        mutate(&mut c);
        assert_config_error(c.validate(), field);
        // Nothing computed from the config panics, and construction fails before allocating.
        let _ = c.inner_size();
        let _ = c.head_dim();
        let _ = c.num_parameters();
        assert!(
            GlmModel::<Cpu>::random(&c, &Default::default(), ModelOptions::default(), 1).is_err()
        );
        ran += 1;
    }
    assert_eq!(ran, cases.len());
    assert!(ran > 0);
}

#[test]
fn parameter_count_is_checked_arithmetic() {
    let mut c = config();
    c.num_layers = usize::MAX;
    c.hidden_size = usize::MAX / 2;
    assert_eq!(c.checked_num_parameters(), None);
    assert_eq!(
        c.num_parameters(),
        u64::MAX,
        "saturates instead of wrapping or panicking"
    );
    let fixture = config();
    let n = fixture
        .checked_num_parameters()
        .expect("fixture count fits");
    assert_eq!(n, fixture.num_parameters());
}

#[test]
fn real_model_sizes_stay_within_the_limits() {
    // The released GLM-130B (spec §1.1) and a larger hypothetical model must stay buildable.
    GlmConfig::glm_130b().validate().expect("GLM-130B");
    let mut bigger = GlmConfig::glm_130b();
    bigger.num_layers *= 2;
    bigger.hidden_size *= 2;
    bigger.inner_hidden_size = bigger.inner_hidden_size.map(|i| i * 2);
    bigger.vocab_size *= 2;
    bigger.max_sequence_length *= 16;
    bigger.validate().expect("a model twice GLM-130B's size");
}

#[test]
fn fp16_rotary_tables_refuse_positions_past_65504() {
    let mut c = config();
    c.max_sequence_length = 70_000;
    c.validate()
        .expect("the length itself is within the limits");
    assert_config_error(
        c.validate_rotary(RotaryPrecision::Fp16Sat),
        "max_sequence_length",
    );
    let fp16 = ModelOptions {
        rotary: RotaryPrecision::Fp16Sat,
        ..ModelOptions::default()
    };
    assert_config_error(
        GlmModel::<Cpu>::random(&c, &Default::default(), fp16, 1),
        "max_sequence_length",
    );
    assert_config_error(
        RotaryTables::new(
            c.head_dim(),
            c.max_sequence_length,
            c.rotary_base,
            RotaryPrecision::Fp16Sat,
        ),
        "max_sequence_length",
    );
    // Choosing fp32 tables explicitly works, and every entry is finite.
    let fp32 = RotaryTables::new(
        c.head_dim(),
        c.max_sequence_length,
        c.rotary_base,
        RotaryPrecision::Fp32,
    )
    .expect("fp32 tables");
    assert!(fp32.cos.iter().chain(&fp32.sin).all(|v| v.is_finite()));
    let explicit = ModelOptions {
        rotary: RotaryPrecision::Fp32,
        ..ModelOptions::default()
    };
    GlmModel::<Cpu>::random(&c, &Default::default(), explicit, 1).expect("explicit fp32 mode");
    // The largest fp16 table is accepted and finite.
    let max = RotaryPrecision::Fp16Sat
        .max_positions()
        .expect("fp16 has a limit");
    let edge = RotaryTables::new(c.head_dim(), max, c.rotary_base, RotaryPrecision::Fp16Sat)
        .expect("fp16 tables up to position 65504");
    assert!(edge.cos.iter().chain(&edge.sin).all(|v| v.is_finite()));
}

// ---------------------------------------------------------- defect 5: entry points check inputs

#[test]
fn forward_rejects_ids_outside_the_vocabulary_and_positions_beyond_the_tables() {
    let model = model();
    let cfg = config();
    let mut ran = 0;
    for (name, input) in cases() {
        // The unmodified case runs.
        let (t, p, m) = tensors(&input);
        model
            .forward(t, p, m)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let vocab = u32::try_from(cfg.vocab_size).expect("vocab fits u32");
        let max_pos = u32::try_from(cfg.max_sequence_length).expect("length fits u32");
        let mut bad = input.clone();
        bad.tokens[input.seq - 1] = vocab;
        assert_input_error(bad.validate(&cfg), "token id");
        let (t, p, m) = tensors(&bad);
        assert_input_error(model.forward(t, p, m), "token id");
        assert_input_error(
            model.forward_input(&bad, ForwardOptions::default()),
            "token id",
        );
        let (t, _, _) = tensors(&bad);
        assert_input_error(model.embed(t), "token id");

        let mut bad = input.clone();
        bad.position_ids[0] = max_pos;
        assert_input_error(bad.validate(&cfg), "position id");
        let (t, p, m) = tensors(&bad);
        assert_input_error(model.forward(t, p, m), "position id");

        // Negative ids exist only as tensors.
        let (t, p, m) = tensors(&input);
        let neg = t.clone().mul_scalar(0).sub_scalar(1);
        assert_input_error(model.forward(neg, p.clone(), m.clone()), "token id");
        let neg = p.mul_scalar(0).sub_scalar(1);
        assert_input_error(model.forward(t, neg, m), "position id");
        ran += 1;
    }
    assert!(ran > 0);
}

#[test]
fn forward_rejects_inconsistent_shapes() {
    let model = model();
    let device = Default::default();
    let (_, input) = cases().into_iter().next().expect("a case");
    let (t, p, m) = tensors(&input);
    let [batch, seq] = t.dims();
    // Empty.
    let empty =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(Vec::<i64>::new(), [1, 0]), &device);
    let empty_mask = Tensor::<Cpu, 4, Bool>::from_data(
        TensorData::new(Vec::<bool>::new(), [1, 1, 0, 0]),
        &device,
    );
    assert_input_error(model.forward(empty.clone(), empty, empty_mask), "empty");
    // Positions of another length.
    let short = p.clone().narrow(1, 0, seq - 1);
    assert_input_error(model.forward(t.clone(), short, m.clone()), "position ids");
    // Mask of another width.
    let narrow = m.clone().narrow(3, 0, seq - 1);
    assert_input_error(model.forward(t.clone(), p.clone(), narrow), "mask");
    // Mask of another batch (neither the batch nor 1).
    let wide = Tensor::cat(vec![m.clone(), m.clone(), m.clone()], 0);
    if batch != 3 {
        assert_input_error(model.forward(t.clone(), p.clone(), wide), "mask");
    }
    let hidden = model
        .forward_with(
            t.clone(),
            p.clone(),
            m.clone(),
            None,
            ForwardOptions::default(),
        )
        .expect("the unmodified case");
    assert_eq!(
        hidden.logits.dims(),
        [batch, seq, model.config().vocab_size]
    );
    // Training entry point, checked variant.
    let mut dropout = glm_core::dropout::Dropout::disabled();
    let mut bad = input.clone();
    bad.tokens[0] = u32::try_from(model.config().vocab_size).expect("fits");
    let (bt, bp, bm) = tensors(&bad);
    assert_input_error(
        model.try_forward_train(bt, bp, bm, 1.0, &mut dropout),
        "token id",
    );
}

#[test]
fn kv_cache_steps_check_batch_and_rows() {
    let model = model();
    let device = Default::default();
    let (_, input) = cases()
        .into_iter()
        .find(|(_, i)| i.batch == 1)
        .expect("a single-sample case");
    let (t, p, m) = tensors(&input);
    let mut cache = model.new_cache();
    model
        .forward_cached(t, p, m, &mut cache)
        .expect("context pass");
    let cached = cache.len();
    assert_eq!(cached, input.seq);
    // A step of 2 rows against a cache of 1.
    let tok_id = i64::from(input.tokens[0]);
    let pos_id = i64::from(input.position_ids[0]);
    let tok = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![tok_id; 2], [2, 1]), &device);
    let pos = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![pos_id; 2], [2, 1]), &device);
    let mask = Tensor::<Cpu, 4, Bool>::from_data(
        TensorData::new(vec![false; 2 * (cached + 1)], [2, 1, 1, cached + 1]),
        &device,
    );
    assert_input_error(model.forward_cached(tok, pos, mask, &mut cache), "KV cache");
    assert_eq!(
        cache.len(),
        cached,
        "a rejected step leaves the cache alone"
    );
    // A mask that ignores the cached keys.
    let tok = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![tok_id], [1, 1]), &device);
    let pos = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![pos_id], [1, 1]), &device);
    let mask =
        Tensor::<Cpu, 4, Bool>::from_data(TensorData::new(vec![false], [1, 1, 1, 1]), &device);
    assert_input_error(model.forward_cached(tok, pos, mask, &mut cache), "mask");
    // Beam reordering: rows outside the cached batch, or none.
    assert_input_error(
        cache.select_batch(&[input.batch]),
        "outside the cached batch",
    );
    assert_input_error(cache.select_batch(&[]), "empty");
    cache.select_batch(&[0, 0]).expect("duplicating row 0");
    assert_eq!(cache.batch_size(), Some(2));
}

#[test]
fn glm_input_with_inconsistent_fields_is_an_error() {
    let cfg = config();
    let mut ran = 0;
    for (name, input) in cases() {
        input
            .validate(&cfg)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut short = input.clone();
        short.tokens.pop();
        assert_input_error(short.validate(&cfg), "tokens");
        assert_input_error(
            short.try_to_tensors::<Cpu>(&Default::default()).map(|_| ()),
            "tokens",
        );
        let mut short = input.clone();
        short.position_ids.pop();
        assert_input_error(short.check_layout(), "position_ids");
        let mut short = input.clone();
        short.mask.pop();
        assert_input_error(short.check_layout(), "mask");
        let mut overflow = input.clone();
        overflow.batch = usize::MAX;
        assert_input_error(overflow.check_layout(), "overflow");
        let mut empty = input.clone();
        empty.seq = 0;
        assert_input_error(empty.check_layout(), "empty");
        ran += 1;
    }
    assert!(ran > 0);
}

#[test]
fn pad_batch_rejects_inconsistent_samples() {
    let (_, input) = cases()
        .into_iter()
        .find(|(_, i)| i.batch == 1)
        .expect("a single-sample case");
    let pad = config().special_tokens.pad;
    let ok = GlmInput::pad_batch(std::slice::from_ref(&input), 32, pad).expect("one good sample");
    assert_eq!(ok.batch, 1);
    ok.check_layout().expect("padded layout");
    let mut bad = input.clone();
    bad.mask.truncate(input.seq);
    assert_input_error(GlmInput::pad_batch(&[input, bad], 32, pad), "sample 1");
    assert_input_error(GlmInput::pad_batch(&[], 32, pad), "empty");
}

#[test]
fn blank_inputs_check_their_public_fields() {
    let json = read_json("cases.json");
    let cfg = config();
    let specials = cfg.special_tokens;
    let mut ran = 0;
    for case in json["cases"].as_array().expect("cases") {
        // Single-sample generate.py cases: tokens end with <sop>, the mask position is given.
        let (Some(pos), 1) = (case["mask_position"].as_u64(), ints2(&case["tokens"]).len()) else {
            continue;
        };
        let tokens = ints(&case["tokens"][0]);
        let ctx = case["context_length"]
            .as_u64()
            .map_or(tokens.len(), |c| c as usize);
        let tokens = tokens[..ctx].to_vec();
        let kind = MaskKind::choose(&tokens, &specials);
        let blank = BlankInput {
            tokens: tokens.clone(),
            mask_position: pos as usize,
            kind,
        };
        let input = blank.to_input(&cfg).expect("fixture blank");
        assert_eq!(input.seq, ctx);

        let mut bad = blank.clone();
        bad.mask_position = tokens.len();
        assert_input_error(bad.to_input(&cfg), "mask_position");
        let mut bad = blank.clone();
        bad.mask_position = 0;
        if tokens[0] != kind.token(&specials) {
            assert_input_error(bad.validate(&cfg), "mask_position");
        }
        let mut bad = blank.clone();
        bad.tokens.clear();
        assert_input_error(bad.to_input(&cfg), "tokens");
        let mut bad = blank.clone();
        bad.tokens[0] = u32::try_from(cfg.vocab_size).expect("fits");
        assert_input_error(bad.to_input(&cfg), "token id");
        let mut bad = blank.clone();
        bad.tokens.pop();
        bad.tokens.push(specials.eos);
        assert_input_error(bad.validate(&cfg), "<sop>");
        let mut long = cfg.clone();
        long.max_sequence_length = ctx - 1;
        assert_input_error(blank.validate(&long), "max_sequence_length");
        ran += 1;
    }
    assert!(ran > 0, "no single-sample blank case in cases.json");
    assert!(BlankInput::from_context(&[], &specials).is_err());
}
