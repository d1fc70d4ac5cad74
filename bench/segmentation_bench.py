#!/usr/bin/env python3
"""What scoring segmentation costs: `swa evaluate --task segmentation` against swa's own forward
pass with the outputs dropped unscored (`SWA_BENCH_UNSCORED=1`), and against a PyTorch evaluation
loop of the same model (argmax, then a confusion matrix by `torch.bincount`), runs interleaved.

torchvision's LRASPP MobileNetV3-Large (`weights=None`, 21 classes as VOC), random images already
preprocessed (float32 N×3×S×S, held in memory by PyTorch, read from .npy by swa) and random masks
with 255 on a tenth of the pixels:

    python3 bench/segmentation_bench.py --swa target/release/swa --samples 256 --size 256 --batch 16 --threads 2

Prints one JSON line per round (wall seconds, and the swa processes' CPU seconds) and the
medians: scored / unscored (the cost of the metric, in wall and in CPU time, and the median of the
rounds' own ratios) and PyTorch / swa.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large


class Logits(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", required=True)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="swa-seg-bench-")
    model = Logits(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=args.classes)).eval()
    onnx_path = os.path.join(work, "model.onnx")
    torch.onnx.export(model, (torch.zeros(2, 3, args.size, args.size),), onnx_path, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 3, args.size, args.size), dtype=np.float32)
    y = rng.integers(0, args.classes, (args.samples, args.size, args.size)).astype(np.int64)
    y[rng.random(y.shape) < 0.1] = 255
    x_path, y_path = os.path.join(work, "x.npy"), os.path.join(work, "y.npy")
    np.save(x_path, x)
    np.save(y_path, y)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    c = args.classes
    cmd = [args.swa, "evaluate", "--model", onnx_path, "--inputs", x_path, "--labels", y_path, "--task",
           "segmentation", "--batch-size", str(args.batch), "--threads", str(args.threads), "--json"]

    def torch_loop():
        cm = torch.zeros(c * c, dtype=torch.int64)
        with torch.inference_mode():
            for i in range(0, args.samples, args.batch):
                pred = model(xt[i:i + args.batch]).argmax(1)
                t = yt[i:i + args.batch]
                keep = t != 255
                cm += torch.bincount(t[keep] * c + pred[keep], minlength=c * c)
        return cm.view(c, c)

    def swa_run(unscored):
        """The result, and the CPU seconds (user + system) the process used."""
        env = dict(os.environ, SWA_BENCH_UNSCORED="1" if unscored else "0")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    rows = []
    for r in range(args.rounds):
        t = time.perf_counter()
        theirs = torch_loop()
        torch_s = time.perf_counter() - t
        # Scored and unscored alternate which runs first.
        timed = {}
        for unscored in ((False, True) if r % 2 == 0 else (True, False)):
            t = time.perf_counter()
            out, cpu = swa_run(unscored)
            timed[unscored] = (out, cpu, time.perf_counter() - t)
        ours, scored_cpu, scored_s = timed[False]
        _, unscored_cpu, unscored_s = timed[True]
        # Random weights give near ties rarely: the matrices agree but for a few pixels.
        differ = int(np.abs(np.array(ours["confusion"]) - theirs.numpy()).sum()) // 2
        row = {"round": r, "torch_s": round(torch_s, 3), "swa_scored_s": round(scored_s, 3),
               "swa_unscored_s": round(unscored_s, 3), "swa_scored_cpu_s": round(scored_cpu, 3),
               "swa_unscored_cpu_s": round(unscored_cpu, 3), "pixels_differing": differ}
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = ("torch_s", "swa_scored_s", "swa_unscored_s", "swa_scored_cpu_s", "swa_unscored_cpu_s")
    med = {k: statistics.median(row[k] for row in rows) for k in keys}
    print(json.dumps({
        "model": "lraspp_mobilenet_v3_large", "samples": args.samples, "size": args.size, "batch": args.batch,
        "classes": c, "threads": args.threads, **{f"median_{k}": v for k, v in med.items()},
        "scoring_cost": round(med["swa_scored_s"] / med["swa_unscored_s"] - 1, 4),
        "scoring_cost_cpu": round(med["swa_scored_cpu_s"] / med["swa_unscored_cpu_s"] - 1, 4),
        "scoring_cost_paired": round(statistics.median(r["swa_scored_s"] / r["swa_unscored_s"] for r in rows) - 1, 4),
        "swa_speedup_over_torch": round(med["torch_s"] / med["swa_scored_s"], 3),
    }))


if __name__ == "__main__":
    main()
