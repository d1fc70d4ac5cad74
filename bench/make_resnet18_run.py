#!/usr/bin/env python3
"""A small real training run of torchvision's ResNet-18 for `swa run --ensemble --swag`, and the
PyTorch baseline of the same work, timed.

    /work/venv/bin/python bench/make_resnet18_run.py /tmp/resnet18-run          # ~3-4 min on 2 cores
    /work/venv/bin/python bench/make_resnet18_run.py OUT --skip-baseline        # training only
    /work/venv/bin/python bench/make_resnet18_run.py OUT --baseline-only        # time again on OUT

No downloads: the images are synthetic but learnable — 32x32 RGB, 10 classes, each a shape (disc,
square, triangle, cross, horizontal / vertical stripes, ring, X, checkerboard, two dots) at a random
position, size and colour on a textured, noisy background (numpy default_rng(SEED)), standardised.

Training: torchvision.models.resnet18(weights=None, num_classes=10), SGD (momentum 0.9, Nesterov
off, weight decay 5e-4), batch 64, shuffled (torch seed), EPOCHS epochs: cosine from LR to SWA_LR
over the first EPOCHS - SWA_EPOCHS epochs, then the constant SWA_LR (the SWA phase). The state dict
is saved after every epoch.

Writes into OUT (argv[1]):
  checkpoints/epoch_NN.safetensors   state dict after epoch NN (01..EPOCHS)
  model.onnx                         the trained model exported with BatchNorm kept
                                     (training=PRESERVE, no constant folding, dynamic batch axis,
                                     dynamo=False), input "input" [N,3,32,32], output "logits"
  train.npy, train_labels.npy        float32 [TRAIN,3,32,32], int64 [TRAIN]
  eval.npy, eval_labels.npy          held-out split (figures)
  select.npy, select_labels.npy      calibration split (temperature scaling)
  training.json                      the settings, per-epoch LR, train loss, eval top-1 / NLL (stored
                                     statistics), the ONNX-vs-PyTorch logits check, timings
  baseline.json                      the PyTorch baseline of `swa run --ensemble --swag`, timed
                                     (unless --skip-baseline):
    checkpoints   every checkpoint evaluated on eval.npy with its stored statistics (eval mode,
                  batches of EVAL_BATCH), softmax in float64 accumulated for the ensemble
    ensemble      the mean softmax of all checkpoints scored (NLL, top-1, ECE, Brier)
    moments       SWAG moments over all checkpoints in epoch order, float64, the last K deviations
                  (fixtures/swag/make_swag_fixture.py's definitions)
    swag          SAMPLES samples (numpy default_rng(2026) draws, scale 0.5, full rank): theta in
                  float64 -> float32 loaded with the newest checkpoint's buffers, update_bn on the
                  first BN_SAMPLES training samples in order (batches of BN_BATCH, momentum None),
                  evaluation on eval.npy, the BMA scored
  Times are wall-clock seconds (time.perf_counter) in this process, torch threads = --threads;
  `total` is from reading the first checkpoint to the last figure (the import of torch and the
  reading of the .npy files are `startup`, reported apart).
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import update_bn

CLASSES = 10
SIZE = 32
SEED = 0
# each class's shape colour: a class-dependent hue, jittered per image (a cue that is learnt early,
# the shape is learnt later)
PALETTE = np.random.default_rng(123).uniform(0.2, 1.0, (CLASSES, 3))


# ---------------------------------------------------------------- data

def make_images(n, rng):
    """n synthetic 32x32 RGB images of 10 shape classes; returns float32 [n,3,32,32] in ~[0,1], int64 labels."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i, c in enumerate(labels):
        r = rng.uniform(5.0, 9.0)                          # half-size
        cy, cx = rng.uniform(r + 1, SIZE - r - 1, 2)
        dy, dx = yy - cy, xx - cx
        inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
        if c == 0:      # disc
            m = dy ** 2 + dx ** 2 <= r ** 2
        elif c == 1:    # square
            m = inside
        elif c == 2:    # triangle (apex up)
            m = inside & (np.abs(dx) <= (dy + r) / 2)
        elif c == 3:    # plus
            w = r / 3
            m = inside & ((np.abs(dy) <= w) | (np.abs(dx) <= w))
        elif c == 4:    # horizontal stripes
            m = inside & (np.floor((dy + r) / 2.5) % 2 == 0)
        elif c == 5:    # vertical stripes
            m = inside & (np.floor((dx + r) / 2.5) % 2 == 0)
        elif c == 6:    # ring
            d = np.sqrt(dy ** 2 + dx ** 2)
            m = (d <= r) & (d >= 0.55 * r)
        elif c == 7:    # X
            w = r / 4
            m = inside & ((np.abs(dy - dx) <= w) | (np.abs(dy + dx) <= w))
        elif c == 8:    # checkerboard
            m = inside & ((np.floor((dy + r) / 3) + np.floor((dx + r) / 3)) % 2 == 0)
        else:           # two dots
            rr = r / 2.6
            m = ((dy - r / 2) ** 2 + (dx - r / 2) ** 2 <= rr ** 2) | ((dy + r / 2) ** 2 + (dx + r / 2) ** 2 <= rr ** 2)
        bg = rng.uniform(0.0, 0.6, 3).astype(np.float32)
        fg = np.clip(PALETTE[c] + rng.normal(0.0, 0.2, 3), 0.0, 1.0).astype(np.float32)
        while np.abs(fg - bg).sum() < 0.6:                 # visible against the background
            bg = rng.uniform(0.0, 0.6, 3).astype(np.float32)
        # background texture: a random low-frequency wave
        f = rng.uniform(0.1, 0.5, 2)
        ph = rng.uniform(0, 2 * np.pi)
        tex = 0.12 * np.sin(f[0] * yy + f[1] * xx + ph)
        img = bg[:, None, None] + tex[None]
        img = np.where(m[None], fg[:, None, None], img)
        img = img + rng.normal(0.0, 0.12, img.shape)
        out[i] = img.astype(np.float32)
    return out, labels.astype(np.int64)


