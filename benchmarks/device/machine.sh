# Sourced by the prepared GPU checks (repository root): makes ecop-wrap importable, sets PY, and defines
# machine_header LOG, which writes (and prints) what the check ran on: date, GPU, CPU count, Python, torch and CUDA.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH  # ecop-wrap and its dependencies must be importable
PY=python3
machine_header() {
  { date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; nproc;
    $PY -c "import torch,sys;print(sys.version);print('torch',torch.__version__,'cuda',torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"; } 2>&1 | tee "$1"
}
