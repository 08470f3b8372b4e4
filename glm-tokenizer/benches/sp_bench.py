#!/usr/bin/env python3
"""Encode throughput of Python `sentencepiece` on the same text as encode_bench.rs.

    pip install sentencepiece==0.2.3 protobuf
    python3 glm-tokenizer/benches/sp_bench.py [MODE] [SECONDS]

MODE: `sp` (the bare C++ `EncodeAsIds` call), `icetk` (icetk's `encode`: EncodeAsIds + 20000
in Python, like-for-like with the Rust `icetk` mode) or `glm130b` (SAT GLM130BTokenizer: Python whitespace rewrite + the model with
GLM's pieces appended). Prints one JSON line, same keys as the Rust bench binary.
"""
import json
import os
import sys
import time

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.environ.get("GLM_TOKENIZER_DIR", os.path.join(HERE, "..", "..", "..", "shared", "tokenizer"))


def bench_text():
    """Golden strings joined by newlines, repeated to about 1 MB (as encode_bench.rs)."""
    with open(os.path.join(DIR, "golden.jsonl"), encoding="utf-8") as f:
        block = "\n".join(json.loads(line)["text"] for line in f if line.strip())
    parts, size = [], 0
    while size < 1_000_000:
        parts.append(block + "\n")
        size += len((block + "\n").encode("utf-8"))
    return "".join(parts)


def glm130b_processor(path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    for t in ["[MASK]", "[gMASK]", "[sMASK]", "<eod>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]:
        m.pieces.append(pb.ModelProto.SentencePiece(piece=t, score=0.0, type=3))
    for t in ["<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, 81)]:
        m.pieces.append(pb.ModelProto.SentencePiece(piece=t, score=0.0, type=4))
    m.trainer_spec.byte_fallback = True
    for i in range(256):
        m.pieces.append(pb.ModelProto.SentencePiece(piece="<0x{:02X}>".format(i), score=0.0, type=6))
    sp = spm.SentencePieceProcessor()
    sp.Load(model_proto=m.SerializeToString())
    return sp


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "icetk"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    path = os.path.join(DIR, "ice_text_synth.model")
    t0 = time.perf_counter()
    if mode == "sp":
        sp = spm.SentencePieceProcessor(model_file=path)
        encode = sp.encode
    elif mode == "icetk":
        sp = spm.SentencePieceProcessor(model_file=path)

        def encode(text):
            return [x + 20000 for x in sp.encode(text)]
    elif mode == "glm130b":
        sp = glm130b_processor(path)

        def encode(text):
            text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
            for i in range(80, 1, -1):
                text = text.replace(" " * i, f"<|blank_{i}|>")
            return [x + 20000 for x in sp.encode(text)]
    else:
        raise SystemExit(f"unknown mode {mode}")
    load_s = time.perf_counter() - t0

    text = bench_text()
    nbytes = len(text.encode("utf-8"))
    runs, ids = 0, 0
    t0 = time.perf_counter()
    while runs == 0 or time.perf_counter() - t0 < seconds:
        ids = len(encode(text))
        runs += 1
    elapsed = time.perf_counter() - t0
    print(json.dumps({
        "impl": f"python-sentencepiece-{spm.__version__}",
        "mode": mode,
        "text_bytes": nbytes,
        "ids": ids,
        "runs": runs,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(nbytes * runs / 1e6 / elapsed, 2),
        "load_s": round(load_s, 3),
    }))


if __name__ == "__main__":
    main()
