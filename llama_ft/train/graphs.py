"""CUDA graphs for the compiled training blocks: each block's kernels replayed from a recorded graph instead of
launched one at a time from Python.

A small model's training step on a GPU waits on the host: the compiled SmolLM2-135M step on an H200 kept the
GPU busy a third of its time (BENCHMARKS.md, "GPU"). torch.compile's `reduce-overhead` mode records each compiled
block's forward and backward as CUDA graphs (inductor's CUDA graph trees, one shared memory pool) and replays
them. The loop then has three duties, each a function here:
- mark where a forward pass begins (`begin_forward`), so that the previous replay's outputs may be overwritten;
- move the gradients out of the graphs' pool after a backward that later micro-batches add to (`own_grads`):
  the next replay writes into that memory;
- keep the set of batch shapes small: each new (rows, length) records graphs of its own and holds memory in
  the pool, so micro-batch lengths are padded up to a multiple of LENGTH_MULTIPLE. Padding changes neither the
  loss nor the gradient: the task loss masks padded positions, and right padding follows every real token.
"""
from __future__ import annotations

import torch
from torch import Tensor

LENGTH_MULTIPLE = 64
MODE = "reduce-overhead"   # torch.compile's mode that records CUDA graphs


def resolve_cuda_graphs(setting: bool | str, device_type: str, compile: bool | str, grad_checkpointing: bool,
                        world: int) -> bool:
    """Whether a run's compiled blocks replay CUDA graphs (TrainConfig.cuda_graphs): `auto` where they can (a CUDA
    device, blocks that may compile, no recomputation in backward, one process); True insists and names what
    stands in its way."""
    blockers = [why for bad, why in (
        (device_type != "cuda", f"the run's device is {device_type}, and CUDA graphs exist only on a CUDA device"),
        (compile is False, "compile=False: graphs are recorded by compiling the blocks"),
        # A checkpointed block runs its forward again inside backward, which a recorded graph cannot replay.
        (grad_checkpointing, "grad_checkpointing=True recomputes each block's forward inside backward"),
        # Not measured under DDP, whose gradient hooks read the graphs' outputs as backward produces them.
        (world > 1, f"the run has {world} processes; graphs are used in single-process runs only"),
    ) if bad]
    if setting is True and blockers:
        raise ValueError(f"TrainConfig.cuda_graphs=True, but {'; '.join(blockers)}. Use cuda_graphs='auto' "
                         "(graphs where they apply) or False.")
    return setting is not False and not blockers


def begin_forward() -> None:
    """Tell the graph trees a new forward pass starts: the outputs of the last replay are no longer needed."""
    torch.compiler.cudagraph_mark_step_begin()


def own_grads(params: list[Tensor]) -> None:
    """Copy each gradient out of the graphs' memory pool, so that the next micro-batch's replay, which reuses
    that memory, adds to it instead of overwriting it."""
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.clone()


def release() -> None:
    """Drop the recorded graphs and their memory pool (at the end of training; the blocks are eager again)."""
    from torch._inductor import cudagraph_trees  # only once graphs were recorded
    cudagraph_trees.reset_cudagraph_trees()
