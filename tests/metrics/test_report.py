"""llama_ft/metrics/report.py and inputs.py through the evaluate.py recipe: the study's tables, bad input."""

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from metrics_squad_pairs import SQUAD_DEV

from llama_ft.metrics import format_squad_table, squad_em_f1, squad_report, squad_v1, squad_v2
from llama_ft.metrics.inputs import load_squad_dataset

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("evaluate_recipe", REPO / "evaluate.py")
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)


@pytest.fixture(scope="module")
def squad_files(tmp_path_factory):
    """Two real dev articles as an official dataset (.json and .zip), and predictions for them."""
    folder = tmp_path_factory.mktemp("squad")
    with zipfile.ZipFile(SQUAD_DEV) as archive:
        dataset = json.loads(archive.read("dev-v1.1-open.json"))
    dataset["data"] = dataset["data"][:2]
    (folder / "dev.json").write_text(json.dumps(dataset))
    with zipfile.ZipFile(folder / "dev.zip", "w") as archive:
        archive.writestr("dev.json", json.dumps(dataset))
        archive.writestr("__MACOSX/._dev.json", b"\x00\x05\x16\x07")  # as macOS's archiver adds
    qas = [qa for article in dataset["data"] for p in article["paragraphs"] for qa in p["qas"]]
    after = {qa["id"]: qa["answers"][0]["text"].split(" ")[0] for qa in qas}
    before = {qa["id"]: "the" for qa in qas}
    for name, predictions in (("after", after), ("before", before)):
        (folder / f"{name}.json").write_text(json.dumps(predictions))
    return folder, after


def run(capsys, *argv):
    code = recipe.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_squad_table_before_after_and_json(squad_files, capsys):
    folder, after = squad_files
    code, out, err = run(
        capsys,
        "squad",
        "--dataset",
        folder / "dev.zip",
        "--predictions",
        folder / "after.json",
        "--before",
        folder / "before.json",
        "--json",
        folder / "out.json",
    )
    assert code == 0 and err == ""
    lines = out.split("\n\n")[0].splitlines()  # the study's table; the paired differences follow it
    assert lines[0] == "| Metric | Sub-Metric | Before Fine-Tuning | After Fine-Tuning |"
    assert [line.split(" | ")[:2] for line in lines[2:10]] == [
        ["| bleu", "-"],
        ["| exact_match", "-"],
        ["| f1", "-"],
        ["| meteor", "score"],
        ["| rouge-1", "-"],
        ["| rouge-2", "-"],
        ["| rouge-L", "-"],
        ["| rouge-Lsum", "-"],
    ]
    assert lines[10].startswith("| squad_v2 | HasAns_exact |") and lines[-1].startswith(
        "| squad_v2 | total |"
    )
    reports = json.loads((folder / "out.json").read_text())
    references = load_squad_dataset(folder / "dev.json")
    assert reports["after"]["exact_match"] == pytest.approx(
        squad_v1(after, references)["exact_match"], abs=1e-9
    )
    assert reports["after"]["squad_v2"]["total"] == len(references) == reports["after"]["questions"]
    assert f"| {reports['after']['f1']:.4f} |" in out
    paired = reports["paired"]
    for metric in ("exact_match", "f1"):
        assert paired[metric]["mean_difference"] == pytest.approx(
            reports["after"][metric] - reports["before"][metric], abs=1e-9)
        assert paired[metric]["n"] == len(references)
        assert paired[metric]["low"] <= paired[metric]["mean_difference"] <= paired[metric]["high"]
    assert "| f1 | " in out.split("paired over the same questions")[1]


