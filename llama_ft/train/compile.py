"""torch.compile for training: the trainable decoder blocks, compiled in place, and when that pays (`auto`).

Each block is compiled on its own (`nn.Module.compile`), so parameter names, the state dict and exports stay as
they are, and the frozen bottom under the trunk cache is never traced. Dynamo inlines the module's parameters as
graph inputs, so one graph serves every block of the same kind (with or without LoRA). On a CPU the blocks compile
with dynamic lengths and batch sizes from the first step (DYNAMIC); elsewhere torch's default recompiles once for
each dimension that changes. Either way a run sees a handful of compilations, not one per length (`CompileStats`
counts them into the run's result).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from llama_ft.hardware import cpu_has_amx
from llama_ft.model.attention import QUERY_BLOCKS
from llama_ft.train.graphs import LENGTH_MULTIPLE as GRAPHS_LENGTH_MULTIPLE
from llama_ft.train.graphs import MODE as GRAPHS_MODE
from llama_ft.train.graphs import release as release_graphs

# `auto` compiles once the first eager steps project at least this much more training, per machine (threshold_for): the
# warm-up is then repaid at the speed-up compile gives the step there (rule: eager seconds left > warm-up x
# speed-up / (speed-up - 1); the warm-up and speed-up measured with an empty inductor cache are in BENCHMARKS.md,
# sessions 7 and 14).
AUTO_MIN_SECONDS = {"cpu": 200.0, "cuda": 60.0}
AUTO_PROBE_STEPS = 2
# Inference passes (predict, the trunk cache) compile when the rest of the pass would take at least this long
# eagerly, per machine kind (machine_kind), by the same rule. With bf16 matrix units (AMX, a GPU's tensor cores)
# compiling fuses the elementwise work around fast matmuls and its warm-up is short; on a CPU without them the
# matmuls dominate the pass, compiling gains little, less on short texts than on long windows, and its warm-up on a
# fresh machine pays only on passes of minutes (BENCHMARKS.md, sessions 5 and 15: the SST-2 quickstart's trunk cache
# stays eager, SQuAD's scoring passes compile). With AMX a SQuAD scoring pass of the prepared model breaks even at
# 37 s eager, the SST-2 trunk's pass at 75 s, and no recipe's trunk pass lies between (sessions 20 and 24: at 60 s
# a default `--n 4000` run on a fast moment of the host scored both passes eagerly, about 23 s slower, and its training
# then compiled 25 s longer without the kernels the scoring pass builds). A kind not measured gets the cautious
# CPU value.
AUTO_MIN_INFERENCE_SECONDS = {"cpu-amx": 40.0, "cpu": 200.0, "cuda": 60.0}
# Once the process has compiled the blocks for an inference pass, the next pass's warm-up is a few seconds: dynamo
# traces again where the model changed (bf16 frozen weights and merged adapters after training) and inductor finds
# the kernels it built. By the same rule with the filled-cache warm-ups (3.4 s with AMX, BENCHMARKS.md session 20;
# 4.6-8.6 s on EPYCs, sessions 15-16), such a pass compiles from these lengths. Weighed against a fresh warm-up, a
# fine-tuned scoring pass after the random-head one stayed eager (session 23). train_squad.py's random-head row now
# runs the prepared model, so its fine-tuned pass finds the same graph (session 24). A GPU keeps its value: not
# measured.
AUTO_MIN_INFERENCE_SECONDS_AGAIN = {"cpu-amx": 20.0, "cpu": 100.0, "cuda": 60.0}
_compiled_for_inference = False   # whether this process has compiled blocks for an inference pass
# Compiled bf16 blocks on a CPU with AMX pad a micro-batch whose longest example has at least CPU_BUCKET_MIN_LENGTH
# tokens up to a multiple of CPU_LENGTH_MULTIPLE tokens. oneDNN, which runs the CPU's bf16 matmuls, builds a kernel
# for each matmul shape it has not seen (or has evicted from its bounded cache, llama_ft.heap.ONEDNN_PRIMITIVE_CACHE),
# and length-grouped batches bring a new token count at almost every micro-batch; rounded lengths repeat. Measured
# on SQuAD's windows, whose micro-batches are all longer than the minimum (BENCHMARKS.md, session 33); shorter ones,
# where the padding costs a larger share, keep their length, as do other CPUs (not measured).
CPU_LENGTH_MULTIPLE = 16
CPU_BUCKET_MIN_LENGTH = 128
# Compiled bf16 blocks on a CPU pad a micro-batch shorter than CPU_MIN_LENGTH tokens up to it. Their attention
# backward (llama_ft.model.attention) runs the query rows in QUERY_BLOCKS blocks, and a single position keeps SDPA;
# dynamo specializes sizes of 0 and 1, so lengths 1, 2-3 and 4+ were three graphs of each block variant, and
# SST-2's shortest phrases recompiled both variants twice mid-run (BENCHMARKS.md, session 35). Right padding
# changes no loss (the engine's batches run plain causal attention, and heads read real positions only).
CPU_MIN_LENGTH = 2 * QUERY_BLOCKS
# Compiled bf16 blocks on a CPU take micro-batches of at most CPU_MAX_TOKENS padded tokens (longest example as
# padded, CPU_LENGTH_MULTIPLE included, x examples; a larger TrainConfig cap is lowered to it). Inductor's CPU code
# generator reduces over more than 4,096 elements another way (codegen/cpp.py, need_use_acc_helper) and guards on
# it, so the first micro-batch above it recompiled both block variants mid-run (SST-2's batches of 64 of its longest
# phrases; BENCHMARKS.md, session 35). Splitting it changes no gradient, and micro-batches beyond 2,560-3,072 tokens
# bought nothing on a CPU (session 22).
CPU_MAX_TOKENS = 4096
# torch.compile's `dynamic` for the training blocks, per device type; a type not listed gets torch's default (None:
# static shapes until a second one is seen, then a recompile making each dimension that changed dynamic). A compiled
# block has two variants (the first trainable block's input needs no gradient, the others' do), and the SQuAD
# preset's micro-batches change length at once and size a few steps later (the token cap halves them), so the
# default compiled both variants three times; compiled dynamic from the start on a CPU, they compile once, at the
# same steady speed, which saves most on a first run with an empty inductor cache (benchmarks/dynamic_shapes.py,
# BENCHMARKS.md session 35). A GPU keeps torch's default: not measured there.
DYNAMIC: dict[str, bool | None] = {"cpu": True}
# The blocks' forward sees several input variants in one run, each a graph of its own: the first trainable
# block's input needs no gradient and the others' do, static then dynamic lengths, micro-batch sizes split by
# micro_batch_tokens, and a padding mask for batches that are not right-padded (the engine's are, and run without
# one: llama.CAUSAL_FOR_RIGHT_PADDING). Past dynamo's default limit (8 graphs per function) the blocks would
# silently run eagerly for the rest of the run.
RECOMPILE_LIMIT = 64
# Compiled blocks (training and inference) trace with duck sizing off (torch.fx.experimental._config.use_duck_shape):
# by default dynamo gives dimensions that have the same size at the first compile one symbol and guards on their
# equality, so a first micro-batch of 8 examples of 8 tokens tied the batch size to the length, and the next
# micro-batch where they differed compiled both block variants again (a short-text recipe's first batch can be
# that square; BENCHMARKS.md, session 36). Off, the sizes are independent symbols from the start. It only decides
# which sizes dynamo ties, so it holds on every device (measured on a CPU).
DUCK_SHAPE = False
# The compiled training blocks' activation memory budget per device type
# (torch._functorch.config.activation_memory_budget, 1.0 by default): below 1, the partitioner that splits each
# block's graph into forward and backward recomputes the cheapest ops (norms, SwiGLU, casts) in the backward until
# what the forward saves fits the budget. On a CPU at 0.9 a lora:16 block saves a third less and its step runs
# faster, having less to write and read back; `full` and `last:K` blocks save half as much at their speed
# (BENCHMARKS.md, session 22). Not measured on a GPU, which keeps torch's setting.
ACTIVATION_MEMORY_BUDGET: dict[str, float] = {"cpu": 0.9}


@dataclass
class CompileStats:
    """What compilation cost a run: the step it started after, the extra seconds of the step that compiled, the
    frames dynamo compiled (recompilations for new shapes included), and whether the blocks replayed CUDA graphs."""
    at_step: int
    frames_before: int
    eager_step_seconds: float | None = None
    warmup_seconds: float | None = None
    frames_compiled: int = 0
    cuda_graphs: bool = False

    def to_dict(self) -> dict:
        return {"at_step": self.at_step, "eager_step_seconds": self.eager_step_seconds,
                "warmup_seconds": self.warmup_seconds, "frames_compiled": self.frames_compiled,
                "cuda_graphs": self.cuda_graphs}


def trainable_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks that hold a trainable parameter (the only ones that run with autograd)."""
    return [layer for layer in model.backbone.layers if any(p.requires_grad for p in layer.parameters())]


