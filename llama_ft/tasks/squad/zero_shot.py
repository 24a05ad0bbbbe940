"""Zero-shot extractive QA by prompting the causal LM: greedy generation from a fixed prompt (no SQuAD example in
it), the reply cut down to a span-like string.

The prompt is fixed. With a chat template (instruct models) it is one made-up demonstration exchange
(DEMONSTRATION: a user turn about the Eiffel Tower and the assistant reply "330 metres"; it only sets the reply
format, a bare span) followed by the user turn

    Answer the question using a short span copied exactly from the context. Reply with the answer only.

    Context: {context}

    Question: {question}

and the assistant's greedy reply is taken (for SQuAD v2 the instruction adds UNANSWERABLE_INSTRUCTION); without
a chat template (base models) the same demonstration then `Context: {context}\nQuestion: {question}\nAnswer:`
are continued as plain text.

Post-processing (`clean_answer`), in order: keep the first non-empty line; drop a leading "Answer:" or "The
answer (to the question) is:"; strip whitespace, surrounding quotes/brackets and one trailing period; map
"unanswerable" to '' (v2); then snap to the context: when the cleaned reply occurs in the context (ignoring case)
that exact substring is used, otherwise the run of context words whose SQuAD-normalised tokens best match the
reply's by F-beta with beta = 0.5 (precision weighted: a short span of reply words wins), if that score is at
least SNAP_MIN_SCORE (ties: the shorter span); else the cleaned reply stays as it is. Snapping turns "The
Denver Broncos won." into the context's "Denver Broncos", the form an extractive metric expects; `snap=False`
scores the cleaned reply as generated.
"""
from __future__ import annotations

import re

import torch
from tqdm.auto import tqdm

from llama_ft.metrics.squad import normalize_answer
from llama_ft.model.generate import generate_groups
from llama_ft.tasks.squad.data import SquadExample
from llama_ft.train.config import inference_amp

INSTRUCTION = "Answer the question using a short span copied exactly from the context. Reply with the answer only."
UNANSWERABLE_INSTRUCTION = ' If the context does not contain the answer, reply "unanswerable".'
UNANSWERABLE = "unanswerable"
# One made-up exchange shown before the question (not from SQuAD): it sets the reply format, a bare span.
DEMONSTRATION = (("The Eiffel Tower was built between 1887 and 1889 as the entrance arch of the 1889 World's Fair "
                  "in Paris. It is 330 metres tall and was the tallest structure in the world until 1930."),
                 "How tall is the Eiffel Tower?", "330 metres")
SNAP_MIN_SCORE = 0.5
SNAP_EXTRA_WORDS = 3   # a context span may be this many words longer than the reply
_LEAD = re.compile(r"^\s*(?:the\s+)?answer(?:\s+to\s+(?:the|this|your)\s+question)?(?:\s+is\s*:?|\s*[:\-])\s*",
                   re.IGNORECASE)
_WORD = re.compile(r"\S+")


