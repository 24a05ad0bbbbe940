#!/usr/bin/env bash
# The GPU checks of a device session, each part under its own time limit so that one that hangs or fails leaves
# the others their time. PARTS picks and orders them (default: all, in this order). On an H200 (session 33) the
# tests ran past a 150 s limit (the four compiled and CUDA-graph tests alone took 110 s), graphs took about
# 2.5 minutes at 512 examples, smol 2, profile 1; llama 2.5 and mfu 1.5 in session 7. A 15-minute lease, each
# call's machine start included, fits them as two calls, e.g. PARTS="tests graphs smol", then PARTS="profile llama
# mfu"; each part's limit is a variable below (TESTS_S, ...):
#   tests    the CUDA tests (fp16 with a GradScaler, trunk cache, fp32 against CPU, compiled blocks, CUDA graphs,
#            GQA paths, decoding);
#   graphs   the engine's compiled training with and without CUDA graphs (TrainConfig.cuda_graphs) over varying
#            lengths, against transformers + PEFT on the same batches (benchmarks/cuda_graphs.py);
#   smol     the training step on the SmolLM2-135M shape, ours (eager, compiled, compiled with CUDA graphs)
#            against transformers and transformers + PEFT, `head` (with the eval forward), `lora:16` and `full`;
#   profile  where the compiled `lora:16` and `full` steps' kernel time goes (benchmarks/profile_step.py);
#   llama    the training step on the Llama-3.2-1B shape, `lora:16` and `full`, the same columns;
#   mfu      matmul peaks and `full` MFU of the Llama-3.2-1B shape, eager and compiled.
# Random weights of the real shapes: nothing here needs ../shared or the network. Results land in $OUT
# (default ./cuda-session): log.txt and one JSON per part.
#
#   OUT=$OUT PYTHONPATH=$PWD/.deps PARTS="..." bash benchmarks/cuda_session.sh   # on the device machine, repo root
#
# The device image has torch, transformers, peft and pytest but not `gguf`. llama_ft imports it only to read a
# GGUF file, which nothing here does; to run other checks that do, a copy of the installed package travels in an
# ignored folder, named in the device call's `carry`:
#   mkdir -p .deps && cp -r "$(python3 -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')" .deps/
#   grep -qx '/.deps/' .git/info/exclude || echo /.deps/ >> .git/info/exclude
set -uo pipefail
OUT=${OUT:-cuda-session}
PARTS=${PARTS:-tests graphs smol profile llama mfu}
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
} 2>&1 | tee -a "$log"
STEP="python3 -m benchmarks.train_step --device cuda --steps 3 --reps 3 --compile"
for p in $PARTS; do case $p in
  tests) part "CUDA tests" "${TESTS_S:=300}"
    timeout "$TESTS_S" python3 -m pytest -q -p no:cacheprovider tests/train/test_cuda.py tests/cli/test_training.py \
      2>&1 | tee -a "$log" ;;
  graphs) part "the engine with and without CUDA graphs, SmolLM2-135M shape" "${GRAPHS_S:=200}"
    timeout "$GRAPHS_S" python3 benchmarks/cuda_graphs.py --device cuda --shape smollm2-135m \
      --policies lora:16 full --examples 512 --batch 16 --json "$OUT/graphs_smollm2.json" 2>&1 | tee -a "$log" ;;
  smol) part "training step, SmolLM2-135M shape, 16 x 512" "${SMOL_S:=120}"
    timeout "$SMOL_S" $STEP --shapes smollm2-135m --batch 16 --seq 512 --policies head lora:16 full --json "$OUT/steps_smollm2.json" 2>&1 | tee -a "$log"
    part "training step with CUDA graphs, SmolLM2-135M shape, 16 x 512" "${GSTEP_S:=60}"
    timeout "$GSTEP_S" $STEP --shapes smollm2-135m --batch 16 --seq 512 --policies lora:16 full \
      --compile-mode reduce-overhead --no-common --json "$OUT/steps_smollm2_graphs.json" 2>&1 | tee -a "$log" ;;
  profile) for pol in lora:16 full; do
      part "profile, compiled $pol, SmolLM2-135M shape, 16 x 512" "${PROFILE_S:=40}"
      timeout "$PROFILE_S" python3 benchmarks/profile_step.py --device cuda --shape smollm2-135m --policy "$pol" \
        --batch 16 --seq 512 --warmup 3 --steps 3 --compile --resident-gib 0 \
        --json "$OUT/profile_${pol/:/}.json" 2>&1 | tee -a "$log"
    done ;;
  llama) part "training step, Llama-3.2-1B shape, 8 x 1024" "${LLAMA_S:=150}"
    timeout "$LLAMA_S" $STEP --shapes llama-3.2-1b --batch 8 --seq 1024 --policies lora:16 full \
      --json "$OUT/steps_llama1b.json" 2>&1 | tee -a "$log" ;;
  mfu) part "matmul peaks and full MFU" "${MFU_S:=100}"
    timeout "$MFU_S" python3 -m benchmarks --device cuda --sections mfu --out "$OUT" --budget-s $(( MFU_S - 50 )) \
      2>&1 | tee -a "$log"
    rm -f "$OUT"/*.png ;;  # a call brings back 8 files at most: keep the JSON
  *) echo "unknown part $p (tests graphs smol profile llama mfu)" | tee -a "$log" ;;
esac; done
date -u | tee -a "$log"
