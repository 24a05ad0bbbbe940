"""llama_ft/runs.py: an output folder never mixes two runs, and refusals name the flag that fixes them."""
import pytest

from llama_ft.cli.run_folder import RUN_OUTPUTS, RunDirError, prepare_output_dir


def test_previous_run_refused_then_overwritten_whole(tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    for name in ("metrics.json", "predictions_eval.json", "predictions_zero_shot.json", "loss.png",
                 "train_log.jsonl", "model/model.safetensors", "notes.txt"):
        (out / name).write_text("old")
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, resume=True) == out and (out / "predictions_eval.json").exists()
    prepare_output_dir(out, overwrite=True)
    # Every file a run writes is gone (a new run that skips a row must not sit beside the old row's file);
    # what the user put there is not ours to delete.
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert {"model", "predictions_eval.json", "loss.png", "train_log.jsonl"} <= set(RUN_OUTPUTS)


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_output_dir(tmp_path / "f")
