#!/usr/bin/env python3
"""Runs one `swa` binary over the fixtures with a fixed set of commands and records everything it
prints and writes (timings zeroed), so that two binaries (before and after a refactoring) can be
compared: `compare_outputs.py record BIN DIR`, then `compare_outputs.py diff DIR_A DIR_B`.

Every command runs in the same absolute directory (/tmp/swa-compare/work, fixtures copied to
/tmp/swa-compare/fixtures), so paths recorded in outputs agree between the two runs. What differs
only by timing is zeroed: JSON keys about seconds and rates, the report's time table, the summary
lines that print rates.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path("/tmp/swa-compare")
FIX = ROOT / "fixtures"
WORK = ROOT / "work"

TIMING_KEYS = {"seconds", "samples_per_second", "seconds_first_batch", "samples_per_second_after_first"}


def zero_timings(v):
    if isinstance(v, dict):
        return {k: (0 if k in TIMING_KEYS and v[k] is not None else zero_timings(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [zero_timings(x) for x in v]
    return v


def normalise_text(s: str) -> str:
    s = re.sub(r"read (\S+ \S+) in [0-9.]+ s \([^)]*\)", r"read \1 in T s (R)", s)
    s = re.sub(r"[0-9]+ samples/s \([0-9]+ after the first batch, which took [0-9.]+ s\)", "R samples/s", s)
    s = re.sub(r"[0-9]+ samples/s", "R samples/s", s)
    # The report's time table (Markdown) and its seconds.
    s = re.sub(r"(\| [^|\n]+ \| )[0-9]+\.[0-9]{2}( \|)", lambda m: m.group(1) + "0.00" + m.group(2)
               if "%" not in m.group(0) else m.group(0), s)
    return s


def normalise_html(s: str) -> str:
    head, sep, tail = s.partition("<h2>Time</h2>")
    tail = re.sub(r"<td>[0-9]+\.[0-9]{2}</td>", "<td>0.00</td>", tail)
    s = head + sep + tail
    s = re.sub(r'"seconds":[0-9.e+-]+', '"seconds":0', s)
    return s


def file_digest(p: Path):
    name = p.name
    data = p.read_bytes()
    if name == "report.json" or (name.endswith(".json") and not name.endswith("index.json")):
        try:
            return json.dumps(zero_timings(json.loads(data)), indent=1)
        except ValueError:
            pass
    if name == "report.md":
        return normalise_text(data.decode())
    if name == "report.html":
        return normalise_html(data.decode())
    return hashlib.sha256(data).hexdigest()


def commands():
    f = str(FIX)
    cnn, mlp = f + "/cnn", f + "/mlp"
    ck = cnn + "/checkpoints"
    ev = ["--eval-inputs", cnn + "/eval.npy", "--eval-labels", cnn + "/eval_labels.npy"]
    ev_labels = ["--inputs", cnn + "/eval.npy", "--labels", cnn + "/eval_labels.npy"]
    sel = ["--select-inputs", cnn + "/select.npy", "--select-labels", cnn + "/select_labels.npy"]
    T = ["--threads", "1"]
    c = {
        # average
        "avg_json": ["average", ck, "--from", "4", "-o", "avg/swa.safetensors", "--json"],
        "avg_text": ["average", ck, "--last", "3", "-o", "avg2/swa.safetensors"],
        "avg_ema": ["average", ck, "--ema", "0.9", "-o", "ema.safetensors", "--json"],
        "avg_weights": ["average", ck, "--last", "2", "--weights", "1,3", "--dtype", "bf16", "-o", "w.safetensors"],
        "avg_buffers": ["average", ck, "--buffers", "average", "-o", "buf.safetensors", "--json"],
        "avg_resume": ["average", ck, "--from", "7", "--resume", "avg/swa.safetensors", "-o", "res.safetensors",
                       "--json"],
        "avg_sharded": ["average", ck, "--shard-size", "20KB", "-o", "sh/swa.safetensors.index.json", "--json"],
        "avg_part0": ["average", ck, "--shard-size", "20KB", "-o", "parts/swa.safetensors.index.json",
                      "--part", "0/2", "--json"],
        "avg_part1": ["average", ck, "--shard-size", "20KB", "-o", "parts/swa.safetensors.index.json",
                      "--part", "1/2", "--json"],
        "avg_pt": ["average", ck, "-o", "swa.pt", "--json"],
        "avg_torch_in": ["average", f + "/torch/cnn_ckpt", "--strip-prefix", "-o", "lightning.safetensors", "--json"],
        "avg_bad": ["average", ck, "--weights", "1,2", "-o", "bad.safetensors"],
        # recalibrate
        "rec_precise": ["recalibrate", "--model", cnn + "/model.onnx", "--weights", "avg/swa.safetensors",
                        "--inputs", cnn + "/train.npy", "-o", "rec/p.onnx", "--save-weights", "rec/p.safetensors",
                        "--json", *T],
        "rec_torch": ["recalibrate", "--model", cnn + "/model.onnx", "--weights", "avg/swa.safetensors",
                      "--inputs", cnn + "/train.npy", "--stats", "torch", "--batch-size", "32", "-o", "rec/t.onnx",
                      "--save-weights", "rec/t.safetensors", *T],
        "rec_npz": ["recalibrate", "--model", mlp + "/model.onnx", "--weights", mlp + "/checkpoints/epoch_006.safetensors",
                    "--inputs", mlp + "/train.npz", "-o", "rec/mlp.onnx", "--json", *T],
        "rec_images": ["recalibrate", "--model", cnn + "/model.onnx", "--inputs", f + "/images/train", "--resize",
                       "20", "--center-crop", "16", "--batch-size", "4", "-o", "rec/img.onnx", "--json", *T],
        "rec_part0": ["recalibrate", "--model", cnn + "/model.onnx", "--weights", "avg/swa.safetensors", "--inputs",
                      cnn + "/train.npy", "--shard", "0/2", "--partial-out", "stats/p0.safetensors", "--json", *T],
        "rec_part1": ["recalibrate", "--model", cnn + "/model.onnx", "--weights", "avg/swa.safetensors", "--inputs",
                      cnn + "/train.npy", "--shard", "1/2", "--partial-out", "stats/p1.safetensors", *T],
        "merge_stats": ["merge-stats", "stats/p1.safetensors", "stats/p0.safetensors", "--model", cnn + "/model.onnx",
                        "--weights", "avg/swa.safetensors", "-o", "stats/merged.onnx", "--save-weights",
                        "stats/merged.safetensors", "--json"],
        "merge_stats_text": ["merge-stats", "stats/p1.safetensors", "stats/p0.safetensors", "--model",
                             cnn + "/model.onnx", "--weights", "avg/swa.safetensors", "-o", "stats/merged2.onnx"],
        # evaluate
        "eval_json": ["evaluate", "--model", "rec/p.onnx", *ev_labels, "--json", *T],
        "eval_text": ["evaluate", "--model", cnn + "/model.onnx", "--weights", ck + "/epoch_003.safetensors",
                      *ev_labels, "--top-k", "2", "--min-accuracy", "0.99", *T],
        "eval_images": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", f + "/images/val", "--resize", "20",
                        "--center-crop", "16", "--batch-size", "5", "--json", *T],
        "eval_images_text": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", f + "/images/val", "--resize",
                             "20", "--center-crop", "16", *T],
        "eval_parquet": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", f + "/images/val.parquet",
                         "--resize", "20", "--center-crop", "16", "--json", *T],
        "eval_u8": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", f + "/images/val_u8.npy", "--labels",
                    f + "/images/expected/val_labels.npy", "--mean", "0.5", "--json", *T],
        "eval_part0": ["evaluate", "--model", "rec/p.onnx", *ev_labels, "--batch-size", "64", "--shard", "0/3",
                       "--partial-out", "ev/p0.json", "--json", *T],
        "eval_part1": ["evaluate", "--model", "rec/p.onnx", *ev_labels, "--batch-size", "64", "--shard", "1/3",
                       "--partial-out", "ev/p1.json", *T],
        "eval_part2": ["evaluate", "--model", "rec/p.onnx", *ev_labels, "--batch-size", "64", "--shard", "2/3",
                       "--partial-out", "ev/p2.json", *T],
        "merge_eval": ["merge-eval", "ev/p2.json", "ev/p0.json", "ev/p1.json", "--json"],
        "merge_eval_text": ["merge-eval", "ev/p2.json", "ev/p0.json", "ev/p1.json", "--min-accuracy", "0.5"],
        "eval_mlp": ["evaluate", "--model", mlp + "/model.onnx", "--weights", mlp + "/checkpoints/epoch_006.safetensors",
                     "--inputs", mlp + "/eval.npy", "--labels", mlp + "/eval_labels.npy", "--json", *T],
        # run
        "run_json": ["run", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--from", "4", "--train-inputs",
                     cnn + "/train.npy", *ev, "--stats", "torch", "--batch-size", "32", "--recalibrate-each",
                     "--out", "run1", "--json", *T],
        "run_text": ["run", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--last", "3", "--train-inputs",
                     cnn + "/train.npy", *ev, "--out", "run2", "--min-accuracy", "0.99", *T],
        "run_soup": ["run", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--from", "5", "--train-inputs",
                     cnn + "/train.npy", *ev, "--soup", "greedy", *sel, "--out", "run3", *T],
        "run_images": ["run", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--last", "2", "--train-inputs",
                       f + "/images/train", "--eval-inputs", f + "/images/val", "--resize", "20", "--center-crop",
                       "16", "--batch-size", "4", "--out", "run4", "--json", *T],
        # soup
        "soup_greedy": ["soup", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--train-inputs",
                        cnn + "/train.npy", *sel, "--eval-inputs", cnn + "/test.npy", "--eval-labels",
                        cnn + "/test_labels.npy", "-o", "soup/g.safetensors", "--onnx-out", "soup/g.onnx", "--json",
                        *T],
        "soup_uniform_text": ["soup", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--last", "4",
                              "--method", "uniform", "--train-inputs", cnn + "/train.npy", *sel, "-o",
                              "soup/u.safetensors", *T],
        "soup_topk_norecal": ["soup", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--method", "top-k:3",
                              "--no-recalibrate", "--train-inputs", cnn + "/train.npy", *sel, "-o",
                              "soup/k.safetensors", "--json", *T],
        # inspect
        "inspect_onnx": ["inspect", cnn + "/model.onnx", "--against", ck + "/epoch_003.safetensors"],
        "inspect_onnx_json": ["inspect", cnn + "/model.onnx", "--against", ck + "/epoch_003.safetensors", "--json"],
        "inspect_st": ["inspect", mlp + "/checkpoints/epoch_002.safetensors", "--json"],
        "inspect_torch": ["inspect", f + "/torch/cnn_ckpt/epoch=3-step=40.ckpt"],
        "inspect_torch_json": ["inspect", f + "/torch/timm/checkpoint-3.pth.tar", "--json"],
        "inspect_sharded": ["inspect", "sh", "--json"],
        "inspect_pt_out": ["inspect", "swa.pt"],
        # errors
        "err_missing": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", "nope.npy", "--labels", "x.npy"],
        "err_labels": ["evaluate", "--model", cnn + "/model.onnx", "--inputs", cnn + "/eval.npy"],
        "err_shard": ["evaluate", "--model", cnn + "/model.onnx", *ev_labels, "--shard", "0/2"],
        "err_bind": ["recalibrate", "--model", cnn + "/model.onnx", "--weights", mlp + "/checkpoints/epoch_001.safetensors",
                     "--inputs", cnn + "/train.npy", "-o", "x.onnx"],
        "err_torch1": ["recalibrate", "--model", cnn + "/model.onnx", "--inputs", cnn + "/train.npy", "--stats",
                       "torch", "--batch-size", "1", "-o", "x.onnx"],
        "err_streams": ["evaluate", "--model", cnn + "/model.onnx", *ev_labels, "--streams", "2"],
        "err_soup_train": ["soup", "--model", cnn + "/model.onnx", "--checkpoints", ck, *sel, "-o", "y.safetensors"],
        "soup_norecal_notrain": ["soup", "--model", cnn + "/model.onnx", "--checkpoints", ck, "--no-recalibrate", *sel,
                                 "-o", "soup/n.safetensors", "--json", *T],
    }
    return c


def record(binary: str, out: Path):
    if FIX.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(parents=True)
    shutil.copytree(Path(__file__).resolve().parent.parent / "fixtures", FIX, symlinks=True)
    WORK.mkdir()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)
    results = {}
    for name, args in commands().items():
        before = {p for p in WORK.rglob("*") if p.is_file()}
        p = subprocess.run([binary, "-q", *args], cwd=WORK, capture_output=True, env=env, text=True)
        stdout = p.stdout
        try:
            stdout = json.dumps(zero_timings(json.loads(stdout)), indent=1)
        except ValueError:
            stdout = normalise_text(stdout)
        written = {str(q.relative_to(WORK)): file_digest(q) for q in sorted(WORK.rglob("*"))
                   if q.is_file() and q not in before}
        results[name] = {"code": p.returncode, "stdout": stdout, "stderr": p.stderr, "files": written}
        print(f"{name}: exit {p.returncode}, {len(written)} files", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))


def diff(a: Path, b: Path):
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    bad = 0
    for name in ra:
        x, y = ra[name], rb.get(name)
        if y is None:
            print(f"{name}: missing in {b}")
            bad += 1
            continue
        for field in ("code", "stdout", "stderr", "files"):
            if x[field] != y[field]:
                bad += 1
                print(f"--- {name}: {field} differs")
                if field == "files":
                    for k in sorted(set(x["files"]) | set(y["files"])):
                        if x["files"].get(k) != y["files"].get(k):
                            print(f"   {k}: {str(x['files'].get(k))[:200]!r} vs {str(y['files'].get(k))[:200]!r}")
                else:
                    import difflib
                    print("".join(difflib.unified_diff(str(x[field]).splitlines(True), str(y[field]).splitlines(True))))
    print(f"{len(ra)} commands, {bad} differences")
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(1 if diff(Path(sys.argv[2]), Path(sys.argv[3])) else 0)
