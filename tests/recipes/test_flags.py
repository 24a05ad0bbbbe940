"""The recipes' command lines: every bad value refused at parse time naming the flag and the allowed range,
--policy (with --train as its alias), the new training flags reaching TrainConfig, and --push-to-hub checked
before anything runs."""
import pytest

from llama_ft.cli.training import train_config

BOTH = ["sst2", "squad"]


def refused(recipe, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        recipe.parse_args([*argv])
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("flags,message", [
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--epochs", "-1"], "--epochs -1: must be at least 1"),
    (["--max-length", "0"], "--max-length 0: must be at least 1"),
    (["--max-length", "-1"], "--max-length -1: must be at least 1"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--global-batch", "0"], "--global-batch 0: must be at least 1"),
    (["--batch-size", "16", "--global-batch", "24"], "--global-batch 24 must be a multiple of --batch-size 16"),
    (["--lr", "0"], "--lr 0.0: must be greater than 0"),
    (["--lr=-1e-4"], "--lr -0.0001: must be greater than 0"),
    (["--warmup-ratio", "1"], "--warmup-ratio 1.0: must be in [0, 1)"),
    (["--warmup-ratio", "-0.1"], "--warmup-ratio -0.1: must be in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay -1.0: must be at least 0"),
    (["--max-steps", "0"], "--max-steps 0: must be at least 1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm -1.0: must be at least 0"),
    (["--eval-every", "0"], "--eval-every 0: must be at least 1"),
    (["--log-every", "0"], "--log-every 0: must be at least 1"),
    (["--policy", "lasst:4"], "--policy 'lasst:4' is not a policy"),
    (["--train", "lora:0"], "--policy 'lora:0' is not a policy"),
    (["--save-best", "bleu"], "--save-best: invalid choice"),
    (["--private"], "--private applies to --push-to-hub"),
])
def test_shared_flags_are_checked_at_parse_time(request, capsys, which, flags, message):
    recipe = request.getfixturevalue(f"{which}_recipe")
    assert message in refused(recipe, capsys, *flags)


@pytest.mark.parametrize("flags,message", [
    (["--max-train", "0"], "--max-train 0: must be at least 2"),
    (["--max-train", "1"], "--max-train 1: must be at least 2"),
    (["--max-test", "0"], "--max-test 0: must be at least 2"),
])
def test_sst2_flags(sst2_recipe, capsys, flags, message):
    assert message in refused(sst2_recipe, capsys, *flags)


@pytest.mark.parametrize("flags,message", [
    (["--n", "0"], "--n 0: must be at least 1"),
    (["--test-size", "0"], "--test-size 0: must be at least 1"),
    (["--eval-limit", "0"], "--eval-limit 0: must be at least 1"),
    (["--n-best", "0"], "--n-best 0: must be at least 1"),
    (["--max-answer-tokens", "0"], "--max-answer-tokens 0: must be at least 1"),
    (["--prompt-limit", "0"], "--prompt-limit 0: must be at least 1"),
    (["--stride", "-1"], "--stride -1: must be at least 0"),
    (["--max-length", "128", "--stride", "128"], "--stride 128 must be less than --max-length 128"),
    (["--preset", "study", "--max-length", "64"], "--stride 64 must be less than --max-length 64"),
    (["--study-windows", "--max-length", "256"], "--study-windows sets"),
])
def test_squad_flags(squad_recipe, capsys, flags, message):
    assert message in refused(squad_recipe, capsys, *flags)


@pytest.mark.parametrize("which", BOTH)
def test_policy_flag_and_its_alias_and_the_training_flags(request, tmp_path, which):
    recipe = request.getfixturevalue(f"{which}_recipe")
    assert recipe.parse_args(["--train", "lora:8"]).policy == "lora:8"
    args = recipe.parse_args(["--policy", "last:2", "--eval-every", "5", "--save-best", "eval_loss",
                              "--max-steps", "7", "--grad-checkpointing", "--max-grad-norm", "0", "--log-every", "3"])
    cfg = train_config(args, tmp_path, "cpu", "bf16")
    assert (cfg.policy, cfg.eval_every, cfg.select_metric, cfg.max_steps, cfg.grad_checkpointing,
            cfg.max_grad_norm, cfg.log_every) == ("last:2", 5, "eval_loss", 7, True, None, 3)
    # The presets are unchanged by the shared flags: the defaults make the same TrainConfig as before.
    default = train_config(recipe.parse_args([]), tmp_path, "cpu", "bf16")
    assert default.max_grad_norm == 1.0 and default.log_every == 10 and default.max_steps is None
    assert default.policy == recipe.PRESETS["default"]["policy"]


def test_squads_preset_micro_batch_shrinks_to_split_its_global_batch_over_torchruns_processes(squad_recipe,
                                                                                           monkeypatch):
    """The default's 16 windows a forward pass times 4 processes would not divide its global batch of 32."""
    preset = squad_recipe.PRESETS["default"]
    assert (preset["batch_size"], preset["global_batch"]) == (16, 32)
    for world, micro in (("1", 16), ("2", 16), ("4", 8), ("8", 4), ("32", 1)):
        monkeypatch.setenv("WORLD_SIZE", world)
        assert squad_recipe.parse_args([]).batch_size == micro
        assert squad_recipe.parse_args(["--global-batch", "64"]).batch_size == min(16, 64 // int(world))
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert squad_recipe.parse_args(["--batch-size", "16", "--global-batch", "128"]).batch_size == 16  # given: kept
    monkeypatch.setenv("WORLD_SIZE", "64")
    assert squad_recipe.parse_args([]).batch_size == 16  # no micro-batch fits: the engine says what to change


@pytest.mark.parametrize("which", BOTH)
def test_push_to_hub_is_checked_before_the_first_step(request, capsys, no_hub_token, which):
    recipe = request.getfixturevalue(f"{which}_recipe")
    assert "is not `owner/name`" in refused(recipe, capsys, "--push-to-hub", "not a repo id")
    err = refused(recipe, capsys, "--push-to-hub", "me/my-model")
    assert "--push-to-hub me/my-model: no Hugging Face token" in err


# transformers' run_glue / run_qa spellings: the same settings as the recipe's own flags.
ALIASES = [
    (["--max_seq_length", "256"], ["--max-length", "256"]),
    (["--learning_rate", "3e-4"], ["--lr", "3e-4"]),
    (["--num_train_epochs", "5"], ["--epochs", "5"]),
    (["--num_train_epochs", "5.0"], ["--epochs", "5"]),
    (["--per_device_train_batch_size", "4"], ["--batch-size", "4"]),
    (["--output_dir", "runs/x"], ["--output-dir", "runs/x"]),
    (["--overwrite_output_dir"], ["--overwrite"]),
    (["--resume_from_checkpoint"], ["--resume"]),
]


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("alias,flag", ALIASES, ids=lambda v: v[0] if isinstance(v, list) else v)
def test_run_glue_and_run_qa_spellings_are_aliases(request, which, alias, flag):
    recipe = request.getfixturevalue(f"{which}_recipe")
    given, canonical = vars(recipe.parse_args(alias)), vars(recipe.parse_args(flag))
    assert given == canonical and given != vars(recipe.parse_args([]))


def test_doc_stride_is_an_alias_of_stride(squad_recipe):
    assert squad_recipe.parse_args(["--doc_stride", "96"]).stride == 96


@pytest.mark.parametrize("which", BOTH)
def test_a_fraction_of_an_epoch_is_refused(request, capsys, which):
    recipe = request.getfixturevalue(f"{which}_recipe")
    assert "only whole epochs are supported" in refused(recipe, capsys, "--num_train_epochs", "2.5")


@pytest.mark.parametrize("which", BOTH)
def test_report_to_tensorboard_without_tensorboard_names_the_pip_command(request, capsys, monkeypatch, which):
    import sys
    recipe = request.getfixturevalue(f"{which}_recipe")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert "pip install tensorboard" in refused(recipe, capsys, "--report-to", "tensorboard")


@pytest.mark.parametrize("flags,message", [
    (["--split", "file"], "--split file tests on --eval-file"),
    (["--n", "all"], "--n all trains on every question"),
    (["--n", "some"], "neither a number of questions nor `all`"),
])
def test_squad_file_split_flags(squad_recipe, capsys, flags, message):
    assert message in refused(squad_recipe, capsys, *flags)


@pytest.mark.parametrize("flags,message", [
    (["--validation-file", "dev.csv", "--split", "glue"], "--validation-file replaces the test side of --split"),
    (["--dataset-config", "sst2"], "--dataset-config names the configuration of a Hub dataset id"),
])
def test_sst2_own_data_flags(sst2_recipe, capsys, flags, message):
    assert message in refused(sst2_recipe, capsys, *flags)
