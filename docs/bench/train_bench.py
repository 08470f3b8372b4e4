#!/usr/bin/env python3
"""Training throughput, ours vs the original, back to back on the same machine (docs/bench/README.md).

For each case: the peer (`train_peer.py`: SAT GLM130B + torch AdamW) and `glm-train` on the same model,
batch, sequence length and thread count, f32, dropout off; then the other order again, so drift in the
machine shows. `glm-train` runs `--steps` steps without validation or intermediate checkpoints; its
figure is batch x seq / the median `wall_s` of `metrics.jsonl` after the first 3 steps.

  python docs/bench/train_bench.py --glm-train target/release/glm-train --out docs/bench/train.jsonl

Cases: `quickstart` (examples/configs/quickstart.json, its compact vocabulary size measured from the run)
and `glm-small` (../shared/bench/configs/glm-small, batch 4 x 128, pre-tokenized random ids).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SHARED = os.environ.get("GLM_SHARED", os.path.join(ROOT, "..", "shared"))


def ours(bin_path, config, steps, work):
    config = dict(config)
    config.update({"steps": steps, "checkpoint_every": 0, "validate_every": 0})
    os.makedirs(work, exist_ok=True)
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(config, f)
    out = os.path.join(work, "run")
    subprocess.run([bin_path, "--config", cfg_path, "--out", out, "--quiet"], check=True, cwd=ROOT)
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    walls = [l["wall_s"] for l in lines[3:]]
    vocab = None
    vm = os.path.join(out, "vocab_map.json")
    if os.path.exists(vm):
        vocab = len(json.load(open(vm))["outer_ids"])
    med = statistics.median(walls)
    return {"step_s_median": med, "tokens_per_s": config["batch_size"] * config["seq_len"] / med,
            "steps_timed": len(walls), "vocab": vocab or config["model"]["vocab_size"],
            "loss_first_last": [lines[0]["loss"], lines[-1]["loss"]]}


def peer(python, args, steps):
    cmd = [python, os.path.join(HERE, "train_peer.py"), *args, "--steps", str(steps)]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def glm_small_config(work):
    with open(os.path.join(SHARED, "bench", "configs", "glm-small", "config.json")) as f:
        b = json.load(f)
    rng = random.Random(7)
    corpus = os.path.join(work, "ids.jsonl")
    with open(corpus, "w") as f:
        for _ in range(400):
            f.write(json.dumps({"ids": [rng.randrange(10, b["num_text_tokens"]) for _ in range(300)]}) + "\n")
    model = {k: b[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "inner_hidden_size",
                               "vocab_size", "max_sequence_length", "layernorm_epsilon", "special_tokens")}
    return {
        "model": model,
        "data": {"train": [corpus], "validation_fraction": 0.0},
        "dropout": {"hidden": 0.0, "attention": 0.0},
        "seq_len": 128, "batch_size": 4, "seed": 1,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glm-train", required=True, help="the glm-train binary")
    ap.add_argument("--python", default=sys.executable, help="python with the reference environment")
    ap.add_argument("--steps", type=int, default=23)
    ap.add_argument("--cases", default="quickstart,glm-small")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    for case in a.cases.split(","):
        with tempfile.TemporaryDirectory() as work:
            if case == "quickstart":
                with open(os.path.join(ROOT, "examples", "configs", "quickstart.json")) as f:
                    cfg = json.load(f)
                first = ours(a.glm_train, cfg, a.steps, os.path.join(work, "a"))
                peer_args = ["--train-config", os.path.join(ROOT, "examples/configs/quickstart.json"),
                             "--vocab", str(first["vocab"])]
            else:
                cfg = glm_small_config(work)
                first = ours(a.glm_train, cfg, a.steps, os.path.join(work, "a"))
                peer_args = ["--bench-config", os.path.join(SHARED, "bench/configs/glm-small/config.json"),
                             "--batch", "4", "--seq", "128"]
            p1 = peer(a.python, peer_args, a.steps - 3)
            p2 = peer(a.python, peer_args, a.steps - 3)
            second = ours(a.glm_train, cfg, a.steps, os.path.join(work, "b"))
            ours_tps = statistics.median([first["tokens_per_s"], second["tokens_per_s"]])
            peer_tps = statistics.median([p1["tokens_per_s"], p2["tokens_per_s"]])
            row = {"case": case, "batch": cfg["batch_size"], "seq": cfg["seq_len"], "vocab": first["vocab"],
                   "ours_tokens_per_s": [first["tokens_per_s"], second["tokens_per_s"]],
                   "peer_tokens_per_s": [p1["tokens_per_s"], p2["tokens_per_s"]],
                   "ratio": ours_tps / peer_tps, "load_avg": list(os.getloadavg())}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
