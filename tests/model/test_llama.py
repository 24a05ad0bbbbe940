"""Parity of llama_ft.model.llama with transformers' Llama on random weights (transformers is the oracle)."""
import inspect

import pytest
import torch
import transformers

from llama_ft import LlamaConfig, LlamaForCausalLM, LlamaForQuestionAnswering, LlamaForSequenceClassification

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=101, max_position_embeddings=256, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=2)
LLAMA3_ROPE = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
CONFIGS = {
    "gqa-untied": dict(BASE),
    "mha-tied": dict(BASE, num_key_value_heads=4, tie_word_embeddings=True),
    "llama3-rope": dict(BASE, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True),
    "odd-sizes": dict(BASE, hidden_size=48, num_attention_heads=3, num_key_value_heads=1, intermediate_size=70,
                      vocab_size=97, num_hidden_layers=3),
    "head-dim-and-biases": dict(BASE, head_dim=24, attention_bias=True, mlp_bias=True),
    "linear-rope": dict(BASE, rope_scaling=dict(rope_type="linear", factor=2.0)),
}


def hf_model(ours, cls):
    d = ours.config.to_dict()
    cfg = transformers.LlamaConfig(**{k: v for k, v in d.items() if k not in ("architectures",)})
    if cls is transformers.LlamaForSequenceClassification:
        cfg.num_labels = ours.num_labels
    ref = cls(cfg).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return ref


def batch(vocab, pad, left=False, b=3, t=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for row, n in enumerate([0, 3, 6][:b]):
        if n:
            if left:
                ids[row, :n], mask[row, :n] = pad, 0
            else:
                ids[row, t - n:], mask[row, t - n:] = pad, 0
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_lm_logits_match_transformers(name):
    torch.manual_seed(0)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS[name])).eval()
    ref = hf_model(ours, transformers.LlamaForCausalLM)
    ids = torch.randint(0, ours.config.vocab_size, (2, 17))
    with torch.no_grad():
        got, want = ours(ids), ref(ids).logits
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("left", [False, True])
def test_causal_lm_padded_batch_matches_transformers(left):
    torch.manual_seed(1)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["llama3-rope"])).eval()
    ref = hf_model(ours, transformers.LlamaForCausalLM)
    ids, mask = batch(ours.config.vocab_size, 2, left)
    with torch.no_grad():
        got = ours(ids, mask)
        want = ref(ids, attention_mask=mask, position_ids=positions(mask)).logits
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() < 1e-4


def test_left_padding_equals_no_padding():
    """A left-padded row must give the same logits as the same row alone (positions count real tokens)."""
    torch.manual_seed(2)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    ids, mask = batch(ours.config.vocab_size, 2, left=True)
    with torch.no_grad():
        padded = ours(ids, mask)
        alone = ours(ids[2:, 6:])
    assert (padded[2, 6:] - alone[0]).abs().max().item() < 1e-5
    assert torch.isfinite(padded).all()


