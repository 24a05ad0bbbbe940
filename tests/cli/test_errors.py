"""llama_ft/cli/errors.py: every expected failure is one line naming the flag or file and the fix, never a
traceback (unless --debug); a bug keeps its traceback."""
import errno
import pickle
import sys

import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file

from llama_ft.cli.errors import FAILED, INTERRUPTED, USAGE, as_flags, run_guarded
from llama_ft.model.policies import parse_policy
from llama_ft.train import DivergenceError, NonFiniteError


def raise_(err):
    def body():
        raise err
    return body


def test_api_arguments_become_flags():
    assert as_flags("policy='last:9' asks for more layers") == "--policy 'last:9' asks for more layers"
    assert as_flags("TrainConfig.warmup_ratio=1.5; max_length=0") == "--warmup-ratio 1.5; --max-length 0"
    assert as_flags("select_metric 'f1'") == "select_metric 'f1'"  # only `name=` is an argument
    with pytest.raises(ValueError) as e:
        parse_policy("lasst:4")
    assert as_flags(str(e.value)).startswith("--policy 'lasst:4' is not a policy")


# The HTTP client huggingface_hub is built on (httpx, or requests in older versions).
CLIENT = sys.modules[HfHubHTTPError.__mro__[1].__module__.split(".")[0]]


def hub_503(tmp_path):
    if not hasattr(CLIENT, "Response") or not hasattr(CLIENT, "Request"):
        return HfHubHTTPError("503 Service Unavailable")
    return HfHubHTTPError("503 Service Unavailable",
                          response=CLIENT.Response(503, request=CLIENT.Request("GET", "https://huggingface.co/x")))


def corrupt_safetensors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    try:
        load_file(str(bad))
    except Exception as e:  # noqa: BLE001 - whatever safetensors raises is what the handler must name
        return e
    raise AssertionError("safetensors read a truncated file")


def truncated_torch_state(tmp_path):
    good = tmp_path / "state.pt"
    torch.save({"step": 1, "x": torch.zeros(1000)}, good)
    good.write_bytes(good.read_bytes()[:200])
    try:
        torch.load(good, weights_only=False)
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("torch.load read a truncated file")


@pytest.mark.parametrize("make,status,words", [
    (lambda p: NonFiniteError("step 3: loss nan; lower lr"), FAILED, ["training diverged", "step 3"]),
    (lambda p: DivergenceError("step 2: loss 1.1e+17 > 10 x 0.69; last good checkpoint: none"), FAILED,
     ["training diverged", "step 2", "last good checkpoint"]),
    (lambda p: ValueError("policy='x' is not a policy"), USAGE, ["--policy 'x'"]),
    (lambda p: OSError(errno.EROFS, "Read-only file system", str(p / "out")), FAILED,
     ["Read-only file system", "out", "writable --output-dir"]),
    (lambda p: OSError(errno.ENOSPC, "No space left on device", str(p / "out" / "model")), FAILED,
     ["No space left", "free disk space"]),
    (lambda p: PermissionError(errno.EACCES, "Permission denied", str(p / "out")), FAILED, ["writable"]),
    (corrupt_safetensors, USAGE, ["checkpoint", "damaged", "delete that folder"]),
    (truncated_torch_state, USAGE, ["checkpoint", "damaged"]),
    (lambda p: pickle.UnpicklingError("invalid load key"), USAGE, ["damaged"]),
    (hub_503, FAILED, ["Hugging Face Hub", "503", "--model FOLDER"]),
])
def test_expected_failures_print_one_line(tmp_path, capsys, make, status, words):
    err = make(tmp_path)
    assert run_guarded(raise_(err), output_dir=tmp_path / "out", resume=True) == status
    printed = capsys.readouterr().err
    assert printed.startswith("error: ") and printed.count("\n") == 1 and "Traceback" not in printed
    for w in words:
        assert w in printed


def test_connection_errors_of_the_hub_client_are_one_line(capsys):
    refused = getattr(CLIENT, "ConnectError", None) or CLIENT.ConnectionError
    assert run_guarded(raise_(refused("connection refused"))) == FAILED
    assert "cannot reach the Hugging Face Hub" in capsys.readouterr().err


def test_debug_shows_the_traceback(capsys):
    assert run_guarded(raise_(ValueError("bad")), debug=True) == USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: bad")


def test_ctrl_c_is_an_exit_status_and_a_bug_keeps_its_traceback(capsys):
    assert run_guarded(raise_(KeyboardInterrupt())) == INTERRUPTED
    with pytest.raises(ZeroDivisionError):
        run_guarded(lambda: 1 // 0)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        run_guarded(raise_(RuntimeError("CUDA out of memory")))
