#!/usr/bin/env python3
"""The whole job, as users run it: `swa run` against the PyTorch script that does the same.

CIFAR-style ResNet-18 (bench/soup_bench.py's model and synthetic checkpoints), K checkpoints,
random inputs. Both sides, timed as whole processes from reading the files to writing the result:
  - evaluate every checkpoint on the eval split (its stored BatchNorm statistics),
  - average all of them (float64 sum, then cast to float32),
  - evaluate the average with the newest checkpoint's statistics,
  - recalibrate BatchNorm (update_bn: momentum None, only BatchNorm in train mode, batches of
    --batch train samples in order; swa --stats torch),
  - evaluate the recalibrated average, and write it (safetensors).
swa writes its report (JSON, Markdown, HTML) and the ONNX model besides.

    python3 bench/run_bench.py --swa target/release/swa --k 5 --train 2048 --eval 1024 --threads 2 --runs 3

Prints one JSON line per measurement, then a summary (medians, runs interleaved).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TORCH_JOB = r'''
import sys, time, json
start = time.perf_counter()
import numpy as np, torch
from safetensors.torch import load_file, save_file
sys.path.insert(0, {here!r})
from soup_bench import ResNet18, recalibrate, evaluate
torch.set_num_threads({threads})
ckpts, train, evalx, evaly, out = {ckpts!r}, {train!r}, {evalx!r}, {evaly!r}, {out!r}
x_train = torch.from_numpy(np.load(train))
x_eval = torch.from_numpy(np.load(evalx))
y_eval = torch.from_numpy(np.load(evaly))
model = ResNet18({classes})
rows = []
total = None
for p in ckpts:
    sd = load_file(p)
    model.load_state_dict(sd)
    rows.append(evaluate(model, x_eval, y_eval, {eval_batch}))
    if total is None:
        total = {{k: v.double() for k, v in sd.items() if v.is_floating_point()}}
    else:
        for k in total:
            total[k] += sd[k].double()
avg = dict(sd)
for k, v in total.items():
    avg[k] = (v / len(ckpts)).float()
model.load_state_dict(avg)
stored = evaluate(model, x_eval, y_eval, {eval_batch})
recalibrate(model, x_train, {batch})
recal = evaluate(model, x_eval, y_eval, {eval_batch})
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, out)
print(json.dumps({{"seconds": time.perf_counter() - start, "checkpoints": rows, "stored": stored, "recalibrated": recal}}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--swa", required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--train", type=int, default=2048)
    ap.add_argument("--eval", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    from soup_bench import make_checkpoints

    with tempfile.TemporaryDirectory() as work:
        # make_checkpoints names its splits train/select: the select split is our eval split.
        args.select = args.eval
        onnx_path, ckdir, ckpts, paths, _ = make_checkpoints(work, args)
        script = TORCH_JOB.format(here=HERE, threads=args.threads, ckpts=ckpts, train=paths["train"],
                                  evalx=paths["select"], evaly=paths["labels"], out=os.path.join(work, "torch_swa.safetensors"),
                                  classes=args.classes, eval_batch=args.eval_batch, batch=args.batch)
        script_path = os.path.join(work, "torch_job.py")
        with open(script_path, "w") as f:
            f.write(script)
        times = {"pytorch": [], "swa": []}
        for r in range(args.runs):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, script_path], check=True, capture_output=True, text=True)
            t_torch = time.perf_counter() - t0
            torch_res = json.loads(out.stdout.strip().splitlines()[-1])
            swa_out = os.path.join(work, f"swa-out-{r}")
            t0 = time.perf_counter()
            res = subprocess.run([args.swa, "run", "--model", onnx_path, "--checkpoints", ckdir,
                                  "--train-inputs", paths["train"], "--eval-inputs", paths["select"],
                                  "--eval-labels", paths["labels"], "--stats", "torch", "--batch-size", str(args.batch),
                                  "--eval-batch-size", str(args.eval_batch), "--threads", str(args.threads),
                                  "--out", swa_out, "--json"], check=True, capture_output=True, text=True)
            t_swa = time.perf_counter() - t0
            report = json.loads(res.stdout)
            times["pytorch"].append(t_torch)
            times["swa"].append(t_swa)
            print(json.dumps({"run": r, "pytorch_s": round(t_torch, 3), "swa_s": round(t_swa, 3),
                              "pytorch_recalibrated_correct": torch_res["recalibrated"][0],
                              "swa_recalibrated_top1": report["swa_recalibrated"]["top1"],
                              "swa_timings": report.get("timings")}))
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{args.k} checkpoints, {args.train} train / {args.eval} eval samples, batch {args.batch}/{args.eval_batch}, "
              f"{args.threads} threads, median of {args.runs}: PyTorch {med['pytorch']:.2f} s, swa {med['swa']:.2f} s, "
              f"{med['pytorch'] / med['swa']:.2f}x")


if __name__ == "__main__":
    main()