def test_right_padding_runs_plain_causal_attention(monkeypatch):
    """Right-padded rows without a past need no mask: the real positions' outputs equal those under the padding
    mask. Left padding, a padding hole and a past keep the mask."""
    from llama_ft.model import llama
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert llama.attention_mask_4d(right, 4) is None
    assert llama.attention_mask_4d(right.flip(-1), 4) is not None
    assert llama.attention_mask_4d(torch.tensor([[1, 0, 1, 1]]), 4) is not None
    assert llama.attention_mask_4d(right, 2, past_len=2) is not None
    torch.manual_seed(4)
    ours = LlamaForQuestionAnswering(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    ids, mask = batch(ours.config.vocab_size, 2)
    with torch.no_grad():
        causal = ours(ids, mask)
        monkeypatch.setattr(llama, "CAUSAL_FOR_RIGHT_PADDING", False)
        masked = ours(ids, mask)
    real = mask.bool()
    for a, b in zip(causal, masked, strict=True):
        assert (a[real] - b[real]).abs().max().item() < 1e-5
        assert not torch.equal(a[~real], b[~real])  # two paths were taken: only the padding positions tell


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("name", ["gqa-untied", "llama3-rope"])
def test_classification_matches_transformers(name, left):
    torch.manual_seed(3)
    ours = LlamaForSequenceClassification(LlamaConfig.from_dict(CONFIGS[name]), num_labels=3).eval()
    ref = hf_model(ours, transformers.LlamaForSequenceClassification)
    pad = ours.config.pad_token_id  # == eos id in these configs
    ids, mask = batch(ours.config.vocab_size, pad, left)
    with torch.no_grad():
        got = ours(ids, mask)
        want = ref(ids, attention_mask=mask, position_ids=positions(mask)).logits
    assert got.shape == (3, 3)
    assert (got - want).abs().max().item() < 1e-4


def test_classification_pools_last_real_token_when_eos_is_pad():
    """pad id == eos id: a real EOS at the end of a row is the pooled token when the mask says it is real."""
    torch.manual_seed(4)
    ours = LlamaForSequenceClassification(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    ids = torch.tensor([[5, 6, 7, 2, 2, 2], [5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        got = ours(ids, mask)
        alone = ours(ids[:1, :4], torch.ones(1, 4, dtype=torch.long))
    assert (got[0] - alone[0]).abs().max().item() < 1e-5


@pytest.mark.parametrize("left", [False, True])
def test_qa_matches_transformers(left):
    torch.manual_seed(5)
    ours = LlamaForQuestionAnswering(LlamaConfig.from_dict(CONFIGS["mha-tied"])).eval()
    ref = hf_model(ours, transformers.LlamaForQuestionAnswering)
    ids, mask = batch(ours.config.vocab_size, 2, left)
    with torch.no_grad():
        start, end = ours(ids, mask)
        out = ref(ids, attention_mask=mask, position_ids=positions(mask))
    real = mask.bool()
    assert (start[real] - out.start_logits[real]).abs().max().item() < 1e-4
    assert (end[real] - out.end_logits[real]).abs().max().item() < 1e-4


def test_head_parameter_counts():
    cfg = LlamaConfig.from_pretrained("llama-3.2-1b")
    with torch.device("meta"):
        assert sum(p.numel() for p in LlamaForSequenceClassification(cfg).score.parameters()) == 4096
        assert sum(p.numel() for p in LlamaForQuestionAnswering(cfg).qa_outputs.parameters()) == 4098


def test_bf16_autocast_close_to_transformers():
    torch.manual_seed(6)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    ref = hf_model(ours, transformers.LlamaForCausalLM)
    ids = torch.randint(0, 101, (2, 13))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(ids).float(), ref(ids).logits.float()
    with torch.no_grad():
        exact = ours(ids)
    # Both within bf16 rounding of the fp32 result, and of each other.
    scale = exact.abs().max().item()
    assert (got - exact).abs().max().item() < 0.05 * scale
    assert (got - want).abs().max().item() < 0.05 * scale


@pytest.mark.parametrize("name", ["llama3-rope", "odd-sizes", "mha-tied"])
@pytest.mark.parametrize("padded", [True, False])
def test_kv_cache_matches_full_forward(name, padded):
    """One-position decoding steps (grouped-query heads folded into query rows; `mha-tied` has no groups, and
    without padding there is no mask) give the logits of one forward over the whole sequence."""
    torch.manual_seed(7)
    from llama_ft import KVCache
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS[name])).eval()
    ids, mask = batch(ours.config.vocab_size, 2, left=True, t=12)
    if not padded:
        mask = torch.ones_like(mask)
    with torch.no_grad():
        full = ours(ids, mask)
        cache = KVCache(ours.config.num_hidden_layers)
        first = ours(ids[:, :8], mask[:, :8], kv_cache=cache)
        steps = [ours(ids[:, i:i + 1], mask[:, :i + 1], kv_cache=cache) for i in range(8, 12)]
    inc = torch.cat([first] + steps, dim=1)
    real = mask.bool()
    assert (inc[real] - full[real]).abs().max().item() < 1e-4


@pytest.mark.parametrize("bf16", [False, True])
def test_decoding_step_matches_transformers(bf16):
    """The folded grouped-query decoding step against transformers' on the same left-padded prompts: the same
    logits (fp32), or to bf16 rounding with the same greedy tokens (bf16 autocast, the zero-shot row's setting)."""
    torch.manual_seed(3)
    from llama_ft import KVCache
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    ref = hf_model(ours, transformers.LlamaForCausalLM)
    ids, mask = batch(ours.config.vocab_size, 2, left=True, t=12)
    pos = positions(mask)
    # transformers 5.x renames the argument `past_key_values` to `cache`
    name = "cache" if "cache" in inspect.signature(ref.forward).parameters else "past_key_values"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        cache = KVCache(ours.config.num_hidden_layers)
        ours(ids[:, :11], mask[:, :11], kv_cache=cache)
        step = ours(ids[:, 11:], mask, kv_cache=cache)[:, -1].float()
        past = transformers.DynamicCache()
        ref(input_ids=ids[:, :11], attention_mask=mask[:, :11], position_ids=pos[:, :11], use_cache=True,
            **{name: past})
        theirs = ref(input_ids=ids[:, 11:], attention_mask=mask, position_ids=pos[:, 11:], use_cache=True,
                     **{name: past}).logits[:, -1].float()
    tol = 0.02 * theirs.abs().max().item() if bf16 else 1e-4
    assert (step - theirs).abs().max().item() < tol
    assert torch.equal(step.argmax(-1), theirs.argmax(-1))


def test_gradient_checkpointing_gives_equal_gradients():
    torch.manual_seed(8)
    model = LlamaForSequenceClassification(LlamaConfig.from_dict(CONFIGS["gqa-untied"]))
    model.model.layers[0].requires_grad_(False)  # frozen bottom: the classic "no input requires grad" case
    model.model.embed_tokens.requires_grad_(False)
    ids, mask = batch(101, 2)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.model.gradient_checkpointing = ckpt
        model.train()
        model(ids, mask).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 3
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_generate_batched_left_padding_matches_one_by_one():
    from llama_ft import generate
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["llama3-rope"])).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    together = generate(model, prompts, max_new_tokens=6, stop_ids=[])
    alone = [generate(model, [p], max_new_tokens=6, stop_ids=[])[0] for p in prompts]
    assert together == alone and all(len(x) == 6 for x in together)
    # Greedy equals argmax of a full forward at each step.
    ids = torch.tensor([prompts[0]])
    for t in together[0]:
        assert int(model(ids)[0, -1].argmax()) == t
        ids = torch.cat((ids, torch.tensor([[t]])), dim=1)


@pytest.mark.parametrize("compact_at", [1.0, 0.5])
def test_generate_drops_finished_rows_from_the_batch_with_the_same_replies(monkeypatch, compact_at):
    """Finished rows leave the batch (their cache rows and mask go) once at most COMPACT_AT of it still decodes;
    until then they ride along, ignored. Either way every row decodes as if alone."""
    from llama_ft import generate
    from llama_ft.model import generate as gen
    monkeypatch.setattr(gen, "COMPACT_AT", compact_at)
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20]]
    free = generate(model, prompts, max_new_tokens=6, stop_ids=[])
    # A row's first new token that it had not emitted before: stopping on it ends that row after k tokens.
    r, k = next((r, k) for r, reply in enumerate(free) for k in range(1, len(reply)) if reply[k] not in reply[:k])
    stop = [free[r][k]]
    sizes = []
    hook = model.model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    together = generate(model, prompts, max_new_tokens=6, stop_ids=stop)
    hook.remove()
    assert together == [generate(model, [p], max_new_tokens=6, stop_ids=stop)[0] for p in prompts]
    assert together[r] == free[r][:k]
    assert sizes[0] == len(prompts) and sizes == sorted(sizes, reverse=True)
    finished_early = sum(len(a) < len(b) for a, b in zip(together, free))
    assert (sizes[-1] < len(prompts)) == (len(prompts) - finished_early <= compact_at * len(prompts))


