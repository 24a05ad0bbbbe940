"""The Llama decoder, written out: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, task heads.

Module and parameter names are the Hugging Face ones, so a `transformers` state dict loads without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llama_ft.model.attention import causal_attention, use_gemm_backward
from llama_ft.model.config import LlamaConfig
from llama_ft.model.linear import Linear
from llama_ft.model.lora import project


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the activation dtype: bf16 sums of squares lose too much.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> Tensor:
    """Inverse rotary frequencies [head_dim/2], with the config's rope scaling applied."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling or {}
    kind = cfg.rope_type
    if kind == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif kind == "llama3":
        # Llama 3.1+: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between.
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        self.inv_freq = rope_inv_freq(self.cfg).to(device or self.inv_freq.device)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin of shape [B, 1, T, head_dim], fp32."""
        freqs = position_ids[:, :, None].float() * self.inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Half-split layout (x1 | x2) as in the Hugging Face checkpoints, not the interleaved one of Meta's code.
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Keys and values of past positions, per layer, for incremental decoding.

    `layers[i]` is layer i's (keys, values) [B, kv_heads, seq_len, head_dim]. After `reserve(n)` they are views of
    buffers with room for n more positions, which `update` writes in place; without room it concatenates (a copy
    of the whole cache per call). With a `prefix` (set_prefix), `layers` hold only the positions after it."""

    def __init__(self, num_layers: int):
        self.layers: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self.buffers: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        # Keys and values [1, kv_heads, prefix_len, head_dim] per layer of positions that come before every row's
        # own (a prompt prefix all rows share), held once instead of once per row; see prefix_decode_attention.
        self.prefix: list[tuple[Tensor, Tensor]] | None = None
        self.prefix_len = 0

    @property
    def seq_len(self) -> int:
        """Past positions of every row: the shared prefix's and the row's own."""
        return self.prefix_len + (0 if self.layers[0] is None else self.layers[0][0].shape[2])

    def update(self, idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        past, buf = self.layers[idx], self.buffers[idx]
        if past is None:
            self.layers[idx] = (k, v)
            return k, v
        n, t = past[0].shape[2], k.shape[2]
        if buf is not None and buf[0].shape[2] >= n + t and buf[0].shape[0] == k.shape[0]:
            buf[0][:, :, n:n + t].copy_(k)
            buf[1][:, :, n:n + t].copy_(v)
            k, v = buf[0][:, :, :n + t], buf[1][:, :, :n + t]
        else:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            self.buffers[idx] = None
        self.layers[idx] = (k, v)
        return k, v

    def reserve(self, extra: int) -> None:
        """Move every layer into buffers with room for `extra` more positions (one copy now, none per step)."""
        for i, kv in enumerate(self.layers):
            if kv is None:
                continue
            n = kv[0].shape[2]
            bufs = tuple(x.new_zeros(x.shape[0], x.shape[1], n + extra, x.shape[3]) for x in kv)
            for b, x in zip(bufs, kv):
                b[:, :, :n].copy_(x)
            self.use_buffers(i, bufs, n)

    def use_buffers(self, idx: int, bufs: tuple[Tensor, Tensor], n: int) -> None:
        """Layer idx holds its first n positions in `bufs` (keys, values), with room after them."""
        self.buffers[idx] = bufs
        self.layers[idx] = (bufs[0][:, :, :n], bufs[1][:, :, :n])

    def set_prefix(self, prefix: list[tuple[Tensor, Tensor]]) -> None:
        """Every row's first positions are these batch-1 keys and values, one per layer; `layers` hold the rest."""
        self.prefix, self.prefix_len = prefix, prefix[0][0].shape[2]

    def select(self, rows: Tensor) -> None:
        """Keep only these batch rows (buffers and their room included)."""
        for i, kv in enumerate(self.layers):
            if kv is None:
                continue
            if self.buffers[i] is not None:
                self.use_buffers(i, tuple(b[rows] for b in self.buffers[i]), kv[0].shape[2])
            else:
                self.layers[i] = (kv[0][rows], kv[1][rows])


def prefix_decode_attention(q: Tensor, prefix: tuple[Tensor, Tensor], k: Tensor, v: Tensor,
                            mask: Tensor | None) -> Tensor:
    """Attention of one new position per row (CPU), q [B, H, 1, D], over a prefix that every row shares, keys and
    values [1, Hkv, P, D], then the row's own positions, k, v [B, Hkv, L, D] (`mask` None or [B, 1, 1, L] over
    those), as [B, H, 1, D].

    Decoding reads the whole cache at every step, and on a CPU that reading is most of the step's attention. The
    prefix is read once for all rows: their query rows (with grouped-query heads, the query heads of a key/value
    head, as grouped_decode_attention folds them) meet its keys in one batch-1 attention, each row's own keys in
    another, and the two softmaxes are merged by their log-sum-exp: exp(lse_a) o_a + exp(lse_b) o_b over
    exp(lse_a) + exp(lse_b) is softmax attention over both (exact in fp32). The log-sum-exp comes from SDPA's CPU
    flash kernel, which returns it alongside the output."""
    B, H, _, D = q.shape
    kv, g = k.shape[1], H // k.shape[1]
    q = q.reshape(B, kv, g, D)
    bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
        ~mask, float("-inf"))   # the kernel takes an additive mask of the query's dtype, not a boolean one
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    own, own_lse = flash(q, k, v, 0.0, False, attn_mask=bias)
    rows = q.transpose(0, 1).reshape(1, kv, B * g, D)   # every row's queries as one batch over the prefix
    shared, shared_lse = flash(rows, prefix[0], prefix[1], 0.0, False)
    shared = shared.reshape(kv, B, g, D).transpose(0, 1)
    shared_lse = shared_lse.reshape(kv, B, g).transpose(0, 1)
    top = torch.maximum(own_lse, shared_lse)
    a, b = (own_lse - top).exp_()[..., None], (shared_lse - top).exp_()[..., None]
    y = (a * own.float() + b * shared.float()) / (a + b)
    return y.to(q.dtype).reshape(B, H, 1, D)


