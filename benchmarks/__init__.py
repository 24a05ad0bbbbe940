"""llama_ft's benchmark suite: `python -m benchmarks --help` (see BENCHMARKS.md for the results)."""
