"""TrainConfig: every knob of a training run, in one dataclass (the recipes' command lines map onto it)."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch

from llama_ft.dtypes import DTYPES
from llama_ft.hardware import cpu_has_bf16_dot

AMP_DTYPES = {"bf16": DTYPES["bf16"], "fp16": DTYPES["fp16"], "none": None}


@dataclass
class TrainConfig:
    """A training run.

    policy: `head | last:K | lora:R[:alpha] | full` (see llama_ft.model.policies); applied by `train` unless the model
        already carries the same policy.
    lr, weight_decay: AdamW; decay applies to matrices only (not to norms, biases or LoRA A/B, whose small
        rank already regularises them and whose B starts at zero).
    schedule: `linear` or `cosine` decay to zero after `warmup_ratio` of the steps of linear warm-up.
    batch_size: examples per forward pass (micro-batch) on one process.
    micro_batch_tokens: a cap on a micro-batch's padded tokens (longest example as padded x examples): a micro-batch of
        long examples is halved until it fits, so activation memory follows this budget rather than the longest
        batch of the run, with the same gradient. None: no cap.
    compiled_micro_batch_tokens: the cap once the decoder blocks are compiled (`compile`), which keep fewer
        activations per token, so the same memory holds a larger forward pass, and a larger one runs faster (more
        rows for each matrix multiply, fewer passes a step). The eager steps before compiling, and eager runs,
        keep micro_batch_tokens. None: micro_batch_tokens. Compiled bf16 blocks on a CPU lower either to 4,096
        (compile.CPU_MAX_TOKENS).
    global_batch: examples per optimizer step over all processes; gradient accumulation makes up the
        difference (must be a multiple of batch_size * world size). None: batch_size * world size.
    epochs / max_steps: max_steps, when set, caps the optimizer steps (and the schedule length).
    max_grad_norm: clip the global gradient norm (None or 0: no clipping, the norm is still logged).
    amp: `bf16` (CPU and CUDA), `fp16` (CUDA only, with a GradScaler), `none` (fp32), `auto` (bf16 where the
        device computes it in hardware: a GPU with bf16, a CPU with AVX512-BF16 or AMX; fp16 on an older GPU;
        none on any other CPU, resolve_amp).
    grad_checkpointing: recompute each trainable decoder block in backward (non-reentrant).
    compile: `torch.compile` the trainable decoder blocks in place (llama_ft.train.compile): fuses the norms,
        rotary, SwiGLU and residual adds around the matmuls and keeps fewer activations for backward (on a CPU
        the cheapest are recomputed in backward, llama_ft.train.compile.ACTIVATION_MEMORY_BUDGET). True: from
        the first step; `auto`: after two eager steps, when the steps left would take at least
        compile_min_seconds (the warm-up, BENCHMARKS.md, is then repaid); False: eager. One graph serves
        every block; on a CPU lengths and batch sizes are dynamic from the first step (compile.DYNAMIC), elsewhere
        a new length or size recompiles once, then that dimension is dynamic. The blocks are eager again
        when train() returns; names, state dict and exports are unchanged. Compiled bf16 blocks on a CPU with AMX
        pad micro-batches of 128 tokens or more up to a multiple of 16 (compile.CPU_LENGTH_MULTIPLE: oneDNN then
        reuses its kernels); compiled bf16 CPU blocks pad those of 1-3 tokens up to 4 (compile.CPU_MIN_LENGTH) and
        take at most 4,096 tokens a micro-batch (compile.CPU_MAX_TOKENS), so one graph serves every length and
        size; the loss and gradient do not change.
    cuda_graphs: once the blocks compile on a GPU, record each block's forward and backward as CUDA graphs and
        replay them (torch.compile's `reduce-overhead`, llama_ft.train.graphs): a small model's step no longer
        waits on the host launching its kernels one by one. Micro-batch lengths are then padded up to a multiple
        of 64 (graphs.LENGTH_MULTIPLE: each new shape records graphs of its own); the loss and gradient do not
        change. `auto`: on a CUDA device, without grad_checkpointing, in one process; True: the same, but an error
        names what stands in the way; False: off. Either way the graphs start when the blocks compile (`compile`).
    compile_min_seconds: `auto`'s threshold, in projected eager seconds (None: the device's, 200 s on CPU and
        60 s on CUDA, llama_ft.train.compile.AUTO_MIN_SECONDS).
    trunk_cache: store the frozen trunk's output once and train every epoch from it; `auto` does so when the
        policy leaves a frozen deterministic bottom and the run has more than one epoch; True insists.
    trunk_cache_ram_gib: above this size the cache is a memory-mapped file in output_dir/tmp.
    frozen_dtype: dtype of the frozen weights (`bf16` halves their memory and speeds up CPU matmuls, `fp32`);
        `auto`: bf16 under bf16/fp16 autocast, fp32 otherwise. Trainable weights are always fp32 masters.
    length_grouping: shuffle, sort chunks of ~50 steps by length, shuffle the batches (less padding).
    output_dir: where checkpoint/, best/, train_log.jsonl and tmp/ go (None: nothing is written).
    checkpoint_every / eval_every: in optimizer steps (None: at the end of each epoch / only at the end).
    select_metric: eval_fn metric naming the best checkpoint (higher is better unless the name ends in
        `loss`); the best weights are restored into the model when training ends.
    log_every: steps between progress-bar refreshes (the JSONL log has every step).
    resume: continue from output_dir/checkpoint when it exists. The checkpoint must come from the same run:
        every field that changes the math (all but progress, log_every, output_dir, device, compile,
        cuda_graphs, compile_min_seconds, eval_every, checkpoint_every, trunk_cache_ram_gib, resume, peak_flops,
        divergence_factor) and the training examples must be those it was written with, else resuming is refused
        naming each difference.
    divergence_factor: stop with DivergenceError when a step's loss exceeds this multiple of its reference (the
        largest of chance level, the run's first loss and the running mean of its losses), or the gradient norm
        this multiple squared of its running mean (after 5 steps). The weights are checked again after the
        update before each checkpoint and at the end, so no checkpoint or returned model holds diverged weights.
        10 leaves room for the noise of small batches (a diverging run overshoots by orders of magnitude);
        None: no check (NaN/inf still stop the run).
    shard: `none` (one full copy of the model per process; DDP under torchrun) or `fsdp` (FSDP2 under torchrun:
        weights, gradients and AdamW moments sharded over the processes, weights gathered per decoder block in the
        autocast dtype, gradients reduced in fp32; llama_ft.train.fsdp). `fsdp` needs 2+ processes, runs eager
        (compile `auto` stays eager, True is refused) and refuses amp='fp16'. train() shards a copy of the model
        and loads the trained weights back into the model it was given, which waits in host memory meanwhile (a
        device holds only its shards); checkpoints are sharded safetensors.
    peak_flops: the FLOP/s that MFU (model FLOPs per second, logged in every step line) divides by, per
        process. `auto`: the datasheet's dense peak for a known CUDA card (H100, H200, A100), else a short matmul
        probe in the run's compute dtype (the fastest of a few matmul shapes, flops.CPU_PEAK_SHAPES on a CPU; well
        under a second), once as training starts, again if a step reads above 100% (the probe ran beside other
        work) and after a run of a minute or more; MFU divides by the fastest. A number: that peak. None: MFU is
        not logged.
    """
    policy: str = "head"
    lr: float = 2e-4
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    batch_size: int = 16
    micro_batch_tokens: int | None = None
    compiled_micro_batch_tokens: int | None = None
    global_batch: int | None = None
    epochs: int = 3
    max_steps: int | None = None
    max_grad_norm: float | None = 1.0
    amp: str = "auto"
    seed: int = 1
    grad_checkpointing: bool = False
    compile: bool | str = "auto"
    cuda_graphs: bool | str = "auto"
    compile_min_seconds: float | None = None
    trunk_cache: str | bool = "auto"
    trunk_cache_ram_gib: float = 4.0
    frozen_dtype: str = "auto"
    length_grouping: bool = True
    output_dir: str | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    select_metric: str | None = None
    log_every: int = 10
    progress: bool = True
    device: str = "auto"
    resume: bool = False
    divergence_factor: float | None = 10.0
    peak_flops: float | str | None = "auto"
    shard: str = "none"

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}; use `linear` or `cosine`.")
        if self.amp not in ("bf16", "fp16", "none", "auto"):
            raise ValueError(f"TrainConfig.amp={self.amp!r}; use bf16, fp16 (CUDA), none or auto.")
        if self.frozen_dtype not in ("bf16", "fp32", "auto"):
            raise ValueError(f"TrainConfig.frozen_dtype={self.frozen_dtype!r}; use bf16, fp32 or auto.")
        if self.compile not in ("auto", True, False):
            raise ValueError(f"TrainConfig.compile={self.compile!r}; use auto, True or False.")
        if self.cuda_graphs not in ("auto", True, False):
            raise ValueError(f"TrainConfig.cuda_graphs={self.cuda_graphs!r}; use auto, True or False.")
        if self.trunk_cache not in ("auto", True, False):
            raise ValueError(f"TrainConfig.trunk_cache={self.trunk_cache!r}; use auto, True or False.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainConfig.warmup_ratio={self.warmup_ratio}; it is a fraction in [0, 1).")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"TrainConfig.divergence_factor={self.divergence_factor}; use a factor above 1 "
                             "(10 is the default) or None to turn the check off.")
        if self.peak_flops not in ("auto", None) and (isinstance(self.peak_flops, str) or self.peak_flops <= 0):
            raise ValueError(f"TrainConfig.peak_flops={self.peak_flops!r}; use `auto`, a FLOP/s figure above 0 "
                             "or None (no MFU).")
        if self.shard not in ("none", "fsdp"):
            raise ValueError(f"TrainConfig.shard={self.shard!r}; use `none` or `fsdp`.")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size}; it must be at least 1.")
        for name in ("micro_batch_tokens", "compiled_micro_batch_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; use a token count of at least 1 (e.g. "
                                 "4 x max_length) or None (no cap).")

    def token_cap(self, compiled: bool) -> int | None:
        """The micro-batch token cap of a step run by eager or by compiled decoder blocks."""
        if compiled and self.compiled_micro_batch_tokens is not None:
            return self.compiled_micro_batch_tokens
        return self.micro_batch_tokens

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp` on `device` (None: fp32); a dtype the device cannot run is an error. `auto` is
    the fastest there: bf16 on a GPU that has it (fp16 on one without) and on a CPU with bf16 dot products
    (AVX512-BF16, AMX), fp32 on any other CPU, where bf16 matmuls run several times slower than fp32 ones."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and not cpu_has_bf16_dot():
            return None
        return torch.bfloat16
    if amp == "bf16" and device.type == "cpu" and not cpu_has_bf16_dot():
        warnings.warn("amp='bf16' on a CPU without bf16 dot products (no avx512_bf16 or amx_bf16 in its flags): "
                      "its matmuls run several times slower than in fp32. Use amp='auto' or 'none' (--amp auto) "
                      "unless you want bf16's numerics.", stacklevel=1)  # one place: once a process, not per caller
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA (fp16 autocast with a gradient scaler); on CPU use amp='bf16'.")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("amp='bf16' is not supported by this GPU (pre-Ampere); use amp='fp16'.")
    return AMP_DTYPES[amp]


def inference_amp(amp: str, model: torch.nn.Module, device: torch.device) -> torch.dtype | None:
    """resolve_amp for a forward pass over `model` as it is held: under `auto`, a model with bf16 or fp16 weights
    (bf16 frozen weights after training, a half-precision load) runs in that dtype, the only one its fp32
    activations can meet them in; an fp32 model gets resolve_amp's choice for the device."""
    if amp == "auto":
        held = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}
        if held:
            amp = "bf16" if torch.bfloat16 in held else "fp16"
    return resolve_amp(amp, device)


def resolve_frozen_dtype(frozen_dtype: str, amp_dtype: torch.dtype | None) -> torch.dtype:
    if frozen_dtype == "auto":
        return torch.bfloat16 if amp_dtype is not None else torch.float32
    if frozen_dtype == "bf16" and amp_dtype is None:
        raise ValueError("frozen_dtype='bf16' needs autocast to mix bf16 weights with fp32 activations; "
                         "use amp='bf16' or frozen_dtype='fp32'.")
    return torch.bfloat16 if frozen_dtype == "bf16" else torch.float32
