"""llama_ft/zero_shot_qa.py: the fixed prompt and the post-processing of generated replies."""
import re

import pytest
import torch

import llama_ft
from llama_ft import LlamaConfig, LlamaForCausalLM
from llama_ft.model import generate as gen
from llama_ft.metrics.squad import normalize_answer
from llama_ft.tasks.squad.data import SquadExample, load_squad
from llama_ft.tasks.squad.zero_shot import (DEMONSTRATION, INSTRUCTION, SNAP_EXTRA_WORDS, SNAP_MIN_SCORE,
                                            answer_by_prompt, clean_answer, decode_groups, qa_prompt, snap_to_context)

CONTEXT = "Super Bowl 50 was won by the Denver Broncos, who beat the Carolina Panthers 24-10 in 2016."


@pytest.mark.parametrize("reply,expected", [
    ("Denver Broncos", "Denver Broncos"),
    ("Answer: Denver Broncos.", "Denver Broncos"),
    ("The answer to the question is: 24-10", "24-10"),
    ('"denver broncos"\nThey won because...', "Denver Broncos"),      # first line, quotes, the context's casing
    ("The Denver Broncos won it.", "Denver Broncos"),                 # snapped to the best-matching words
    ("unanswerable.", ""),
    ("Green Bay Packers", "Green Bay Packers"),                      # nothing close in the context: kept
    ("", ""),
])
def test_clean_answer(reply, expected):
    assert clean_answer(reply, CONTEXT) == expected


def test_snap_can_be_turned_off():
    assert clean_answer("The Denver Broncos won it.", CONTEXT, snap=False) == "The Denver Broncos won it"
    assert snap_to_context("Carolina", CONTEXT) == "Carolina"
    assert snap_to_context("", CONTEXT) is None


def test_snap_keeps_the_contexts_text_when_lowercasing_changes_lengths():
    # "İ".lower() is two code points: an index found in context.lower() would be shifted in context.
    assert snap_to_context("ankara", "In İİstanbul and Ankara are cities") == "Ankara"


def _snap_every_span(answer: str, context: str) -> str | None:
    """The definition snap_to_context implements, scoring every span of up to len(answer words) + 3 words."""
    if not answer:
        return None
    if m := re.search(re.escape(answer), context, re.IGNORECASE):
        return m.group(0)
    target = normalize_answer(answer).split()
    if not target:
        return None
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
    norm = [normalize_answer(context[s:e]).split() for s, e in words]
    scored = []
    for a in range(len(words)):
        toks: list[str] = []
        for b in range(a, min(a + len(answer.split()) + SNAP_EXTRA_WORDS, len(words))):
            toks += norm[b]
            if toks:
                rest = list(target)
                common = sum(1 for t in toks if t in rest and rest.remove(t) is None)
                p, r = common / len(toks), common / len(target)
                f = 1.25 * p * r / (0.25 * p + r) if common else 0.0
                scored.append((-f, words[b][1] - words[a][0], a, words[a][0], words[b][1]))
    f, _, _, start, end = min(scored, default=(0.0, 0, 0, 0, 0))
    if -f < SNAP_MIN_SCORE:
        return None
    return context[start:end].strip(" \t\n\"'“”‘’()[],;:").rstrip(".") or None


def test_snap_finds_the_best_span_of_all_on_squad_questions(shared):
    # Chatty and partial replies built from real questions and answers: the search that skips spans starting or
    # ending on a word the reply does not share must pick what scoring every span picks.
    examples = load_squad(shared / "data/squad_v1.1/dev-v1.1-open.json.zip").examples[:300]
    cases = 0
    for ex in examples:
        answer = ex.answers[0].text if ex.answers else ex.question
        for reply in (ex.question, f"I think it was {answer}, the {ex.question.split()[0]}",
                      " ".join(reversed(answer.split())) + " maybe", f"{answer} and the rest."):
            assert snap_to_context(reply, ex.context) == _snap_every_span(reply, ex.context), (reply, ex.qid)
            cases += 1
    assert cases == 1200