def qa_prompt(tokenizer, context: str, question: str, unanswerable: bool = False,
              demonstration: bool = True) -> list[int]:
    """Token ids of the fixed prompt for one question (the chat template when the tokenizer has one), after the
    fixed made-up DEMONSTRATION exchange unless `demonstration` is False."""
    instruction = INSTRUCTION + (UNANSWERABLE_INSTRUCTION if unanswerable else "")
    shots = [DEMONSTRATION] if demonstration else []
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for c, q, a in shots:
            messages += [{"role": "user", "content": f"{instruction}\n\nContext: {c}\n\nQuestion: {q}"},
                         {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": f"{instruction}\n\nContext: {context}\n\nQuestion: {question}"})
        return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                                add_special_tokens=False)
    text = "".join(f"Context: {c}\nQuestion: {q}\nAnswer: {a}\n\n" for c, q, a in shots)
    return tokenizer.encode(f"{text}Context: {context}\nQuestion: {question}\nAnswer:")


def _f_half(span: list[str], reply: list[str]) -> float:
    """F-beta (beta = 0.5) of a span's words against the reply's: precision counts twice as much as recall, so a
    short span made only of reply words beats a longer one that also matches more of a chatty reply."""
    rest, common = list(reply), 0
    for t in span:
        if t in rest:
            rest.remove(t)
            common += 1
    if common == 0:
        return 0.0
    p, r = common / len(span), common / len(reply)
    return 1.25 * p * r / (0.25 * p + r)


def snap_to_context(answer: str, context: str) -> str | None:
    """The context substring an answer most likely means (see the module docstring), or None."""
    if not answer:
        return None
    # Case-insensitive search in the context itself: lower() can change a string's length ("İ" -> "i̇"), so
    # an index found in context.lower() may not point at the same text in context.
    m = re.search(re.escape(answer), context, re.IGNORECASE)
    if m:
        return m.group(0)
    target = normalize_answer(answer).split()
    if not target:
        return None
    words = [(m.start(), m.end()) for m in _WORD.finditer(context)]
    norm = [normalize_answer(context[s:e]).split() for s, e in words]
    wanted = set(target)
    # Only spans that start and end on a word sharing a token with the reply can win: dropping any other first
    # or last word keeps the common tokens and makes the span shorter, so its F-beta is at least as high (higher
    # when the word had tokens) and it wins the tie. The same best span, for a fraction of the spans scored.
    hits = [not wanted.isdisjoint(toks) for toks in norm]
    best, best_span = 0.0, None
    longest = len(answer.split()) + SNAP_EXTRA_WORDS
    for a in range(len(words)):
        if not hits[a]:
            continue
        toks: list[str] = []
        for b in range(a, min(a + longest, len(words))):
            toks += norm[b]
            if not hits[b]:
                continue
            f = _f_half(toks, target)
            shorter = best_span is not None and words[b][1] - words[a][0] < best_span[1] - best_span[0]
            if f > best or (f == best and shorter):
                best, best_span = f, (words[a][0], words[b][1])
    if best < SNAP_MIN_SCORE or best_span is None:
        return None
    text = context[best_span[0]:best_span[1]]
    return text.strip(" \t\n\"'“”‘’()[],;:").rstrip(".") or None


def clean_answer(reply: str, context: str, snap: bool = True) -> str:
    """A generated reply cut down to a span-like answer (see the module docstring for the exact steps);
    '' for the v2 reply "unanswerable"."""
    lines = [ln for ln in reply.splitlines() if ln.strip()]
    text = _LEAD.sub("", lines[0]) if lines else ""
    text = text.strip().strip("\"'“”‘’()[]").strip()
    if text.lower().rstrip(".") == UNANSWERABLE:
        return ""
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    if snap:
        snapped = snap_to_context(text, context)
        if snapped is not None:
            return snapped
    return text


# Prompts decode together, up to DECODE_ROWS of them: a decoding step reads every weight once and pays the same
# per-operator overhead whatever its rows. DECODE_POSITIONS bounds the cache (rows x positions) for long prompts.
# They run through the model PREFILL_ROWS at a time: a wider prefill pads more and ran slower (BENCHMARKS.md,
# session 10).
DECODE_ROWS = 64
DECODE_POSITIONS = 64 * 512
PREFILL_ROWS = 16


def decode_groups(lengths: list[int], rows: int = DECODE_ROWS, max_new_tokens: int = 24,
                  positions: int = DECODE_POSITIONS, keys: list | None = None) -> list[list[int]]:
    """Prompt indices, longest first, in groups of at most `rows` whose cache (rows x (longest + new tokens))
    stays within `positions` (a single prompt always forms a group). `keys` (each question's context): prompts
    with the same key come one after another, where the longest of them would come, so that prefill runs the
    part they share once (generate.prefix_runs)."""
    keys = range(len(lengths)) if keys is None else keys   # no keys: every prompt on its own
    longest: dict = {}
    first: dict = {}
    for i, k in enumerate(keys):
        longest[k] = max(longest.get(k, 0), lengths[i])
        first.setdefault(k, i)
    order = sorted(range(len(lengths)), key=lambda i: (-longest[keys[i]], first[keys[i]], -lengths[i]))
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g and len(g) < rows and (len(g) + 1) * (max(lengths[j] for j in [*g, i]) + max_new_tokens) <= positions:
            g.append(i)
        else:
            groups.append([i])
    return groups


@torch.inference_mode()
def answer_by_prompt(lm, tokenizer, examples: list[SquadExample], batch_size: int = DECODE_ROWS,
                     max_new_tokens: int = 24, amp: str = "auto", progress: bool = True,
                     unanswerable: bool = False, demonstration: bool = True) -> dict[str, str]:
    """{qid: raw generated reply} for each question (greedy, stops at EOS or a newline); `amp`: the autocast
    dtype by name (auto, bf16, fp16 on CUDA, none; inference_amp); `unanswerable`: the SQuAD v2 prompt, which
    allows the reply "unanswerable"; `demonstration`: see qa_prompt; `batch_size`: at most this many prompts
    decode together (decode_groups)."""
    amp_dtype = inference_amp(amp, lm, next(lm.parameters()).device)
    prompts = [qa_prompt(tokenizer, ex.context, ex.question, unanswerable, demonstration) for ex in examples]
    stop = list(tokenizer.eos_token_ids)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if len(newline) == 1:
        stop.append(newline[0])
    replies: dict[str, str] = {}
    bar = tqdm(total=len(prompts), desc="zero-shot prompt", unit="q", disable=not progress, dynamic_ncols=True)
    contexts = [ex.context for ex in examples]
    order = decode_groups([len(p) for p in prompts], batch_size, max_new_tokens, keys=contexts)
    outs = generate_groups(lm, [[prompts[i] for i in idx] for idx in order], max_new_tokens=max_new_tokens,
                           stop_ids=stop, pad_id=tokenizer.pad_token_id, amp=amp_dtype, prefill_batch=PREFILL_ROWS)
    for idx, group in zip(order, outs):
        for i, ids in zip(idx, group):
            replies[examples[i].qid] = tokenizer.decode(ids, skip_special_tokens=True)
        bar.update(len(idx))
    bar.close()
    return {ex.qid: replies[ex.qid] for ex in examples}
