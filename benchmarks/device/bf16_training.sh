#!/bin/bash
# Third GPU check: bf16 in training only (ranking + bootstrap; test-time gradients now float32), 600 outer steps.
# Usage (repository root): bash benchmarks/device/bf16_training.sh OUTDIR cuda [OUTER_STEPS [TIMEOUT_S]]
O=$1; DEV=$2; STEPS=${3:-600}; T=${4:-190}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH  # ecop-wrap and its dependencies must be importable
R="--images builtin --resolution 32 --width 128 --depth 3 --batch 4 --seed 0 --outer-lr 3e-4 --max-grad-norm 1.0 --eval-split both --methods ecop --device $DEV --no-plot --outer-steps $STEPS"
for d in float32 bfloat16; do
  timeout $T python3 benchmarks/reproduce $R --graph-free-dtype $d --json $O/bf16train_${d}_$STEPS.json > $O/bf16train_${d}.log 2>&1 &
done
wait
tail -n 3 $O/bf16train_*.log
python3 benchmarks/reproduce --paired $O/bf16train_bfloat16_$STEPS.json:ecop $O/bf16train_float32_$STEPS.json:ecop
