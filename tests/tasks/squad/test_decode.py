"""llama_ft/qa_decode.py on hand-built windows with known logits."""
import math

import pytest
import torch

from llama_ft.tasks.squad.data import SquadExample
from llama_ft.tasks.squad.decode import (
    answers,
    best_null_threshold,
    decode_predictions,
    decode_question,
    na_probs,
    study_window_predictions,
    window_candidates,
)
from llama_ft.tasks.squad.windows import QAWindow

CONTEXT = "The cat sat on the red mat today."
# Word spans of CONTEXT: The(0,3) cat(4,7) sat(8,11) on(12,14) the(15,18) red(19,22) mat(23,26) today(27,32) .(32,33)
WORDS = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), (23, 26), (27, 32), (32, 33)]
Q = 3   # three question tokens before the context in every window


def window(offsets, k=0, qid="q"):
    """A window: 3 question tokens, the context tokens, 1 cue token (the null position)."""
    n = Q + len(offsets) + 1
    return QAWindow(qid, k, list(range(100, 100 + n)), Q, list(offsets), n - 1, n - 1, False)


def logits(w, start: dict, end: dict, base=-10.0):
    s, e = torch.full((len(w.input_ids),), base), torch.full((len(w.input_ids),), base)
    for pos, v in start.items():
        s[pos] = v
    for pos, v in end.items():
        e[pos] = v
    return s, e


def ctx(i):   # position of context token i
    return Q + i


def test_best_span_text_is_cut_from_the_context():
    w = window(WORDS)
    s, e = logits(w, {ctx(5): 5.0}, {ctx(6): 5.0})
    p = decode_question("q", CONTEXT, [w], [(s, e)])
    assert p.text == "red mat" and (p.best.start_char, p.best.end_char) == (19, 26)
    assert p.best.score == 10.0


def test_end_before_start_is_never_chosen():
    w = window(WORDS)
    # Independent argmaxes would give start=6 (mat), end=2 (sat): an empty/invalid span.
    s, e = logits(w, {ctx(6): 9.0, ctx(1): 3.0}, {ctx(2): 9.0, ctx(7): 2.0})
    best = window_candidates(w, s, e, CONTEXT)[0]
    assert (best.text, best.score) == ("cat sat", 12.0)   # 3 + 9 beats "mat today" (9 + 2)
    assert all(c.start_char <= c.end_char for c in window_candidates(w, s, e, CONTEXT))


def test_question_cue_and_unverified_tokens_are_masked():
    offs = list(WORDS)
    offs[4] = None                                        # an unverified (or whitespace) token
    w = window(offs)
    s, e = logits(w, {0: 50.0, w.null_index: 50.0, ctx(4): 40.0, ctx(1): 1.0},
                  {1: 50.0, w.null_index: 50.0, ctx(4): 40.0, ctx(2): 1.0})
    p = decode_question("q", CONTEXT, [w], [(s, e)])
    assert p.text == "cat sat"                            # not a question token, the cue, or token 4
    assert p.null_score == 100.0 and p.score_diff == 98.0


def test_max_answer_length():
    w = window(WORDS)
    s, e = logits(w, {ctx(0): 8.0, ctx(6): 1.0}, {ctx(7): 8.0})
    assert window_candidates(w, s, e, CONTEXT)[0].text == "The cat sat on the red mat today"
    assert window_candidates(w, s, e, CONTEXT, max_answer_tokens=3)[0].text == "mat today"
    singles = window_candidates(w, s, e, CONTEXT, max_answer_tokens=1)
    assert singles and all((c.start_char, c.end_char) in WORDS for c in singles)


def test_n_best_is_sorted_and_bounded():
    w = window(WORDS)
    s, e = torch.randn(len(w.input_ids)), torch.randn(len(w.input_ids))
    c = window_candidates(w, s, e, CONTEXT, n_best=7)
    assert len(c) == 7 and [x.score for x in c] == sorted((x.score for x in c), reverse=True)


def test_best_over_all_windows_of_a_question():
    w0, w1 = window(WORDS[:6], 0), window(WORDS[3:], 1)
    l0 = logits(w0, {ctx(1): 2.0}, {ctx(1): 2.0})
    l1 = logits(w1, {ctx(2): 6.0}, {ctx(3): 6.0})          # tokens 5, 6 of the context: "red mat"
    ex = SquadExample("q", "T", CONTEXT, "What?", [], ["red mat"])
    other = SquadExample("r", "T", CONTEXT, "What?", [], ["cat"])
    w2 = window(WORDS, 0, qid="r")
    l2 = logits(w2, {ctx(1): 1.0}, {ctx(1): 1.0})
    preds = decode_predictions([ex, other], [w0, w2, w1], [l0, l2, l1])
    assert preds["q"].text == "red mat" and preds["q"].best.window == 1
    assert preds["r"].text == "cat"
    assert preds["q"].null_score == pytest.approx(-20.0)  # the lowest null over the question's windows
    with pytest.raises(ValueError, match="predict on exactly the windows"):
        decode_predictions([ex], [w0], [])