def compile_blocks(model: nn.Module, dynamic: bool | None = None, mode: str | None = None) -> int:
    """Compile every trainable decoder block in place; returns how many. `dynamic`: torch.compile's (None:
    static shapes until a second one is seen); `mode`: torch.compile's (None: its default)."""
    blocks = trainable_blocks(model)
    for layer in blocks:
        layer.compile(dynamic=dynamic, mode=mode)
    return len(blocks)


@contextmanager
def activation_budget(device_type: str):
    """A context in which compiled training graphs on `device_type` are partitioned under its
    ACTIVATION_MEMORY_BUDGET (none: torch's setting); torch's setting comes back on exit. A graph is partitioned at
    its first compiled call, so the context has to hold while the compiled blocks run (recompilations included)."""
    import torch._functorch.config as functorch_config  # only once compiling
    budget = ACTIVATION_MEMORY_BUDGET.get(device_type)
    before = functorch_config.activation_memory_budget
    if budget is not None:
        functorch_config.activation_memory_budget = budget
    try:
        yield
    finally:
        functorch_config.activation_memory_budget = before


def duck_sizing():
    """A context in which dynamo traces with DUCK_SHAPE's duck sizing (torch's config patch: its setting comes back
    on exit). Dynamo reads it when it compiles a frame, so the context has to hold while the compiled blocks run."""
    import torch.fx.experimental._config as fx_config  # only once compiling
    return fx_config.patch(use_duck_shape=DUCK_SHAPE)


