"""End-to-end: wall time and training tokens/s of the recipes, read from their run folders' metrics.json.

    python -m benchmarks --sections e2e --e2e-runs runs/sst2,runs/squad    # tabulate finished runs
    python -m benchmarks --sections e2e --e2e-smoke                        # launch both on a tiny slice first

The full runs are the recipes' own commands (embedded SmolLM2-135M, default policy):
    python train_sst2.py --model smollm2-135m --data ../shared/data/sst2 --output-dir runs/sst2
    python train_squad.py --n 4000 --model smollm2-135m \\
        --data ../shared/data/squad_v1.1/train-v1.1-rebuilt.json.zip --output-dir runs/squad
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

SMOKE = {
    "sst2": [sys.executable, "train_sst2.py", "--model", "smollm2-135m", "--data", str(DATA / "sst2"),
             "--max-train", "64", "--max-test", "32", "--epochs", "1", "--no-zero-shot", "--overwrite"],
    "squad": [sys.executable, "train_squad.py", "--n", "24", "--test-size", "8", "--model", "smollm2-135m",
              "--data", str(DATA / "squad_v1.1" / "train-v1.1-rebuilt.json.zip"), "--epochs", "1",
              "--no-zero-shot", "--overwrite"],
}


def read_run(folder: str | Path) -> dict:
    """One row from a finished run folder: task, model, policy, wall and training seconds, tokens/s."""
    folder = Path(folder)
    path = folder / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json; give the --output-dir of a finished train_sst2.py or "
                                "train_squad.py run.")
    m = json.loads(path.read_text())
    t, tr = m.get("timings", {}), m.get("train", {})
    cache = tr.get("trunk_cache") or {}
    command = None
    if (folder / "run_config.json").is_file():
        command = json.loads((folder / "run_config.json").read_text()).get("command")
    return {"run": str(folder), "task": m.get("task"), "model": m.get("model"), "policy": m.get("policy"),
            "device": m.get("device"), "amp": m.get("amp"), "train_examples": (m.get("split") or {}).get("train"),
            "wall_s": _round(t.get("total_seconds")), "train_s": _round(t.get("train_seconds")),
            "train_tok_s": _round(tr.get("tokens_per_second")), "steps": tr.get("steps"),
            "padding_waste": _round(tr.get("padding_waste"), 4),
            "epoch_s": [_round(x) for x in tr.get("epoch_seconds", [])],
            "trunk_cache_s": _round(cache.get("seconds")), "command": command}


def _round(x, nd: int = 1):
    return None if x is None else round(float(x), nd)


def smoke(out_root: Path, threads: int | None = None, timeout: float = 900) -> list[dict]:
    """Run both recipes on a tiny slice of the embedded model's data; rows with the measured process wall time.
    threads: OMP_NUM_THREADS for the recipes (None: their default, one per core)."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    rows = []
    for task, cmd in SMOKE.items():
        folder = out_root / f"e2e_smoke_{task}"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + ["--output-dir", str(folder)], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            rows.append({"run": str(folder), "task": task, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = read_run(folder)
        row["process_wall_s"] = round(wall, 1)
        rows.append(row)
    return rows