def test_generate_prefills_in_sub_batches_and_decodes_them_as_one_with_the_same_replies():
    """prefill_batch: the prompts run through the model a few at a time, and their caches are joined (each row
    right-aligned, more padding for the shorter batches) into one batch that decodes in place."""
    from llama_ft import generate
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    prefix = list(range(20, 32))
    own = [[5, 6, 7, 8, 9, 10, 11, 40, 41], [12], [14, 15, 16], [18, 19, 20, 21, 22], [23, 24]]
    prompts = [prefix + o for o in own]
    widths = []
    hook = model.model.register_forward_pre_hook(lambda m, args: widths.append(tuple(args[0].shape)))
    joined = generate(model, prompts, max_new_tokens=6, stop_ids=[], prefill_batch=2)
    hook.remove()
    assert widths[:4] == [(1, len(prefix)), (2, 9), (2, 5), (1, 2)]   # the prefix once, then 3 sub-batches
    assert all(w == (5, 1) for w in widths[4:])                        # then one decode batch of all five
    assert joined == generate(model, prompts, max_new_tokens=6, stop_ids=[])
    assert joined == [generate(model, [p], max_new_tokens=6, stop_ids=[])[0] for p in prompts]
    assert generate(model, own, max_new_tokens=6, stop_ids=[], prefill_batch=2) == \
        [generate(model, [p], max_new_tokens=6, stop_ids=[])[0] for p in own]   # no shared prefix


