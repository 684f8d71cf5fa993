#!/usr/bin/env bash
# The CUDA path, end to end, on a machine with a GPU (run from the repository root):
#   bash bench/cuda_check.sh CBSD68_DIR OUT_DIR
# CLI smoke runs on --device cuda (train in every gradient mode, restore, eval, compare-grads, PnP),
# then the timing table of training steps (bench/cuda_steps.py: wavelet, PnP and PnP-denoiser steps in five
# gradient configurations, peak memory, the GPU paths against the CPU's) and the gradient-mode experiment
# (bench/experiment_gradients.py) on CUDA. Each part is logged and
# runs even if an earlier one failed; the exit code is the number of failed parts.
set -u
data=${1:?CBSD68 folder}; out=${2:?output folder}
mkdir -p "$out"; failed=0
part() { local name=$1; shift; echo "== $name"; if "$@" >"$out/$name.log" 2>&1; then echo ok; else echo "FAILED ($?)"; tail -5 "$out/$name.log"; failed=$((failed+1)); fi; }
retune() { python3 -m retune_cli "$@"; }
w=$(mktemp -d)
nvidia-smi -L; python3 -c "from retune_cli.config import preset_dir, preset_names; print(preset_dir(), preset_names())"
for g in retune unrolled jfb deq; do
  part "train-$g" retune train --device cuda --preset inpaint-wavelet --gradient "$g" --steps 3 --crop 64 --out "$w/$g"
done
part restore retune restore "$w/deq/theta.safetensors" retune_cli/samples/astronaut.png --simulate --device cuda -o "$w/r.png"
part eval retune eval "$w/retune/theta.safetensors" "$w/deq/theta.safetensors" --device cuda --json "$out/eval.json"
part compare-grads retune compare-grads --device cuda --crop 32 --K 1,5 --T 1,5 --json "$out/compare_grads.json"
part pnp retune train --device cuda --preset inpaint-pnp --steps 3 --crop 64 --out "$w/pnp"
part steps python3 bench/cuda_steps.py --json "$out/cuda_steps.json"
part experiment python3 bench/experiment_gradients.py --data "$data" --device cuda --work "$w/exp" \
  --json "$out/experiment_gradients_cuda.json" --figures "$out"
exit $failed
