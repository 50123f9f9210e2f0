#!/bin/bash
# Second GPU check: which bf16 pass costs the PSNR (ranking only vs bootstrap only), and the speed modes at 256x256.
# Usage (repository root): bash benchmarks/device/bf16_passes.sh OUTDIR cuda [tiny]
O=$1; DEV=$2; TINY=$3
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH  # ecop-wrap and its dependencies must be importable
PY=python3; LOG=$O/log2.txt
if [ -n "$TINY" ]; then
  REP="--outer-steps 4 --eval-size 4 --train-size 16 --test-steps 4"; CMP="--side 16 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 2"; T1=200; T2=200
else
  REP="--outer-steps 1000"; CMP="--side 256 --batch 8 --repeats 5"; T1=235; T2=110
fi
echo "== 1. bf16 in one kind of pass only ($(date +%T))" | tee $LOG
R="--images builtin --resolution 32 --width 128 --depth 3 --batch 4 --seed 0 --outer-lr 3e-4 --max-grad-norm 1.0 --eval-split both --methods ecop --device $DEV --no-plot $REP --graph-free-dtype bfloat16"
for v in rank boot; do
  timeout $T1 $PY benchmarks/device/bf16_one_pass.py $v $R --json $O/bf16check_${v}_only.json > $O/repro_${v}_only.log 2>&1 &
done
wait
tail -n 4 $O/repro_rank_only.log $O/repro_boot_only.log | tee -a $LOG
echo "== 2. --compare at 256x256, default and bf16 ($(date +%T))" | tee -a $LOG
timeout $T2 $PY benchmarks/speed --compare --device $DEV $CMP --compare-configs default,bf16 --json $O/speed_compare_256_b8_cuda.json 2>&1 | tee -a $LOG
echo "== done ($(date +%T))" | tee -a $LOG
