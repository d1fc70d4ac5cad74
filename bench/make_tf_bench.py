#!/usr/bin/env python3
"""Checkpoints for bench/tf_bench.sh: N TensorFlow bundles (tf.train.Checkpoint of float32
variables, ~1 GiB each) and the same tensors as safetensors, so that averaging one format is timed
against the other on the same bytes.

    /tmp/tfvenv/bin/python bench/make_tf_bench.py DIR [N=2] [GIB=1.0]

Writes DIR/tf/ckpt-1.index … (+ .data-00000-of-00001) and DIR/st/ckpt-1.safetensors …; the
variables are 64 tensors of equal size (v0 … v63), random normal, a different seed per checkpoint.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

out = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2
gib = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
tensors = 64
numel = int(gib * (1 << 30) / 4 / tensors)
(out / "tf").mkdir(parents=True, exist_ok=True)
(out / "st").mkdir(parents=True, exist_ok=True)
for i in range(1, n + 1):
    rng = np.random.default_rng(i)
    arrays = {f"v{j}": rng.standard_normal(numel, dtype=np.float32) for j in range(tensors)}
    ckpt = tf.train.Checkpoint(**{k: tf.Variable(v) for k, v in arrays.items()})
    ckpt.write(str(out / "tf" / f"ckpt-{i}"))
    save_file(arrays, str(out / "st" / f"ckpt-{i}.safetensors"))
    del ckpt, arrays
    print(f"checkpoint {i}: {tensors} x {numel} float32 = {tensors * numel * 4 / (1 << 30):.2f} GiB", flush=True)
