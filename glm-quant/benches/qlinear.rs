//! Criterion: one linear layer `y = x·Wᵀ` on the CPU backend — float32 matmul vs the fused INT8 /
//! INT4 kernels vs the dequantize-then-matmul reference, for decode (1 row) and a small batch.
//! Shapes are the largest linears of glm-small and glm-base (`dense_h_to_4h`).

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glm_quant::{QuantScheme, QuantizedWeight};

type B = Flex;

fn linear(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("linear");
    group.sample_size(20);
    for (name, out, inp) in [("small_h_to_4h", 2730, 512), ("base_h_to_4h", 5460, 1024)] {
        let w = Tensor::<B, 2>::random([out, inp], Distribution::Normal(0.0, 0.05), &device);
        let wt = w.clone().transpose();
        let q8 = QuantizedWeight::<B>::quantize("w", &w.to_data(), 1, QuantScheme::Int8, &device)
            .expect("int8");
        let q4 = QuantizedWeight::<B>::quantize("w", &w.to_data(), 1, QuantScheme::Int4, &device)
            .expect("int4");
        for rows in [1usize, 4] {
            let x = Tensor::<B, 2>::random([rows, inp], Distribution::Normal(0.0, 1.0), &device);
            let id = format!("{name}/rows{rows}");
            group.throughput(Throughput::Bytes((out * inp * 4) as u64));
            group.bench_with_input(BenchmarkId::new("f32", &id), &x, |b, x| {
                b.iter(|| x.clone().matmul(wt.clone()).into_data())
            });
            group.throughput(Throughput::Bytes(q8.storage_bytes() as u64));
            group.bench_with_input(BenchmarkId::new("int8_fused", &id), &x, |b, x| {
                b.iter(|| q8.forward(x.clone()).into_data())
            });
            group.throughput(Throughput::Bytes(q4.storage_bytes() as u64));
            group.bench_with_input(BenchmarkId::new("int4_fused", &id), &x, |b, x| {
                b.iter(|| q4.forward(x.clone()).into_data())
            });
            if rows == 1 {
                group.bench_with_input(BenchmarkId::new("int4_reference", &id), &x, |b, x| {
                    b.iter(|| q4.forward_reference(x.clone()).into_data())
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, linear);
criterion_main!(benches);
