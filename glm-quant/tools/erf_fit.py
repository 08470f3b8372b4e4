# Fits the coefficients of glm-quant/src/kernels/host_elem.rs (needs numpy + mpmath).
# Fit erf(x) ~= x * P(x^2) / Q(x^2) on [0, XMAX] minimising relative error (Loeb iteration), f64.
import numpy as np, mpmath as mp
XMAX = 3.92
NP, NQ = 6, 5          # degrees in t = x^2
xs = np.concatenate([np.linspace(1e-4, XMAX, 20000)])
f = np.array([float(mp.erf(x)) for x in xs])
t = xs**2
Q = np.ones_like(xs)
for it in range(12):
    # minimise sum ((x P(t) - f Q(t)) / (f * Qprev))^2 with q0 = 1
    A = np.concatenate([np.stack([xs * t**i for i in range(NP + 1)], 1),
                        np.stack([-f * t**j for j in range(1, NQ + 1)], 1)], 1)
    w = 1.0 / (f * Q)
    coef, *_ = np.linalg.lstsq(A * w[:, None], f * w, rcond=None)
    p = coef[:NP + 1]; q = np.concatenate([[1.0], coef[NP + 1:]])
    Q = sum(q[j] * t**j for j in range(NQ + 1))
    approx = xs * sum(p[i] * t**i for i in range(NP + 1)) / Q
    rel = np.max(np.abs(approx / f - 1))
print("max rel err f64:", rel)
# f32 evaluation (Horner with fma-like rounding via float32)
x32 = np.linspace(0, 4.5, 2000001, dtype=np.float32)
t32 = x32 * x32
P32 = np.float32(p[-1]); 
for c in p[-2::-1]: P32 = (P32 * t32 + np.float32(c)).astype(np.float32)
Q32 = np.float32(q[-1])
for c in q[-2::-1]: Q32 = (Q32 * t32 + np.float32(c)).astype(np.float32)
e32 = np.minimum(x32 * P32 / Q32, np.float32(1.0))
exact = np.array([float(mp.erf(float(v))) for v in x32[::50]])
err = np.abs(e32[::50].astype(np.float64) - exact)
ulp = err / np.spacing(np.float32(exact).astype(np.float32)).astype(np.float64)
print("max abs err f32:", err.max(), "max ulp:", ulp.max())
print("P =", [float(np.float32(c)) for c in p]); print("Q =", [float(np.float32(c)) for c in q])