def standardise(x, mean, std):
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


# ---------------------------------------------------------------- figures (as fixtures/swag/make_swag_fixture.py)

def softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def figures(p, y, bins=15):
    c = p.max(axis=1)
    correct = (p.argmax(axis=1) == y)
    idx = np.clip(np.ceil(c * bins).astype(np.int64), 1, bins) - 1
    ece = sum(abs(correct[idx == b].sum() - c[idx == b].sum()) for b in range(bins)) / len(y)
    onehot = np.eye(p.shape[1])[y]
    return {
        "nll": float(-np.log(p[np.arange(len(y)), y]).mean()),
        "top1": float(correct.mean()),
        "ece": float(ece),
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
    }


def new_model():
    return torchvision.models.resnet18(weights=None, num_classes=CLASSES)


def logits(model, x, batch):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


# ---------------------------------------------------------------- training

def train(out, args):
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    n = args.train + args.eval + args.select
    x, y = make_images(n, rng)
    mean = x[:args.train].mean(axis=(0, 2, 3))
    std = x[:args.train].std(axis=(0, 2, 3))
    x = standardise(x, mean, std)
    splits = {
        "train": (x[:args.train], y[:args.train]),
        "eval": (x[args.train:args.train + args.eval], y[args.train:args.train + args.eval]),
        "select": (x[args.train + args.eval:], y[args.train + args.eval:]),
    }
    for name, (xs, ys) in splits.items():
        np.save(os.path.join(out, f"{name}.npy"), np.ascontiguousarray(xs))
        np.save(os.path.join(out, f"{name}_labels.npy"), ys)
    t_data = time.perf_counter() - t0

    torch.manual_seed(SEED)
    model = new_model()
    xtr, ytr = (torch.from_numpy(a) for a in splits["train"])
    xev, yev = torch.from_numpy(splits["eval"][0]), splits["eval"][1]
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(SEED + 1)
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    decay = args.epochs - args.swa_epochs
    epochs = []
    for epoch in range(1, args.epochs + 1):
        if epoch <= decay:   # cosine from lr (epoch 1) towards swa_lr (reached at the first SWA epoch)
            lr = args.swa_lr + (args.lr - args.swa_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / decay))
        else:
            lr = args.swa_lr
        for g in opt.param_groups:
            g["lr"] = lr
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(args.train, generator=gen)
        total, seen = 0.0, 0
        for i in range(0, args.train, args.batch):
            idx = perm[i:i + args.batch]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(out, "checkpoints", f"epoch_{epoch:02d}.safetensors"), metadata={"epoch": str(epoch)})
        train_s = time.perf_counter() - te
        f = figures(softmax64(logits(model, xev, 250)), yev)
        row = {"epoch": epoch, "lr": lr, "train_loss": total / seen, "eval_top1": f["top1"], "eval_nll": f["nll"],
               "seconds": train_s}
        epochs.append(row)
        print(f"epoch {epoch:2d} lr {lr:.4f} train loss {row['train_loss']:.4f} eval top1 {f['top1']:.4f} "
              f"nll {f['nll']:.4f} ({train_s:.1f} s)", flush=True)
    t_train = time.perf_counter() - t0 - t_data

    model.eval()
    onnx_path = os.path.join(out, "model.onnx")
    torch.onnx.export(
        model, (torch.zeros(2, 3, SIZE, SIZE),), onnx_path,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False,
    )
    check = None
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        z_onnx = sess.run(None, {"input": splits["eval"][0][:64]})[0]
        check = float(np.abs(z_onnx - logits(model, xev[:64], 64)).max())
        print(f"onnx vs torch logits max abs diff {check:.3g}")
    except ImportError:
        pass
    info = {
        "model": "torchvision.models.resnet18(weights=None, num_classes=10)",
        "seed": SEED, "train": args.train, "eval": args.eval, "select": args.select, "size": SIZE,
        "standardise": {"mean": mean.tolist(), "std": std.tolist()},
        "epochs": args.epochs, "swa_epochs": args.swa_epochs, "lr": args.lr, "swa_lr": args.swa_lr,
        "batch": args.batch, "momentum": 0.9, "weight_decay": 5e-4, "threads": torch.get_num_threads(),
        "per_epoch": epochs, "onnx_vs_torch_logits_max_abs": check,
        "seconds": {"data": t_data, "train": t_train},
        "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
    }
    with open(os.path.join(out, "training.json"), "w") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")
    print(f"data {t_data:.1f} s, training {t_train:.1f} s")


