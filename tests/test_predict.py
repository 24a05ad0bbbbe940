"""`python -m llama_ft.predict`: JSONL in, one prediction a line out in input order, errors naming file and line."""
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import llama_ft
from llama_ft.metrics.inputs import load_predictions
from llama_ft.predict import main

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football League "
           "for the 2015 season. The American Football Conference champion Denver Broncos defeated the National "
           "Football Conference champion Carolina Panthers 24\u201310 to earn their third Super Bowl title.")


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    """Tiny classification and QA exports with the real SmolLM2 tokenizer, heads large enough to disagree."""
    out = {}
    for task in ("classification", "qa"):
        model = llama_ft.from_pretrained(tiny_model_dir, task=task, seed=0)
        with torch.no_grad():
            for head in model.head_modules():
                head.weight.normal_(0, 2.0)
        out[task] = llama_ft.save_pretrained(model, tmp_path_factory.mktemp(task) / "model", dtype="float32",
                                             tokenizer=tiny_model_dir)
    return out


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


TEXTS = ["a gem of a film", "contains no wit , only labored gags ", "an exceptionally long and winding sentence "
         "that goes on , and on , about nothing in particular", "bleak"]


def test_classification_file_in_input_order_with_ids(exports, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"s{i}", "text": t} for i, t in enumerate(TEXTS)] + [""])
    dst = tmp_path / "out.jsonl"
    assert main([str(exports["classification"]), "--task", "text-classification", "--input", str(src),
                 "--output", str(dst), "--batch-size", "2"]) == 0
    got = read_jsonl(dst)
    want = llama_ft.pipeline("text-classification", model=exports["classification"])(TEXTS)
    assert [g.pop("id") for g in got] == ["s0", "s1", "s2", "s3"]
    assert got == [{"label": w["label"], "score": pytest.approx(w["score"], abs=1e-6)} for w in want]
    assert "4 predictions" in capsys.readouterr().out


def test_question_answering_file(exports, tmp_path):
    questions = ["Who won Super Bowl 50?", "Which season was it?", "What was the score?"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"question": q, "context": CONTEXT} for q in questions])
    dst = tmp_path / "out.jsonl"
    assert main([str(exports["qa"]), "--task", "question-answering", "--input", str(src), "--output", str(dst),
                 "--max-length", "40"]) == 0
    got = read_jsonl(dst)
    want = llama_ft.pipeline("question-answering", model=exports["qa"], max_length=40)(
        question=questions, context=[CONTEXT] * 3)
    assert [(g["answer"], g["start"], g["end"]) for g in got] == [(w["answer"], w["start"], w["end"]) for w in want]
    assert all(g["answer"] == CONTEXT[g["start"]:g["end"]] for g in got)


def squad_doc(questions: list[tuple[str, str]]) -> dict:
    """An official-layout SQuAD document: one article, one paragraph, these (id, question) pairs."""
    qas = [{"id": qid, "question": q, "answers": []} for qid, q in questions]  # not read: a test set may have none
    return {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


def test_question_answering_reads_an_official_squad_file(exports, tmp_path):
    """A SQuAD .json or .zip is predicted question by question in file order, with its ids, as the same questions
    given as JSONL; evaluate.py reads the output as it is."""
    questions = [("q1", "Who won Super Bowl 50?"), ("q2", "Which season was it?"), ("q3", "What was the score?")]
    doc = squad_doc(questions)
    doc["data"].insert(0, {"title": "empty", "paragraphs": []})
    (tmp_path / "dev.json").write_text(json.dumps(doc))
    with zipfile.ZipFile(tmp_path / "dev.zip", "w") as z:
        z.writestr("dev.json", json.dumps(doc))
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "question": q, "context": CONTEXT} for i, q in questions])
    outs = {}
    for name in ("dev.json", "dev.zip", "in.jsonl"):
        outs[name] = tmp_path / f"{name}.out.jsonl"
        assert main([str(exports["qa"]), "--task", "question-answering", "--input", str(tmp_path / name),
                     "--output", str(outs[name]), "--max-length", "40"]) == 0
    got = read_jsonl(outs["dev.json"])
    assert [g["id"] for g in got] == ["q1", "q2", "q3"]
    assert got == read_jsonl(outs["dev.zip"]) == read_jsonl(outs["in.jsonl"])
    assert load_predictions(outs["dev.json"]) == {g["id"]: g["answer"] for g in got}


@pytest.mark.parametrize("doc,message", [
    ({"version": "1.1"}, "not the official SQuAD layout"),
    ({"data": [{"title": "x"}]}, "data[0] has no `paragraphs` list"),
    (squad_doc([("q1", "Who?"), ("q2", "")]), "question 1 (id 'q2') has no question"),
    (squad_doc([("q1", "Who?"), (None, "Why?")]), "question 1 (id None) has no id"),
    ({"data": []}, "the file holds no question"),
])
def test_bad_squad_files_are_named(exports, tmp_path, capsys, doc, message):
    (tmp_path / "dev.json").write_text(json.dumps(doc))
    assert main([str(exports["qa"]), "--task", "question-answering", "--input", str(tmp_path / "dev.json"),
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --input {tmp_path / 'dev.json'}") and message in err, err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("line,message", [
    ('{"text": "fine"', r"in\.jsonl:2: not JSON"),
    ('["fine"]', r"in\.jsonl:2: a JSON list, not an object"),
    ('{"sentence": "fine"}', r'in\.jsonl:2: field "text" must be a non-empty string \(missing\)'),
    ('{"text": ""}', r'in\.jsonl:2: field "text" must be a non-empty string'),
])
def test_bad_input_lines_are_named(exports, tmp_path, capsys, line, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "good"}, line])
    assert main([str(exports["classification"]), "--task", "text-classification", "--input", str(src),
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out.jsonl").exists()


def test_errors_name_the_flags(exports, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"question": "Who?", "context": CONTEXT}])
    args = ["--input", str(src), "--output", str(tmp_path / "out.jsonl")]
    assert main([str(exports["classification"]), "--task", "question-answering", *args]) == 2
    assert "error: MODEL " in capsys.readouterr().err
    assert main([str(exports["qa"]), "--task", "question-answering", "--input", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"--input {tmp_path / 'none.jsonl'}: no such file" in err
    assert main([str(exports["qa"]), "--task", "question-answering", "--input", str(src),
                 "--output", str(tmp_path / "missing" / "out.jsonl")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main([str(exports["qa"]), "--task", "question-answering", "--dtype", "bf16", "--amp", "none", *args]) == 2
    assert capsys.readouterr().err.startswith("error: --amp none: the weights are torch.bfloat16")


def test_runs_as_a_module_with_a_progress_bar(exports, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    dst = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "llama_ft.predict", str(exports["classification"]), "--task",
                           "text-classification", "--input", str(src), "--output", str(dst)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4/4" in done.stderr  # tqdm's bar
    assert len(read_jsonl(dst)) == 4
