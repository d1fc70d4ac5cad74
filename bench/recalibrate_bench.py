#!/usr/bin/env python3
"""Recalibration benchmark: `swa recalibrate` against torch.optim.swa_utils.update_bn, same run.

CIFAR-style ResNet-18 (11M parameters, 20 BatchNorm layers, 32x32 inputs), random inputs.

    python3 bench/recalibrate_bench.py --swa target/release/swa --samples 4096 --batch 256 --threads 2 --device cpu
    python3 bench/recalibrate_bench.py --swa ./swa --samples 32768 --batch 1024 --device cuda

Prints one JSON line per measurement and a summary with the ratio (swa / PyTorch samples/s).

With --rounds N the runs are interleaved instead: each round times update_bn once, then every
swa binary (--binaries name=path,...) with every variant once, as whole processes, and the
ratio of each swa run is taken against the update_bn run of its round; medians and ranges of
N rounds are printed (for a machine whose load changes from minute to minute):

    python3 bench/recalibrate_bench.py --swa target/release/swa --samples 4096 --batch 256 --threads 2 \
        --device cpu --rounds 7 --binaries before=/tmp/swa-before,after=target/release/swa
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def prepare(work, samples):
    """The benchmark's ResNet-18 (seeded by the caller), its ONNX export with BatchNorm kept, and
    `samples` random inputs, in memory and as work/x.npy: (model, onnx path, x, x path)."""
    model = ResNet18().eval()
    onnx_path = os.path.join(work, "resnet18.onnx")
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), onnx_path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    x = np.random.default_rng(0).standard_normal((samples, 3, 32, 32), dtype=np.float32)
    x_path = os.path.join(work, "x.npy")
    np.save(x_path, x)
    return model, onnx_path, x, x_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", required=True)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=0,
                    help="interleave: N rounds of one update_bn run and one run of each binary and variant")
    ap.add_argument("--binaries", default=None,
                    help="with --rounds: comma-separated name=path of swa binaries to compare (default: --swa)")
    ap.add_argument("--variants", default="default",
                    help="comma-separated swa variants: default, moments, training, centered, flat, split or square (SWA_STATS_REDUCTION), then optional flags joined by +: "
                         "tf32 (--tf32), sN (--streams N), exhaustive or heuristic (cuDNN algorithm "
                         "search); e.g. split+tf32+s2")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="swa-bench-")
    os.makedirs(work, exist_ok=True)
    model, onnx_path, x, x_path = prepare(work, args.samples)

    dev = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    m = model.to(dev)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=args.batch, shuffle=False)
    if args.rounds:
        return interleaved(args, m, loader, dev, onnx_path, x_path, work)
    results = []
    for r in range(args.repeat + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        update_bn(loader, m, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if r == 0:  # the first run warms up cuDNN and the allocator: reported, not compared
            print(json.dumps({"impl": "pytorch update_bn, first run in the process", "seconds": dt,
                              "samples_per_s": args.samples / dt}), flush=True)
        else:
            results.append({"impl": "pytorch update_bn", "seconds": dt, "samples_per_s": args.samples / dt})
            print(json.dumps(results[-1]), flush=True)
    best_torch = max(r["samples_per_s"] for r in results)
    for variant in args.variants.split(","):
        env = dict(os.environ)
        reduction, *flags = variant.split("+")
        if reduction != "default":
            env["SWA_STATS_REDUCTION"] = reduction
        for f in flags:
            if f.startswith("s") and f[1:].isdigit():
                pass
            elif f in ("exhaustive", "heuristic"):
                env["SWA_CUDNN_SEARCH"] = f
            elif f != "tf32":
                sys.exit(f"unknown variant flag {f!r}")
        ours = []
        for r in range(args.repeat):
            cmd = [args.swa, "recalibrate", "--model", onnx_path, "--inputs", x_path, "--batch-size", str(args.batch),
                   "--stats", "torch", "--device", args.device, "--threads", str(args.threads), "-o", os.path.join(work, "out.onnx"), "--json"]
            if "tf32" in flags:
                cmd.append("--tf32")
            cmd += [arg for f in flags if f.startswith("s") and f[1:].isdigit() for arg in ("--streams", f[1:])]
            t = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            s = json.loads(out.stdout)
            ours.append({"impl": f"swa recalibrate [{variant}]", "seconds_pass": s["seconds"], "seconds_wall": wall,
                         "seconds_first_batch": s["seconds_first_batch"], "samples_per_s": s["samples_per_second"],
                         "samples_per_s_after_first": s["samples_per_second_after_first"],
                         "samples_per_s_wall": args.samples / wall})
            print(json.dumps(ours[-1]), flush=True)
        best_ours = max(r["samples_per_s"] for r in ours)
        best_ours_wall = max(r["samples_per_s_wall"] for r in ours)
        best_ours_steady = max(r["samples_per_s_after_first"] or 0 for r in ours)
        print(json.dumps({"summary": True, "variant": variant, "device": args.device, "threads": args.threads, "samples": args.samples,
                          "batch": args.batch, "torch": torch.__version__, "pytorch_samples_per_s": round(best_torch),
                          "swa_samples_per_s": round(best_ours), "swa_wall_samples_per_s": round(best_ours_wall),
                          "swa_after_first_samples_per_s": round(best_ours_steady),
                          "ratio_after_first": round(best_ours_steady / best_torch, 3),
                          "ratio_pass": round(best_ours / best_torch, 3), "ratio_wall": round(best_ours_wall / best_torch, 3)}), flush=True)


def swa_command(args, binary, variant, onnx_path, x_path, work):
    """The command line and environment of one swa run of `variant` (reduction+flags)."""
    env = dict(os.environ)
    reduction, *flags = variant.split("+")
    if reduction != "default":
        env["SWA_STATS_REDUCTION"] = reduction
    cmd = [binary, "recalibrate", "--model", onnx_path, "--inputs", x_path, "--batch-size", str(args.batch),
           "--stats", "torch", "--device", args.device, "--threads", str(args.threads),
           "-o", os.path.join(work, "out.onnx"), "--json"]
    for f in flags:
        if f.startswith("s") and f[1:].isdigit():
            cmd += ["--streams", f[1:]]
        elif f in ("exhaustive", "heuristic"):
            env["SWA_CUDNN_SEARCH"] = f
        elif f == "tf32":
            cmd.append("--tf32")
        else:
            sys.exit(f"unknown variant flag {f!r}")
    return cmd, env


def interleaved(args, m, loader, dev, onnx_path, x_path, work):
    import statistics
    binaries = [b.split("=", 1) for b in args.binaries.split(",")] if args.binaries else [("swa", args.swa)]
    variants = args.variants.split(",")
    update_bn(loader, m, device=dev)  # warm-up, not timed
    print(json.dumps({"load_average_start": os.getloadavg()}), flush=True)
    rates = {"update_bn": []}
    ratios = {}
    for rnd in range(args.rounds):
        t = time.perf_counter()
        update_bn(loader, m, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        torch_rate = args.samples / (time.perf_counter() - t)
        rates["update_bn"].append(torch_rate)
        print(json.dumps({"round": rnd, "impl": "pytorch update_bn", "samples_per_s": round(torch_rate, 2),
                          "load_average": os.getloadavg()[0]}), flush=True)
        for name, binary in binaries:
            for variant in variants:
                key = f"{name} [{variant}]"
                cmd, env = swa_command(args, binary, variant, onnx_path, x_path, work)
                t = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t
                s = json.loads(out.stdout)
                rate = args.samples / wall
                rates.setdefault(key, []).append(rate)
                ratios.setdefault(key, []).append(rate / torch_rate)
                print(json.dumps({"round": rnd, "impl": key, "samples_per_s_wall": round(rate, 2),
                                  "samples_per_s_pass": round(s["samples_per_second"], 2),
                                  "ratio_wall": round(rate / torch_rate, 3)}), flush=True)
    print(json.dumps({"load_average_end": os.getloadavg()}), flush=True)
    span = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
    print(f"| run | samples/s, median (range) | ratio to update_bn of the same round, median (range) |")
    print("|---|---:|---:|")
    print(f"| update_bn | {span(rates['update_bn'])} | 1 |")
    for key, r in ratios.items():
        print(f"| {key} | {span(rates[key])} | {span(r)} |")
    print(json.dumps({"summary": True, "rounds": args.rounds, "samples": args.samples, "batch": args.batch,
                      "threads": args.threads, "torch": torch.__version__,
                      "median_ratio_wall": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
                      "min_ratio_wall": {k: round(min(v), 3) for k, v in ratios.items()},
                      "max_ratio_wall": {k: round(max(v), 3) for k, v in ratios.items()}}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
