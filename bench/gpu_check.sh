#!/usr/bin/env bash
# One GPU session: the CUDA error path, CUDA parity on the fixtures (one and two streams), the GPU
# benchmark with its variants, and Nsight Compute kernel times of one pass of swa (default and
# `square` statistics) and of update_bn. Expects the parts of ONNX Runtime GPU (shared/gpu/pack-onnxruntime-gpu.sh) in
# /tmp/ortparts and a swa binary at .dev/swa; writes results under $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/ort /tmp/b
cat /tmp/ortparts/part.* | xz -dc | tar -C /tmp/ort -xf -
lib=$(ls /tmp/ort/capi/libonnxruntime.so.* | head -1)
sp=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
root=$PWD
swa=$root/.dev/swa
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$out/gpu.txt"

echo "== CUDA error path: an ONNX Runtime without the CUDA provider"
mkdir -p /tmp/cpuonly && cp "$lib" /tmp/cpuonly/
ORT_DYLIB_PATH=/tmp/cpuonly/$(basename "$lib") $swa recalibrate --device cuda --model fixtures/mlp/model.onnx --inputs fixtures/mlp/train.npy -o /tmp/err.onnx; echo "exit $?"
ls /tmp/err.onnx 2>/dev/null && echo "UNEXPECTED: output written"

export ORT_DYLIB_PATH=$lib
export LD_LIBRARY_PATH=$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
echo "== CUDA parity (fixtures, --stats torch, batch 32)"
for streams in 1 2; do
  for m in cnn mlp; do
    $swa recalibrate --device cuda --streams $streams --stats torch --batch-size 32 --model fixtures/$m/model.onnx \
      --weights fixtures/$m/expected/swa_average.safetensors --inputs fixtures/$m/train.npy \
      -o /tmp/$m.onnx --save-weights /tmp/$m.safetensors > /dev/null || echo "recalibrate $m failed"
    echo -n "streams=$streams $m "
    python3 bench/compare_stats.py /tmp/$m.safetensors fixtures/$m/expected/swa_bn_torch.safetensors
    $swa evaluate --device cuda --streams $streams --model /tmp/$m.onnx --inputs fixtures/$m/eval.npy --labels fixtures/$m/eval_labels.npy --json \
      | python3 -c "import json,sys; m=json.load(sys.stdin); print(json.dumps({'correct': m['correct'], 'loss': m['loss']}))"
  done
done 2>&1 | tee "$out/parity.txt"
grep -h swa_bn_torch fixtures/*/expected/summary.json

echo "== benchmark"
bench() { PYTHONUNBUFFERED=1 timeout 200 python3 bench/recalibrate_bench.py --swa $swa --device cuda --threads 16 --repeat 2 "$@" 2>&1 | grep -v -i warn; }
bench --samples 32768 --batch 1024 --workdir /tmp/b \
  --variants default+tf32,square+tf32,centered+tf32,default+tf32+s1,default+tf32+s3,default,centered | tee "$out/bench.log"
bench --samples 131072 --batch 1024 --workdir /tmp/c --variants default+tf32,square+tf32 | tee -a "$out/bench.log"
bench --samples 32768 --batch 256 --workdir /tmp/d --variants default+tf32,square+tf32 | tee -a "$out/bench.log"
python3 -c "import numpy as np; np.save('/tmp/b/x3.npy', np.load('/tmp/b/x.npy', mmap_mode='r')[:3072])"

echo "== CUDA precision on torchvision models (bench/compat.py), per statistics reduction"
if python3 -c "import torchvision, onnxscript" 2>/dev/null; then
  for reduction in split centered square; do
    echo "-- $reduction"
    SWA_STATS_REDUCTION=$reduction timeout 300 python3 bench/compat.py --swa $swa --swa-args "--device cuda" \
      --models resnet18,densenet121,regnet_x_400mf,mobilenet_v3_small --exporters torchscript --markdown 2>&1 | grep '^|'
  done 2>&1 | tee "$out/compat_cuda.txt"
else
  echo "torchvision or onnxscript missing: skipped" | tee "$out/compat_cuda.txt"
fi

echo "== kernel times (Nsight Compute, 3 batches of 1024, TF32)"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for reduction in split square centered; do
  SWA_STATS_REDUCTION=$reduction timeout 120 $ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/ncu_$reduction.csv \
    $swa recalibrate --device cuda --streams 1 --tf32 --stats torch --batch-size 1024 --model /tmp/b/resnet18.onnx --inputs /tmp/b/x3.npy -o /tmp/b/o.onnx > /dev/null
  python3 bench/ncu_summary.py /tmp/ncu_$reduction.csv --batches 3 --label "swa --tf32 ($reduction)" | tee -a "$out/kernels.txt"
done
cat > /tmp/torch3.py <<'PY'
import sys, numpy as np, torch
sys.path.insert(0, "bench")
import recalibrate_bench as rb
from torch.optim.swa_utils import update_bn
x = torch.from_numpy(np.load("/tmp/b/x3.npy"))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=1024)
update_bn(loader, rb.ResNet18().cuda(), device=torch.device("cuda"))
torch.cuda.synchronize()
PY
timeout 120 $ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/ncu_torch.csv python3 /tmp/torch3.py
python3 bench/ncu_summary.py /tmp/ncu_torch.csv --batches 3 --label "pytorch update_bn" | tee -a "$out/kernels.txt"
