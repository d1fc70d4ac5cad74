#!/usr/bin/env bash
# One GPU session: CUDA parity on the fixtures, the CUDA error path, and the GPU benchmark.
# Expects the parts of ONNX Runtime GPU (shared/gpu/pack-onnxruntime-gpu.sh) already in /tmp/ortparts
# and a swa binary at .dev/swa; writes results under $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/ort
cat /tmp/ortparts/part.* | xz -dc | tar -C /tmp/ort -xf -
lib=$(ls /tmp/ort/capi/libonnxruntime.so.* | head -1)
sp=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
root=$PWD
swa=$root/.dev/swa
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"

echo "== CUDA error path: an ONNX Runtime without the CUDA provider"
mkdir -p /tmp/cpuonly && cp "$lib" /tmp/cpuonly/
ORT_DYLIB_PATH=/tmp/cpuonly/$(basename "$lib") $swa recalibrate --device cuda --model fixtures/mlp/model.onnx --inputs fixtures/mlp/train.npy -o /tmp/err.onnx; echo "exit $?"
ls /tmp/err.onnx 2>/dev/null && echo "UNEXPECTED: output written"

export ORT_DYLIB_PATH=$lib
export LD_LIBRARY_PATH=$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
echo "== CUDA parity (fixtures, --stats torch, batch 32)"
for m in cnn mlp; do
  $swa recalibrate --device cuda --stats torch --batch-size 32 --model fixtures/$m/model.onnx \
    --weights fixtures/$m/expected/swa_average.safetensors --inputs fixtures/$m/train.npy \
    -o /tmp/$m.onnx --save-weights /tmp/$m.safetensors > /dev/null || echo "recalibrate $m failed"
  python3 bench/compare_stats.py /tmp/$m.safetensors fixtures/$m/expected/swa_bn_torch.safetensors
  $swa evaluate --device cuda --model /tmp/$m.onnx --inputs fixtures/$m/eval.npy --labels fixtures/$m/eval_labels.npy --json \
    | python3 -c "import json,sys; m=json.load(sys.stdin); print(json.dumps({'correct': m['correct'], 'loss': m['loss']}))" 
done
grep -h swa_bn_torch fixtures/*/expected/summary.json

echo "== profile (split + tf32, 8 batches)"
mkdir -p /tmp/prof && cd /tmp/prof
python3 -c "import numpy as np; np.save('/tmp/prof/x.npy', np.random.default_rng(0).standard_normal((8192, 3, 32, 32), dtype=np.float32))"
ROOT=$root python3 - <<'PY'
import os, sys; sys.path.insert(0, os.path.join(os.environ["ROOT"], "bench"))
import torch, recalibrate_bench as rb
torch.onnx.export(rb.ResNet18().eval(), (torch.zeros(2, 3, 32, 32),), "/tmp/prof/r18.onnx", input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}}, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
PY
SWA_ORT_PROFILE=/tmp/prof/p SWA_STATS_REDUCTION=split $swa recalibrate --device cuda --tf32 --stats torch --batch-size 1024 \
  --model /tmp/prof/r18.onnx --inputs /tmp/prof/x.npy -o /tmp/prof/o.onnx --json > /dev/null
python3 $root/bench/ort_profile_summary.py $(ls /tmp/prof/p*.json | head -1) | tee "$out/profile.txt"
cd "$root"
echo "== benchmark"
PYTHONUNBUFFERED=1 timeout 300 python3 bench/recalibrate_bench.py --swa $swa --samples 32768 --batch 1024 --device cuda --threads 16 \
  --repeat 2 --workdir /tmp/b --variants split,split+tf32 2>&1 | grep -v -i warn | tee "$out/bench.log"