def grouped_decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one new position per row, q [B, H, 1, D] over k, v [B, Hkv, L, D] (H a multiple of Hkv;
    `mask` None or broadcast over heads, [B, 1, 1, L]), as [B, H, 1, D].

    The query heads that share a key/value head become that head's query rows (head h reads key/value head
    h // (H / Hkv), as enable_gqa does), so each cached head is read once per step rather than once per query
    head. Exact in fp32; SDPA's CPU bf16 kernel runs it several times faster than one query row per head
    (BENCHMARKS.md, session 11; benchmarks/decode_attention.py)."""
    B, H, _, D = q.shape
    kv = k.shape[1]
    y = F.scaled_dot_product_attention(q.reshape(B, kv, H // kv, D), k, v, attn_mask=mask)
    return y.reshape(B, H, 1, D)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = Linear(h, self.n_head * self.head_dim, bias=b)
        self.k_proj = Linear(h, self.n_kv * self.head_dim, bias=b)
        self.v_proj = Linear(h, self.n_kv * self.head_dim, bias=b)
        self.o_proj = Linear(self.n_head * self.head_dim, h, bias=b)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                kv_cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
            if kv_cache.prefix is not None:
                pk, pv = kv_cache.prefix[self.layer_idx]
                if T == 1 and x.device.type == "cpu":
                    own = None if mask is None else mask[..., kv_cache.prefix_len:]
                    y = prefix_decode_attention(q, (pk, pv), k, v, own)
                    return self.o_proj(y.reshape(B, T, self.n_head * self.head_dim))
                k = torch.cat((pk.expand(B, -1, -1, -1), k), dim=2)
                v = torch.cat((pv.expand(B, -1, -1, -1), v), dim=2)
        gqa = self.n_kv != self.n_head
        if gqa and T == 1 and (mask is None or mask.shape[1] == 1):
            y = grouped_decode_attention(q, k, v, mask)
            return self.o_proj(y.reshape(B, T, self.n_head * self.head_dim))
        if gqa and x.device.type != "cpu" and (mask is not None or q.dtype == torch.float32):
            # On CUDA only the flash kernel takes enable_gqa, and it takes no mask and no fp32: otherwise SDPA
            # would fall back to the math kernel (O(T^2) memory), so K/V are expanded. Elsewhere enable_gqa reads
            # the shared heads in place: faster than expanding on CPU (BENCHMARKS.md, attention) and the copies
            # stay out of training memory.
            rep = self.n_head // self.n_kv
            k, v, gqa = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), False
        if torch.compiler.is_compiling() and use_gemm_backward(q, mask):
            # Inside a compiled CPU training block: the same flash forward, a backward of batched GEMMs that
            # inductor fuses (llama_ft/model/attention.py). Eager, that backward is slower than the flash one.
            y = causal_attention(q, k, v, mask)
        else:
            # A branch, not `is_causal=mask is None and T > 1`: with dynamic shapes that expression is symbolic,
            # which SDPA does not take (a graph break in every compiled block); a branch guards on it.
            causal = False
            if mask is None and T > 1:
                causal = True
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, i, bias=b)
        self.up_proj = Linear(h, i, bias=b)
        self.down_proj = Linear(i, h, bias=b)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                kv_cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# Right-padded rows without a past run plain causal attention: each real token attends only to the real tokens
# before it either way, so every real position's output is the same. No mask is built or read, and compiled
# blocks need one graph for padded and unpadded batches (training, scoring and the trunk cache all pad on the
# right; BENCHMARKS.md, session 16). Only the outputs at padding positions differ, which no loss or prediction
# reads. Off: such batches carry the padding mask.
CAUSAL_FOR_RIGHT_PADDING = True


def right_padded(attention_mask: Tensor) -> bool:
    """Whether no row of a boolean [B, T] mask has a real token after a padding one."""
    return not bool((attention_mask[:, 1:] & ~attention_mask[:, :-1]).any())


def attention_mask_4d(attention_mask: Tensor | None, q_len: int, past_len: int = 0,
                      device: torch.device | None = None) -> Tensor | None:
    """Boolean [B, 1, q_len, past_len + q_len] mask (True = attend), or None when plain causal attention gives
    every real position the same output: no padding, or right padding without a past (CAUSAL_FOR_RIGHT_PADDING;
    the outputs at padding positions are then not those of the mask)."""
    if attention_mask is None:
        if past_len == 0 or q_len == 1:
            return None
        attention_mask_bool = None
    else:
        attention_mask_bool = attention_mask.bool()
        # An unpadded mask is right-padded too, so one check covers both.
        if past_len == 0 and (right_padded(attention_mask_bool) if CAUSAL_FOR_RIGHT_PADDING
                              else bool(attention_mask_bool.all())):
            return None
    s = past_len + q_len
    device = attention_mask.device if attention_mask is not None else device
    q_pos = torch.arange(past_len, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if attention_mask_bool is not None:
        # Padding queries still see themselves, so no softmax row is empty (that would give NaN).
        mask = mask & (attention_mask_bool[:, None, None, :s] | (k_pos == q_pos)[None, None])
    return mask


def default_position_ids(attention_mask: Tensor | None, q_len: int, past_len: int, device) -> Tensor:
    """Positions counting real tokens only, so a left-padded row sees the same positions as an unpadded one."""
    if attention_mask is None:
        return torch.arange(past_len, past_len + q_len, device=device)[None]
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)[:, past_len:past_len + q_len]


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm: hidden states [B, T, hidden]."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)
        self.gradient_checkpointing = False

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                start_layer: int = 0, end_layer: int | None = None, final_norm: bool = True,
                kv_cache: KVCache | None = None) -> Tensor:
        """Run layers [start_layer, end_layer); with start_layer > 0, `inputs_embeds` is the hidden state there."""
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = h.shape[:2]
        past = kv_cache.seq_len if kv_cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, T, past, h.device)
        cos, sin = self.rotary_emb(position_ids)
        mask = attention_mask_4d(attention_mask, T, past, h.device)
        end = len(self.layers) if end_layer is None else end_layer
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers[start_layer:end]:
            # Checkpoint only blocks that have something to train: a frozen block has no graph to rebuild.
            if ckpt and kv_cache is None and any(p.requires_grad for p in layer.parameters()):
                h = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, kv_cache)
        if final_norm and end == len(self.layers):
            h = self.norm(h)
        return h


class LlamaPreTrainedModel(nn.Module):
    """Shared plumbing of the task models: weight init and tying (files are hf/'s business)."""

    base_model_prefix = "model"
    architecture = "LlamaForCausalLM"
    task = "causal-lm"

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg

    @property
    def backbone(self) -> LlamaModel:
        return getattr(self, self.base_model_prefix)

    def head_modules(self) -> list[nn.Module]:
        """The task head(s): trained under every freezing policy."""
        return []

    def init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding):
            module.reset_parameters()

    def init_weights(self) -> None:
        """Initialise every parameter as transformers does (normal(0, initializer_range), ones, zeros)."""
        for m in self.modules():
            self.init_module(m)
        self.tie_weights()

    def tie_weights(self) -> None:
        pass


