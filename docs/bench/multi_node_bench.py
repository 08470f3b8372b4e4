#!/usr/bin/env python3
"""Multi-node overhead on loopback (docs/distributed.md): the same global batch trained by one process
with 2 data-parallel replicas and by 2 `glm-train` processes (nodes) of 1 replica each, joined through
burn-collective's global orchestrator on 127.0.0.1, back to back, twice in alternating order.

  python docs/bench/multi_node_bench.py --glm-train target/release/glm-train --out docs/bench/multi-node.jsonl

Model: ../shared/bench/configs/glm-small (8 layers, hidden 512, vocabulary 8192), batch 4 x 128 per
replica, f32, dropout off, pre-tokenized random ids (train_bench.py's corpus). The figure per run is the
median `wall_s` of node 0's `metrics.jsonl` after the first 3 steps.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from train_bench import glm_small_config  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_seconds(out):
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    return statistics.median(l["wall_s"] for l in lines[3:]), [l["loss"] for l in lines]


def run(bin_path, config, work, nodes):
    os.makedirs(work, exist_ok=True)
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(config, f)
    out = os.path.join(work, "run")
    base = [bin_path, "--config", cfg_path, "--out", out, "--quiet"]
    if nodes == 1:
        subprocess.run(base, check=True, cwd=ROOT)
    else:
        orch = f"127.0.0.1:{free_port()}"
        procs = [subprocess.Popen(base + ["--nodes", str(nodes), "--node-rank", str(r), "--orchestrator", orch],
                                  cwd=ROOT) for r in range(nodes)]
        for p in procs:
            if p.wait(timeout=3600) != 0:
                raise SystemExit("a node failed")
    return step_seconds(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glm-train", required=True)
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        base = glm_small_config(work)
        base.update({"steps": a.steps, "checkpoint_every": 0, "validate_every": 0})
        single = dict(base, data_parallel=2)
        per_node = dict(base, data_parallel=1)
        times = {"one_process_2_replicas": [], "two_nodes_1_replica": []}
        losses = {}
        for i, order in enumerate([(1, 2), (2, 1)]):
            for nodes in order:
                key = "one_process_2_replicas" if nodes == 1 else "two_nodes_1_replica"
                cfg = single if nodes == 1 else per_node
                s, l = run(a.glm_train, cfg, os.path.join(work, f"{key}-{i}"), nodes)
                times[key].append(s)
                losses[key] = l
        one = statistics.median(times["one_process_2_replicas"])
        two = statistics.median(times["two_nodes_1_replica"])
        max_rel = max(abs(x - y) / abs(y) for x, y in zip(losses["two_nodes_1_replica"],
                                                         losses["one_process_2_replicas"], strict=True))
        row = {"model": "glm-small", "global_batch": 2 * base["batch_size"], "seq": base["seq_len"],
               "step_s": times, "overhead_s_per_step": two - one, "ratio": two / one,
               "tokens_per_s_one_process": 2 * base["batch_size"] * base["seq_len"] / one,
               "tokens_per_s_two_nodes": 2 * base["batch_size"] * base["seq_len"] / two,
               "loss_max_rel_diff": max_rel, "load_avg": list(os.getloadavg()), "cpus": os.cpu_count()}
    print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
