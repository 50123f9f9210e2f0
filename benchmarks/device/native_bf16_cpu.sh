#!/bin/bash
# Issue 10's bf16 + compile target on a CPU with native bf16 (AVX512-BF16/AMX), e.g. a lent GPU machine's host:
# `--compare` at 64x64, SIREN 5x256, B=8, at 1 and 2 threads, default and bf16+compile against Learnit.
# Usage (repository root): bash benchmarks/device/native_bf16_cpu.sh OUTDIR [tiny]
O=$1; TINY=$2
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH  # ecop-wrap and its dependencies must be importable
PY=python3; LOG=$O/log_native_bf16_cpu.txt
{ date; lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -w 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort | uniq -c;
  $PY -c "import torch,sys;print(sys.version);print('torch',torch.__version__,'native bf16',torch.ops.mkldnn._is_mkldnn_bf16_supported())"; } 2>&1 | tee $LOG
if ! $PY -c "import torch,sys;sys.exit(0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() or '$TINY' else 1)"; then
  echo "this CPU has no native bf16: nothing to measure" | tee -a $LOG; exit 0
fi
if [ -n "$TINY" ]; then CMP="--side 16 --width 32 --layers 2 --batch 2 --K 4 --L 2 --repeats 2"; T=300
else CMP="--side 64 --batch 8 --repeats 3"; T=280; fi
for t in 1 2; do
  echo "== --compare at $t thread(s) ($(date +%T))" | tee -a $LOG
  timeout $T $PY benchmarks/speed --compare --device cpu --threads $t $CMP --compare-configs default,bf16+compile \
    --json $O/speed_compare_64_b8_cpu_native_bf16_${t}thread.json 2>&1 | grep -v -i warn | tail -7 | tee -a $LOG
done
echo "== done ($(date +%T))" | tee -a $LOG
