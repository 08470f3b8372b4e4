//! Layer-streamed offload: the same outputs as the resident model, on the golden cases (CPU and
//! wgpu), through the KV cache, for float and quantized checkpoints, with any number of resident
//! layers; and the operations an offloaded model cannot do are typed errors.

mod common;

use std::sync::Arc;

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use common::*;
use glm_core::blank::GlmInput;
use glm_core::offload::SharedSource;
use glm_core::weights::SafetensorsFile;
use glm_core::{GlmModel, ModelOptions};

fn shared(path: std::path::PathBuf) -> SharedSource {
    Arc::new(SafetensorsFile::open(path).expect("safetensors"))
}

fn logits<B: Backend>(model: &GlmModel<B>, input: &GlmInput, device: &B::Device) -> Vec<f32> {
    let (t, p, m) = input.to_tensors::<B>(device);
    to_vec(model.forward(t, p, m).expect("forward"))
}

#[test]
fn offloaded_models_match_the_original_and_the_resident_model_on_cpu() {
    let device = Default::default();
    let cfg = config();
    let resident: GlmModel<Cpu> = load_model(&device, ModelOptions::default());
    let tol = read_json("cases.json")["tolerance"]["logits_max_abs"]
        .as_f64()
        .unwrap() as f32;
    let cases = case_inputs();
    assert!(!cases.is_empty());
    for keep in [0, 1, cfg.num_layers.saturating_sub(1)] {
        let model = GlmModel::<Cpu>::from_source_offloaded(
            &cfg,
            shared(fixtures().join("model.safetensors")),
            &device,
            ModelOptions::default(),
            keep,
        )
        .expect("offloaded model");
        assert_eq!(model.offload().map(|o| o.resident_layers()), Some(keep));
        for (name, input, valid, key) in &cases {
            let ours = logits(&model, input, &device);
            assert_eq!(
                ours,
                logits(&resident, input, &device),
                "{name}: resident {keep}"
            );
            let (golden, _) = tensor_f32("cases.safetensors", key);
            let d = max_diff_valid(
                &ours,
                &golden,
                input.batch,
                input.seq,
                cfg.vocab_size,
                valid,
            );
            assert!(d <= tol, "{name}: offloaded logits differ by {d}");
        }
        // Through the KV cache: a context pass and one step, as decoding runs.
        let (_, input, _, _) = &cases[0];
        let run = |m: &GlmModel<Cpu>| {
            let mut cache = m.new_cache();
            let (t, p, mk) = input.to_tensors::<Cpu>(&device);
            let a = to_vec(m.forward_cached(t, p, mk, &mut cache).expect("context"));
            // Step: the first context token again at position 0, seeing everything cached.
            let b_ = input.batch;
            let t = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(vec![i64::from(input.tokens[0]); b_], [b_, 1]),
                &device,
            );
            let p =
                Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![0i64; b_], [b_, 1]), &device);
            let mk = Tensor::<Cpu, 4, Bool>::from_data(
                TensorData::new(vec![false; b_ * (input.seq + 1)], [b_, 1, 1, input.seq + 1]),
                &device,
            );
            let b = to_vec(m.forward_cached(t, p, mk, &mut cache).expect("step"));
            (a, b)
        };
        assert_eq!(run(&model), run(&resident), "KV cache, resident {keep}");
        // What an offloaded model cannot do is refused, not done halfway.
        assert!(model.named_tensors().is_err());
        let (t, p, m) = input.to_tensors::<Cpu>(&device);
        assert!(model
            .try_forward_train(t, p, m, 1.0, &mut glm_core::dropout::Dropout::disabled())
            .is_err());
    }
}

#[test]
fn offloaded_quantized_checkpoints_match_the_resident_quantized_model() {
    let device = Default::default();
    let cfg = config();
    let dir = std::env::temp_dir().join(format!("glm-offload-q-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let quant = glm_core::quantized::QuantizeOptions::from_bits(4).unwrap();
    glm_core::quantized::convert_checkpoint(
        fixtures().join("model.safetensors"),
        &dir,
        quant,
        burn::tensor::DType::F32,
        &mut |_| {},
    )
    .expect("quantize the fixture");
    let file = dir.join("model.safetensors");
    let resident = GlmModel::<Cpu>::from_source_quantized(
        &cfg,
        &SafetensorsFile::open(&file).unwrap(),
        &device,
        ModelOptions::default(),
        None,
    )
    .unwrap();
    let model = GlmModel::<Cpu>::from_source_offloaded(
        &cfg,
        shared(file),
        &device,
        ModelOptions::default(),
        1,
    )
    .unwrap();
    assert!(model.quantization().is_some());
    for (name, input, _, _) in case_inputs() {
        assert_eq!(
            logits(&model, &input, &device),
            logits(&resident, &input, &device),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "wgpu")]
#[test]
fn offloaded_model_matches_the_original_on_wgpu() {
    use burn::backend::Wgpu;
    let device = burn::backend::wgpu::WgpuDevice::default();
    let cfg = config();
    let model = GlmModel::<Wgpu>::from_source_offloaded(
        &cfg,
        shared(fixtures().join("model.safetensors")),
        &device,
        ModelOptions::default(),
        0,
    )
    .expect("offloaded model");
    for (name, input, valid, key) in case_inputs().into_iter().take(2) {
        let ours = logits(&model, &input, &device);
        let (golden, _) = tensor_f32("cases.safetensors", &key);
        let d = max_diff_valid(
            &ours,
            &golden,
            input.batch,
            input.seq,
            cfg.vocab_size,
            &valid,
        );
        assert!(d <= 1e-3, "{name}: wgpu offloaded logits differ by {d}");
    }
}