class LlamaForCausalLM(LlamaPreTrainedModel):
    architecture = "LlamaForCausalLM"
    task = "causal-lm"

    def __init__(self, cfg: LlamaConfig):
        super().__init__(cfg)
        self.model = LlamaModel(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if not self._is_meta():
            self.init_weights()
        self.tie_weights()

    def _is_meta(self) -> bool:
        return self.model.embed_tokens.weight.is_meta

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def head_modules(self) -> list[nn.Module]:
        return [self.lm_head]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, kv_cache: KVCache | None = None,
                last_only: bool = False) -> Tensor:
        """Next-token logits [B, T, vocab] (or [B, 1, vocab] with last_only)."""
        h = self.model(input_ids, attention_mask, position_ids, kv_cache=kv_cache)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)


def last_token_index(attention_mask: Tensor | None, input_ids: Tensor | None, pad_token_id: int | None,
                     seq_len: int) -> Tensor:
    """Index of the last real token of each row, for right padding, left padding and pad id == eos id."""
    if attention_mask is not None:
        valid = attention_mask.bool()
    elif input_ids is not None and pad_token_id is not None:
        valid = input_ids != pad_token_id
    else:
        n = input_ids.shape[0] if input_ids is not None else 1
        return torch.full((n,), seq_len - 1, dtype=torch.long)
    # The rightmost attended position; attention_mask (not ids) decides, so a real EOS == pad is kept.
    positions = torch.arange(seq_len, device=valid.device)
    return (positions * valid).argmax(-1)


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    architecture = "LlamaForSequenceClassification"
    task = "classification"

    def __init__(self, cfg: LlamaConfig, num_labels: int = 2):
        super().__init__(cfg)
        self.num_labels = num_labels
        self.model = LlamaModel(cfg)
        self.score = nn.Linear(cfg.hidden_size, num_labels, bias=False)
        if not self.model.embed_tokens.weight.is_meta:
            self.init_weights()

    def head_modules(self) -> list[nn.Module]:
        return [self.score]

    def pool(self, hidden: Tensor, input_ids: Tensor | None, attention_mask: Tensor | None) -> Tensor:
        idx = last_token_index(attention_mask, input_ids, self.config.pad_token_id, hidden.shape[1])
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.to(hidden.device)]

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, *, hidden_states: Tensor | None = None,
                start_layer: int = 0) -> Tensor:
        """Class logits [B, num_labels] from the last real token of each row."""
        h = self.model(input_ids, attention_mask, position_ids, inputs_embeds=hidden_states,
                       start_layer=start_layer)
        return self.score(self.pool(h, input_ids, attention_mask))


