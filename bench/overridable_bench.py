#!/usr/bin/env python3
"""Session creation and evaluation speed of an ONNX model with constant weights against the same
model with every float initializer also a graph input (overridable at each run).

    python3 bench/overridable_bench.py MODEL.onnx [--threads 2] [--batch 256]
"""
import argparse
import copy
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    m = onnx.load(args.model)
    over = copy.deepcopy(m)
    names = {i.name for i in over.graph.input}
    for init in over.graph.initializer:
        if init.name not in names and init.data_type == onnx.TensorProto.FLOAT:
            over.graph.input.append(onnx.helper.make_tensor_value_info(init.name, onnx.TensorProto.FLOAT, list(init.dims)))
    over_path = os.path.join(tempfile.mkdtemp(), "overridable.onnx")
    onnx.save(over, over_path)
    shape = [d.dim_value or args.batch for d in m.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = args.batch
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    for label, path in [("constant", args.model), ("overridable", over_path)] * 2:
        t = time.perf_counter()
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        created = time.perf_counter() - t
        s.run(None, {m.graph.input[0].name: x[:8]})
        t = time.perf_counter()
        for _ in range(3):
            s.run(None, {m.graph.input[0].name: x})
        print(f"{label:>12}: session {created:.3f} s, {3 * args.batch / (time.perf_counter() - t):.1f} samples/s")


if __name__ == "__main__":
    main()