def uncompile_blocks(model: nn.Module) -> None:
    """Back to eager: the decision to compile was made for training, not for what the caller runs next."""
    for layer in model.backbone.layers:
        layer._compiled_call_impl = None


def is_compiled(model: nn.Module) -> bool:
    return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in model.backbone.layers)


def raise_recompile_limit() -> None:
    """Dynamo's graphs per function up to RECOMPILE_LIMIT (never lowered)."""
    import torch._dynamo.config as dynamo_config  # only once compiling
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)


def auto_min_seconds(device_type: str) -> float:
    """`auto`'s threshold for training on this machine (AUTO_MIN_SECONDS)."""
    return threshold_for(AUTO_MIN_SECONDS, device_type)


def machine_kind(device_type: str) -> str:
    """`cuda`, `cpu-amx` (a CPU with AMX bf16 matrix units) or `cpu` (any other CPU), as the auto rules see it."""
    if device_type != "cpu":
        return device_type
    return "cpu-amx" if cpu_has_amx() else "cpu"


def threshold_for(table: dict[str, float], device_type: str) -> float:
    """A threshold table's value for this machine: its kind (machine_kind), else its device type, else the CPU's
    (the cautious value for a kind not measured)."""
    return table.get(machine_kind(device_type), table.get(device_type, table["cpu"]))


def auto_min_inference_seconds(device_type: str, again: bool = False) -> float:
    """The inference passes' `auto` threshold on this machine (AUTO_MIN_INFERENCE_SECONDS; `again`: in a process
    that has compiled an inference pass before, AUTO_MIN_INFERENCE_SECONDS_AGAIN)."""
    return threshold_for(AUTO_MIN_INFERENCE_SECONDS_AGAIN if again else AUTO_MIN_INFERENCE_SECONDS, device_type)


def compile_pays(step_seconds: float, steps_left: int, min_seconds: float = AUTO_MIN_SECONDS["cpu"]) -> bool:
    """`auto`'s rule: compile when the eager steps still to run would take at least `min_seconds`."""
    return step_seconds * steps_left >= min_seconds


def frames_compiled() -> int:
    """Frames dynamo has compiled in this process so far (graph compilations, recompiles included)."""
    from torch._dynamo.utils import counters  # dynamo's own bookkeeping: imported only once compiling
    return int(counters["stats"]["unique_graphs"])