# ---------------------------------------------------------------- the baseline

def baseline(out, args):
    t_start = time.perf_counter()
    xtr = torch.from_numpy(np.load(os.path.join(out, "train.npy")))
    xev = torch.from_numpy(np.load(os.path.join(out, "eval.npy")))
    yev = np.load(os.path.join(out, "eval_labels.npy"))
    paths = sorted(os.path.join(out, "checkpoints", f) for f in os.listdir(os.path.join(out, "checkpoints"))
                   if f.endswith(".safetensors"))
    startup = time.perf_counter() - t_start
    times = {}

    t0 = time.perf_counter()
    model = new_model()
    per_ckpt, prob_sum, sds = [], None, []
    for p in paths:
        sd = load_file(p)
        sds.append(sd)
        model.load_state_dict(sd)
        probs = softmax64(logits(model, xev, args.eval_batch))
        per_ckpt.append(figures(probs, yev))
        prob_sum = probs if prob_sum is None else prob_sum + probs
    times["checkpoints"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ensemble = figures(prob_sum / len(paths), yev)
    times["ensemble"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    names = sorted(n for n, _ in model.named_parameters())
    shapes = [sds[0][n].shape for n in names]
    numels = [sds[0][n].numel() for n in names]
    P = sum(numels)
    K = min(args.rank, len(sds))
    mean = torch.zeros(P, dtype=torch.float64)
    sq = torch.zeros(P, dtype=torch.float64)
    dev = []
    for i, sd in enumerate(sds, start=1):
        th = torch.cat([sd[n].double().reshape(-1) for n in names])
        mean = mean * ((i - 1) / i) + th / i
        sq = sq * ((i - 1) / i) + th * th / i
        dev.append(th - mean)
        dev = dev[-K:]
    D = torch.stack(dev)
    std = (sq - mean * mean).clamp_min(1e-30).sqrt()
    times["moments"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rng = np.random.default_rng(2026)
    bn_x = xtr[:args.bn_samples]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bn_x), batch_size=args.bn_batch, shuffle=False)
    bma_sum = None
    per_sample = []
    t_update_bn = t_eval = 0.0
    for s in range(args.samples):
        z = torch.from_numpy(rng.standard_normal(P + K))
        theta = mean + math.sqrt(0.5) * (std * z[:P] + D.t().mv(z[P:]) / math.sqrt(max(K - 1, 1)))
        sd = dict(sds[-1])
        at = 0
        for n, shape, k in zip(names, shapes, numels):
            sd[n] = theta[at:at + k].float().reshape(shape)
            at += k
        model.load_state_dict(sd)
        ta = time.perf_counter()
        update_bn(loader, model)
        tb = time.perf_counter()
        probs = softmax64(logits(model, xev, args.eval_batch))
        t_update_bn += tb - ta
        t_eval += time.perf_counter() - tb
        per_sample.append(figures(probs, yev)["top1"])
        bma_sum = probs if bma_sum is None else bma_sum + probs
    bma = figures(bma_sum / args.samples, yev)
    times["swag"] = time.perf_counter() - t0
    times["swag_update_bn"] = t_update_bn
    times["swag_eval"] = t_eval
    times["swag_sample"] = times["swag"] - t_update_bn - t_eval   # draws, theta, load_state_dict, scoring
    times["total"] = time.perf_counter() - t_start - startup
    result = {
        "what": "PyTorch doing the work of `swa run --ensemble --swag` (see bench/make_resnet18_run.py)",
        "checkpoints": len(paths), "P": P, "K": K, "samples": args.samples, "scale": 0.5, "seed": 2026,
        "bn_samples": int(len(bn_x)), "bn_batch": args.bn_batch, "eval_samples": int(len(xev)),
        "eval_batch": args.eval_batch, "threads": torch.get_num_threads(), "device": "cpu",
        "seconds": times, "startup_seconds": startup,
        "per_checkpoint": per_ckpt, "ensemble": ensemble, "bma": bma, "sample_top1": per_sample,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out, "baseline.json"), "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print("baseline seconds " + json.dumps({k: round(v, 2) for k, v in times.items()}))
    print(f"ensemble {ensemble}\nbma {bma}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--select", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--swa-epochs", type=int, default=4, help="last epochs at the constant SWA LR")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--swa-lr", type=float, default=0.008)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training and the baseline (default 1: on a shared 2-core machine "
                         "2 OpenMP threads ran 10x slower; time swa with the same count)")
    ap.add_argument("--samples", type=int, default=30, help="SWAG samples in the baseline")
    ap.add_argument("--rank", type=int, default=5, help="SWAG deviation rows K")
    ap.add_argument("--bn-samples", type=int, default=256)
    ap.add_argument("--bn-batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if not args.baseline_only:
        train(args.out, args)
    if not args.skip_baseline:
        baseline(args.out, args)


if __name__ == "__main__":
    main()
