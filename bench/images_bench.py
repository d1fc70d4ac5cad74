"""Image folders: swa's decode + preprocessing against torchvision's ImageFolder + DataLoader.

Makes an ImageFolder of photo-sized JPEGs (10 classes, sizes 375..640 px like ImageNet's) and
measures, in one run, interleaved:
  1. decode + preprocess alone (transforms.Resize(256), CenterCrop(224), ToTensor, Normalize):
     torchvision: iterate a DataLoader(num_workers=W, batch_size=B) doing nothing else;
     swa: `swa evaluate --preset imagenet` on a model that only averages its input (a
     GlobalAveragePool), so the run is the decoding and preprocessing;
  2. a whole evaluation of ResNet-18 (random init): torchvision DataLoader + model in eval mode
     with torch.set_num_threads(T), against `swa evaluate --preset imagenet` on its ONNX export.

Usage (torch venv): python bench/images_bench.py [--images 512] [--workers 2] [--threads 2] [--runs 3]
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
from PIL import Image
from torchvision import datasets, models, transforms

HERE = os.path.dirname(os.path.abspath(__file__))
SWA = os.environ.get("SWA", os.path.join(HERE, "..", "target", "release", "swa"))


def make_images(root, n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (375, 500), (640, 427), (500, 333), (500, 500), (480, 360)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            f = rng.uniform(0.005, 0.05, 2)
            img[..., c] = 127 + 100 * np.sin(f[0] * x + c) * np.cos(f[1] * y)
        img += rng.normal(0, 12, img.shape)
        d = os.path.join(root, f"class_{i % 10}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)


def transform():
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def torch_pass(root, workers, batch, model=None):
    ds = datasets.ImageFolder(root, transform=transform())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            if model is not None:
                correct += int((model(x).argmax(1) == y).sum())
    return time.perf_counter() - start, correct


def swa_pass(root, model_path, threads, batch):
    start = time.perf_counter()
    out = subprocess.run(
        [SWA, "evaluate", "--model", model_path, "--inputs", root, "--preset", "imagenet",
         "--threads", str(threads), "--batch-size", str(batch), "--json"],
        check=True, capture_output=True, text=True,
    )
    return time.perf_counter() - start, json.loads(out.stdout)["correct"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip-model", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "val")
        make_images(root, a.images)
        # A model that only averages its input: the run is the data pipeline.
        pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
        pool_path = os.path.join(tmp, "pool.onnx")
        torch.onnx.export(pool.eval(), torch.zeros(1, 3, 224, 224), pool_path, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        rows = {"decode+preprocess": ([], []), "evaluate resnet18": ([], [])}
        net = models.resnet18(num_classes=10).eval()
        net_path = os.path.join(tmp, "resnet18.onnx")
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), net_path, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        for r in range(a.runs):
            t, _ = torch_pass(root, a.workers, a.batch)
            rows["decode+preprocess"][0].append(t)
            t, _ = swa_pass(root, pool_path, a.threads, a.batch)
            rows["decode+preprocess"][1].append(t)
            if not a.skip_model:
                t, c_torch = torch_pass(root, a.workers, a.batch, net)
                rows["evaluate resnet18"][0].append(t)
                t, c_swa = swa_pass(root, net_path, a.threads, a.batch)
                rows["evaluate resnet18"][1].append(t)
                assert c_torch == c_swa or abs(c_torch - c_swa) <= 1, (c_torch, c_swa)
            print(f"run {r + 1}/{a.runs} done", file=sys.stderr)
        print(f"{a.images} JPEGs (375-640 px), batch {a.batch}, torchvision workers {a.workers}, "
              f"threads {a.threads}, median of {a.runs}")
        print("| pass | torchvision images/s | swa images/s | ratio |")
        print("|---|---:|---:|---:|")
        for name, (tv, sw) in rows.items():
            if not tv:
                continue
            tv_rate, sw_rate = a.images / np.median(tv), a.images / np.median(sw)
            print(f"| {name} | {tv_rate:.0f} | {sw_rate:.0f} | {sw_rate / tv_rate:.2f}x |")


if __name__ == "__main__":
    main()
