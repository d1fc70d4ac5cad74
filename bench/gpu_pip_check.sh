#!/usr/bin/env bash
# GPU check of the pip route: `swa` in a Python environment whose site-packages holds onnxruntime-gpu
# and the CUDA 13 / cuDNN 9 wheels PyTorch installed, with no LD_LIBRARY_PATH; then the error when
# the CUDA runtime is only CUDA 12. Expects the parts of ONNX Runtime GPU in /tmp/ortparts (as
# gpu_check.sh), a CUDA 13 PyTorch for python3, and a swa binary at .dev/swa; writes under $OUT.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/ort
cat /tmp/ortparts/part.* | xz -dc | tar -C /tmp/ort -xf -
torch_sp=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
env=/tmp/pipenv; sp=$env/lib/python3.12/site-packages
rm -rf "$env"; mkdir -p "$env/bin" "$sp/onnxruntime"
cp .dev/swa "$env/bin/swa"
cp -r /tmp/ort/capi "$sp/onnxruntime/capi"
ln -s "$torch_sp/nvidia" "$sp/nvidia"
unset LD_LIBRARY_PATH ORT_DYLIB_PATH VIRTUAL_ENV CONDA_PREFIX
m=fixtures/cnn
{
  "$env/bin/swa" doctor
  echo "== evaluate --device cuda, no LD_LIBRARY_PATH"
  "$env/bin/swa" evaluate --device cuda --model $m/model.onnx --inputs $m/eval.npy --labels $m/eval_labels.npy --json
  echo "exit $?"
  echo "== the same with nvidia/ hidden: only a CUDA 12 runtime"
  rm "$sp/nvidia"; mkdir -p "$sp/nvidia/cuda_runtime/lib"; : > "$sp/nvidia/cuda_runtime/lib/libcudart.so.12"
  "$env/bin/swa" evaluate --device cuda --model $m/model.onnx --inputs $m/eval.npy --labels $m/eval_labels.npy
  echo "exit $?"
} 2>&1 | tee "$out/pip-cuda.txt"
