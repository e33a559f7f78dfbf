#!/usr/bin/env bash
# On a CUDA machine, in one command of about 9 minutes: the UNet speed table against diffusers, the sampling-speed
# table (eager and CUDA graphs), then pokemon64 and emoji64 trained for MINUTES each (bf16) with the device tests
# running beside the first training, and from each EMA model the DDIM-50 samples the FID needs (N = half the
# training set: 504 Pokémon, 1,893 emoji; scored on the CPU by `ddpmkit eval npz FILE... --data pokemon`).
#
#   MINUTES=2.4 bash tools/gpu/train64.sh
#
# The step count of each training is set from the pokemon64 batch-128 training speed measured by the UNet table a
# few minutes earlier (85 % of it, for the data, EMA and clipping the table leaves out), so the cosine learning rate
# ends with the time; --max-minutes stops it in any case. Everything travels back in $OUT (see common.sh).
set -u
source "$(dirname "$0")/common.sh"
MINUTES=${MINUTES:-2.4}  # EXTRA: more train flags (a CPU dry run shrinks the model with them)
BATCH=128

{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } > "$W/env.log" 2>&1
stage unet_bench 110 python3 benchmarks/unet.py --device cuda --batch-sweep 32,64,128,256
stage sampling_speed 90 python3 benchmarks/sampling_speed.py --device cuda --repeats 2

steps=$(python3 - "$MINUTES" "$BATCH" <<'PY'
import json, sys
minutes, batch = float(sys.argv[1]), int(sys.argv[2])
try:
    sweep = {r["batch"]: r["img_s"] for r in json.load(open("benchmarks/results/unet_cuda.json"))["batch_sweep"]}
    print(int(0.85 * sweep[batch] * 60 * minutes / batch))
except Exception:
    print(int(10 * 60 * minutes))  # 10 steps/s, what the smoke run suggested
PY
)
echo "== training $steps steps of batch $BATCH, at most $MINUTES minutes each" | tee -a "$W/stages.txt"

train() {  # train PRESET NUM_SAMPLES
    local preset=$1 num=$2 run=/tmp/runs/$1
    stage "train_$preset" $(python3 -c "print(int($MINUTES * 60 + 120))") python3 -m ddpmkit train --preset "$preset" \
        --out "$run" --steps "$steps" --max-minutes "$MINUTES" --no-progress \
        --set train.sample_every=500 --set train.checkpoint_every=100000 --set train.log_every=50 ${EXTRA:-}
    stage "sample_$preset" 120 python3 -m ddpmkit sample "$run" --num "$num" --batch-size 512 \
        --out "$W/${preset}_all.png" --npz "$W/${preset}_samples.npz" \
      || stage "sample_${preset}_eager" 120 python3 -m ddpmkit sample "$run" --num "$num" --batch-size 512 \
        --out "$W/${preset}_all.png" --npz "$W/${preset}_samples.npz" --no-cuda-graph
    stage "grid_$preset" 60 python3 -m ddpmkit sample "$run" --num 64 --out "$OUT/${preset}_grid.png"
    mkdir -p "$W/$preset"
    cp -r "$run"/metrics.jsonl "$run"/summary.json "$run"/loss_curve.png "$run"/loss_by_timestep.png "$run"/samples \
        "$run"/config.yaml "$W/$preset/" 2>/dev/null
}

( DDPMKIT_TEST_DEVICE=cuda stage tests_cuda 150 python3 -m pytest -q -m "device or cuda" -p no:cacheprovider \
    --timeout 60 -rfE --continue-on-collection-errors ) &
train pokemon64 504
wait
train emoji64 1893

# the samples travel as .npz files under 16 MB each: emoji's 1,893 in two parts
python3 - "$W" "$OUT" <<'PY'
import sys, numpy as np
work, out = sys.argv[1], sys.argv[2]
for name, parts in (("pokemon64", 1), ("emoji64", 2)):
    try:
        images = np.load(f"{work}/{name}_samples.npz")["images"]
    except OSError:
        continue
    for k, chunk in enumerate(np.array_split(images, parts)):
        np.savez_compressed(f"{out}/{name}_samples_{k}.npz", images=chunk)
PY
cp benchmarks/results/unet_cuda.* benchmarks/results/sampling_speed_cuda.json "$W/" 2>/dev/null
tar czf "$OUT/train64.tar.gz" -C "$W" --exclude='*_samples.npz' --exclude='*_all.png' .
grep -E "passed|failed|FAILED|ERROR" "$W/tests_cuda.log" | tail -n 20
grep -E "peak|img/s|ratio" "$W/unet_bench.log" | tail -n 16 | cut -c1-230
grep -E "NFE" "$W/sampling_speed.log" | cut -c1-140 | awk 'NR % 3 == 1'
grep -hE "^ddpmkit train|^speed|^trained|^stopped|images \(" "$W"/train_*.log "$W"/sample_*.log "$W"/grid_*.log | cut -c1-250
cat "$W/stages.txt"; ls -la "$OUT"
