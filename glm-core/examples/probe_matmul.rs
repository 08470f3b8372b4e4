use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;
type B = Flex;
fn main() {
    let d = Default::default();
    for (m, k, n) in [
        (128, 512, 1536),
        (128, 512, 2730),
        (128, 1365, 512),
        (128, 512, 8192),
        (128, 1024, 3072),
    ] {
        let x = Tensor::<B, 2>::random([m, k], Distribution::Default, &d);
        let w = Tensor::<B, 2>::random([n, k], Distribution::Default, &d);
        let wt = w.clone().transpose().into_data();
        let wt = Tensor::<B, 2>::from_data(wt, &d);
        let bias = Tensor::<B, 1>::random([n], Distribution::Default, &d);
        let time = |f: &dyn Fn() -> Tensor<B, 2>| {
            let _ = f().into_data();
            let t = Instant::now();
            for _ in 0..20 {
                let _ = f().into_data();
            }
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        };
        let a = time(&|| x.clone().matmul(w.clone().transpose()));
        let b = time(&|| x.clone().matmul(wt.clone()));
        let c = time(&|| x.clone().matmul(wt.clone()) + bias.clone().unsqueeze::<2>());
        println!("{m}x{k}x{n}: transposed view {a:.2} ms, pre-transposed {b:.2} ms, +bias {c:.2} ms, GFLOP/s {:.1} / {:.1}", 2.0*(m*k*n) as f64/a/1e6, 2.0*(m*k*n) as f64/b/1e6);
    }
}
