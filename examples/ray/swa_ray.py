#!/usr/bin/env python3
"""A whole SWA job on a Ray cluster: one task per part calling the `swa` binary, then the merges.

    average      N tasks: swa average --part I/N   (the part finishing last writes the index)
    recalibrate  N tasks: swa recalibrate --shard I/N --partial-out   -> swa merge-stats
    evaluate     N tasks: swa evaluate --shard I/N --partial-out      -> swa merge-eval

Every path must be on a file system all workers see (on a laptop: a local directory). `ray.init()`
starts a local cluster; `--address auto` (or ray://HOST:10001) joins a running one.

    python3 examples/ray/swa_ray.py --swa target/release/swa --model fixtures/cnn/model.onnx \
        --checkpoints fixtures/cnn/checkpoints --from 4 --train-inputs fixtures/cnn/train.npy \
        --eval-inputs fixtures/cnn/eval.npy --eval-labels fixtures/cnn/eval_labels.npy \
        --parts 2 --out /tmp/swa-ray
"""

import argparse
import json
import os
import subprocess
import sys
import time

import ray


@ray.remote(num_cpus=1)
def swa_task(argv, threads):
    """Runs one `swa` command on a worker; returns its stdout (raises with its stderr on failure)."""
    started = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return {"argv": argv, "stdout": done.stdout, "seconds": time.time() - started}


def run_all(argvs, threads):
    """Runs the commands as Ray tasks at once and waits for every one."""
    return ray.get([swa_task.remote(a, threads) for a in argvs])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swa", required=True, help="the swa binary (same path on every worker)")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoints", required=True, nargs="+")
    p.add_argument("--from", dest="from_", type=int, help="first checkpoint number to average")
    p.add_argument("--train-inputs", required=True)
    p.add_argument("--eval-inputs", required=True)
    p.add_argument("--eval-labels", required=True)
    p.add_argument("--parts", type=int, default=2, help="tasks per stage (N of --shard I/N)")
    p.add_argument("--shard-size", default="5GiB", help="output shard size of the average")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--stats", default="precise", choices=["precise", "torch"])
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per task")
    p.add_argument("--address", help="a running Ray cluster (auto, ray://HOST:10001); default: start a local one")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--out", required=True, help="output directory (shared by all workers)")
    a = p.parse_args()

    os.makedirs(a.out, exist_ok=True)
    out = lambda *names: os.path.join(a.out, *names)  # noqa: E731
    swa, n = os.path.abspath(a.swa), a.parts
    threads = ["--threads", str(a.threads)]
    clock, timings = time.time(), {}
    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.num_cpus, include_dashboard=False)
    timings["ray.init"] = time.time() - clock

    # 1. Average: each part writes its own output shards; the last to finish writes the index.
    t = time.time()
    avg = out("swa.safetensors.index.json")
    select = ["--from", str(a.from_)] if a.from_ is not None else []
    base = [swa, "average", "-q", *a.checkpoints, *select, "-o", avg, "--shard-size", a.shard_size]
    run_all([base + ["--part", f"{i}/{n}"] for i in range(n)], a.threads)
    if not os.path.exists(avg):  # every part saw another still running: check and index now.
        subprocess.run(base + ["--merge-parts"], check=True, capture_output=True)
    timings["average"] = time.time() - t

    # 2. Recalibrate: partial statistics per part, merged with Chan's formula.
    t = time.time()
    model = ["--model", a.model, "--weights", avg]
    rec = [swa, "recalibrate", "-q", *model, "--inputs", a.train_inputs, "--batch-size", str(a.batch_size)]
    rec += ["--stats", a.stats, *threads]
    partials = [out(f"stats-{i}-of-{n}.safetensors") for i in range(n)]
    run_all([rec + ["--shard", f"{i}/{n}", "--partial-out", partials[i]] for i in range(n)], a.threads)
    merged = [swa, "merge-stats", "-q", *partials, *model, "-o", out("model_swa.onnx")]
    merged += ["--save-weights", out("swa_bn.safetensors")]
    subprocess.run(merged, check=True, capture_output=True)
    timings["recalibrate"] = time.time() - t

    # 3. Evaluate the recalibrated model: counts per part, added up.
    t = time.time()
    ev = [swa, "evaluate", "-q", "--model", out("model_swa.onnx"), "--inputs", a.eval_inputs]
    ev += ["--labels", a.eval_labels, "--batch-size", str(a.eval_batch_size), *threads]
    parts = [out(f"eval-{i}-of-{n}.json") for i in range(n)]
    run_all([ev + ["--shard", f"{i}/{n}", "--partial-out", parts[i]] for i in range(n)], a.threads)
    report = subprocess.run([swa, "merge-eval", "--json", *parts], check=True, capture_output=True, text=True)
    metrics = json.loads(report.stdout)
    timings["evaluate"] = time.time() - t
    ray.shutdown()

    summary = {"parts": n, "metrics": metrics, "seconds": timings, "outputs": sorted(os.listdir(a.out))}
    with open(out("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({"top1": metrics["top1"], "samples": metrics["samples"], "seconds": timings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
