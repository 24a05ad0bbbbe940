#!/usr/bin/env bash
# Every GPU check of a device session in one call (3.5 minutes on an H200), the most wanted first,
# each part under its own time limit so that one that hangs or fails leaves the others their time:
#   1. the CUDA tests (fp16 with a GradScaler, trunk cache, fp32 against CPU, compiled blocks, GQA paths);
#   2. the training step on the SmolLM2-135M shape, ours (eager and compiled) against transformers and
#      transformers + PEFT, `head` (with the eval forward), `lora:16` and `full`;
#   3. matmul peaks and `full` MFU of the Llama-3.2-1B shape at several sizes, eager and compiled;
#   4. the training step on the Llama-3.2-1B shape, `lora:16` and `full`, eager and compiled, against the same.
# Random weights of the real shapes: nothing here needs ../shared or the network. Results land in $OUT
# (default ./cuda-session): log.txt, steps_smollm2.json, steps_llama1b.json, results.json (the MFU suite).
#
#   OUT=$OUT PYTHONPATH=$PWD/.deps bash benchmarks/cuda_session.sh   # on the device machine, from the repo root
#
# The device image has torch, transformers, peft and pytest but not `gguf`. llama_ft imports it only to read a
# GGUF file, which nothing here does; to run other checks that do, a copy of the installed package travels in an
# ignored folder, named in the device call's `carry`:
#   mkdir -p .deps && cp -r "$(python3 -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')" .deps/
#   grep -qx '/.deps/' .git/info/exclude || echo /.deps/ >> .git/info/exclude
set -uo pipefail
OUT=${OUT:-cuda-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
log="$OUT/log.txt"
part() { echo "== $1 (at most $2 s) $(date -u +%T)" | tee -a "$log"; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'peft', peft.__version__, 'gpu', torch.cuda.get_device_name())"
  grep -m1 'model name' /proc/cpuinfo; nproc
} 2>&1 | tee "$log"
part "CUDA tests" "${TESTS_S:=120}"
timeout "$TESTS_S" python3 -m pytest -q -p no:cacheprovider tests/train/test_cuda.py tests/cli/test_training.py \
  2>&1 | tee -a "$log"
part "training step, SmolLM2-135M shape, 16 x 512" "${SMOL_S:=140}"
timeout "$SMOL_S" python3 -m benchmarks.train_step --device cuda --shapes smollm2-135m --policies head lora:16 full \
  --batch 16 --seq 512 --steps 3 --reps 5 --compile --json "$OUT/steps_smollm2.json" 2>&1 | tee -a "$log"
part "matmul peaks and full MFU" "${MFU_S:=150}"
timeout "$MFU_S" python3 -m benchmarks --device cuda --sections mfu --out "$OUT" --budget-s $(( MFU_S - 60 )) \
  2>&1 | tee -a "$log"
part "training step, Llama-3.2-1B shape, 8 x 1024" "${LLAMA_S:=150}"
timeout "$LLAMA_S" python3 -m benchmarks.train_step --device cuda --shapes llama-3.2-1b --policies lora:16 full \
  --batch 8 --seq 1024 --steps 3 --reps 5 --compile --json "$OUT/steps_llama1b.json" 2>&1 | tee -a "$log"
date -u | tee -a "$log"
