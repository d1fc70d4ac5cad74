#!/usr/bin/env bash
# Averaging TensorFlow bundles against the same tensors as safetensors: `swa average` over N ~1 GiB
# checkpoints of each format into a .safetensors output, back to back, REPS times each, alternating
# (the page cache warm for both: each is read once before timing), then the bundle written as a
# bundle (-o swa.ckpt). Needs a venv with TensorFlow and safetensors for the checkpoints:
#
#   bench/tf_bench.sh /tmp/tfvenv/bin/python /tmp/tfbench [N=2] [REPS=3]
set -euo pipefail
python=$1; dir=$2; n=${3:-2}; reps=${4:-3}
swa=${SWA:-target/release/swa}
[ -d "$dir/tf" ] || "$python" bench/make_tf_bench.py "$dir" "$n" 1.0
time_one() { # format out
  local start end
  start=$(date +%s.%N)
  "$swa" average "$dir/$1" -o "$dir/$2" -q >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
echo "swa $("$swa" --version), $(nproc) cores, $n checkpoints of $(du -sh "$dir/st/ckpt-1.safetensors" | cut -f1)"
time_one st out_st.safetensors >/dev/null; time_one tf out_tf.safetensors >/dev/null
for r in $(seq "$reps"); do
  s=$(time_one st out_st.safetensors); t=$(time_one tf out_tf.safetensors)
  echo "rep $r: safetensors $s s, TensorFlow bundle $t s"
done
for r in $(seq "$reps"); do echo "rep $r: bundle -> bundle (-o swa.ckpt) $(time_one tf swa.ckpt) s"; done
rm -f "$dir/out_st.safetensors" "$dir/out_tf.safetensors" "$dir"/swa.ckpt.*
