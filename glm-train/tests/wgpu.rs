//! Training on wgpu (lavapipe in CI): the same seed and data give the CPU run's losses within
//! float tolerance, and data-parallel replicas (burn-collective's all-reduce on the wgpu backend)
//! match one big batch there too.

#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Autodiff, Flex, Wgpu};
use common::{losses, tiny_config, tmpdir, write_corpus};

#[test]
fn wgpu_training_follows_the_cpu_run() {
    let dir = tmpdir("wgpu");
    let mut config = tiny_config(&write_corpus(&dir));
    config.steps = 4;
    config.validate_every = 0;
    let cpu = losses::<Autodiff<Flex>>(config.clone(), &dir.join("cpu"), &[Default::default()]);
    let gpu = losses::<Autodiff<Wgpu>>(config.clone(), &dir.join("wgpu"), &[Default::default()]);
    let mut dp = config;
    dp.batch_size /= 2;
    dp.data_parallel = 2;
    let gpu_dp = losses::<Autodiff<Wgpu>>(dp, &dir.join("wgpu-dp"), &[Default::default()]);
    assert_eq!(cpu.len(), 4);
    for (what, run) in [("wgpu", &gpu), ("wgpu, 2 replicas", &gpu_dp)] {
        assert_eq!(run.len(), cpu.len(), "{what}");
        for (c, g) in cpu.iter().zip(run) {
            assert!((c - g).abs() < 1e-3 * c.abs(), "{what}: {g} vs cpu {c}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
