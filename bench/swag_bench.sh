#!/usr/bin/env bash
# SWA against a checkpoint ensemble and SWAG on a briefly trained torchvision ResNet-18, from one
# `swa run --ensemble --swag`, and what SWAG's samples cost beyond their recalibrate + evaluate
# passes; PyTorch's time for the same work is in the run directory's baseline.json.
#
#   /work/venv/bin/python bench/make_resnet18_run.py /tmp/resnet18-run   # train (~2.5 min), time PyTorch
#   bench/swag_bench.sh /tmp/resnet18-run [THREADS]                     # THREADS: 1 as the baseline
set -euo pipefail
R=${1:?usage: bench/swag_bench.sh RUN_DIR [THREADS]}
T=${2:-1}
SWA=${SWA:-target/release/swa}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(--model "$R/model.onnx" --checkpoints "$R/checkpoints" --train-inputs "$R/train.npy"
        --eval-inputs "$R/eval.npy" --eval-labels "$R/eval_labels.npy" --threads "$T" -q)
/usr/bin/time -f "swa run: %e s wall, %M KB peak" "$SWA" run "${common[@]}" --ensemble --swag --rank 5 \
  --swag-samples 30 --bn-samples 256 --temperature fit --calibration-inputs "$R/select.npy" \
  --calibration-labels "$R/select_labels.npy" --out "$OUT/run" > /dev/null
sed -n '/^## SWA, ensemble or SWAG/,/^## Time/p' "$OUT/run/report.md" | head -n -1
sed -n '/^## Time/,$p' "$OUT/run/report.md"
"$SWA" swag "${common[@]}" --rank 5 --swag-samples 30 --bn-samples 256 --json > "$OUT/swag.json"
python3 - "$OUT/swag.json" "$R/baseline.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))["seconds"]
extra = s["seconds"] - s["seconds_passes"]
print(f"swa swag, 30 samples: {s['seconds']:.2f} s = {s['seconds_passes']:.2f} s of recalibrate + evaluate passes"
      f" + {extra:.2f} s ({100 * extra / s['seconds_passes']:.1f} %: moments {s['seconds_moments']:.2f} s,"
      f" waiting for samples {s['seconds_sampling']:.2f} s)")
print(f"PyTorch, the same 30 samples: {b['swag'] + b['moments']:.2f} s (moments {b['moments']:.2f} s,"
      f" sampling {b['swag_sample']:.2f} s, update_bn {b['swag_update_bn']:.2f} s, evaluation {b['swag_eval']:.2f} s)")
PY
