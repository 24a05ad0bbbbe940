"""llama_ft/cli/ranks.py and the torchrun side of llama_ft/cli/errors.py, in one process (the two-process runs
are in tests/test_torchrun_recipes.py): one process behaves as before, and a peer's failure is reported by rank 0
with the failing rank's name and status."""
import argparse
import errno
import sys

import pytest

from llama_ft.cli.errors import PeerFailure, lost_peer, run_guarded
from llama_ft.cli.ranks import join_processes, quiet_unless_main, together

ARGS = argparse.Namespace(output_dir="runs/x", resume=False)


def test_one_process_is_rank_0_of_1_and_keeps_its_own_errors(capsys):
    assert join_processes("cpu") == (0, 1, "cpu")
    full = OSError(errno.ENOSPC, "No space left on device", "/disk")
    with pytest.raises(OSError) as raised, together(0, 1, ARGS):
        raise full
    assert raised.value is full
    with quiet_unless_main(0):
        print("shown")
    assert capsys.readouterr().out == "shown\n"


def test_rank_0_reports_a_peer_failure_once_with_its_rank_and_status(capsys):
    def body():
        raise PeerFailure("No space left on device: /disk; free disk space or choose another --output-dir.", 1, 1)
    assert run_guarded(body) == 1
    assert capsys.readouterr().err == ("error (rank 1): No space left on device: /disk; free disk space or choose "
                                       "another --output-dir.\n")


def test_a_lost_connection_in_one_process_is_a_bug_not_a_lost_peer():
    err = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:53485")
    assert not lost_peer(err)
    def body():
        raise err
    with pytest.raises(RuntimeError, match="Connection closed"):
        run_guarded(body)


def test_other_ranks_print_nothing_inside_the_block(capsys):
    with quiet_unless_main(1):
        print("hidden")
        print("hidden too", file=sys.stderr)
    print("after")
    out = capsys.readouterr()
    assert (out.out, out.err) == ("after\n", "")
