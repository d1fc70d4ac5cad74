#!/usr/bin/env python3
"""Greedy-soup benchmark: `swa soup --method greedy` against the same algorithm written in PyTorch
on the CPU, same run, same files.

CIFAR-style ResNet-18 (11M parameters, 20 BatchNorm layers, 32x32 inputs), K synthetic checkpoints,
random inputs.

    python3 bench/soup_bench.py --swa target/release/swa --k 30 --train 256 --select 256 --threads 2
    python3 bench/soup_bench.py --k 4 --train 64 --select 64 --skip-swa          # the PyTorch side only

Checkpoints: a random initialisation (seed 0) is the "teacher"; checkpoint i adds Gaussian noise of
a relative size between 1 % and 10 % (deterministic, not monotonic in i) to every floating-point
parameter and plausible BN running statistics (mean ~ N(0, 0.1), var ~ U(0.5, 1.5), reset by the
recalibration anyway). Select labels are the teacher's predictions (its BN statistics fitted on the
train inputs, its logits centred and scaled there so that they spread over the classes), so
checkpoints closer to the teacher score higher and averaging several of them (which cancels part of
the noise) can help: the greedy soup keeps some candidates and drops others.

The algorithm (both sides; the fixture fixtures/make_soup_fixtures.py defines it on a small CNN):
  recalibration  BN statistics reset, momentum None, one forward pass per batch of --batch train
                 inputs in order with only BatchNorm in train mode (update_bn, swa --stats torch)
  evaluation     eval mode, batches of --eval-batch: top-1 correct count and mean cross-entropy
  alone          each checkpoint recalibrated and evaluated on the select split
  ranking        by select correct, best first; ties by lower loss, then the later checkpoint
  greedy         start from the best; for each next candidate, soup = (float64 sum of the
                 ingredients + candidate) / n cast to float32, recalibrated, evaluated; kept if more
                 correct, or as many correct and loss <= current
The PyTorch side is timed from reading the inputs to writing the final soup (safetensors), with
each checkpoint read by safetensors.torch.load_file when it is needed (twice: alone, then as a
candidate), like `swa soup`, which reads the checkpoints and arrays itself. swa is timed as a whole
process (wall clock) and its own "seconds" is reported too.

Prints one JSON line per measurement and a summary with the ratio (PyTorch seconds / swa seconds)
and both ingredient lists (they may differ where two candidates tie to within float rounding).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ---------------------------------------------------------------- the PyTorch greedy soup (baseline)

def recalibrate(model, x, batch):
    """update_bn with only BatchNorm in train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {}
    for m in bns:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    for m in bns:
        m.momentum = momenta[m]
    model.eval()


def evaluate(model, x, y, batch):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
            loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
    return correct, loss / len(x)


def score(model, state, x_train, x_sel, y_sel, args):
    model.load_state_dict(state)
    recalibrate(model, x_train, args.batch)
    return evaluate(model, x_sel, y_sel, args.eval_batch)


def torch_greedy_soup(paths, train_path, sel_path, sel_labels_path, out_path, args):
    x_train = torch.from_numpy(np.ascontiguousarray(np.load(train_path), dtype=np.float32))
    x_sel = torch.from_numpy(np.ascontiguousarray(np.load(sel_path), dtype=np.float32))
    y_sel = torch.from_numpy(np.load(sel_labels_path).astype(np.int64))
    model = ResNet18(args.classes).eval()

    def rank(t):
        return (-t[0], t[1], -t[2])

    alone, best_state = [], None
    for i, p in enumerate(paths):
        c, l = score(model, load_file(p), x_train, x_sel, y_sel, args)
        alone.append((c, l, i))
        if best_state is None or rank(alone[-1]) < rank(alone[best_i]):
            # The current soup's recalibrated state while there is one ingredient.
            best_i, best_state = i, {k: v.clone() for k, v in model.state_dict().items()}
        if args.verbose:
            print(json.dumps({"alone": os.path.basename(p), "correct": c, "loss": l}), flush=True)
    order = [i for _, _, i in sorted(alone, key=rank)]
    assert order[0] == best_i

    first = load_file(paths[order[0]])
    total = {k: v.to(torch.float64) for k, v in first.items() if v.is_floating_point()}
    ints = {k: v for k, v in first.items() if not v.is_floating_point()}
    n = 1
    cur_c, cur_l = alone[order[0]][0], alone[order[0]][1]
    ingredients = [order[0]]
    candidates = [{"name": os.path.basename(paths[order[0]]), "kept": True, "correct": cur_c, "loss": cur_l}]
    for i in order[1:]:
        cand = load_file(paths[i])
        soup = {k: ((total[k] + v.to(torch.float64)) / (n + 1)).to(torch.float32) for k, v in cand.items() if k in total}
        soup.update(ints)
        c, l = score(model, soup, x_train, x_sel, y_sel, args)
        kept = c > cur_c or (c == cur_c and l <= cur_l)
        if kept:
            for k, v in cand.items():
                if k in total:
                    total[k] += v.to(torch.float64)
            n += 1
            cur_c, cur_l = c, l
            ingredients.append(i)
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        candidates.append({"name": os.path.basename(paths[i]), "kept": kept, "correct": c, "loss": l})
        if args.verbose:
            print(json.dumps(candidates[-1]), flush=True)
    save_file({k: v.contiguous() for k, v in best_state.items()}, out_path)
    return {"ingredients": [os.path.basename(paths[i]) for i in ingredients], "candidates": candidates,
            "select_correct": cur_c, "select_loss": cur_l}


