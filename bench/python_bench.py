#!/usr/bin/env python3
"""`import swa` fed by a DataLoader, against the same samples from a .npy file (the `swa`
command) and against torch.optim.swa_utils.update_bn on the same loader; runs interleaved.

CIFAR-style ResNet-18 (bench/recalibrate_bench.py's), random inputs held in memory as a tensor,
`stats="torch"`, one batch size for all three:

    python3 bench/python_bench.py --swa target/release/swa --samples 4096 --batch 256 --threads 2 --rounds 5

Each round times, as wall time around the whole call: update_bn(loader, model);
swa.recalibrate(model.onnx, batches=loader) in this process; `swa recalibrate --inputs x.npy` as
a process. Prints one JSON line per round and the medians: loader vs file (the cost of taking
batches from Python) and swa vs update_bn. The wheel should be a release build
(`maturin build --release`).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recalibrate_bench import prepare  # noqa: E402

import swa  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", required=True, help="the swa binary (the file route)")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="swa-python-bench-")
    model, onnx_path, x, x_path = prepare(work, args.samples)
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=args.batch)
    common = ["--stats", "torch", "--threads", str(args.threads), "--batch-size", str(args.batch)]
    rows = []
    for r in range(args.rounds):
        t = time.perf_counter()
        update_bn(loader, model)
        torch_s = time.perf_counter() - t
        t = time.perf_counter()
        swa.recalibrate(onnx_path, batches=loader, stats="torch", threads=args.threads,
                        output=os.path.join(work, "py.onnx"), quiet=True)
        loader_s = time.perf_counter() - t
        os.remove(os.path.join(work, "py.onnx"))
        t = time.perf_counter()
        subprocess.run([args.swa, "recalibrate", "--model", onnx_path, "--inputs", x_path, *common, "--quiet",
                        "-o", os.path.join(work, "cli.onnx")], check=True, stdout=subprocess.DEVNULL)
        file_s = time.perf_counter() - t
        os.remove(os.path.join(work, "cli.onnx"))
        row = {"round": r, "update_bn_s": torch_s, "loader_s": loader_s, "file_s": file_s,
               "loader_over_file": loader_s / file_s, "update_bn_over_loader": torch_s / loader_s}
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = lambda k: statistics.median(row[k] for row in rows)
    print(json.dumps({"summary": True, "samples": args.samples, "batch": args.batch, "threads": args.threads,
                      "torch": torch.__version__, "swa": swa.__version__,
                      "median_update_bn_s": med("update_bn_s"), "median_loader_s": med("loader_s"),
                      "median_file_s": med("file_s"), "median_loader_over_file": med("loader_over_file"),
                      "median_update_bn_over_loader": med("update_bn_over_loader")}))


if __name__ == "__main__":
    main()
