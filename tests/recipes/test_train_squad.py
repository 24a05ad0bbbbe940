"""train_squad.py end to end on a tiny slice with a tiny random model: files, table layout, refusals."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llama_ft.tasks.squad.data import load_squad

ROOT = Path(__file__).resolve().parents[2]


def run(*args, check=True):
    r = subprocess.run([sys.executable, str(ROOT / "train_squad.py"), *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT, check=False)
    if check and r.returncode:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-3000:])
    return r


def test_whole_recipe_on_a_tiny_slice(tmp_path, tiny_model_dir, shared):
    out = tmp_path / "run"
    data = shared / "data/squad_v1.1"
    r = run("--model", tiny_model_dir, "--data", data / "train-v1.1-rebuilt.json.zip", "--n", 40,
            "--test-size", 20, "--eval-file", data / "dev-v1.1-open.json.zip", "--eval-limit", 10,
            "--prompt-limit", 4, "--train", "last:1", "--epochs", 1, "--batch-size", 8, "--global-batch", 8,
            "--study-windows", "--per-window-scoring", "--output-dir", out)
    assert "study split: first 60 questions -> 40 train / 20 test" in r.stdout
    assert "87,599 questions, 87,599 answers: 0 repaired, 0 skipped" in r.stdout
    for name in ("metrics.json", "results.md", "predictions.json", "predictions_eval.json",
                 "predictions_zero_shot.json", "loss.png", "run_config.json", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"]["train"] == 40 and m["split"]["test"] == 20 and m["split"]["eval"] == 10
    phases = ("zero_shot_prompt", "random_head", "train", "eval", "metrics")
    assert set(m["timings"]) == {f"{p}_seconds" for p in phases} | {"total_seconds"}
    # Each phase's peak resident memory: the whole process's so far, so it never falls from phase to phase.
    peaks = [m["peak_memory_bytes"][p] for p in phases]
    assert list(m["peak_memory_bytes"]) == list(phases) and peaks == sorted(peaks) and peaks[0] > 2**20
    assert m["train"]["peak_memory_bytes"] >= peaks[-1]  # read when metrics.json is written
    assert set(m["rows"]) == {"pre-trained (random head)", "zero-shot (prompt), first 4", "fine-tuned (last:1)"}
    after = m["rows"]["fine-tuned (last:1)"]
    assert set(after) == {"test", "eval"}
    for key in ("bleu", "exact_match", "f1", "meteor", "rouge1", "rouge2", "rougeL", "squad_v2"):
        assert key in after["test"]
    assert after["test"]["squad_v2"]["total"] == 20 and after["eval"]["squad_v2"]["total"] == 10
    # The study's per-window scoring counts windows, not questions.
    assert after["test"]["per_window"]["squad_v2"]["total"] == m["windows"]["test"]["windows"] > 20
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 20 and all(isinstance(v, str) for v in preds.values())
    assert len(json.loads((out / "predictions_eval.json").read_text())) == 10
    table = (out / "results.md").read_text()
    assert "| Metric | Sub-Metric | Before Fine-Tuning | After Fine-Tuning |" in table
    assert "| f1 | - |" in table and "| squad_v2 | HasAns_f1 |" in table
    assert "the study's per-window scoring" in table
    summary = [ln.split(" | ")[0] for ln in table.splitlines() if ln.startswith("| ") and " EM | " not in ln][:3]
    assert summary == ["| pre-trained (random head)", "| zero-shot (prompt), first 4", "| fine-tuned (last:1)"]
    assert json.loads((out / "model/config.json").read_text())["architectures"] == ["LlamaForQuestionAnswering"]

    again = run("--model", tiny_model_dir, "--data", data / "train-v1.1-rebuilt.json.zip", "--output-dir", out,
                check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_malformed_data_names_the_file(tmp_path, tiny_model_dir):
    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [')
    r = run("--model", tiny_model_dir, "--data", bad, "--output-dir", tmp_path / "run", check=False)
    assert r.returncode == 2 and "broken.json: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--study-windows", "--max-length", "256"], "--study-windows sets"),
    (["--batch-size", "16", "--global-batch", "24"], "multiple of --batch-size"),
])
def test_conflicting_flags_are_refused(tmp_path, flags, message):
    r = run("--output-dir", tmp_path / "run", *flags, check=False)
    assert r.returncode == 2 and message in r.stderr


def test_squad_v2_calibrates_a_null_threshold(tmp_path, tiny_model_dir, shared):
    from llama_ft.tasks.squad.data import read_json
    doc = read_json(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip")
    paragraphs, n = [], 0
    for para in doc["data"][0]["paragraphs"]:
        qas = []
        for qa in para["qas"]:
            if n % 3 == 0:   # every third question unanswerable; no `is_impossible` field on any of them
                qa = {**qa, "answers": []}
            qas.append(qa)
            n += 1
        paragraphs.append({**para, "qas": qas})
        if n >= 90:
            break
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": paragraphs}]}))
    out = tmp_path / "run"
    r = run("--model", tiny_model_dir, "--data", v2, "--n", 60, "--test-size", 20, "--no-zero-shot",
            "--train", "head", "--epochs", 1, "--batch-size", 8, "--global-batch", 8, "--max-length", 128,
            "--stride", 32, "--output-dir", out)
    assert "unanswerable (" in r.stdout and "54 train / 20 test / 6 held out for the no-answer threshold" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["version"] == "2.0" and m["data"]["impossible_inferred"] == m["data"]["impossible"] > 0
    after = m["rows"]["fine-tuned (head)"]["test"]
    assert "null_threshold" in after and after["squad_v2"]["total"] == 20
    assert after["squad_v2"].get("NoAns_total", 0) > 0


def test_file_split_trains_on_the_first_n_and_tests_on_the_eval_file(tmp_path, tiny_model_dir, shared, squad_recipe):
    """--split file, as run_qa: the first --n questions of --data against --eval-file, nothing held out."""
    data = shared / "data/squad_v1.1"
    out = tmp_path / "run"
    assert squad_recipe.main([
        "--model", str(tiny_model_dir), "--data", str(data / "train-v1.1-rebuilt.json.zip"), "--split", "file",
        "--n", "30", "--eval-file", str(data / "dev-v1.1-open.json.zip"), "--eval-limit", "8", "--no-zero-shot",
        "--train", "last:1", "--epochs", "1", "--batch-size", "8", "--global-batch", "8", "--study-windows",
        "--output-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"]["kind"] == "file" and (m["split"]["train"], m["split"]["test"]) == (30, 8)
    assert set(m["rows"]["fine-tuned (last:1)"]) == {"test"} and not (out / "predictions_eval.json").exists()
    dev_ids = [ex.qid for ex in load_squad(data / "dev-v1.1-open.json.zip").examples[:8]]
    assert list(json.loads((out / "predictions.json").read_text())) == dev_ids
    assert squad_recipe.parse_args(["--split", "file", "--n", "all", "--eval-file", "dev.json"]).n is None
