"""llama_ft/qa_features.py: windows over real SQuAD text, labels that are exactly the gold answer or no-answer.

The equality checked for a labelled window: `context[offsets[start][0]:offsets[end][1]] == answer.text`, exactly,
where the offsets are the labelled tokens' character spans with surrounding whitespace trimmed and the gold
text is the dataset's answer with surrounding whitespace stripped at load (SQuAD train has none to strip).
"""
import pytest

import llama_ft
from llama_ft.tasks.squad.data import Answer, SquadExample, load_squad
from llama_ft.tasks.squad.windows import (
    ANSWER_CUE,
    FeatureError,
    PairWindowBuilder,
    WindowBuilder,
    answer_tokens,
    build_windows,
    pair_tokenizer,
    training_examples,
    verified_spans,
)


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return llama_ft.load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def first_2000(shared):
    return load_squad(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip").examples[:2000]


def labelled_text(w, ex):
    a, b = w.offsets[w.start_positions - w.context_start], w.offsets[w.end_positions - w.context_start]
    return ex.context[a[0]:b[1]]


@pytest.mark.parametrize("max_length,stride", [(384, 128), (128, 64)])
def test_every_training_window_is_the_gold_answer_or_no_answer(tok, first_2000, max_length, stride):
    windows, counts = build_windows(tok, first_2000, max_length, stride)
    by_id = {ex.qid: ex for ex in first_2000}
    assert counts.questions == 2000 and counts.windows == len(windows)
    assert counts.offsets_unverified == 0 and counts.offsets_repaired == 0
    trained = [w for w in windows if w.trainable]
    assert len(trained) >= len(windows) - counts.answers_mid_token * counts.max_windows
    labelled = 0
    for w in trained:
        ex = by_id[w.qid]
        assert len(w.input_ids) <= max_length
        if w.has_answer:
            assert w.context_start <= w.start_positions <= w.end_positions < w.context_end
            assert labelled_text(w, ex) == ex.answers[0].text
            labelled += 1
        else:
            assert w.start_positions == w.end_positions == w.null_index == len(w.input_ids) - 1
    assert labelled == sum(w.has_answer for w in trained) > 0.95 * 2000 * (max_length == 384)
    # Each question's windows cover its whole context, in order, overlapping.
    for qid in list(by_id)[:300]:
        ws = [w for w in windows if w.qid == qid]
        spans = [sp for w in ws for sp in w.offsets if sp is not None]
        assert spans[0][0] == min(sp[0] for sp in spans)
        assert max(sp[1] for sp in spans) == len(by_id[qid].context.rstrip())
    if max_length == 128:
        assert counts.multi_window_questions > 500   # the study's geometry cuts most contexts
        # Its 64-token overlap is over half of the ~100-token context room: capped, and the summary says how often.
        assert counts.stride_capped == counts.multi_window_questions
        assert f"{counts.stride_capped} overlaps capped" in counts.summary()
    else:
        assert counts.stride_capped == 0
    assert len(training_examples(windows)) == len(trained)


def test_window_layout_question_context_cue(tok, first_2000):
    ex = first_2000[0]
    (w,) = WindowBuilder(tok, 384, 128)(ex)
    text = tok.decode(w.input_ids)
    assert text.startswith("Question: " + ex.question + "\nContext:\n")
    assert text.endswith(ANSWER_CUE)
    assert tok.decode(w.input_ids[w.context_start:w.context_end]) == ex.context
    assert labelled_text(w, ex) == "Saint Bernadette Soubirous"


def test_answer_cut_by_a_window_edge_is_no_answer(tok):
    context = " ".join(f"word{i}" for i in range(300)) + " the answer is here"
    ex = SquadExample("q", "T", context, "Where?", [Answer("answer is here", context.index("answer is"))],
                      ["answer is here"])
    windows = WindowBuilder(tok, 128, 64)(ex)
    assert len(windows) > 3
    holding = [w for w in windows if w.has_answer]
    assert holding and all(labelled_text(w, ex) == "answer is here" for w in holding)
    for w in windows:
        covered = [sp for sp in w.offsets if sp is not None]
        whole = covered[0][0] <= ex.answers[0].start and ex.answers[0].end <= covered[-1][1]
        assert w.has_answer == whole
        if not w.has_answer:
            assert (w.start_positions, w.end_positions) == (w.null_index, w.null_index)


def test_mid_token_answer_is_not_trained_on_and_counted(tok):
    context = "The sixth day came."
    ex = SquadExample("q", "T", context, "Which?", [Answer("six", 4)], ["six"])
    b = WindowBuilder(tok, 384, 128)
    (w,) = b(ex)
    assert b.counts.answers_mid_token == 1 and not w.trainable and w.has_answer
    # A second gold answer on token boundaries is preferred.
    ex2 = SquadExample("q2", "T", context, "Which?", [Answer("six", 4), Answer("sixth day", 4)], ["six", "sixth day"])
    (w2,) = b(ex2)
    assert w2.trainable and labelled_text(w2, ex2) == "sixth day"


def test_unanswerable_question_labels_every_window_no_answer(tok):
    ex = SquadExample("q", "T", "Alpha beta gamma. " * 40, "Why?", [], [], is_impossible=True)
    windows = WindowBuilder(tok, 128, 32)(ex)
    assert len(windows) > 1
    assert all(w.trainable and not w.has_answer and w.start_positions == w.null_index for w in windows)


def test_long_question_is_truncated_and_counted(tok):
    ex = SquadExample("q", "T", "Alpha beta.", "why " * 200 + "?", [Answer("beta", 6)], ["beta"])
    b = WindowBuilder(tok, 128, 64)
    (w,) = b(ex)
    assert b.counts.questions_truncated == 1 and len(w.input_ids) <= 128 and labelled_text(w, ex) == "beta"


def test_broken_offsets_are_repaired_against_the_text(tok):
    text = "Saint Bernadette Soubirous appeared in 1858 at Lourdes, café 🤗 done."
    ids, offsets = tok.encode_with_offsets(text, add_special_tokens=False)
    good, rep, unv = verified_spans(tok, text, ids, offsets)
    assert (rep, unv) == (0, 0)
    assert good[0] == (0, 5) and good[-1][1] == len(text)
    # Llama-3-era fast tokenizers shifted some offsets: shift three tokens' spans by one character.
    broken = list(offsets)
    for i in (2, 6, 17):
        broken[i] = (broken[i][0] + 1, broken[i][1] + 1)
    spans, rep, unv = verified_spans(tok, text, ids, broken)
    assert spans == good and rep == 3 and unv == 0
    # Offsets pointing at text that is not the token at all, with nothing to re-find: unverified, None.
    spans, rep, unv = verified_spans(tok, text[:5] + "X" * (len(text) - 5), ids, offsets)
    assert unv > 0 and None in spans


def test_answer_tokens_covers_characters():
    spans = [(0, 5), None, (6, 16), (17, 26)]
    assert answer_tokens(spans, 6, 26) == (2, 3)
    assert answer_tokens(spans, 7, 16) == (2, 2)        # starts inside token 2: covering span
    assert answer_tokens(spans, 5, 6) is None           # whitespace only


@pytest.mark.parametrize("max_length,stride", [(384, 128), (128, 64)])
def test_pair_format_windows_are_the_tokenizers_pair_labelled_with_the_gold_answer(tok, first_2000, max_length,
                                                                                   stride):
    """Pair format: each window is `question EOS context-piece EOS` as the tokenizer's own pair encoding cuts it
    (`stride` context tokens shared by neighbours), a trained window's label is exactly the gold answer (its
    word-widened span contains it), the no-answer position is the final EOS, outside the context."""
    examples = first_2000[:400]
    windows, counts = build_windows(tok, examples, max_length, stride, qa_format="pair")
    by_id = {ex.qid: ex for ex in examples}
    eos = tok.eos_token_id
    assert counts.questions == 400 and counts.windows == len(windows)
    assert counts.multi_window_questions > (300 if max_length == 128 else 10)
    for w in windows:
        ex = by_id[w.qid]
        q = tok.encode(ex.question, add_special_tokens=False)
        assert len(w.input_ids) <= max_length
        assert w.input_ids[:w.context_start] == q + [eos] and w.input_ids[w.context_end:] == [eos]
        if w.trainable and w.has_answer:
            a, b = w.offsets[w.start_positions - w.context_start][0], w.offsets[w.end_positions - w.context_start][1]
            assert ex.answers[0].text in ex.context[a:b]
            assert ex.context[a:b].strip() == ex.answers[0].text or counts.answers_mid_token
        elif w.trainable:
            assert w.start_positions == w.end_positions == w.null_index == len(w.input_ids) - 1
    assert sum(w.has_answer for w in windows if w.trainable) > 0.95 * 400
    for qid in list(by_id)[:100]:
        ws = [w for w in windows if w.qid == qid]
        pieces = [w.input_ids[w.context_start:w.context_end] for w in ws]
        for prev, nxt in zip(pieces, pieces[1:]):
            assert prev[-stride:] == nxt[:stride]
        assert tok.decode(pieces[0] + [t for p in pieces[1:] for t in p[stride:]]) == by_id[qid].context


def test_pair_tokenizer_keeps_single_texts_and_refuses_a_question_that_leaves_no_room(tok):
    pair = pair_tokenizer(tok)
    assert pair.encode("a gem of a film") == tok.encode("a gem of a film")
    assert pair_tokenizer(pair).backend.to_str() == pair.backend.to_str()
    long_q = SquadExample(qid="q", title="", context="Paris is in France. " * 20, question="Where? " * 40,
                          answers=[Answer("Paris", 0)], gold_texts=["Paris"])
    with pytest.raises(FeatureError, match=r"leaves -?\d+ context tokens per window of max_length=128, not more "
                                           r"than stride=64; raise max_length or lower stride"):
        PairWindowBuilder(tok, 128, 64)(long_q)
