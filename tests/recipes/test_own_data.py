"""train_sst2.py on your own data (any columns, labels, text pairs, a Hub id), --validation-file, --predict-file
with GLUE's unlabelled test.tsv, and --report-to tensorboard; each run in process on the tiny model."""
import csv
import json

import pytest

from llama_ft.cli.training import write_tensorboard

FAST = ["--epochs", "1", "--batch-size", "8", "--policy", "last:1", "--no-zero-shot", "--max-length", "32"]
STARS = {"bad": "1", "fine": "2", "great": "10"}  # integer labels: numeric order puts 10 last


def reviews_csv(path, n=60, pair=False):
    words = list(STARS)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "summary", "stars"] if pair else ["review", "stars"])
        for i in range(n):
            word = words[i % 3]
            row = [f"a {word}, {word} film number {i}", f"it was {word}"] if pair else [f"a {word}, {word} film {i}"]
            w.writerow([*row, STARS[word]])
    return path


def predictions(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction\tprobability"
    return [ln.split("\t") for ln in lines[1:]]


def test_three_classes_from_a_csv_with_own_columns(sst2_recipe, tmp_path, tiny_model_dir):
    data, unlabelled = reviews_csv(tmp_path / "train.csv"), tmp_path / "new.csv"
    unlabelled.write_text('review\n"a great, great film"\nbad\n')
    out = tmp_path / "run"
    rc = sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--text-column", "review",
                           "--label-column", "stars", "--predict-file", str(unlabelled), "--output-dir", str(out),
                           *FAST])
    assert rc == 0
    cfg = json.loads((out / "model/config.json").read_text())
    assert cfg["id2label"] == {"0": "1", "1": "2", "2": "10"}
    assert cfg["label2id"] == {"1": 0, "2": 1, "10": 2}
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "text-classification" and m["labels"] == ["1", "2", "10"]
    assert m["split"] == {"kind": "study", "train": 48, "test": 12}
    assert set(m["rows"]) == {"fine-tuned (last:1)"}  # no SST-2 prompt for other labels
    rows = predictions(out / "predictions.tsv")
    assert [r[0] for r in rows] == ["0", "1"] and all(r[1] in STARS.values() for r in rows)
    assert all(1 / 3 <= float(r[2]) <= 1 for r in rows)  # the most probable of three classes


def test_sentence_pairs_with_a_validation_file(sst2_recipe, tmp_path, tiny_model_dir):
    data, dev = reviews_csv(tmp_path / "train.csv", pair=True), reviews_csv(tmp_path / "dev.csv", n=9, pair=True)
    out = tmp_path / "run"
    rc = sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--text-column", "review",
                           "--text-pair-column", "summary", "--label-column", "stars", "--validation-file", str(dev),
                           "--output-dir", str(out), *FAST])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == {"kind": "validation-file", "train": 60, "test": 9}
    assert m["rows"]["fine-tuned (last:1)"]["examples"] == 9


def test_glue_test_tsv_is_predicted_but_refused_as_training_data(sst2_recipe, tmp_path, tiny_model_dir, shared,
                                                                  capsys):
    lines = (shared / "data/sst2/train.tsv").read_text().splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(lines[:41]) + "\n")
    glue_test = tmp_path / "test.tsv"
    glue_test.write_text("\n".join((shared / "data/sst2/test.tsv").read_text().splitlines()[:11]) + "\n")
    out = tmp_path / "run"
    assert sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(train), "--predict-file", str(glue_test),
                             "--output-dir", str(out), *FAST]) == 0
    rows = predictions(out / "predictions.tsv")
    assert [r[0] for r in rows] == [str(i) for i in range(10)] and {r[1] for r in rows} <= {"0", "1"}
    assert json.loads((out / "model/config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}

    capsys.readouterr()
    assert sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(glue_test),
                             "--output-dir", str(tmp_path / "refused"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "test.tsv: has no `label` column" in err and "--predict-file" in err and "Traceback" not in err


def test_a_hub_dataset_id_with_its_config(sst2_recipe, tmp_path, tiny_model_dir, monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "neutral", "positive"])})
    asked = []

    def load_dataset(name, config=None):
        asked.append((name, config))
        texts = [f"{w} film {i}" for i in range(10) for w in ("awful", "okay", "superb")]
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
            {"sentence": texts, "label": [i % 3 for i in range(30)]}, features)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "run"
    assert sst2_recipe.main(["--model", str(tiny_model_dir), "--data", "someone/reviews", "--dataset-config",
                             "three", "--output-dir", str(out), *FAST]) == 0
    assert asked == [("someone/reviews", "three")]
    cfg = json.loads((out / "model/config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert "someone/reviews" in (out / "model/README.md").read_text()


def test_tensorboard_scalars_from_the_step_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [
        {"step": 1, "epoch": 0, "loss": 0.9, "lr": 1e-4, "grad_norm": 2.0, "tokens_per_s": 100.0},
        {"step": 2, "epoch": 0, "loss": 0.5, "lr": 2e-4, "grad_norm": 1.0, "tokens_per_s": 120.0},
        {"step": 2, "eval": {"accuracy": 0.75, "eval_loss": 0.6}}]) + "\n{torn")
    acc = EventAccumulator(str(write_tensorboard(log, tmp_path / "tb"))).Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                                          "eval/accuracy", "eval/eval_loss"}
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train/loss")] == [(1, 0.9), (2, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(2, 0.75)]


def test_report_to_tensorboard_in_a_run(sst2_recipe, tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    assert sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(reviews_csv(tmp_path / "d.csv")),
                             "--text-column", "review", "--label-column", "stars", "--report_to", "tensorboard",
                             "--eval-every", "2", "--output-dir", str(out), *FAST]) == 0
    acc = EventAccumulator(str(out / "tensorboard")).Reload()
    steps = json.loads((out / "metrics.json").read_text())["train"]["steps"]
    assert len(acc.Scalars("train/loss")) == steps and acc.Scalars("eval/accuracy")


def test_which_data_is_read_as_sst2(sst2_recipe, tmp_path, shared):
    """SST-2's own files stay on the SST-2 reader (0 / 1 labels, the study's results); a column flag, a CSV, a
    folder with train.csv or a Hub id read your own data."""
    (tmp_path / "csvs").mkdir()
    (tmp_path / "csvs/train.csv").write_text("sentence,label\nx,a\n")
    reviews_csv(tmp_path / "d.csv")
    sst2_dir = str(shared / "data/sst2")
    cases = {(): False, ("--data", sst2_dir): False, ("--data", f"{sst2_dir}/train.tsv"): False,
             ("--data", "missing.tsv"): False, ("--data", sst2_dir, "--label-column", "label"): True,
             ("--data", str(tmp_path / "d.csv")): True, ("--data", str(tmp_path / "csvs")): True,
             ("--data", "nyu-mll/glue", "--dataset-config", "sst2"): True}
    assert {k: sst2_recipe.own_data(sst2_recipe.parse_args(list(k))) for k in cases} == cases