def projected_step_seconds(probe: list[tuple[float, int]], mean_step_tokens: float) -> float:
    """An eager step's seconds over the rest of the run, from the probe steps' (seconds, tokens): their time per
    token times the epoch's mean tokens per step. Length-grouped batches of short texts vary
    several-fold in length, so the first steps' own mean says little about the rest (an SST-2 run of 1,000 steps
    stayed eager because its first batch was 160 tokens long); without token counts, their mean time."""
    seconds, tokens = sum(s for s, _ in probe), sum(t for _, t in probe)
    if tokens > 0 and mean_step_tokens > 0:
        return seconds / tokens * mean_step_tokens
    return seconds / len(probe)


class Compiler:
    """TrainConfig.compile during a run: now (True), never (False), or `auto`, after AUTO_PROBE_STEPS eager
    steps, when compile_pays on their projected time (projected_step_seconds, averaged over processes, so all of
    them decide alike). `graphs`: the compiled blocks record and replay CUDA graphs (llama_ft.train.graphs)."""

    def __init__(self, model: nn.Module, mode: bool | str, min_seconds: float, reduce_mean, graphs: bool = False):
        self.model, self.mode, self.min_seconds, self.reduce_mean = model, mode, min_seconds, reduce_mean
        self.graphs, self.device_type = graphs, next(model.parameters()).device.type
        self.cpu_buckets = machine_kind(self.device_type) == "cpu-amx"  # where CPU_LENGTH_MULTIPLE was measured
        self.probe: list[tuple[float, int]] = []
        self.stats: CompileStats | None = None
        self.settings = ExitStack()  # what compiling changed for the run (activation_budget), undone by finish
        if mode is True:
            self._start(0)

    def _start(self, step: int) -> None:
        raise_recompile_limit()
        self.stats = CompileStats(at_step=step, frames_before=frames_compiled(), cuda_graphs=self.graphs)
        self.settings.enter_context(activation_budget(self.device_type))
        self.settings.enter_context(duck_sizing())
        compile_blocks(self.model, dynamic=DYNAMIC.get(self.device_type), mode=GRAPHS_MODE if self.graphs else None)

    @property
    def compiled(self) -> bool:
        """Whether the blocks run compiled from the next step on."""
        return self.stats is not None

    def starts_after(self, step: int) -> bool:
        """Whether the blocks were compiled after this step, so that the next one traces and builds their graphs."""
        return self.stats is not None and self.stats.at_step == step

    @property
    def replays(self) -> bool:
        """Whether the blocks replay CUDA graphs from the next step on."""
        return self.graphs and self.compiled

    def length_multiple(self, longest: int, amp_dtype: torch.dtype | None) -> int:
        """The multiple of tokens a micro-batch whose longest example has `longest` tokens is padded up to in the
        next step: CUDA graphs' (graphs.LENGTH_MULTIPLE), compiled bf16 blocks' on a CPU with AMX
        (CPU_LENGTH_MULTIPLE, from CPU_BUCKET_MIN_LENGTH tokens), CPU_MIN_LENGTH for compiled bf16 CPU blocks
        below it (a multiple of it pads such a batch up to it), else 1 (the longest example's length)."""
        if self.replays:
            return GRAPHS_LENGTH_MULTIPLE
        if not self.compiled_cpu_bf16(amp_dtype):
            return 1
        if self.cpu_buckets and longest >= CPU_BUCKET_MIN_LENGTH:
            return CPU_LENGTH_MULTIPLE
        return CPU_MIN_LENGTH if longest < CPU_MIN_LENGTH else 1

    def token_cap(self, cap: int | None, amp_dtype: torch.dtype | None) -> int | None:
        """The next step's micro-batch token cap, given the config's (TrainConfig.token_cap): at most
        CPU_MAX_TOKENS once bf16 blocks on a CPU are compiled."""
        if self.compiled_cpu_bf16(amp_dtype):
            return CPU_MAX_TOKENS if cap is None else min(cap, CPU_MAX_TOKENS)
        return cap

    def compiled_cpu_bf16(self, amp_dtype: torch.dtype | None) -> bool:
        """Whether the next step runs compiled blocks in bf16 on a CPU (CPU_MIN_LENGTH and CPU_MAX_TOKENS hold)."""
        return self.compiled and self.device_type == "cpu" and amp_dtype == torch.bfloat16

    def after_step(self, step: int, seconds: float, total_steps: int, tokens: int = 0,
                   mean_step_tokens: float = 0.0) -> None:
        """Count a finished step of `tokens` real tokens (all processes) that took `seconds`; `mean_step_tokens`:
        the real tokens of the epoch's mean step."""
        s = self.stats
        if s is not None:
            if step == s.at_step + 1:  # the step that compiled forward and backward
                s.warmup_seconds = seconds - (s.eager_step_seconds or 0.0)
            return
        if self.mode != "auto" or len(self.probe) == AUTO_PROBE_STEPS:
            return
        self.probe.append((seconds, tokens))
        if len(self.probe) == AUTO_PROBE_STEPS:
            per_step = self.reduce_mean(projected_step_seconds(self.probe, mean_step_tokens))
            if compile_pays(per_step, total_steps - step, self.min_seconds):
                self._start(step)
                self.stats.eager_step_seconds = per_step

    def eager(self):
        """A context in which the compiled blocks run eagerly: the no-grad forwards between steps (the loss after
        an update, evaluation) would each compile graphs of their own, and use up dynamo's recompile limit."""
        return torch.compiler.set_stance("force_eager") if self.stats is not None else nullcontext()

    def finish(self) -> dict | None:
        """The run's compile report (None when it stayed eager); the blocks go back to eager."""
        self.settings.close()
        if self.stats is None:
            return None
        self.stats.frames_compiled = frames_compiled() - self.stats.frames_before
        uncompile_blocks(self.model)
        if self.graphs:
            release_graphs()
        return self.stats.to_dict()


