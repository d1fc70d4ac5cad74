#!/usr/bin/env python3
"""Averaging benchmark: `swa average` against a PyTorch baseline written like timm's
avg_checkpoints.py (load each whole file, accumulate in float64, divide, save) and against the
time to read the same bytes (`cat files > /dev/null`, page cache warm), in the same run.

    python3 bench/average_bench.py --swa target/release/swa --dir /var/tmp/swa-bench --models 6 --gib 1

Checkpoints are synthetic transformer-like bf16 safetensors (embedding, attention and MLP
matrices, norms). Peak anonymous memory (RssAnon, i.e. not the mmap'd file pages) is sampled
from /proc every 20 ms.

With `--runs N`, `cat`, the I/O limit of an average (`cat` of the inputs, then `dd` of one output's
bytes into a new file, with and without `conv=fsync`: `swa` syncs its output before renaming it)
and `swa average` (and `--swa-before`, an older binary whose output must be byte-identical) are
run N times each, interleaved, with their user and system CPU seconds; medians are reported.
"""
import argparse
import filecmp
import json
import os
import resource
import statistics
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


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def measure(cmd, env=None, cpu=None):
    """Wall time and peak RssAnon (MiB) of a command; with `cpu` (a list), appends its user and
    system seconds."""
    peak = [0]
    before = cpu_children()
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
    if cpu is not None:
        after = cpu_children()
        cpu.extend([after[0] - before[0], after[1] - before[1]])
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
    ap.add_argument("--runs", type=int, default=0,
                    help="time cat, the I/O limit and swa this many times each, interleaved, with CPU seconds")
    ap.add_argument("--swa-before", help="an older swa binary to time in the same interleaved runs")
    ap.add_argument("--threads", type=int, help="RAYON_NUM_THREADS for swa")
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
    if args.runs:
        interleaved(args, files, total)
        return
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


def interleaved(args, files, total):
    """`--runs`: cat, the I/O limit, swa (and swa-before), interleaved; medians of wall, user and
    system seconds, and the peak RssAnon of swa."""
    out = os.path.join(args.dir, "out")
    os.makedirs(out, exist_ok=True)
    dst = os.path.join(out, "dd.bin")
    mib = -(-os.path.getsize(files[0]) // 2**20)
    cat = ["sh", "-c", "cat \"$@\" > /dev/null", "cat", *files]
    dd = f"dd if=/dev/zero of={dst} bs=1M count={mib} status=none"
    env = dict(os.environ, **({"RAYON_NUM_THREADS": str(args.threads)} if args.threads else {}))
    cmds = {"cat": cat,
            "cat + dd": ["sh", "-c", f"cat \"$@\" > /dev/null; {dd}", "cat", *files],
            "cat + dd conv=fsync": ["sh", "-c", f"cat \"$@\" > /dev/null; {dd} conv=fsync", "cat", *files]}
    for label, binary in [("swa before", args.swa_before), ("swa", args.swa)]:
        if binary:
            cmds[label] = [binary, "average", "--quiet", *files, "-o", os.path.join(out, f"{label.replace(' ', '-')}.safetensors")]
    # What each command writes (removed before it runs; never an input).
    writes = {k: (cmd[-1] if k.startswith("swa") else dst) for k, cmd in cmds.items()}
    runs = {k: [] for k in cmds}
    for _ in range(args.runs):
        for label, cmd in cmds.items():
            if os.path.exists(writes[label]):
                os.remove(writes[label])
            subprocess.run(["sync"], check=True)  # no earlier run's dirty pages in the way
            cpu = []
            dt, peak, _ = measure(cmd, env=env, cpu=cpu)
            runs[label].append((dt, *cpu, peak))
            print(json.dumps({"impl": label, "seconds": round(dt, 3), "user": round(cpu[0], 3),
                              "sys": round(cpu[1], 3), "peak_anon_mib": peak}), flush=True)
    if args.swa_before:
        same = filecmp.cmp(writes["swa"], writes["swa before"], shallow=False)
        print(json.dumps({"outputs_identical": same}), flush=True)
    med = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in runs.items()}
    summary = {k: {"wall": round(m[0], 3), "user": round(m[1], 3), "sys": round(m[2], 3),
                   "gb_per_s": round(total / m[0] / 1e9, 2), "cat_over_this": round(med["cat"][0] / m[0], 3),
                   "peak_anon_mib": max(r[3] for r in runs[k])} for k, m in med.items()}
    print(json.dumps({"summary": True, "runs": args.runs, "medians": summary}), flush=True)


if __name__ == "__main__":
    main()
