"""The recipes under torchrun (two gloo processes on the CPU): the same metrics as one process with the same
global batch, rank 0's files only, exit status 0; a failure on rank 1 stops both, reported once, never a hang."""
import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.distributed.run import get_args_parser

from llama_ft.tasks.squad.data import read_json
from llama_ft.train.distributed import map_sharded, shard

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds: a hang fails the test instead of blocking the suite
# Rank 1 of the launched job fails as a full disk would, in the set-up or in training: `python FAIL_ON_RANK_1
# setup|train RECIPE FLAGS...`.
FAIL_ON_RANK_1 = '''
import errno, os, runpy, sys
sys.path.insert(0, os.getcwd())
import llama_ft, llama_ft.train
where, script = sys.argv[1], sys.argv[2]
def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk")
if os.environ["RANK"] == "1":
    if where == "setup":
        llama_ft.load_tokenizer = full_disk
    else:
        llama_ft.train.train = full_disk
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
'''


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node 2 script args` from the checkout, one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port()),
           str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def losses(folder: Path) -> list[float]:
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in log if "loss" in e]


def assert_same_run(one: Path, two: Path, r: subprocess.CompletedProcess, table_line: str) -> tuple[dict, dict]:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert files(two) == files(one)  # rank 1 wrote nothing of its own (no second log, cache or aside folder)
    assert r.stdout.count(table_line) == 1  # rank 0 alone prints
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert (a.get("processes"), b["processes"]) == (1, 2)
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5, atol=1e-6)
    return a, b


@pytest.fixture()
def tiny_tsv(tmp_path, shared):
    lines = (shared / "data/sst2/train.tsv").read_text().splitlines()
    path = tmp_path / "sst2.tsv"
    path.write_text("\n".join(lines[:81]) + "\n")
    return path


@pytest.fixture()
def tiny_squad(tmp_path, shared):
    """The first 80 questions of SQuAD v1.1's training file, as an official-format file."""
    doc = read_json(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip")
    paragraphs, n = [], 0
    for para in doc["data"][0]["paragraphs"]:
        paragraphs.append(para)
        n += len(para["qas"])
        if n >= 80:
            break
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return path


def test_shards_join_back_into_the_items_in_order():
    items = list(range(7))
    for world in (1, 2, 3, 8):
        parts = [shard(items, r, world) for r in range(world)]
        assert sum(parts, []) == items and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert map_sharded(lambda part: [x * 2 for x in part], items) == [x * 2 for x in items]  # one process


def test_sst2_on_two_processes_scores_as_one_process(tmp_path, tiny_model_dir, tiny_tsv, one_thread):
    flags = ["--model", tiny_model_dir, "--data", tiny_tsv, "--epochs", "1", "--batch-size", "4", "--global-batch",
             "8", "--train", "last:1", "--amp", "none", "--eval-every", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert recipe("train_sst2").main([*map(str, flags), "--output-dir", str(one)]) == 0
    r = torchrun("train_sst2.py", *flags, "--output-dir", two)
    a, b = assert_same_run(one, two, r, "| fine-tuned (last:1) |")
    assert set(b["rows"]) == {"pre-trained (random head)", "zero-shot (prompt)",
                              "zero-shot (prompt, batch-calibrated)", "fine-tuned (last:1)"}
    for name, row in a["rows"].items():
        assert {k: b["rows"][name][k] for k in ("accuracy", "f1", "confusion_matrix")} == \
               {k: row[k] for k in ("accuracy", "f1", "confusion_matrix")}, name
    evals = [{k: e[k] for k in ("accuracy", "f1")} for e in a["train"]["evaluations"]]
    assert evals and [{k: e[k] for k in ("accuracy", "f1")} for e in b["train"]["evaluations"]] == evals


def test_squad_on_two_processes_scores_as_one_process(tmp_path, tiny_model_dir, tiny_squad, one_thread):
    # --train-questions: torchrun's parser would take --n for its own --nnodes. --max-steps: the engine drops
    # an epoch's last batch when it is smaller than the process count (here 113 windows = 14 x 8 + 1).
    flags = ["--model", tiny_model_dir, "--data", tiny_squad, "--train-questions", "40", "--test-size", "20",
             "--eval-file", tiny_squad, "--eval-limit", "10", "--prompt-limit", "4", "--train", "last:1",
             "--max-steps", "12", "--batch-size", "4", "--global-batch", "8", "--study-windows", "--amp", "none",
             "--eval-every", "4", "--save-best", "f1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert recipe("train_squad").main([*map(str, flags), "--output-dir", str(one)]) == 0
    r = torchrun("train_squad.py", *flags, "--output-dir", two)
    a, b = assert_same_run(one, two, r, "| fine-tuned (last:1) |")
    assert set(b["rows"]) == {"pre-trained (random head)", "zero-shot (prompt), first 4", "fine-tuned (last:1)"}
    for name, row in a["rows"].items():
        for key, report in row.items():
            assert (b["rows"][name][key]["exact_match"], b["rows"][name][key]["f1"]) == \
                   (report["exact_match"], report["f1"]), (name, key)
    for name in ("predictions.json", "predictions_eval.json", "predictions_zero_shot.json"):
        assert json.loads((two / name).read_text()) == json.loads((one / name).read_text()), name
    assert [e["f1"] for e in b["train"]["evaluations"]] == [e["f1"] for e in a["train"]["evaluations"]]


@pytest.mark.parametrize("name", ["train_sst2", "train_squad"])
def test_torchrun_passes_a_spelling_of_every_recipe_flag_through(name, monkeypatch, capsys):
    """torchrun's own parser takes abbreviations: a recipe flag that begins one of torchrun's (--n: --nnodes) makes
    it refuse the whole command line, so every flag needs a spelling that is no such prefix."""
    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        recipe(name).parse_args([])
    monkeypatch.undo()
    launcher = get_args_parser()

    def passed(flag: str) -> bool:
        try:
            return launcher.parse_args(["recipe.py", flag, "1"]).training_script_args == [flag, "1"]
        except SystemExit:
            return False
    actions = [a for a in parsers[0]._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert len(actions) > 30
    assert [a.option_strings for a in actions if not any(passed(f) for f in a.option_strings)] == []


@pytest.mark.parametrize("where", ["setup", "train"])
def test_a_failure_on_rank_1_stops_both_processes_with_one_message(tmp_path, tiny_model_dir, tiny_tsv, where):
    launcher = tmp_path / "fail_on_rank_1.py"
    launcher.write_text(FAIL_ON_RANK_1)
    out = tmp_path / "run"
    r = torchrun(launcher, where, "train_sst2.py", "--model", tiny_model_dir, "--data", tiny_tsv, "--epochs", 1,
                 "--batch-size", 4, "--train", "last:1", "--amp", "none", "--output-dir", out)
    assert r.returncode != 0
    assert r.stderr.count("No space left on device") == 1, r.stderr[-3000:]
    assert "error (rank 1): No space left on device: /full/disk; free disk space" in r.stderr
    assert "Connection closed by peer" not in r.stderr  # rank 0 does not report rank 1's death as its own error
    assert not (out / "metrics.json").exists()
