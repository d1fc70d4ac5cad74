#!/usr/bin/env python3
"""`swa average` on torch.save files against the same tensors as safetensors and against a
torch.load-based average written like timm's avg_checkpoints.py (load each whole file, accumulate
in float64, divide, save), in the same run, runs interleaved.

    /tmp/venv/bin/python bench/torch_average_bench.py --swa target/release/swa --dir /var/tmp/swa-torch-bench \
        --models 4 --mib 512

Checkpoints are synthetic transformer-like bf16 state dicts written by torch.save (a training
dict {"epoch", "state_dict"}, as timm and most loops save) and by safetensors' save_file.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

BASELINE = r"""
import sys, torch
files, out = sys.argv[1:-1], sys.argv[-1]
avg = None
for f in files:
    sd = torch.load(f, map_location="cpu", weights_only=True)["state_dict"]
    if avg is None:
        avg = {k: v.to(torch.float64) for k, v in sd.items()}
    else:
        for k, v in sd.items():
            avg[k] += v.to(torch.float64)
    del sd
avg = {k: (v / len(files)).to(torch.bfloat16) for k, v in avg.items()}
torch.save(avg, out)
"""


def layout(mib):
    d, ff = 1024, 4096
    per_layer = 4 * d * d + 2 * d * ff
    layers = max(1, int(mib * 2**20 / 2 // per_layer))
    tensors = []
    for i in range(layers):
        for n in ("q", "k", "v", "o"):
            tensors.append((f"layers.{i}.attn.{n}.weight", (d, d)))
        tensors += [(f"layers.{i}.mlp.up.weight", (ff, d)), (f"layers.{i}.mlp.down.weight", (d, ff))]
    return tensors


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--mib", type=float, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    pts, sts = [], []
    for i in range(args.models):
        pt, st = os.path.join(args.dir, f"epoch_{i + 1:03d}.pt"), os.path.join(args.dir, f"epoch_{i + 1:03d}.safetensors")
        if not (os.path.exists(pt) and os.path.exists(st)):
            sd = {n: torch.randn(s, generator=g).to(torch.bfloat16) for n, s in layout(args.mib)}
            torch.save({"epoch": i + 1, "state_dict": sd}, pt)
            save_file(sd, st)
        pts.append(pt)
        sts.append(st)
    size = sum(os.path.getsize(p) for p in pts)
    subprocess.run(["sh", "-c", 'cat "$@" > /dev/null', "cat", *pts, *sts], check=True)
    out = os.path.join(args.dir, "out")
    os.makedirs(out, exist_ok=True)
    cases = {
        "swa average (.pt)": [args.swa, "average", "-q", *pts, "-o", os.path.join(out, "a.safetensors")],
        "swa average (.safetensors)": [args.swa, "average", "-q", *sts, "-o", os.path.join(out, "b.safetensors")],
        "swa average (.pt -> .pt)": [args.swa, "average", "-q", *pts, "-o", os.path.join(out, "c.pt")],
        "torch.load average (timm style)": [sys.executable, "-c", BASELINE, *pts, os.path.join(out, "d.pt")],
        "cat (read the .pt files)": ["sh", "-c", 'cat "$@" > /dev/null', "cat", *pts],
    }
    times = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, cmd in cases.items():
            for f in os.listdir(out):
                os.remove(os.path.join(out, f))
            times[name].append(timed(cmd))
    print(json.dumps({"models": args.models, "bytes_each": os.path.getsize(pts[0]), "cores": os.cpu_count(),
                      "torch": torch.__version__}))
    base = statistics.median(times["torch.load average (timm style)"])
    for name, t in times.items():
        med = statistics.median(t)
        print(json.dumps({"case": name, "median_s": round(med, 3), "min_s": round(min(t), 3),
                          "gb_per_s": round(size / med / 1e9, 2), "speedup_vs_torch_load": round(base / med, 2)}))


if __name__ == "__main__":
    main()
