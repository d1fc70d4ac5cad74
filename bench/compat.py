#!/usr/bin/env python3
"""Compatibility of `swa recalibrate --stats torch` with PyTorch on torchvision architectures.

For each model (random init, fixed seed, 64x64 inputs, 128 samples, batches of 32) and each
exporter (`torch.onnx.export(dynamo=False)` with BatchNorm kept, and `dynamo=True, optimize=False`)
this exports the model, runs `swa recalibrate --stats torch` on its state dict, and compares the
running statistics with PyTorch's `update_bn` loop in float32 and in float64 (`model.double()`):

  swa err      max over BN channels of |var - var64| / var64 and |mean - mean64| / sqrt(var64)
  torch32 err  the same for PyTorch's own float32 statistics (the floor: float32 activations)
  ratio        swa err / torch32 err (the target is <= 2)
  agree        top-1 agreement of the recalibrated ONNX model (ONNX Runtime) with PyTorch float32
               in eval mode with update_bn's statistics, on 64 held-out samples; and max |dlogit|
               over max |logit|
  train-mode   max relative difference of running_var between update_bn itself (the whole model in
               train mode: dropout and stochastic depth drop units) and the like-for-like loop

The like-for-like loop is update_bn's (momentum=None, running statistics reset, the same batches in
the same order) with only the BatchNorm layers in train mode: swa keeps every other layer in
inference mode during its pass, as `model.eval()` does.

    /work/venv/bin/python bench/compat.py --swa target/release/swa [--models resnet18,...]
        [--exporters torchscript,dynamo] [--threads 2] [--size 64] [--samples 128] [--swa-args "--device cuda"]
        [--markdown]

Needs torch, torchvision, onnx, onnxscript (dynamo=True), onnxruntime, safetensors, numpy.
Exit code 1 when a model that has BatchNorm is refused or misses the target ratio.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import update_bn

MODELS = [
    "resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "shufflenet_v2_x0_5",
    "regnet_x_400mf", "mnasnet0_5", "googlenet", "convnext_tiny",
]
EXPORTERS = ["torchscript", "dynamo"]
SIZE, SAMPLES, BATCH, HELD_OUT, SEED = 64, 128, 32, 64, 0
TARGET_RATIO = 2.0


def build(name):
    torch.manual_seed(SEED)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def bn_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def recalibrate_bn_only(model, x):
    """update_bn's loop with only BatchNorm in train mode (what swa computes)."""
    bns = bn_modules(model).values()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            model(x[i:i + BATCH])
    model.eval()
    return model


def stats_of(model):
    return {n: (m.running_mean.double().numpy().copy(), m.running_var.double().numpy().copy())
            for n, m in bn_modules(model).items()}


def error(got, ref):
    """Max over layers and channels of the variance's relative error and the mean's error in
    standard deviations."""
    var_err = mean_err = 0.0
    for n, (m64, v64) in ref.items():
        m, v = got[n]
        var_err = max(var_err, float(np.max(np.abs(v - v64) / v64)))
        mean_err = max(mean_err, float(np.max(np.abs(m - m64) / np.sqrt(v64))))
    return var_err, mean_err


def export(model, exporter, path):
    x = torch.zeros(2, 3, SIZE, SIZE)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))


