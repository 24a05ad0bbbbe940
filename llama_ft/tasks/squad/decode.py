"""From span logits to answers: n-best (start, end) pairs inside the context, end >= start, a maximum length,
the best over all windows of a question, the text cut from the original context by character offsets;
SQuAD v2's null score, its threshold, and no-answer probabilities.

Two rules pick the answer (`RULES`): `logits`, llama_ft's (the span with the highest start + end logit over all
windows), and `pipeline`, transformers' question-answering pipeline's, for the pair format: in each window a
softmax over its context tokens, the top `2 * top_k + 10` spans by start x end probability, each widened to
whole words, and the probabilities of spans with the same text (case-insensitively) summed over all windows.

`study_window_predictions` reproduces the study's scoring instead (each window on its own, two independent
argmaxes, text re-decoded from ids): only to reproduce its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llama_ft.metrics.squad import f1_score_v2
from llama_ft.tasks.squad.data import SquadExample
from llama_ft.tasks.squad.windows import QAWindow

N_BEST = 20
MAX_ANSWER_TOKENS = 30
RULES = ("logits", "pipeline")
PIPELINE_SPANS = 12   # transformers' pipeline keeps 2 * top_k + 10 spans of each window (top_k=1)


def decode_rule(qa_format: str) -> str:
    """The rule that decodes windows of `qa_format`: the pair format answers as transformers' pipeline does."""
    return "pipeline" if qa_format == "pair" else "logits"


@dataclass
class Candidate:
    text: str
    score: float          # start logit + end logit; rule `pipeline`: the log of the summed span probabilities
    start_char: int
    end_char: int
    window: int


@dataclass
class QuestionPrediction:
    """The decoded answer of one question. null_score: the lowest (start + end) logit at the no-answer position
    over its windows (SQuAD v2); score_diff = null_score - best span score (> threshold: no answer)."""
    qid: str
    text: str
    best: Candidate | None
    null_score: float
    nbest: list[Candidate] = field(default_factory=list)

    @property
    def score_diff(self) -> float:
        return self.null_score - (self.best.score if self.best is not None else -math.inf)


