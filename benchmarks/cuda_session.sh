#!/usr/bin/env bash
# Every GPU check of a device session in one call (about 8 minutes on one H100 or H200): the CUDA tests, then
# the benchmark suite in CUDA mode within a time budget (BENCHMARKS.md, "GPU"). One log and the suite's
# results.json and plots land in $OUT (default ./cuda-session).
#
#   OUT=$OUT bash benchmarks/cuda_session.sh          # on the device machine, from the repository root
#   TESTS_S=150 BUDGET_S=300 bash benchmarks/cuda_session.sh
#
# The device image has torch, transformers, tokenizers, safetensors, tqdm, matplotlib and pytest; nothing here
# needs ../shared or the network (random weights of the real shapes).
set -uo pipefail
OUT=${OUT:-cuda-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
log="$OUT/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name())"
} 2>&1 | tee "$log"
echo "== CUDA tests" | tee -a "$log"
timeout "${TESTS_S:-180}" python3 -m pytest -q -p no:cacheprovider tests/test_train_cuda.py 2>&1 | tee -a "$log"
echo "== benchmarks (budget ${BUDGET_S:-330} s)" | tee -a "$log"
timeout $(( ${BUDGET_S:-330} + 150 )) python3 -m benchmarks --device cuda --out "$OUT" --budget-s "${BUDGET_S:-330}" \
  2>&1 | tee -a "$log"
date -u | tee -a "$log"
