"""The recipes when something is wrong: --overwrite loses nothing, and library errors reach the user as one
line that names the flag (never a traceback)."""
import json

import pytest


def old_run(out):
    (out / "model").mkdir(parents=True)
    (out / "checkpoint").mkdir()
    files = {"metrics.json": b'{"rows": {"old": 1}}\n', "results.md": b"# old\n", "run_config.json": b"{}\n",
             "model/model.safetensors": bytes(range(256)), "checkpoint/state.pt": b"\x80\x04old",
             "loss.png": b"\x89PNG old"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("which,bad", [("sst2", "missing.tsv"), ("squad", "missing.json"),
                                      ("sst2", "bad.tsv"), ("squad", "bad.json")])
def test_overwrite_with_bad_data_keeps_the_old_run_byte_for_byte(request, tmp_path, capsys, which, bad):
    recipe = request.getfixturevalue(f"{which}_recipe")
    out = tmp_path / "run"
    files = old_run(out)
    if bad.startswith("bad"):
        (tmp_path / bad).write_text("sentence\tlabel\ngood\t7\n" if which == "sst2" else '{"data": [')
    rc = recipe.main(["--data", str(tmp_path / bad), "--output-dir", str(out), "--overwrite", "--no-zero-shot"])
    err = capsys.readouterr().err
    assert rc == 2 and bad in err and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(out) == files
    assert sorted(p.name for p in out.iterdir()) == sorted({n.split("/")[0] for n in files})


def test_a_library_error_is_reported_with_the_flag(sst2_recipe, tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"film {i}\t{i % 2}\n" for i in range(20)))
    rc = sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--policy", "last:9",
                           "--no-zero-shot", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --policy 'last:9' asks for more layers than the model has (2)" in err
    assert "Traceback" not in err and "policy=" not in err
    assert not (tmp_path / "run").exists()  # nothing was written: no half-made folder


def test_windows_too_short_name_the_flag(squad_recipe, tmp_path, capsys, tiny_model_dir):
    doc = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is the capital of France.",
         "qas": [{"id": str(i), "question": "What is Paris?", "answers": [{"text": "the capital", "answer_start": 9}]}
                 for i in range(4)]}]}]}
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(doc))
    rc = squad_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--n", "2", "--test-size", "2",
                            "--max-length", "20", "--stride", "4", "--no-zero-shot",
                            "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --max-length 20 leaves no room for a question and context" in err


def test_no_usable_answer_span_is_said_plainly(squad_recipe, tmp_path, capsys):
    doc = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.",
         "qas": [{"id": str(i), "question": "Where?", "answers": [{"text": "Spain", "answer_start": 0}]}
                 for i in range(4)]}]}]}
    data = tmp_path / "nospan.json"
    data.write_text(json.dumps(doc))
    rc = squad_recipe.main(["--data", str(data), "--n", "2", "--test-size", "2", "--no-zero-shot",
                            "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "nospan.json: none of the 2 training questions has a usable answer span" in err
    assert "processes" not in err


def test_a_diverged_run_is_reported_and_never_exported(sst2_recipe, tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"film number {i}\t{i % 2}\n" for i in range(64)))
    out = tmp_path / "run"
    rc = sst2_recipe.main(["--model", str(tiny_model_dir), "--data", str(data), "--policy", "head", "--lr", "1e9",
                           "--epochs", "2", "--batch-size", "8", "--no-zero-shot", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged" in err and "Traceback" not in err
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
