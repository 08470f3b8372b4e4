#!/usr/bin/env python3
"""Training-speed peer: the ORIGINAL GLM-130B model class (SAT 0.2.12 `GLM130B`, built by
shared/bench/reference_bench.py's own builder with its CPU shims) trained with torch AdamW, f32, on the
CPU — the reference that `glm-train`'s throughput is reported against (docs/bench/README.md).

One step = forward over a batch of B x S tokens with GLM's attention mask (the first half of each row
bidirectional, the rest causal), LM head on every row, cross-entropy on every row's next token,
backward, global gradient-norm clipping at 1.0, AdamW update: everything a `glm-train` step does
(which computes the LM head on the target rows only). Token ids are drawn uniformly from the text range
(speed does not depend on them). Warm-up steps are discarded; the figure is the median step time.

  python docs/bench/train_peer.py --train-config examples/configs/quickstart.json --steps 20
  python docs/bench/train_peer.py --bench-config ../shared/bench/configs/glm-small/config.json --batch 4 --seq 128

One JSON line on stdout (and appended to --out).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_BENCH = os.environ.get("GLM_SHARED_BENCH", os.path.join(HERE, "..", "..", "..", "shared", "bench"))
sys.path.insert(0, SHARED_BENCH)
import reference_bench as rb  # noqa: E402  (the original model builder and shims)


def model_config(a):
    """The model dimensions: a glm-train config's `model` block (its vocabulary made compact by the
    caller through --vocab) or a shared/bench config."""
    if a.train_config:
        with open(a.train_config) as f:
            tc = json.load(f)
        m = dict(tc["model"])
        batch = a.batch or tc.get("batch_size", 4)
        seq = a.seq or tc.get("seq_len", 128)
        lr = tc.get("schedule", {}).get("peak_lr", 1e-3)
        opt = tc.get("optimizer", {})
    else:
        with open(a.bench_config) as f:
            m = json.load(f)
        batch, seq, lr, opt = a.batch or 4, a.seq or 128, 1e-3, {}
    if a.vocab:
        m["vocab_size"] = a.vocab
    cfg = {k: m[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size")}
    cfg["inner_hidden_size"] = m.get("inner_hidden_size") or 4 * m["hidden_size"] * 2 // 3
    cfg["max_sequence_length"] = m.get("max_sequence_length", 2048)
    cfg["num_text_tokens"] = min(cfg["vocab_size"] - rb.N_SPECIAL_RESERVED, cfg["vocab_size"] - 8)
    sp = {k: cfg["num_text_tokens"] + i for i, k in enumerate(rb.SPECIAL_ORDER)}
    sp.update({"eos": min(rb.EOS_ID, cfg["num_text_tokens"] - 1), "[pad]": 0})
    cfg["special_tokens"] = sp
    cfg["name"] = a.name or os.path.splitext(os.path.basename(a.train_config or a.bench_config))[0]
    return cfg, batch, seq, lr, opt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-config", help="a glm-train JSON config (model, batch_size, seq_len, optimizer)")
    src.add_argument("--bench-config", help="a shared/bench config.json")
    ap.add_argument("--vocab", type=int, help="vocabulary size (e.g. a compact vocabulary's size)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--name")
    ap.add_argument("--out")
    a = ap.parse_args()

    cfg, batch, seq, lr, opt = model_config(a)
    import torch

    threads = a.threads or rb.available_cores()
    torch.set_num_threads(threads)
    model, _ = rb.build_model(cfg, a.seed)
    rb.init_random_(model, cfg, a.seed)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    rot = model.get_mixin("rotary-embedding").rotary_emb
    rot(torch.zeros(1), seq_len=max(cfg["max_sequence_length"], seq))
    model.eval()  # dropout off, as the glm-train configs measured (gradients still flow)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.95)),
                              eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.1))
    gen = torch.Generator().manual_seed(a.seed)
    mask, pos = rb.masks_and_positions(torch, seq // 2, seq)
    pos = pos.expand(batch, -1)

    def step():
        tokens = torch.randint(10, cfg["num_text_tokens"], (batch, seq + 1), generator=gen)
        t0 = time.perf_counter()
        logits, *_ = model(tokens[:, :-1], pos, mask)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 tokens[:, 1:].reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        return time.perf_counter() - t0, loss.item()

    for _ in range(a.warmup):
        step()
    times, losses = [], []
    for _ in range(a.steps):
        t, l = step()
        times.append(t)
        losses.append(l)
    med = statistics.median(times)
    n_params = sum(p.numel() for p in params)
    report = {
        "bench": "glm130b-reference-sat-train-cpu",
        "name": cfg["name"],
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {k: cfg[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "inner_hidden_size",
                                       "vocab_size")},
        "batch": batch, "seq": seq, "params": n_params, "threads": torch.get_num_threads(),
        "step_s_median": med, "step_s_all": times,
        "tokens_per_s": batch * seq / med,
        "loss_first_last": [losses[0], losses[-1]],
        "load_avg_before": list(os.getloadavg()),
        "torch": torch.__version__,
    }
    line = json.dumps(report)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
