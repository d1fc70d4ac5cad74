#!/usr/bin/env python3
"""Summarises an ONNX Runtime profile (SWA_ORT_PROFILE=prefix swa recalibrate ...): time per
operator type and provider, against the time of each run, to see where a batch's time goes."""
import collections
import json
import sys

events = json.load(open(sys.argv[1]))
runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
by_op = collections.Counter()
count = collections.Counter()
for e in events:
    if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
        key = (e["args"].get("op_name"), e["args"].get("provider"))
        by_op[key] += e["dur"]
        count[key] += 1
total = sum(by_op.values())
print(f"runs: {len(runs)}, mean run {sum(runs) / max(len(runs), 1) / 1000:.2f} ms; node time {total / max(len(runs), 1) / 1000:.2f} ms per run")
for (op, prov), dur in by_op.most_common(25):
    print(f"{op:>22} {prov:>28} {dur / max(len(runs), 1) / 1000:8.3f} ms/run  x{count[(op, prov)] // max(len(runs), 1)}")
