"""llama_ft/cli/run_folder.py: an output folder never mixes two runs, --overwrite loses nothing until the new run
has finished, and refusals name the flag that fixes them."""
import os
import subprocess
import sys

import pytest

from llama_ft.cli.run_folder import ASIDE, RUN_OUTPUTS, RunDirError, RunFolder


def old_run(out):
    (out / "model").mkdir(parents=True)
    files = {}
    for name in ("metrics.json", "predictions_eval.json", "predictions_zero_shot.json", "loss.png",
                 "train_log.jsonl", "model/model.safetensors", "notes.txt"):
        (out / name).write_bytes(f"old {name}".encode())
        files[name] = f"old {name}".encode()
    return files


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_previous_run_refused_then_overwritten_whole(tmp_path):
    out = tmp_path / "run"
    old_run(out)
    with pytest.raises(RunDirError, match="--overwrite"):
        RunFolder(out).__enter__()
    with RunFolder(out, resume=True) as folder:
        assert folder == out and (out / "predictions_eval.json").exists()
    with RunFolder(out, overwrite=True):
        (out / "metrics.json").write_text("new")
    # Every file a run writes is gone (a new run that skips a row must not sit beside the old row's file);
    # what the user put there is not ours to delete.
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt"]
    assert (out / "metrics.json").read_text() == "new"
    assert {"model", "predictions_eval.json", "loss.png", "train_log.jsonl"} <= set(RUN_OUTPUTS)


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        RunFolder(tmp_path / "f").__enter__()


@pytest.mark.parametrize("failure", [ValueError("bad --data"), KeyboardInterrupt()])
def test_a_failed_overwrite_restores_the_previous_run_byte_for_byte(tmp_path, failure):
    out = tmp_path / "run"
    old_run(out)
    before = snapshot(out)
    with pytest.raises(type(failure)), RunFolder(out, overwrite=True):
        assert not (out / "metrics.json").exists() and (out / "notes.txt").exists()
        (out / "loss.png").write_text("new, partial")
        (out / "checkpoint").mkdir()
        raise failure
    assert snapshot(out) == before
    assert not list(out.glob(f"{ASIDE}*"))


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError), RunFolder(tmp_path / "new"):
        raise ValueError("bad --data")
    assert not (tmp_path / "new").exists()


def killed_overwrite(out, finish: bool) -> None:
    """A process that moves the old run aside, writes part of a new one (all of it when `finish`), and dies."""
    code = ("import os, sys; from llama_ft.cli.run_folder import RunFolder\n"
            f"f = RunFolder({str(out)!r}, overwrite=True); f.__enter__()\n"
            f"open({str(out / 'loss.png')!r}, 'w').write('new')\n"
            + (f"open({str(out / 'metrics.json')!r}, 'w').write('new')\n" if finish else "")
            + "os._exit(9)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), capture_output=True, text=True)
    assert r.returncode == 9, r.stderr


def test_a_killed_overwrite_is_restored_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    old_run(out)
    before = snapshot(out)
    killed_overwrite(out, finish=False)
    assert list(out.glob(f"{ASIDE}*")) and (out / "loss.png").read_text() == "new"
    with pytest.raises(RunDirError, match="--overwrite"):  # the restored run is a previous run again
        RunFolder(out).__enter__()
    assert snapshot(out) == before


def test_a_killed_run_that_had_finished_keeps_its_results(tmp_path):
    out = tmp_path / "run"
    old_run(out)
    killed_overwrite(out, finish=True)
    with RunFolder(out, resume=True):
        pass
    assert not list(out.glob(f"{ASIDE}*")) and (out / "metrics.json").read_text() == "new"