# What a progress bar says while a training step or an inference batch compiles the decoder blocks: dynamo and
# inductor run inside it, for seconds with a filled inductor cache and for half a minute or more with an empty one
# (a fresh machine; BENCHMARKS.md, session 38), and the bar would otherwise stand still with no reason given.
COMPILING = "compiling the decoder blocks"


class InferenceCompiler:
    """Compiled decoder blocks for one long inference pass over length-sorted batches: now (True), never (False),
    or `auto`, after the first batch, when the remaining tokens at its speed would take at least `min_seconds`
    eagerly (None: auto_min_inference_seconds for the model's device, lower once the process has compiled a pass
    before). The blocks compile with dynamic shapes, so every batch length and size shares one graph (right-padded
    batches need no mask; a left-padded one would add a second graph). On exit the blocks are as they were (eager,
    or training's compiled blocks). `bar`: the pass's progress bar (tqdm), which says COMPILING while the batch
    that compiles runs."""

    def __init__(self, model: nn.Module, mode: bool | str, total_tokens: int, min_seconds: float | None = None,
                 bar=None):
        if mode not in ("auto", True, False):
            raise ValueError(f"compile={mode!r}; use auto, True or False.")
        if min_seconds is None and mode == "auto":
            min_seconds = auto_min_inference_seconds(next(model.parameters()).device.type,
                                                     again=_compiled_for_inference)
        self.layers = list(model.backbone.layers)
        self.mode, self.left, self.min_seconds = mode, total_tokens, min_seconds
        self.saved: list | None = None
        self.decided = False
        self.settings = ExitStack()  # duck_sizing while the pass runs compiled
        self.bar, self.noted = bar, False

    def __enter__(self) -> InferenceCompiler:
        if self.mode is True:
            self._start()
        return self

    def _start(self) -> None:
        global _compiled_for_inference
        _compiled_for_inference = True
        raise_recompile_limit()
        self.settings.enter_context(duck_sizing())
        self.saved = [getattr(layer, "_compiled_call_impl", None) for layer in self.layers]
        for layer in self.layers:
            layer._compiled_call_impl = None
            layer.compile(dynamic=True)
        self._say(COMPILING)  # the next batch compiles

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        self.noted = bool(text)

    def after_batch(self, seconds: float, tokens: int) -> None:
        """Count a finished batch of `tokens` (padded) that took `seconds`; `auto` decides after the first."""
        if self.noted:  # the batch that compiled is done
            self._say("")
        self.left -= tokens
        if self.mode == "auto" and not self.decided:
            self.decided = True
            if self.left * seconds / max(tokens, 1) >= self.min_seconds:
                self._start()

    @property
    def compiled(self) -> bool:
        return self.saved is not None

    def __exit__(self, *exc) -> None:
        self.settings.close()
        if self.saved is not None:
            for layer, impl in zip(self.layers, self.saved):
                layer._compiled_call_impl = impl