def test_kv_cache_with_room_writes_in_place_and_equals_concatenation():
    from llama_ft import KVCache
    torch.manual_seed(7)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["llama3-rope"])).eval()
    ids, mask = batch(ours.config.vocab_size, 2, left=True, t=12)
    with torch.no_grad():
        plain, roomy = KVCache(ours.config.num_hidden_layers), KVCache(ours.config.num_hidden_layers)
        want = [ours(ids[:, :8], mask[:, :8], kv_cache=plain)]
        got = [ours(ids[:, :8], mask[:, :8], kv_cache=roomy)]
        roomy.reserve(4)
        buffers = [b[0].data_ptr() for b in roomy.buffers]
        for i in range(8, 12):
            want.append(ours(ids[:, i:i + 1], mask[:, :i + 1], kv_cache=plain))
            got.append(ours(ids[:, i:i + 1], mask[:, :i + 1], kv_cache=roomy))
        assert [b[0].data_ptr() for b in roomy.buffers] == buffers           # no copy per step
        assert all(k.data_ptr() == b[0].data_ptr() for (k, _), b in zip(roomy.layers, roomy.buffers))
        assert roomy.seq_len == plain.seq_len == 12
        assert torch.equal(torch.cat(got, 1), torch.cat(want, 1))
        roomy.select(torch.tensor([1]))
        assert torch.equal(roomy.layers[0][0], plain.layers[0][0][1:2])
        ours(ids[1:2, :1], torch.cat((mask[1:2], mask[1:2, :1]), 1), kv_cache=roomy)  # full: concatenates
        assert roomy.seq_len == 13 and roomy.buffers[0] is None


def test_generate_runs_a_shared_prefix_once_with_the_same_replies():
    from llama_ft import generate
    from llama_ft.model.generate import shared_prefix_length
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    prefix = list(range(20, 32))
    prompts = [prefix + [5, 6, 7, 8, 9], prefix + [12], prefix + [14, 15, 16]]
    assert shared_prefix_length(prompts) == len(prefix)
    assert shared_prefix_length([prefix, prefix]) == len(prefix) - 1   # each row keeps a token of its own
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0            # too short to pay
    calls = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kw: calls.append(kw.get("kv_cache").seq_len
                                                                                  if kw.get("kv_cache") else 0),
                                                 with_kwargs=True)
    shared = generate(model, prompts, max_new_tokens=6, stop_ids=[])
    hook.remove()
    assert calls[:2] == [0, len(prefix)]   # the prefix ran alone, then the rows' own tokens after it
    assert shared == generate(model, prompts, max_new_tokens=6, stop_ids=[], share_prefix=False)
    assert shared == [generate(model, [p], max_new_tokens=6, stop_ids=[])[0] for p in prompts]
    assert len({tuple(r) for r in shared}) == len(prompts)   # untied random weights: replies follow the prompt


