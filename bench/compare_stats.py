#!/usr/bin/env python3
"""Compares the running statistics of two safetensors files: max relative difference per tensor.

    python3 bench/compare_stats.py ACTUAL.safetensors EXPECTED.safetensors [--rel 1e-4] [--abs 1e-6]
Exit code 1 when a value is further than rel*|expected| + abs. Needs only numpy.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        out[name] = np.frombuffer(data[s:e], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def main():
    args = sys.argv[1:]
    rel = float(args[args.index("--rel") + 1]) if "--rel" in args else 1e-4
    ab = float(args[args.index("--abs") + 1]) if "--abs" in args else 1e-6
    actual, expected = load(args[0]), load(args[1])
    worst, bad = 0.0, 0
    for name, e in expected.items():
        if not (name.endswith("running_mean") or name.endswith("running_var")):
            continue
        a = actual[name].astype(np.float64)
        e = e.astype(np.float64)
        d = np.abs(a - e)
        worst = max(worst, float((d / (np.abs(e) + 1e-12)).max()))
        bad += int((d > rel * np.abs(e) + ab).sum())
    print(json.dumps({"compared": sum(1 for n in expected if "running_" in n), "max_rel_diff": worst, "out_of_tolerance": bad, "rel": rel, "abs": ab}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