def onnx_logits(path, x):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def run_one(name, exporter, args, work, data):
    x, held = data
    row = {"model": name, "exporter": exporter}
    model = build(name)
    bns = bn_modules(model)
    row["bn_layers"] = len(bns)
    onnx_path = os.path.join(work, f"{name}-{exporter}.onnx")
    t = time.time()
    try:
        export(model, exporter, onnx_path)
    except Exception as e:  # noqa: BLE001 - the table says which exporter fails
        row["status"] = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return row
    row["export_s"] = time.time() - t
    weights = os.path.join(work, f"{name}.safetensors")
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, weights)
    out_onnx, out_w = os.path.join(work, f"{name}-{exporter}-swa.onnx"), os.path.join(work, f"{name}-{exporter}-swa.safetensors")
    cmd = [args.swa, "recalibrate", "--model", onnx_path, "--weights", weights, "--inputs", data_path(work),
           "--batch-size", str(BATCH), "--stats", "torch", "--threads", str(args.threads), "--json", "--quiet",
           "-o", out_onnx, "--save-weights", out_w, *args.swa_args.split()]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    row["swa_s"] = time.time() - t
    if p.returncode != 0:
        # "swa: error: PATH: has no BatchNormalization node, so ...": the reason, without the path.
        why = " ".join(p.stderr.split()).removeprefix("swa: error: ").removeprefix(onnx_path + ": ")
        row["status"] = "refused: " + why.split(",")[0][:120]
        return row
    summary = json.loads(p.stdout)
    row["swa_pass_s"] = summary["seconds"]
    saved = load_file(out_w)
    got = {n: (saved[f"{n}.running_mean"].double().numpy(), saved[f"{n}.running_var"].double().numpy()) for n in bns}

    ref32 = recalibrate_bn_only(build(name), torch.from_numpy(x))
    ref64 = recalibrate_bn_only(build(name).double(), torch.from_numpy(x).double())
    s32, s64 = stats_of(ref32), stats_of(ref64)
    row["swa_var_err"], row["swa_mean_err"] = error(got, s64)
    row["torch32_var_err"], row["torch32_mean_err"] = error(s32, s64)
    row["swa_vs_torch32_var"], _ = error(got, s32)
    row["ratio"] = max(row["swa_var_err"], row["swa_mean_err"]) / max(row["torch32_var_err"], row["torch32_mean_err"])

    with torch.no_grad():
        want = ref32(torch.from_numpy(held)).numpy()
    have = onnx_logits(out_onnx, held)
    row["agree"] = float(np.mean(want.argmax(1) == have.argmax(1)))
    row["logit_diff"] = float(np.max(np.abs(have - want)) / np.max(np.abs(want)))

    # update_bn itself: the whole model in train mode.
    full = build(name)
    torch.manual_seed(SEED)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=BATCH)
    update_bn(loader, full)
    sf = stats_of(full)
    row["train_mode_var_diff"] = max(float(np.max(np.abs(sf[n][1] - s32[n][1]) / s32[n][1])) for n in s32)
    row["status"] = "ok"
    return row


def data_path(work):
    return os.path.join(work, "train.npy")


def markdown(rows):
    out = ["| model | exporter | BN layers | swa err (vs f64) | PyTorch f32 err | ratio | var vs f32 `update_bn` | "
           "top-1 agree | max Δlogit | `update_bn` train-mode var diff |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['model']} | {r['exporter']} | {r.get('bn_layers', '')} | {r['status']} | | | | | | |")
            continue
        swa = max(r["swa_var_err"], r["swa_mean_err"])
        t32 = max(r["torch32_var_err"], r["torch32_mean_err"])
        out.append(f"| {r['model']} | {r['exporter']} | {r['bn_layers']} | {swa:.1e} | {t32:.1e} | {r['ratio']:.2f} | "
                   f"{r['swa_vs_torch32_var']:.1e} | {r['agree'] * 100:.0f} % | {r['logit_diff']:.1e} | "
                   f"{r['train_mode_var_diff']:.1e} |")
    return "\n".join(out)


def main():
    global SIZE, SAMPLES
    ap = argparse.ArgumentParser()
    ap.add_argument("--swa", default="target/release/swa")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--swa-args", default="", help="more arguments for swa recalibrate, e.g. \"--device cuda\"")
    ap.add_argument("--markdown", action="store_true", help="print the table for docs/compatibility.md")
    args = ap.parse_args()
    SIZE, SAMPLES = args.size, args.samples
    args.swa = os.path.abspath(args.swa)
    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="swa-compat-")
    os.makedirs(work, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(SAMPLES + HELD_OUT, 3, SIZE, SIZE, generator=gen).numpy()
    train, held = x[:SAMPLES], x[SAMPLES:]
    np.save(data_path(work), train)
    rows, failed = [], False
    for name in args.models.split(","):
        for exporter in args.exporters.split(","):
            t = time.time()
            row = run_one(name, exporter, args, work, (train, held))
            row["total_s"] = time.time() - t
            print(json.dumps(row), flush=True)
            rows.append(row)
            has_bn = row.get("bn_layers", 0) > 0
            if has_bn and (row["status"].startswith("refused") or row.get("ratio", 0) > TARGET_RATIO):
                failed = True
    if args.markdown:
        print(markdown(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