class LlamaForQuestionAnswering(LlamaPreTrainedModel):
    # transformers keeps the historical `transformer.` prefix for this class; so do we, for loadable exports.
    base_model_prefix = "transformer"
    architecture = "LlamaForQuestionAnswering"
    task = "qa"

    def __init__(self, cfg: LlamaConfig):
        super().__init__(cfg)
        self.transformer = LlamaModel(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2, bias=True)
        if not self.transformer.embed_tokens.weight.is_meta:
            self.init_weights()

    @property
    def model(self) -> LlamaModel:
        return self.transformer

    def head_modules(self) -> list[nn.Module]:
        return [self.qa_outputs]

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, *, hidden_states: Tensor | None = None,
                start_layer: int = 0) -> tuple[Tensor, Tensor]:
        """Start and end logits, each [B, T]."""
        h = self.transformer(input_ids, attention_mask, position_ids, inputs_embeds=hidden_states,
                             start_layer=start_layer)
        return self.span_logits(h)

    def span_logits(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(start, end) logits, fp32, from final hidden states [B, T, hidden]."""
        logits = self.qa_outputs(hidden)
        return logits[..., 0].float(), logits[..., 1].float()


TASKS: dict[str, type[LlamaPreTrainedModel]] = {
    "causal-lm": LlamaForCausalLM,
    "classification": LlamaForSequenceClassification,
    "qa": LlamaForQuestionAnswering,
}