def window_candidates(window: QAWindow, start_logits: Tensor, end_logits: Tensor, context: str,
                      n_best: int = N_BEST, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> list[Candidate]:
    """The n best spans of one window: both ends on verified context tokens, end >= start, at most
    `max_answer_tokens` tokens; text cut from `context` with the tokens' character offsets."""
    c0, n = window.context_start, len(window.offsets)
    valid = torch.tensor([sp is not None for sp in window.offsets], dtype=torch.bool)
    if n == 0 or not bool(valid.any()):
        return []
    s = start_logits[c0:c0 + n].float().masked_fill(~valid, -math.inf)
    e = end_logits[c0:c0 + n].float().masked_fill(~valid, -math.inf)
    scores = s[:, None] + e[None, :]
    i = torch.arange(n)
    length = i[None, :] - i[:, None]     # end - start
    scores = scores.masked_fill((length < 0) | (length >= max_answer_tokens), -math.inf)
    k = min(n_best, scores.numel())
    top, flat = scores.flatten().topk(k)
    out = []
    for score, f in zip(top.tolist(), flat.tolist()):
        if score == -math.inf:
            break
        a, b = divmod(f, n)
        start_char, end_char = window.offsets[a][0], window.offsets[b][1]
        out.append(Candidate(context[start_char:end_char], score, start_char, end_char, window.window))
    return out


def pipeline_candidates(windows: list[QAWindow], logits: list[tuple[Tensor, Tensor]], context: str,
                        max_answer_tokens: int = MAX_ANSWER_TOKENS) -> list[Candidate]:
    """transformers' question-answering pipeline's answers of one question, best first: per window the
    `PIPELINE_SPANS` best spans by probability (softmax over the window's context tokens), their texts cut at
    word boundaries (`window.offsets`), probabilities of equal texts (ignoring case) summed over all windows."""
    by_text: dict[str, list] = {}
    for w, (s, e) in zip(windows, logits):
        c0, n = w.context_start, len(w.offsets)
        if n == 0:
            continue
        p = s[c0:c0 + n].float().softmax(0)[:, None] * e[c0:c0 + n].float().softmax(0)[None, :]
        i = torch.arange(n)
        length = i[None, :] - i[:, None]
        p = p.masked_fill((length < 0) | (length >= max_answer_tokens), 0.0)
        top, flat = p.flatten().topk(min(PIPELINE_SPANS, p.numel()))
        for prob, f in zip(top.tolist(), flat.tolist()):
            a, b = divmod(f, n)
            start_char, end_char = w.offsets[a][0], w.offsets[b][1]
            text = context[start_char:end_char]
            seen = by_text.get(text.lower())
            if seen is not None:
                seen[1] += prob
            else:
                by_text[text.lower()] = [Candidate(text, 0.0, start_char, end_char, w.window), prob]
    ranked = sorted(by_text.values(), key=lambda cp: -cp[1])
    for cand, prob in ranked:
        cand.score = math.log(prob) if prob > 0 else -math.inf
    return [cand for cand, _ in ranked]


def decode_question(qid: str, context: str, windows: list[QAWindow], logits: list[tuple[Tensor, Tensor]],
                    n_best: int = N_BEST, max_answer_tokens: int = MAX_ANSWER_TOKENS,
                    rule: str = "logits") -> QuestionPrediction:
    """The best span over all windows of one question by `rule` (see RULES), with its n-best list and null
    score (rule `pipeline`: the null position's log-probability against the window's context tokens)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: use one of {', '.join(RULES)}.")
    cands, null = [], math.inf
    for w, (s, e) in zip(windows, logits):
        if rule == "logits":
            cands += window_candidates(w, s, e, context, n_best, max_answer_tokens)
        keep = list(range(w.context_start, w.context_end)) + [w.null_index]
        norm = float(torch.logsumexp(s[keep].float(), 0) + torch.logsumexp(e[keep].float(), 0)) \
            if rule == "pipeline" else 0.0
        null = min(null, float(s[w.null_index] + e[w.null_index]) - norm)
    if rule == "pipeline":
        cands = pipeline_candidates(windows, logits, context, max_answer_tokens)
    cands.sort(key=lambda c: -c.score)
    best = cands[0] if cands else None
    return QuestionPrediction(qid, best.text if best else "", best, null, cands[:n_best])


def decode_predictions(examples: list[SquadExample], windows: list[QAWindow],
                       logits: list[tuple[Tensor, Tensor]], n_best: int = N_BEST,
                       max_answer_tokens: int = MAX_ANSWER_TOKENS, rule: str = "logits"
                       ) -> dict[str, QuestionPrediction]:
    """{qid: QuestionPrediction} for every example by `rule`; `windows` and `logits` in the same order (as
    `predict` returns them for the windows)."""
    if len(windows) != len(logits):
        raise ValueError(f"{len(windows)} windows but {len(logits)} logit pairs; predict on exactly the windows.")
    by_q: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        by_q.setdefault(w.qid, []).append(i)
    out = {}
    for ex in examples:
        idx = by_q.get(ex.qid, [])
        out[ex.qid] = decode_question(ex.qid, ex.context, [windows[i] for i in idx], [logits[i] for i in idx],
                                      n_best, max_answer_tokens, rule)
    return out


def answers(preds: dict[str, QuestionPrediction], null_threshold: float | None = None) -> dict[str, str]:
    """{qid: answer text} in the official format; with a threshold (SQuAD v2) a question whose
    score_diff exceeds it is answered '' (no answer)."""
    if null_threshold is None:
        return {q: p.text for q, p in preds.items()}
    return {q: "" if p.score_diff > null_threshold else p.text for q, p in preds.items()}


def na_probs(preds: dict[str, QuestionPrediction], null_threshold: float = 0.0) -> dict[str, float]:
    """No-answer probabilities for the squad_v2 metric: sigmoid(score_diff - threshold), so 0.5 is the
    decision boundary and the order of questions is the order of their score differences."""
    out = {}
    for q, p in preds.items():
        x = p.score_diff - null_threshold
        out[q] = 1.0 if x == math.inf else 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))
    return out


def best_null_threshold(preds: dict[str, QuestionPrediction], refs: dict[str, list[str]]) -> float:
    """The score_diff threshold that maximises F1 on held-out questions (the official script's
    `find_best_thresh`, on score differences): predict '' when score_diff > threshold."""
    qids = [q for q in refs if q in preds]
    if not qids:
        raise ValueError("best_null_threshold: no prediction for any held-out question.")
    span_f1 = {q: max(f1_score_v2(preds[q].text, g) for g in (refs[q] or [""])) for q in qids}
    null_f1 = {q: 1.0 if not refs[q] else 0.0 for q in qids}
    # Below every difference all questions get '' (score: the unanswerable ones); raising the threshold to a
    # question's difference switches it, and every question tied with it, to its span answer.
    order = sorted(qids, key=lambda q: preds[q].score_diff)
    diffs = [preds[q].score_diff for q in order]
    score = best = sum(null_f1.values())
    thresh = diffs[0] - 1.0 if math.isfinite(diffs[0]) else 0.0
    for i, q in enumerate(order):
        score += span_f1[q] - null_f1[q]
        if (i + 1 == len(order) or diffs[i + 1] != diffs[i]) and score > best and math.isfinite(diffs[i]):
            best, thresh = score, diffs[i]
    return thresh


def study_window_predictions(examples: list[SquadExample], windows: list[QAWindow],
                             logits: list[tuple[Tensor, Tensor]], tokenizer
                             ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The study's scoring: every window is its own item (id `qid#k`) judged against the question's gold
    answers, start and end are two independent argmaxes over the whole window, the text is re-decoded from the
    ids (empty when end < start). Returns (predictions, references); only to reproduce its numbers."""
    gold = {ex.qid: list(ex.gold_texts) for ex in examples}
    preds, refs = {}, {}
    for w, (s, e) in zip(windows, logits):
        a, b = int(s.argmax()), int(e.argmax())
        key = f"{w.qid}#{w.window}"
        preds[key] = tokenizer.decode(w.input_ids[a:b + 1], skip_special_tokens=True) if b >= a else ""
        refs[key] = gold[w.qid]
    return preds, refs