def test_prompt_layout_with_the_chat_template(smollm2_dir):
    tok = llama_ft.load_tokenizer(smollm2_dir)
    text = tok.decode(qa_prompt(tok, CONTEXT, "Who won?"))
    assert text.count(INSTRUCTION) == 2 and DEMONSTRATION[2] in text
    assert text.index(DEMONSTRATION[0]) < text.index(CONTEXT)
    assert text.rstrip().endswith("<|im_start|>assistant")
    bare = tok.decode(qa_prompt(tok, CONTEXT, "Who won?", demonstration=False, unanswerable=True))
    assert DEMONSTRATION[0] not in bare and '"unanswerable"' in bare


def test_decode_groups_take_the_longest_first_within_rows_and_cache_positions():
    lengths = [100] * 10 + [900, 50, 300] + [200] * 3
    groups = decode_groups(lengths, rows=4, max_new_tokens=24, positions=1800)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))       # each prompt once
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths, reverse=True)                                    # longest first
    assert all(len(g) <= 4 and len(g) * (lengths[g[0]] + 24) <= 1800 for g in groups if len(g) > 1)
    assert groups[0] == [10]                       # 2 x (900 + 24) > 1800: the longest decodes alone
    assert [len(g) for g in groups] == [1, 4, 4, 4, 3]
    assert decode_groups([5000], rows=4, positions=100) == [[0]]   # a prompt over the budget still gets a group


def test_decode_groups_keep_questions_about_one_context_together():
    lengths = [300, 120, 290, 310, 125, 118]
    keys = ["a", "b", "c", "a", "b", "b"]
    groups = decode_groups(lengths, rows=3, max_new_tokens=24, positions=10_000, keys=keys)
    assert [i for g in groups for i in g] == [3, 0, 2, 4, 1, 5]   # a's questions, then c, then b's, each longest first
    assert decode_groups(lengths, rows=2, max_new_tokens=24, positions=2 * (310 + 24), keys=keys)[0] == [3, 0]
    # The cache budget counts the group's longest prompt, which need not be its first.
    assert decode_groups([200, 50, 150, 140], rows=3, max_new_tokens=0, positions=300,
                         keys=["a", "a", "b", "b"]) == [[0], [1, 2], [3]]


def test_the_prompted_row_runs_its_prefix_once_and_hands_freed_memory_back_once(smollm2_dir, monkeypatch):
    """The instruction and demonstration every prompt starts with run once for the whole row, not once per
    decoding group. Each group frees its cache for the next one to reuse (handing the pages back after every
    group made the next one fault them all in again); the row hands them back once, at its end. The replies are
    those of generating each prompt on its own."""
    tok = llama_ft.load_tokenizer(smollm2_dir)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig.from_dict(dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=tok.vocab_size, max_position_embeddings=1024))).eval()
    examples = [SquadExample(f"q{i}", "t", CONTEXT + " Really." * i, q, [], []) for i, q in
                enumerate(["Who won?", "Who lost the game?", "When was it?", "By how much?"])]
    prompts = [qa_prompt(tok, ex.context, ex.question) for ex in examples]
    n = gen.shared_prefix_length(prompts)
    trims = []
    monkeypatch.setattr(gen, "release_free_memory", lambda: trims.append(1))
    widths = []
    hook = lm.model.register_forward_pre_hook(lambda m, args: widths.append(tuple(args[0].shape)))
    replies = answer_by_prompt(lm, tok, examples, batch_size=2, max_new_tokens=3, amp="none", progress=False)
    hook.remove()
    assert n > 100 and widths.count((1, n)) == 1 and widths[0] == (1, n)   # two groups, one run of the prefix
    assert len(trims) == 1   # once for the row, not once per group
    stop = [*tok.eos_token_ids, *tok.encode("\n", add_special_tokens=False)]
    alone = {ex.qid: tok.decode(gen.generate(lm, [p], max_new_tokens=3, stop_ids=stop, pad_id=tok.pad_token_id)[0],
                                skip_special_tokens=True) for ex, p in zip(examples, prompts)}
    assert replies == alone and len(trims) == 1 + 4   # generate() on its own trims after each call
