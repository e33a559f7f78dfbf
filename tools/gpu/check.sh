#!/usr/bin/env bash
# On a CUDA machine: the device-capable tests on the GPU, the UNet speed table against diffusers (bf16), the
# sampling-speed table, and a short pokemon64 training through the CLI. Each stage has its own time limit and a
# failure in one does not stop the next; logs and results are packed into $OUT/check.tar.gz (OUT defaults to
# /tmp/ddpmkit-gpu), with the smoke run's grid beside it.
#
#   bash tools/gpu/check.sh                 # ~4 minutes on an H200
#
# Needs torch with CUDA, pytest, and diffusers (wheels in .whl/ are installed to /tmp/site when present, for machines
# without a registry). Data sets come from $DDPMKIT_CACHE (default .gpu/cache when that exists).
set -u
source "$(dirname "$0")/common.sh"

{ nvidia-smi; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda,
torch.cuda.get_device_name())"; nproc; } > "$W/env.log" 2>&1

# a short training through the CLI alongside the tests (both light on the GPU): the CUDA paths end to end
( stage smoke_train 100 python3 -m ddpmkit train --preset pokemon64 --out /tmp/runs/smoke --steps 40 --no-progress \
      --set train.sample_every=40 --set train.num_samples=16 --set train.sample_steps=10 \
  && stage smoke_sample 60 python3 -m ddpmkit sample /tmp/runs/smoke --num 32 --steps 10 --out "$W/smoke_grid.png" \
      --npz "$W/smoke_samples.npz" ) &
DDPMKIT_TEST_DEVICE=cuda stage tests_cuda 150 python3 -m pytest -q -m "device or cuda" -p no:cacheprovider --timeout 60 -rfE --continue-on-collection-errors
wait
stage unet_bench 150 python3 benchmarks/unet.py --device cuda --batch-sweep 32,64,128,256
stage sampling_speed 60 python3 benchmarks/sampling_speed.py --device cuda

cp benchmarks/results/unet_cuda.* benchmarks/results/sampling_speed_cuda.json "$W/" 2>/dev/null
cp -r /tmp/runs/smoke/metrics.jsonl /tmp/runs/smoke/samples "$W/" 2>/dev/null
tar czf "$OUT/check.tar.gz" -C "$W" .
cp "$W/smoke_grid.png" "$OUT/" 2>/dev/null
grep -E "passed|failed|FAILED|ERROR" "$W/tests_cuda.log" | tail -n 30
grep -E "peak|img/s|ratio|compile" "$W/unet_bench.log" | tail -n 24
grep -E "outside" "$W/sampling_speed.log" | tail -n 40 | cut -c1-130
tail -n 4 "$W/smoke_train.log" "$W/smoke_sample.log" 2>/dev/null | cut -c1-300
cat "$W/stages.txt"