def test_only_predicted_scores_the_questions_a_limited_run_answered(squad_files, capsys, tmp_path):
    """A run with --eval-limit answers the first questions of its file: --only-predicted scores those alone,
    and the paired difference of two such runs covers the same questions."""
    folder, after = squad_files
    first = dict(list(after.items())[:40])
    (tmp_path / "limited.json").write_text(json.dumps(first))
    (tmp_path / "other.json").write_text(json.dumps({qid: "the" for qid in first}))
    code, out, err = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "limited.json",
                         "--before", tmp_path / "other.json", "--only-predicted", "--json", tmp_path / "out.json")
    assert code == 0 and err == ""
    assert "scoring the 40 questions" in out and "had no prediction" not in out
    reports = json.loads((tmp_path / "out.json").read_text())
    references = {qid: golds for qid, golds in load_squad_dataset(folder / "dev.json").items() if qid in first}
    assert reports["after"]["questions"] == 40 == reports["paired"]["f1"]["n"]
    assert reports["after"]["f1"] == pytest.approx(squad_v1(first, references)["f1"], abs=1e-9)
    # Without the flag the same file is scored against every question, the unanswered ones at 0.
    code, out, _ = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "limited.json")
    assert code == 0 and "had no prediction and score 0" in out
    # Predictions from another dataset leave nothing to score: one clear error.
    (tmp_path / "alien.json").write_text(json.dumps({"no-such-id": "x"}))
    code, _, err = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "alien.json",
                       "--only-predicted")
    assert code == 2 and "right dataset" in err


def test_missing_and_unknown_ids_are_counted(squad_files, capsys, tmp_path):
    folder, after = squad_files
    ids = list(after)
    partial = {qid: after[qid] for qid in ids[5:]} | {"not-a-squad-id": "x"}
    (tmp_path / "p.json").write_text(json.dumps(partial))
    code, out, _ = run(
        capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "p.json"
    )
    assert code == 0
    assert f"5 of {len(ids)} questions had no prediction and score 0" in out
    assert "1 predictions have ids not in" in out and "were ignored" in out
    report = squad_report(partial, load_squad_dataset(folder / "dev.json"))
    assert report["missing_predictions"] == 5 and report["unknown_predictions"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("{not json", "not valid JSON"),
        ('[{"id": "x", "prediction_text": "y"}]', "a JSON list; SQuAD predictions are one object"),
        ('{"ID": 3}', "the answer for 'ID' is a int (3); every answer must be a string"),
        ('{"ID": null}', "the answer for 'ID' is a NoneType"),
        ('{"unknown-1": "a", "unknown-2": "b"}', "none of its 2 question ids is in"),
    ],
)
def test_bad_predictions_give_one_clear_error(squad_files, capsys, tmp_path, content, message):
    folder, after = squad_files
    content = content.replace("ID", next(iter(after)))
    (tmp_path / "p.json").write_text(content)
    code, out, err = run(
        capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "p.json"
    )
    assert code == 2 and out == ""
    assert err.startswith(f"error: {tmp_path / 'p.json'}") and message.replace("ID", next(iter(after))) in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ('{"version": "1.1"}', "the top level has no `data` field"),
        ('{"data": [{"title": "x"}]}', "data[0] has no `paragraphs` field"),
        (
            '{"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": "x"}]}]}]}',
            "data[0].paragraphs[0].qas[0].answers is a str, expected a list",
        ),
        (
            '{"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": [{"text": 1}]}]}]}]}',
            "answers[0].text is a int, expected a str",
        ),
        (
            '{"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": []}, {"id": "q", "answers": []}]}]}]}',
            "question id 'q' appears twice",
        ),
        ('{"data": []}', "the dataset holds no questions"),
        ("[1, 2]", "the top level has no `data` field"),
    ],
)
def test_bad_dataset_gives_one_clear_error(squad_files, capsys, tmp_path, content, message):
    folder, _ = squad_files
    (tmp_path / "d.json").write_text(content)
    code, out, err = run(
        capsys, "squad", "--dataset", tmp_path / "d.json", "--predictions", folder / "after.json"
    )
    assert code == 2 and out == "" and message in err, err