def test_null_threshold_and_na_probs():
    w = window(WORDS)
    sure = decode_question("a", CONTEXT, [w], [logits(w, {ctx(1): 5.0, w.null_index: 0.0}, {ctx(1): 5.0})])
    unsure = decode_question("b", CONTEXT, [w], [logits(w, {ctx(2): 1.0, w.null_index: 4.0},
                                                              {ctx(2): 1.0, w.null_index: 4.0})])
    preds = {"a": sure, "b": unsure}
    assert (sure.score_diff, unsure.score_diff) == (-20.0, 6.0)   # null - best span score
    assert answers(preds) == {"a": "cat", "b": "sat"}
    assert answers(preds, null_threshold=0.0) == {"a": "cat", "b": ""}
    p = na_probs(preds)
    assert p["a"] < 0.5 < p["b"] and all(0 <= v <= 1 for v in p.values())
    # Calibrated on held-out questions: b is unanswerable, a is answerable -> any threshold in between.
    t = best_null_threshold(preds, {"a": ["cat"], "b": []})
    assert sure.score_diff <= t < unsure.score_diff
    assert answers(preds, t) == {"a": "cat", "b": ""}
    # All answerable: the threshold lets every question answer.
    t = best_null_threshold(preds, {"a": ["cat"], "b": ["sat"]})
    assert answers(preds, t) == {"a": "cat", "b": "sat"}


def test_no_candidate_gives_empty_answer():
    w = window([None, None])
    p = decode_question("q", CONTEXT, [w], [logits(w, {}, {})])
    assert p.text == "" and p.best is None and math.isinf(p.score_diff)


class ToyTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


def test_study_window_scoring_reproduces_independent_argmaxes():
    ex = SquadExample("q", "T", CONTEXT, "What?", [], ["red mat"])
    w0, w1 = window(WORDS, 0), window(WORDS, 1)
    l0 = logits(w0, {0: 9.0}, {1: 9.0})                    # argmaxes in the question: decoded anyway
    l1 = logits(w1, {ctx(6): 9.0}, {ctx(2): 9.0})          # end < start: empty
    preds, refs = study_window_predictions([ex], [w0, w1], [l0, l1], ToyTokenizer())
    assert preds == {"q#0": "t100 t101", "q#1": ""}
    assert refs == {"q#0": ["red mat"], "q#1": ["red mat"]}


def test_labels_round_trip_through_decoding_on_real_windows(shared, smollm2_dir):
    """Logits peaked at each window's labels decode, across windows, to exactly the gold answer text."""
    import llama_ft
    from llama_ft.tasks.squad.data import load_squad
    from llama_ft.tasks.squad.windows import build_windows
    tok = llama_ft.load_tokenizer(smollm2_dir)
    examples = load_squad(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip").examples[:300]
    windows, _ = build_windows(tok, examples, 128, 64)
    out = []
    for w in windows:
        s, e = torch.zeros(len(w.input_ids)), torch.zeros(len(w.input_ids))
        if w.has_answer:
            s[w.start_positions] = e[w.end_positions] = 10.0
        out.append((s, e))
    preds = decode_predictions(examples, windows, out)
    exact = [ex for ex in examples if any(w.trainable and w.has_answer for w in windows if w.qid == ex.qid)]
    assert len(exact) > 290
    assert all(preds[ex.qid].text == ex.answers[0].text for ex in exact)


def test_pipeline_rule_sums_the_probabilities_of_equal_texts_over_windows():
    """transformers' rule: a per-window softmax over context tokens, then the probabilities of spans with the
    same text (case ignored) added up; the logits rule picks the single highest start + end instead."""
    w0, w1 = window(WORDS, k=0), window(WORDS, k=1)
    # Window 0 prefers "mat" (p 0.62 each end) over "cat"; window 1 is sure of "cat".
    l0 = logits(w0, {ctx(6): 5.0, ctx(1): 4.5}, {ctx(6): 5.0, ctx(1): 4.5})
    l1 = logits(w1, {ctx(1): 3.0}, {ctx(1): 3.0})
    assert decode_question("q", CONTEXT, [w0, w1], [l0, l1]).text == "mat"
    p = decode_question("q", CONTEXT, [w0, w1], [l0, l1], rule="pipeline")
    p_cat0 = (math.exp(4.5) / (math.exp(5.0) + math.exp(4.5) + 7 * math.exp(-10.0))) ** 2
    p_cat1 = (math.exp(3.0) / (math.exp(3.0) + 8 * math.exp(-10.0))) ** 2
    assert p.text == "cat" and p.best.score == pytest.approx(math.log(p_cat0 + p_cat1), rel=1e-5)
    # Case is ignored when texts are merged, and the text first met is the one returned: "the" (window 1) is
    # added to "The" (window 0), not kept apart.
    l0 = logits(w0, {ctx(0): 4.0, ctx(6): 4.2}, {ctx(0): 4.0, ctx(6): 4.2})
    l1 = logits(w1, {ctx(4): 3.0}, {ctx(4): 3.0})
    p = decode_question("q", CONTEXT, [w0, w1], [l0, l1], rule="pipeline")
    assert p.text == "The" and math.exp(p.best.score) > 1.0
    with pytest.raises(ValueError, match="rule='max': use one of logits, pipeline"):
        decode_question("q", CONTEXT, [w0], [l0], rule="max")
