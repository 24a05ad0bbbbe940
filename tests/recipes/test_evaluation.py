"""--eval-every / --save-best in both recipes: a validation slice held out of training, evaluated during
training, the best weights kept, and the evaluations in metrics.json."""
import json


def test_sst2_evaluates_on_a_held_out_slice_and_keeps_the_best(sst2_recipe, tmp_path, tiny_model_dir, shared):
    lines = (shared / "data/sst2/train.tsv").read_text().splitlines()
    data = tmp_path / "sst2.tsv"
    data.write_text("\n".join(lines[:101]) + "\n")
    out = tmp_path / "run"
    rc = sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--policy", "head", "--epochs", "1",
                           "--batch-size", "8", "--max-steps", "4", "--eval-every", "2", "--save-best", "accuracy",
                           "--no-zero-shot", "--output-dir", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == {"kind": "study", "train": 72, "test": 20, "validation": 8}
    evals = m["train"]["evaluations"]
    assert [e["step"] for e in evals] == [2, 4] and {"accuracy", "f1", "eval_loss"} <= set(evals[0])
    assert m["train"]["steps"] == 4 and m["train"]["best_metric"] == max(e["accuracy"] for e in evals)
    assert (out / "best" / "model.safetensors").is_file()


def test_squad_evaluates_f1_on_held_out_questions(squad_recipe, tmp_path, tiny_model_dir, shared):
    from llama_ft.tasks.squad.data import read_json
    doc = read_json(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip")
    data = tmp_path / "squad.json"
    data.write_text(json.dumps({"version": "1.1", "data": doc["data"][:1]}))
    out = tmp_path / "run"
    rc = squad_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--n", "40", "--test-size", "10",
                            "--policy", "head", "--epochs", "1", "--batch-size", "8", "--global-batch", "8",
                            "--max-steps", "2", "--eval-every", "1", "--save-best", "f1", "--study-windows",
                            "--no-zero-shot", "--output-dir", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"]["train"] == 36 and m["split"]["validation"] == 4 and m["split"]["calibration"] == 0
    evals = m["train"]["evaluations"]
    assert [e["step"] for e in evals] == [1, 2] and {"f1", "exact_match", "eval_loss"} <= set(evals[0])
    assert m["train"]["best_metric"] == max(e["f1"] for e in evals)
