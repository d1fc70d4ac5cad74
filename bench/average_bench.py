#!/usr/bin/env python3
"""Averaging benchmark: `swa average` against a PyTorch baseline written like timm's
avg_checkpoints.py (load each whole file, accumulate in float64, divide, save) and against the
time to read the same bytes (`cat files > /dev/null`, page cache warm), in the same run.

    python3 bench/average_bench.py --swa target/release/swa --dir /var/tmp/swa-bench --models 6 --gib 1

Checkpoints are synthetic transformer-like bf16 safetensors (embedding, attention and MLP
matrices, norms). Peak anonymous memory (RssAnon, i.e. not the mmap'd file pages) is sampled
from /proc every 20 ms.
"""
import argparse
import json
import os
import struct
import subprocess
import threading
import time

import numpy as np


def layout(gib):
    d, vocab, ff = 2048, 32000, 8192
    tensors = [("embed.weight", (vocab, d))]
    per_layer = 4 * d * d + 2 * d * ff + 2 * d
    layers = max(1, int((gib * 2**30 / 2 - vocab * d) // per_layer))
    for i in range(layers):
        for n in ("q", "k", "v", "o"):
            tensors.append((f"layers.{i}.attn.{n}.weight", (d, d)))
        tensors += [(f"layers.{i}.mlp.up.weight", (ff, d)), (f"layers.{i}.mlp.down.weight", (d, ff)),
                    (f"layers.{i}.norm1.weight", (d,)), (f"layers.{i}.norm2.weight", (d,))]
    return tensors


def write_checkpoint(path, tensors, seed):
    rng = np.random.default_rng(seed)
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in tensors:
            x = (rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02).view(np.uint32)
            f.write((x >> 16).astype(np.uint16).tobytes())


def measure(cmd, env=None):
    """Wall time and peak RssAnon (MiB) of a command."""
    peak = [0]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def poll():
        while p.poll() is None:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.02)

    th = threading.Thread(target=poll)
    th.start()
    out, err = p.communicate()
    th.join()
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return dt, peak[0], out


BASELINE = r'''
import sys, torch
from safetensors.torch import load_file, save_file
files, out = sys.argv[1:-1], sys.argv[-1]
avg = {}
for f in files:
    sd = load_file(f)
    for k, v in sd.items():
        if k in avg:
            avg[k] += v.to(torch.float64)
        else:
            avg[k] = v.to(torch.float64).clone()
    del sd
for k in avg:
    avg[k] = avg[k].div_(len(files)).to(torch.bfloat16)
save_file(avg, out)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--python", default="python3", help="a Python with torch and safetensors, for the baseline")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--cold", action="store_true",
                    help="also time cat and swa with the page cache dropped before each run (needs root)")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    tensors = layout(args.gib)
    files = []
    for i in range(args.models):
        p = os.path.join(args.dir, f"epoch_{i + 1:03d}.safetensors")
        if not os.path.exists(p):
            write_checkpoint(p, tensors, i)
        files.append(p)
    total = sum(os.path.getsize(f) for f in files)
    print(json.dumps({"checkpoints": len(files), "bytes_each": os.path.getsize(files[0]), "tensors": len(tensors), "cores": os.cpu_count()}), flush=True)

    subprocess.run(["sh", "-c", "cat \"$@\" > /dev/null", "cat", *files], check=True)  # warm the page cache
    cat = min(measure(["sh", "-c", "cat \"$@\" > /dev/null", "cat", *files])[0] for _ in range(3))
    results = {"cat_seconds": cat, "cat_gb_per_s": total / cat / 1e9}
    out = os.path.join(args.dir, "out")
    os.makedirs(out, exist_ok=True)
    runs = []
    for r in range(3):
        dst = os.path.join(out, "swa.safetensors")
        if os.path.exists(dst):
            os.remove(dst)
        dt, peak, _ = measure([args.swa, "average", "--quiet", *files, "-o", dst])
        runs.append((dt, peak))
        print(json.dumps({"impl": "swa average", "seconds": dt, "peak_anon_mib": peak}), flush=True)
    swa_s = min(r[0] for r in runs)
    results.update({"swa_seconds": swa_s, "swa_gb_per_s": total / swa_s / 1e9, "swa_peak_anon_mib": max(r[1] for r in runs),
                    "swa_vs_cat": cat / swa_s})
    if args.cold:
        def drop():
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        cold = {}
        for label, cmd in [("cat", ["sh", "-c", "cat \"$@\" > /dev/null", "cat", *files]),
                           ("swa", [args.swa, "average", "--quiet", *files, "-o", os.path.join(out, "swa.safetensors")])]:
            times = []
            for _ in range(2):
                drop()
                times.append(measure(cmd)[0])
            cold[label] = min(times)
            print(json.dumps({"impl": f"{label} (cold cache)", "seconds": times}), flush=True)
        results.update({"cold_cat_seconds": cold["cat"], "cold_swa_seconds": cold["swa"],
                        "cold_swa_vs_cat": cold["cat"] / cold["swa"]})
    if not args.skip_baseline:
        script = os.path.join(args.dir, "baseline.py")
        with open(script, "w") as f:
            f.write(BASELINE)
        dt, peak, _ = measure([args.python, script, *files, os.path.join(out, "torch.safetensors")])
        print(json.dumps({"impl": "pytorch (timm avg_checkpoints style)", "seconds": dt, "peak_anon_mib": peak}), flush=True)
        results.update({"torch_seconds": dt, "torch_peak_anon_mib": peak, "speedup_vs_torch": dt / swa_s})
    print(json.dumps({"summary": True, **{k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}}), flush=True)


if __name__ == "__main__":
    main()