def test_other_bad_files(squad_files, capsys, tmp_path):
    folder, _ = squad_files
    (tmp_path / "na.json").write_text('{"a": "high"}')
    (tmp_path / "two.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    cases = [
        (["--dataset", tmp_path / "absent.json"], "no such file"),
        (["--dataset", tmp_path / "two.zip"], "must hold exactly one .json file"),
        (
            ["--dataset", folder / "dev.json", "--na-probs", tmp_path / "na.json"],
            "the no-answer probability for 'a' is 'high'; expected a finite number",
        ),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, "squad", "--predictions", folder / "after.json", *argv)
        assert code == 2 and message in err, err
    (tmp_path / "na.json").write_text('{"a": 0.5}')
    code, _, err = run(
        capsys,
        "squad",
        "--dataset",
        folder / "dev.json",
        "--predictions",
        folder / "after.json",
        "--na-probs",
        tmp_path / "na.json",
    )
    assert code == 2 and "questions have no no-answer probability" in err


def test_llama_ft_predict_jsonl_scores_as_the_official_predictions(squad_files, capsys, tmp_path):
    """The JSONL `python -m llama_ft.predict` writes ({"id", "answer", "score", ...} a line) scores exactly as the
    same answers in the official {id: answer} file; a line it could not have written is named."""
    folder, after = squad_files
    lines = [json.dumps({"id": qid, "answer": answer, "score": 0.5, "start": 0, "end": len(answer)})
             for qid, answer in after.items()]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n\n")
    want = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", folder / "after.json")
    got = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "p.jsonl")
    assert want[0] == got[0] == 0 and got[1] == want[1].replace("after.json", "p.jsonl")
    first = next(iter(after))
    bad = {
        '{"id": "ID", "prediction": "x"}': 'p.jsonl:2: no "answer" field',
        '{"answer": "x"}': 'p.jsonl:2: no "id" field; SQuAD predictions are scored by question id',
        '{"id": "ID", "answer": null}': "p.jsonl:2: the answer is a NoneType",
        '{"id": "FIRST", "answer": "x"}': "p.jsonl:2: id 'FIRST' again (first on line 1)",
        '["x"]': "p.jsonl:2: a JSON list, not an object",
    }
    for line, message in bad.items():
        (tmp_path / "p.jsonl").write_text(lines[0] + "\n" + line.replace("FIRST", first).replace("ID", "q2") + "\n")
        code, out, err = run(capsys, "squad", "--dataset", folder / "dev.json", "--predictions", tmp_path / "p.jsonl")
        assert code == 2 and out == "" and message.replace("FIRST", first) in err, err


