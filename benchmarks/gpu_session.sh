#!/usr/bin/env bash
# Issue 16 part 3: the prepared device run, for a task lent an NVIDIA GPU (at most 10 minutes a
# call, 15 minutes of device time a session). From the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh            # call 1 (~8 min): no-sync test, ±1 kernels, eager bf16 throughput
#   bash benchmarks/gpu_session.sh compiled   # call 2 (~4 min): torch.compile throughput, resnet18_cifar
#
# Each part has its own timeout, so one slow part cannot eat the others' time. The logs and the
# result rows (benchmarks/results/gpu*.jsonl) are copied to $OUT (the device tool brings it back).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
if [ "${1:-}" = compiled ]; then
  (cd benchmarks && timeout 230 python gpu.py --models resnet18_cifar \
      --methods ste,reactnet,recu,ovsw,adabin,rbnn --rounds 3 --steps 5 --warmup 3) 2>&1 | tee "$OUT/gpu_compiled.log"
else
  timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/training/test_gpu_fast_path.py 2>&1 | tee "$OUT/no_sync.log"
  (cd benchmarks && timeout 90 python gpu_pm1.py --reps 20) 2>&1 | tee "$OUT/pm1.log"
  (cd benchmarks && timeout 270 python gpu.py --no-compile --rounds 3 --steps 5 --warmup 2) 2>&1 | tee "$OUT/gpu_eager.log"
fi
cp benchmarks/results/gpu*.jsonl "$OUT"/ 2>/dev/null || true
