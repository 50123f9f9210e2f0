#!/bin/bash
# GPU check of graph_free_full_precision="ends" (the default): speed at 256x256 and the builtin comparison's
# PSNR with bf16 graph-free passes against float32, two seeds, 1000 outer steps.
# Usage (repository root): bash benchmarks/device/bf16_ends.sh OUTDIR cuda [tiny]
O=$1; DEV=$2; TINY=$3
. benchmarks/device/machine.sh
LOG=$O/log_ends.txt
machine_header $LOG
if [ -n "$TINY" ]; then
  CMP="--side 16 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 2"
  REP="--outer-steps 4 --eval-size 4 --train-size 16 --test-steps 4"; T1=300; T2=300
else
  CMP="--side 256 --batch 8 --repeats 5"; REP="--outer-steps 1000"; T1=180; T2=370
fi
echo "== 1. --compare at 256x256 ($(date +%T))" | tee -a $LOG
timeout $T1 $PY benchmarks/speed --compare --device $DEV $CMP --compare-configs default,bf16,bf16-all,compile,bf16+compile \
  --json $O/speed_compare_256_b8_ends_cuda.json 2>&1 | tee -a $LOG
echo "== 2. builtin comparison, float32 vs bf16 (ends in float32), seeds 0 and 1, in parallel ($(date +%T))" | tee -a $LOG
R="--images builtin --resolution 32 --width 128 --depth 3 --batch 4 --outer-lr 3e-4 --max-grad-norm 1.0 --eval-split both --methods ecop --device $DEV --no-plot $REP"
for seed in 0 1; do
  for dt in float32 bfloat16; do
    timeout $T2 $PY benchmarks/reproduce $R --seed $seed --graph-free-dtype $dt --json $O/bf16ends_s${seed}_${dt}.json > $O/repro_s${seed}_${dt}.log 2>&1 &
  done
done
wait
tail -n 3 $O/repro_s*.log | tee -a $LOG
for seed in 0 1; do
  $PY benchmarks/reproduce --paired $O/bf16ends_s${seed}_bfloat16.json:ecop $O/bf16ends_s${seed}_float32.json:ecop 2>&1 | tee -a $LOG
done
echo "== done ($(date +%T))" | tee -a $LOG