# ---------------------------------------------------------------- synthetic checkpoints

def make_checkpoints(work, args):
    torch.manual_seed(0)
    teacher = ResNet18(args.classes).eval()
    onnx_path = os.path.join(work, "resnet18.onnx")
    torch.onnx.export(teacher, (torch.zeros(2, 3, 32, 32),), onnx_path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.train, 3, 32, 32), dtype=np.float32)
    s = rng.standard_normal((args.select, 3, 32, 32), dtype=np.float32)
    recalibrate(teacher, torch.from_numpy(x), args.batch)
    with torch.no_grad():
        # A random ResNet prefers one or two classes whatever the input: centre and scale its logits
        # on the train inputs so that its predictions spread over the classes.
        logits = torch.cat([teacher(torch.from_numpy(x[i:i + args.eval_batch])) for i in range(0, len(x), args.eval_batch)])
        teacher.linear.bias -= logits.mean(0)
        scale = 2.0 / float((logits - logits.mean(0)).std())
        teacher.linear.weight *= scale
        teacher.linear.bias *= scale
        sy = torch.cat([teacher(torch.from_numpy(s[i:i + args.eval_batch])).argmax(1)
                        for i in range(0, len(s), args.eval_batch)]).numpy().astype(np.int64)
    paths = {"train": os.path.join(work, "x.npy"), "select": os.path.join(work, "s.npy"), "labels": os.path.join(work, "sy.npy")}
    np.save(paths["train"], x)
    np.save(paths["select"], s)
    np.save(paths["labels"], sy)

    ckdir = os.path.join(work, "checkpoints")
    os.makedirs(ckdir, exist_ok=True)
    for f in os.listdir(ckdir):
        os.remove(os.path.join(ckdir, f))
    base = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    ckpts = []
    for i in range(1, args.k + 1):
        g = torch.Generator().manual_seed(1000 + i)
        rel = 0.01 + 0.09 * ((i * 0.6180339887) % 1.0)
        sd = {}
        for k, v in base.items():
            if k.endswith("running_mean"):
                sd[k] = 0.1 * torch.randn(v.shape, generator=g)
            elif k.endswith("running_var"):
                sd[k] = 0.5 + torch.rand(v.shape, generator=g)
            elif k.endswith("num_batches_tracked"):
                sd[k] = torch.tensor(100 * i, dtype=torch.int64)
            else:
                scale = float(v.std()) if v.numel() > 1 and float(v.std()) > 0 else 0.1
                sd[k] = v + rel * scale * torch.randn(v.shape, generator=g)
            sd[k] = sd[k].contiguous()
        path = os.path.join(ckdir, f"epoch_{i:03d}.safetensors")
        save_file(sd, path, metadata={"epoch": str(i), "relative_noise": f"{rel:.3f}"})
        ckpts.append(path)
    labels_hist = np.bincount(sy, minlength=args.classes).tolist()
    return onnx_path, ckdir, ckpts, paths, labels_hist


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--swa", help="the swa binary (required unless --skip-swa)")
    ap.add_argument("--k", type=int, default=30, help="number of checkpoints")
    ap.add_argument("--train", type=int, default=256, help="recalibration samples")
    ap.add_argument("--select", type=int, default=256, help="select samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="recalibration batch size")
    ap.add_argument("--eval-batch", type=int, default=256, help="evaluation batch size")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-swa", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="PyTorch side: one line per candidate")
    args = ap.parse_args()
    if not args.skip_swa and not args.swa:
        ap.error("--swa is required unless --skip-swa")
    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="swa-soup-bench-")
    os.makedirs(work, exist_ok=True)

    t = time.perf_counter()
    onnx_path, ckdir, ckpts, paths, labels_hist = make_checkpoints(work, args)
    print(json.dumps({"setup": True, "workdir": work, "k": args.k, "train": args.train, "select": args.select,
                      "threads": args.threads, "batch": args.batch, "eval_batch": args.eval_batch,
                      "checkpoint_bytes": os.path.getsize(ckpts[0]), "select_label_histogram": labels_hist,
                      "torch": torch.__version__, "cores": os.cpu_count(), "seconds": round(time.perf_counter() - t, 2)}),
          flush=True)
    # Page cache warm for both sides.
    subprocess.run(["sh", "-c", 'cat "$@" > /dev/null', "cat", *ckpts], check=True)

    res_torch = res_swa = None
    if not args.skip_torch:
        t = time.perf_counter()
        res_torch = torch_greedy_soup(ckpts, paths["train"], paths["select"], paths["labels"],
                                      os.path.join(work, "soup_torch.safetensors"), args)
        dt = time.perf_counter() - t
        res_torch["seconds"] = dt
        print(json.dumps({"impl": "pytorch greedy soup", "seconds": round(dt, 3),
                          "seconds_per_candidate": round(dt / (2 * args.k - 1), 3),
                          "ingredients": res_torch["ingredients"], "select_correct": res_torch["select_correct"],
                          "select_loss": res_torch["select_loss"],
                          "kept": [c["name"] for c in res_torch["candidates"] if c["kept"]],
                          "dropped": [c["name"] for c in res_torch["candidates"] if not c["kept"]]}), flush=True)
    if not args.skip_swa:
        cmd = [args.swa, "soup", "--model", onnx_path, "--checkpoints", ckdir, "--train-inputs", paths["train"],
               "--select-inputs", paths["select"], "--select-labels", paths["labels"], "--method", "greedy",
               "--stats", "torch", "--batch-size", str(args.batch), "--eval-batch-size", str(args.eval_batch),
               "--threads", str(args.threads), "-o", os.path.join(work, "soup.safetensors"), "--json"]
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        s = json.loads(out.stdout)
        res_swa = {"ingredients": [os.path.basename(n) for n in s["ingredients"]], "seconds": wall, "seconds_self": s.get("seconds"),
                   "n_models": s.get("n_models"),
                   "kept": [os.path.basename(c["name"]) for c in s.get("candidates", []) if c.get("kept")],
                   "dropped": [os.path.basename(c["name"]) for c in s.get("candidates", []) if not c.get("kept")]}
        print(json.dumps({"impl": "swa soup", "seconds_wall": round(wall, 3), "seconds_self": s.get("seconds"),
                          "n_models": s.get("n_models"), "ingredients": res_swa["ingredients"],
                          "kept": res_swa["kept"], "dropped": res_swa["dropped"]}), flush=True)
    summary = {"summary": True, "k": args.k, "train": args.train, "select": args.select, "threads": args.threads,
               "torch": torch.__version__}
    if res_torch:
        summary["pytorch_seconds"] = round(res_torch["seconds"], 3)
        summary["pytorch_ingredients"] = res_torch["ingredients"]
    if res_swa:
        summary["swa_seconds_wall"] = round(res_swa["seconds"], 3)
        summary["swa_seconds_self"] = res_swa["seconds_self"]
        summary["swa_ingredients"] = res_swa["ingredients"]
    if res_torch and res_swa:
        summary["speedup_wall"] = round(res_torch["seconds"] / res_swa["seconds"], 3)
        summary["ingredients_equal"] = res_torch["ingredients"] == res_swa["ingredients"]
        summary["ingredient_sets_equal"] = sorted(res_torch["ingredients"]) == sorted(res_swa["ingredients"])
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
