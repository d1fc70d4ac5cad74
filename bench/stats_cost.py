#!/usr/bin/env python3
"""What the statistics graph costs: `swa recalibrate --stats torch` pass time with each
`SWA_STATS_REDUCTION` on torchvision architectures (random init, torchscript export with
BatchNorm kept), runs interleaved, medians reported.

    /work/venv/bin/python bench/stats_cost.py --swa target/release/swa \\
        [--models densenet121,regnet_x_400mf,...] [--reductions training,split,centered] \\
        [--runs 7] [--threads 2] [--size 64] [--samples 512] [--workdir DIR]
        [--binaries before=/tmp/swa-before,after=target/release/swa --baseline before:moments]

The pass time is the `seconds` of `--json` (the statistics pass, without process start-up and
graph loading). Each reduction's median is compared with the fastest on the same model, and with
`split`, the rewrite that uses the provider's multi-threaded reductions.
Needs torch, torchvision, numpy and safetensors (to export the models once per workdir).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compat  # noqa: E402  (its model builder and exporter)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", default="target/release/swa")
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small,efficientnet_b0,densenet121,"
                    "shufflenet_v2_x0_5,regnet_x_400mf,mnasnet0_5,googlenet")
    ap.add_argument("--reductions", default="training,split,centered")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--binaries", default=None, help="comma-separated name=path of swa binaries to compare")
    ap.add_argument("--baseline", default="split", help="the column the others are compared with")
    args = ap.parse_args()
    compat.SIZE = args.size
    work = args.workdir or tempfile.mkdtemp(prefix="swa-stats-cost-")
    os.makedirs(work, exist_ok=True)
    import numpy as np
    from safetensors.torch import save_file

    data = os.path.join(work, f"train-{args.size}-{args.samples}.npy")
    if not os.path.exists(data):
        rng = np.random.default_rng(0)
        np.save(data, rng.standard_normal((args.samples, 3, args.size, args.size), dtype=np.float32))
    models = args.models.split(",")
    for name in models:
        onnx_path = os.path.join(work, f"{name}-{args.size}.onnx")
        if not os.path.exists(onnx_path):
            model = compat.build(name)
            compat.export(model, "torchscript", onnx_path)
            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                      os.path.join(work, f"{name}.safetensors"))
    binaries = [b.split("=", 1) for b in args.binaries.split(",")] if args.binaries else [(None, args.swa)]
    columns = [(f"{b}:{red}" if b else red, path, red) for b, path in binaries for red in args.reductions.split(",")]
    reductions = [c[0] for c in columns]
    times = {(m, r): [] for m in models for r in reductions}
    for run in range(args.runs):
        for name in models:
            for col, binary, red in columns:
                out = os.path.join(work, f"{name}-{red}-out.onnx")
                cmd = [binary, "recalibrate", "--model", os.path.join(work, f"{name}-{args.size}.onnx"),
                       "--weights", os.path.join(work, f"{name}.safetensors"), "--inputs", data,
                       "--batch-size", str(args.batch_size), "--stats", "torch", "--threads", str(args.threads),
                       "--json", "--quiet", "-o", out]
                env = dict(os.environ, SWA_STATS_REDUCTION=red)
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    raise SystemExit(f"{name} {red}: {p.stderr[-2000:]}")
                times[(name, col)].append(json.loads(p.stdout)["seconds"])
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    rows = []
    base = args.baseline
    for name in models:
        med = {r: statistics.median(times[(name, r)]) for r in reductions}
        row = {"model": name, "median_s": med, "runs_s": {r: times[(name, r)] for r in reductions}}
        if base in med:
            row[f"vs_{base}"] = {r: med[r] / med[base] - 1 for r in reductions}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if base in reductions:
        print("| model | " + " | ".join(f"{r} (s)" for r in reductions) + " | " +
              " | ".join(f"{r} vs {base}" for r in reductions if r != base) + " |")
        print("|---|" + "---:|" * (2 * len(reductions) - 1))
        for row in rows:
            med, vs = row["median_s"], row[f"vs_{base}"]
            print(f"| {row['model']} | " + " | ".join(f"{med[r]:.3f}" for r in reductions) + " | " +
                  " | ".join(f"{vs[r] * 100:+.1f} %" for r in reductions if r != base) + " |")


if __name__ == "__main__":
    main()
