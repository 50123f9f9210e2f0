#!/bin/bash
# One prepared GPU check for issue 25 (item 6 and the CUDA-graph option of item 1), about 8 minutes on an H100.
# Usage (repository root): bash benchmarks/device/issue25_gpu.sh OUTDIR cuda [tiny]
# "tiny" shrinks every size for a smoke run (on the CPU too: DEVICE cpu; the CUDA-graph test then skips).
O=$1; DEV=$2; TINY=$3
. benchmarks/device/machine.sh
LOG=$O/log.txt
machine_header $LOG
if [ -n "$TINY" ]; then
  S64="--side 16 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 2"; OPS="$S64"
  PAPER="--side 24 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 1"; BIG="--side 64 --width 32 --layers 2"
  T=240
else
  S64="--side 64 --width 256 --layers 4 --batch 8 --repeats 10"; OPS="--side 32 --width 256 --layers 4 --batch 8 --repeats 2"
  PAPER="--side 178 --width 256 --layers 4 --batch 8 --repeats 3"; BIG="--side 1024 --width 256 --layers 4"
  T=150
fi
echo "== 1. the CUDA-graph option against eager (tests/test_speed_modes.py) ($(date +%T))" | tee -a $LOG
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_speed_modes.py -k "cuda_graph" 2>&1 | tail -n 5 | tee -a $LOG
echo "== 2. --compare at 64x64 B 8: Learnit, default, CUDA graphs, bf16+compile ($(date +%T))" | tee -a $LOG
timeout $T $PY benchmarks/speed --compare --device $DEV $S64 --compare-configs default,cuda-graphs,bf16+compile \
  --json $O/speed_compare_64_b8_issue25_cuda.json 2>&1 | tail -n 12 | tee -a $LOG
echo "== 3. --ops at 32x32 B 8: bmm with and without CUDA graphs ($(date +%T))" | tee -a $LOG
timeout $T $PY benchmarks/speed --ops --device $DEV $OPS --ops-configs "torch.func bmm,bmm + cuda graphs" \
  --json $O/speed_ops_32_b8_issue25_cuda.json 2>&1 | grep -v "per range\|most frequent" | tail -n 6 | tee -a $LOG
echo "== 4. the paper's configuration (178x178, SIREN 5x256, B 8): time of Learnit, ECoP, ECoP + checkpoint ($(date +%T))" | tee -a $LOG
timeout $T $PY benchmarks/speed --compare --device $DEV $PAPER --compare-configs default,checkpoint \
  --json $O/speed_compare_178_b8_issue25_cuda.json 2>&1 | tail -n 8 | tee -a $LOG
echo "== 5. their peak GPU memory (one step each, its own process) ($(date +%T))" | tee -a $LOG
for method in learnit ecop; do
  for settings in "checkpoint=False" "checkpoint=True"; do
    [ "$method" = learnit ] && [ "$settings" = "checkpoint=True" ] && continue
    timeout 90 $PY benchmarks/speed --scale --device $DEV $PAPER --repeats 2 --scale-method $method --scale-settings "$settings" \
      --json $O/speed_scale_178_${method}_${settings#checkpoint=}_cuda.json 2>&1 | grep "step\|median" | tee -a $LOG
  done
done
echo "== 6. one 1024x1024 step, checkpoint + chunk 16384, B 1 ($(date +%T))" | tee -a $LOG
timeout $T $PY benchmarks/speed --scale --device $DEV $BIG --batch 1 --repeats 2 \
  --json $O/speed_scale_1024_cuda.json 2>&1 | grep "step\|median" | tee -a $LOG
echo "== done ($(date +%T))" | tee -a $LOG
