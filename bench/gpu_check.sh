#!/usr/bin/env bash
# One GPU session: CUDA parity on the fixtures, the CUDA error path, and the GPU benchmark.
# Expects the parts of ONNX Runtime GPU (shared/gpu/pack-onnxruntime-gpu.sh) already in /tmp/ortparts
# and a swa binary at .dev/swa; writes results under $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/ort
cat /tmp/ortparts/part.* | xz -dc | tar -C /tmp/ort -xf -
lib=$(ls /tmp/ort/capi/libonnxruntime.so.* | head -1)
sp=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
swa=$PWD/.dev/swa
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"

echo "== CUDA error path: no cuDNN on the library path"
ORT_DYLIB_PATH=$lib LD_LIBRARY_PATH= $swa recalibrate --device cuda --model fixtures/mlp/model.onnx --inputs fixtures/mlp/train.npy -o /tmp/err.onnx; echo "exit $?"
ls /tmp/err.onnx 2>/dev/null && echo "UNEXPECTED: output written"

export ORT_DYLIB_PATH=$lib
export LD_LIBRARY_PATH=$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
echo "== CUDA parity (fixtures, --stats torch, batch 32)"
for m in cnn mlp; do
  $swa recalibrate --device cuda --stats torch --batch-size 32 --model fixtures/$m/model.onnx \
    --weights fixtures/$m/expected/swa_average.safetensors --inputs fixtures/$m/train.npy \
    -o /tmp/$m.onnx --save-weights /tmp/$m.safetensors --json > "$out/recal_$m.json" || echo "recalibrate $m failed"
  python3 bench/compare_stats.py /tmp/$m.safetensors fixtures/$m/expected/swa_bn_torch.safetensors | tee "$out/parity_$m.json"
  $swa evaluate --device cuda --model /tmp/$m.onnx --inputs fixtures/$m/eval.npy --labels fixtures/$m/eval_labels.npy --json \
    | python3 -c "import json,sys; m=json.load(sys.stdin); print(json.dumps({'correct': m['correct'], 'loss': m['loss']}))" | tee "$out/eval_$m.json"
done
grep -h swa_bn_torch fixtures/*/expected/summary.json

echo "== benchmark"
for red in flat split; do
  SWA_STATS_REDUCTION=$red PYTHONUNBUFFERED=1 timeout 200 python3 bench/recalibrate_bench.py --swa $swa --samples 32768 --batch 1024 \
    --device cuda --threads 16 --repeat 2 --workdir /tmp/b 2>&1 | grep -v -i warn | tee "$out/bench_$red.log"
done
