"""train_sst2.py end to end on a tiny slice: the files it writes, the study's table, and its refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tiny_tsv(tmp_path, shared):
    lines = (shared / "data/sst2/train.tsv").read_text().splitlines()
    path = tmp_path / "sst2.tsv"
    path.write_text("\n".join(lines[:1] + lines[1:81]) + "\n")
    return path


def run(*args, check=True):
    r = subprocess.run([sys.executable, str(ROOT / "train_sst2.py"), *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT)
    if check and r.returncode:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-3000:])
    return r


def test_whole_recipe_on_a_tiny_slice(tmp_path, tiny_model_dir, tiny_tsv):
    out = tmp_path / "run"
    r = run("--model", tiny_model_dir, "--data", tiny_tsv, "--epochs", "1", "--batch-size", "8",
            "--train", "last:1", "--output-dir", out)
    assert "80 labelled rows -> 64 train / 16 test" in r.stdout
    for name in ("metrics.json", "results.md", "confusion.png", "loss.png", "run_config.json",
                 "model/config.json", "model/model.safetensors", "model/README.md", "model/tokenizer.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == {"kind": "study", "train": 64, "test": 16}
    peaks = [m["peak_memory_bytes"][p] for p in ("zero_shot_prompt", "train", "test")]
    assert peaks == sorted(peaks) and peaks[0] > 2**20  # the process's peak so far, after each phase
    # last:1 freezes a bottom: the random head is scored after training, in the test pass through that bottom
    assert m["peak_memory_bytes"]["random_head"] == m["peak_memory_bytes"]["test"]
    assert m["timings"]["random_head_seconds"] > 0 and m["timings"]["test_seconds"] > 0
    assert set(m["rows"]) == {"pre-trained (random head)", "zero-shot (prompt)", "zero-shot (prompt, batch-calibrated)",
                              "fine-tuned (last:1)"}
    for row in m["rows"].values():
        assert 0 <= row["accuracy"] <= 1 and row["recall"] == pytest.approx(row["accuracy"])
        assert sum(map(sum, row["confusion_matrix"])) == 16
    table = (out / "results.md").read_text()
    assert "| Model | Accuracy (%) | Precision | Recall | F1 |" in table
    assert (table.index("pre-trained (random head)") < table.index("zero-shot (prompt)")
            < table.index("zero-shot (prompt, batch-calibrated)") < table.index("fine-tuned"))
    cfg = json.loads((out / "model/config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}

    again = run("--model", tiny_model_dir, "--data", tiny_tsv, "--output-dir", out, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == m  # the previous run is untouched


def test_the_random_head_is_scored_before_training_when_no_bottom_is_frozen(tmp_path, tiny_model_dir, tiny_tsv):
    out = tmp_path / "run"
    run("--model", tiny_model_dir, "--data", tiny_tsv, "--epochs", "1", "--batch-size", "8", "--train", "lora:2",
        "--output-dir", out)
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["timings"]) == ["zero_shot_prompt_seconds", "random_head_seconds", "train_seconds", "test_seconds",
                                  "total_seconds"]
    assert {"pre-trained (random head)", "fine-tuned (lora:2)"} <= set(m["rows"])


def test_bad_data_leaves_no_result_files(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t7\n")
    out = tmp_path / "run"
    r = run("--model", tiny_model_dir, "--data", bad, "--output-dir", out, check=False)
    assert r.returncode == 2 and "bad.tsv" in r.stderr and "outside" in r.stderr
    assert not any(out.glob("*.json")) and not any(out.glob("*.md"))
