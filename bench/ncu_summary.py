#!/usr/bin/env python3
"""Summarise an Nsight Compute CSV of kernel durations (`ncu --metrics gpu__time_duration.sum --csv`).

    python3 bench/ncu_summary.py LOG.csv --batches 3 [--top 15]

Prints the GPU time per batch (all kernels, serialised as ncu runs them) and the kernels that
take most of it, grouped by name.
"""
import argparse
import collections
import csv
import io
import json

UNITS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--batches", type=int, required=True)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    lines = open(args.log, errors="replace").read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    by_name = collections.defaultdict(lambda: [0.0, 0])
    total = 0.0
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ms = float(r["Metric Value"].replace(",", "")) * UNITS[r["Metric Unit"]]
        name = r["Kernel Name"]
        name = name if len(name) <= 90 else name[:87] + "..."
        by_name[name][0] += ms
        by_name[name][1] += 1
        total += ms
    per = args.batches
    print(json.dumps({"label": args.label, "kernels": sum(c for _, c in by_name.values()),
                      "gpu_ms_per_batch": round(total / per, 3)}))
    for name, (ms, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{ms / per:9.3f} ms/batch  x{count / per:5.1f}  {name}")


if __name__ == "__main__":
    main()