def test_classification_table_and_bad_labels(capsys, tmp_path):
    (tmp_path / "gold.tsv").write_text("sentence\tlabel\ngood film \t1\nbad film \t0\nfine \t1\nmeh \t0\n")
    (tmp_path / "after.tsv").write_text("index\tprediction\n0\t1\n1\t0\n2\t1\n3\t1\n")
    (tmp_path / "before.json").write_text("[0, 0, 0, 0]")
    code, out, _ = run(
        capsys,
        "classification",
        "--gold",
        tmp_path / "gold.tsv",
        "--predictions",
        tmp_path / "after.tsv",
        "--before",
        tmp_path / "before.json",
    )
    assert code == 0
    assert out.splitlines()[2:] == [
        "| before.json | 50.00 | 0.2500 | 0.5000 | 0.3333 |",
        "| after.tsv | 75.00 | 0.8333 | 0.7500 | 0.7333 |",
    ]
    a, b = tmp_path / "a/p.json", tmp_path / "b/p.json"  # two runs' files of the same name
    for f in (a, b):
        f.parent.mkdir()
        f.write_text((tmp_path / "before.json").read_text())
    for before, after, names in ((a, b, [str(a), str(b)]), (a, a, [f"before: {a}", f"after: {a}"])):
        code, out, _ = run(capsys, "classification", "--gold", tmp_path / "gold.tsv", "--predictions", after,
                           "--before", before)
        assert code == 0 and [row.split(" | ")[0] for row in out.splitlines()[2:]] == [f"| {n}" for n in names]
    # llama_ft.predict's JSONL: ids by line order when its input had none, its "id" when every line has one
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"label": y, "score": 0.9}) + "\n" for y in (1, 0, 1, 1)))
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"id": i, "label": y}) + "\n"
                                                for i, y in ((3, 1), (2, 1), (1, 0), (0, 1))))
    for name in ("pred.jsonl", "ids.jsonl"):
        code, out, _ = run(capsys, "classification", "--gold", tmp_path / "gold.tsv", "--predictions", tmp_path / name)
        assert code == 0 and out.splitlines()[2:] == [f"| {name} | 75.00 | 0.8333 | 0.7500 | 0.7333 |"]
    bad = {
        "mixed.jsonl": ('{"id": 0, "label": 1}\n{"label": 0}\n', "mixed.jsonl:2: some lines have an \"id\""),
        "nolabel.jsonl": ('{"prediction": 1}\n', 'nolabel.jsonl:1: no "label" field'),
        "short.json": ("[1, 0]", "2 gold ids have no prediction (first: '2'), 0 predicted ids"),
        "scores.json": ("[0.9, 0.1, 0.2, 0.3]", "the label for '0' is 0.9"),
        "test.tsv": ("index\tsentence\n0\tx\n", "has no `label` or `prediction` column"),
        "keys.json": ('{"a": 1}', "4 gold ids have no prediction (first: '0'), 1 predicted ids"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        code, out, err = run(
            capsys, "classification", "--gold", tmp_path / "gold.tsv", "--predictions", tmp_path / name
        )
        assert code == 2 and out == "" and message in err, err


def test_unanswerable_questions_are_scored_by_the_v2_rules():
    """An empty answer to a question without gold answer is right in EM and F1 alike (the official v2.0
    script), not EM 1 / F1 0 as the v1.1 rules would give it."""
    refs = {"q1": [], "q2": ["France"], "q3": [], "q4": ["the Loire valley"]}
    preds = {"q1": "", "q2": "France", "q3": "Paris", "q4": "Loire"}
    v2 = squad_v2(preds, refs)
    assert squad_em_f1(preds, refs) == {"exact_match": v2["exact"], "f1": v2["f1"]}
    assert v2["exact"] == pytest.approx(50.0) and v2["f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    report = squad_report(preds, refs)
    assert (report["exact_match"], report["f1"]) == (v2["exact"], v2["f1"])
    v1_refs = {"q2": ["France"], "q4": ["the Loire valley"]}
    assert squad_em_f1({"q2": "France"}, v1_refs) == squad_v1({"q2": "France"}, v1_refs)  # missing q4 scores 0


def test_study_table_layout():
    study = {
        "bleu": 0.0064,
        "exact_match": 0.0,
        "f1": 1.8544,
        "meteor": 0.0399,
        "rouge1": 0.0205,
        "rouge2": 0.0086,
        "rougeL": 0.0199,
        "rougeLsum": 0.0199,
        "squad_v2": {
            "exact": 0.0,
            "f1": 1.8544,
            "total": 2594,
            "HasAns_exact": 0.0,
            "HasAns_f1": 1.8544,
            "HasAns_total": 2594,
            "best_exact": 0.0,
            "best_exact_thresh": 0.0,
            "best_f1": 1.8544,
            "best_f1_thresh": 0.0,
        },
    }
    table = format_squad_table(None, study).splitlines()
    assert table[0] == "| Metric | Sub-Metric | Value |"
    assert table[2] == "| bleu | - | 0.0064 |" and table[5] == "| meteor | score | 0.0399 |"
    assert [row.split(" | ")[1] for row in table[10:]] == [
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "best_exact",
        "best_exact_thresh",
        "best_f1",
        "best_f1_thresh",
        "exact",
        "f1",
        "total",
    ]  # the study's order
    assert table[12] == "| squad_v2 | HasAns_total | 2594 |"


def test_command_line_never_shows_a_traceback(tmp_path):
    (tmp_path / "empty.json").write_text("")
    done = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "squad",
            "--dataset",
            str(tmp_path / "empty.json"),
            "--predictions",
            str(tmp_path / "empty.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"error: {tmp_path / 'empty.json'}: the file is empty\n"