def test_generate_runs_what_consecutive_prompts_share_once_with_the_same_replies():
    """Questions about one paragraph: past the prefix every prompt starts with, the tokens that consecutive
    prompts share (the paragraph) run once per run, then only each prompt's own end; a prompt that shares
    nothing more runs whole. Rows come back in the prompts' order."""
    from llama_ft import generate
    from llama_ft.model.generate import prefill, prefix_runs
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    fixed, para_a, para_b = list(range(20, 32)), list(range(40, 52)), list(range(60, 70))
    prompts = [fixed + [33, 34, 11, 12],                                                    # alone
               fixed + para_a + [5, 6, 7], fixed + para_a + [8], fixed + para_a + [9, 10],   # a run of 3
               fixed + [35, 36, 37],                                                        # alone
               fixed + para_b + [13, 14, 15, 16], fixed + para_b + [17]]                     # a run of 2
    runs = prefix_runs(prompts, len(fixed))
    assert runs == [(0, 1, 16), (1, 4, len(fixed + para_a)), (4, 5, 15), (5, 7, len(fixed + para_b))]
    assert prefix_runs([fixed + [1], fixed + [2]], len(fixed)) == [(0, 1, 13), (1, 2, 13)]   # nothing more shared
    shapes = []
    hook = model.model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    shared = generate(model, prompts, max_new_tokens=6, stop_ids=[])
    hook.remove()
    # the prefix; the prompts alone (their own tokens); the runs' common tokens; the run's prompts' own ends
    assert shapes[:4] == [(1, len(fixed)), (2, 4), (2, len(para_a)), (5, 4)]
    assert all(s == (len(prompts), 1) for s in shapes[4:])    # then one decode batch, in the prompts' order
    assert shared == generate(model, prompts, max_new_tokens=6, stop_ids=[], share_prefix=False)
    assert shared == [generate(model, [p], max_new_tokens=6, stop_ids=[])[0] for p in prompts]
    assert shared == generate(model, prompts, max_new_tokens=6, stop_ids=[], prefill_batch=2)
    with torch.no_grad():
        for batch in (None, 2):
            logits, cache, mask = prefill(model, prompts, pad=0, batch_size=batch)
            plain, _, _ = prefill(model, prompts, pad=0, share_prefix=False)
            torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-5)
            assert mask.sum(1).tolist() == [len(p) for p in prompts] and cache.seq_len == mask.shape[1]


def test_a_prefix_computed_once_serves_several_prefill_calls_with_the_same_logits():
    """shared_prefix runs a set's common prefix once; prefill calls for parts of the set reuse it (the SST-2
    zero-shot row: one instruction, a batch of reviews at a time) and give the logits of running it each time."""
    from llama_ft.model.generate import prefill, shared_prefix
    torch.manual_seed(9)
    model = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS["gqa-untied"])).eval()
    fixed = list(range(20, 32))
    prompts = [fixed + [33, 34, 11], fixed + [5], fixed + [40, 41], fixed + [7, 8, 9, 10]]
    prefix = shared_prefix(model, prompts)
    assert prefix.tokens == fixed and prefix.cache.seq_len == len(fixed)
    calls = []
    hook = model.model.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        parts = [prefill(model, prompts[i:i + 2], pad=0, prefix=prefix)[0] for i in (0, 2)]
        hook.remove()
        assert calls == [(2, 3), (2, 4)]   # each call ran only its prompts' own tokens
        plain, _, _ = prefill(model, prompts, pad=0, share_prefix=False)
        torch.testing.assert_close(torch.cat(parts), plain, rtol=1e-4, atol=1e-5)
        assert prefix.cache.seq_len == len(fixed)   # the calls left the prefix as it was
        with pytest.raises(ValueError, match="prompt 1 does not start with the prefix"):
            prefill(model, [prompts[0], [20, 21, 5]], pad=0, prefix=prefix)
        with pytest.raises(ValueError, match="prompt 0 does not start"):
            prefill(model, [fixed], pad=0, prefix=prefix)   # no token of its own after the prefix


