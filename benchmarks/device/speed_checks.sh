#!/bin/bash
# One prepared GPU check for issue 10: speed modes vs Learnit, bf16 PSNR effect, fit time to quality.
# Usage (repository root): CKPT=init.pt bash benchmarks/device/speed_checks.sh OUTDIR cuda [tiny]
# CKPT: an initialization saved by `benchmarks/speed --fit --fit-train-steps 1000 --fit-save-checkpoint PATH`.
# "tiny" shrinks every size for a smoke run (on the CPU too: DEVICE cpu).
O=$1; DEV=$2; TINY=$3
. benchmarks/device/machine.sh
LOG=$O/log.txt
machine_header $LOG
$PY -c "import skimage;print('skimage',skimage.__version__)" 2>&1 | tee -a $LOG
if [ -n "$TINY" ]; then
  CMP="--side 16 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 2"
  REP="--outer-steps 4 --eval-size 4 --train-size 16 --test-steps 4"
  FIT="--fit-n 4 --fit-pruned 16 --repeats 1 --fit-ref-steps 4 --fit-max-steps 20"
  T1=200; T2=200; T3=200
else
  CMP="--side 64 --batch 8 --repeats 10"
  REP="--outer-steps 1000"
  FIT="--fit-n 100 --fit-pruned 16 --repeats 3"
  T1=260; T2=220; T3=95
fi
echo "== 1. --compare on $DEV ($(date +%T))" | tee -a $LOG
timeout $T1 $PY benchmarks/speed --compare --device $DEV $CMP --json $O/speed_compare_64_b8_cuda.json 2>&1 | tee -a $LOG
echo "== 2. builtin comparison, ECoP graph_free_dtype float32 vs bfloat16, in parallel ($(date +%T))" | tee -a $LOG
R="--images builtin --resolution 32 --width 128 --depth 3 --batch 4 --seed 0 --outer-lr 3e-4 --max-grad-norm 1.0 --eval-split both --methods ecop --device $DEV --no-plot $REP"
timeout $T2 $PY benchmarks/reproduce $R --graph-free-dtype float32 --json $O/bf16check_float32.json > $O/repro_float32.log 2>&1 &
timeout $T2 $PY benchmarks/reproduce $R --graph-free-dtype bfloat16 --json $O/bf16check_bfloat16.json > $O/repro_bfloat16.log 2>&1 &
wait
tail -n 5 $O/repro_float32.log $O/repro_bfloat16.log | tee -a $LOG
$PY benchmarks/reproduce --paired $O/bf16check_bfloat16.json:ecop $O/bf16check_float32.json:ecop 2>&1 | tee -a $LOG
echo "== 3. --fit on $DEV, reference and pruned 16, eager and compiled ($(date +%T))" | tee -a $LOG
timeout $T3 $PY benchmarks/speed --fit --device $DEV --checkpoint ${CKPT:-benchmarks/results/ecop_init_32.pt} $FIT --fit-compile --json $O/speed_fit_32_cuda.json 2>&1 | tee -a $LOG
echo "== done ($(date +%T))" | tee -a $LOG
