"""The recipes under torchrun: every process computes (each its shard of the scoring), rank 0 alone prints,
creates the run folder and writes; a failure in a block all processes pass together (`together`) stops every
one of them, reported once."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from llama_ft.cli.errors import PeerFailure, describe, expected
from llama_ft.cli.run_folder import RunFolder
from llama_ft.train.distributed import gather_objects, init_distributed


def join_processes(device: str) -> tuple[int, int, str]:
    """(rank, world size, device): joins torchrun's process group when torchrun started this process (the
    device becomes cuda:LOCAL_RANK on GPUs); (0, 1, device) otherwise."""
    rank, world, dev = init_distributed(torch.device(device))
    return rank, world, str(dev)


@contextmanager
def quiet_unless_main(rank: int) -> Iterator[None]:
    """On ranks other than 0, stdout and stderr (progress bars, warnings) go to /dev/null for the block; an
    error raised in it is still printed, by the handler around the block."""
    if rank == 0:
        yield
        return
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def output_folder(stack: ExitStack, rank: int, args: argparse.Namespace) -> Path:
    """--output-dir: rank 0 opens it as a RunFolder (refused, resumed or replaced) until `stack` closes; the
    other ranks only name it, since the engine and the recipes write on rank 0 alone."""
    if rank == 0:
        return stack.enter_context(RunFolder(args.output_dir, args.overwrite, args.resume))
    return Path(args.output_dir)


@contextmanager
def together(rank: int, world: int, args: argparse.Namespace) -> Iterator[None]:
    """Every process runs the block, then they compare: when an expected error was raised on any of them, all
    raise PeerFailure (chained to their own error, if any) with the lowest failing rank's message and status,
    which rank 0 alone reports (llama_ft.cli.errors.run_guarded). A collective: every process must enter it."""
    err = None
    try:
        yield
    except Exception as e:
        if world == 1 or not expected(e):
            raise
        err = e
    if world == 1:
        return
    mine = describe(err, args.output_dir, args.resume) if err is not None else None
    failed = [(r, report) for r, report in enumerate(gather_objects(mine)) if report is not None]
    if not failed:
        return
    first, (line, status) = failed[0]
    raise PeerFailure(line, status, first) from err