def test_causal_mask_for_a_cached_prefix_is_built_on_the_inputs_device():
    from llama_ft.model.llama import attention_mask_4d
    mask = attention_mask_4d(None, q_len=3, past_len=2, device=torch.device("meta"))
    assert mask.device.type == "meta" and mask.shape == (1, 1, 3, 5)
    assert attention_mask_4d(None, q_len=1, past_len=2) is None


@pytest.mark.parametrize("heads", [(6, 2), (4, 4)])
def test_prefix_decode_attention_is_attention_over_the_prefix_then_each_rows_positions(heads):
    """One query per row over keys and values a batch-1 prefix shares with every row, then the row's own (left
    padding masked): the same output as SDPA over the prefix copied into every row (fp32)."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from llama_ft.model.llama import prefix_decode_attention
    g = torch.Generator().manual_seed(5)
    (H, kv), B, P, L, D = heads, 3, 7, 9, 16
    q = torch.randn(B, H, 1, D, generator=g)
    pk, pv = torch.randn(1, kv, P, D, generator=g), torch.randn(1, kv, P, D, generator=g)
    k, v = torch.randn(B, kv, L, D, generator=g), torch.randn(B, kv, L, D, generator=g)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[1, ..., :4], mask[2, ..., :L - 1] = False, False   # left padding; row 2 has a single position of its own
    got = prefix_decode_attention(q, (pk, pv), k, v, mask)
    whole = torch.cat((torch.ones(B, 1, 1, P, dtype=torch.bool), mask), dim=-1)
    want = sdpa(q, torch.cat((pk.expand(B, -1, -1, -1), k), 2), torch.cat((pv.expand(B, -1, -1, -1), v), 2),
                attn_mask=whole, enable_gqa=H != kv)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prefix_decode_attention(q, (pk, pv), k, v, None),
                               sdpa(q, torch.cat((pk.expand(B, -1, -1, -1), k), 2),
                                    torch.cat((pv.expand(B, -1, -1, -1), v), 2), enable_gqa=H != kv),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied"])
def test_decoding_after_a_prefix_held_once_gives_transformers_logits(monkeypatch, name):
    """On a CPU, prefill keeps the prefix every prompt starts with as one batch-1 copy in the cache: the rows hold
    only their own positions. A decoding step (one new token per row) and then a call with two new tokens per row
    give transformers' logits for the whole sequences. Off (generate.PREFIX_APART), every row holds the prefix."""
    from llama_ft.model import generate as gen
    torch.manual_seed(11)
    ours = LlamaForCausalLM(LlamaConfig.from_dict(CONFIGS[name])).eval()
    ref = hf_model(ours, transformers.LlamaForCausalLM)
    prefix, para = list(range(20, 32)), list(range(40, 52))
    # two prompts alone, then two about one paragraph (prefill runs it once: prefix_runs)
    prompts = [prefix + [5, 6, 7, 8, 9, 10, 11], prefix + [12], prefix + para + [14], prefix + para + [18, 19]]
    new = torch.tensor([[7, 50, 60], [8, 51, 61], [9, 52, 62], [10, 53, 63]])
    with torch.no_grad():
        _, cache, mask = gen.prefill(ours, prompts, pad=0, reserve=3, batch_size=2)
        assert cache.prefix_len == len(prefix) and cache.prefix[0][0].shape[0] == 1
        assert cache.layers[0][0].shape[2] == mask.shape[1] - len(prefix) and cache.seq_len == mask.shape[1]
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        step = ours(new[:, :1], mask, kv_cache=cache)[:, -1]
        mask = torch.cat((mask, torch.ones_like(mask[:, :2])), dim=1)
        more = ours(new[:, 1:], mask, kv_cache=cache)
        for i, p in enumerate(prompts):
            theirs = ref(torch.tensor([p + new[i].tolist()])).logits[0]
            torch.testing.assert_close(step[i], theirs[-3], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(more[i], theirs[-2:], rtol=1e-4, atol=1e-4)
        monkeypatch.setattr(gen, "PREFIX_APART", False)
        _, copied, copied_mask = gen.prefill(ours, prompts, pad=0, reserve=3, batch_size=2)
        assert copied.prefix is None and copied.seq_len == copied_mask.shape[1] == cache.seq_len - 3
