"""Extractive-QA windows for a decoder: question, then a piece of the context, then an answer cue; labels on
verified token offsets, a dedicated "no answer in this window" position, never a wrong span.

Two input formats (`QA_FORMATS`): `template` (below, llama_ft's own prompt) and `pair` (`PairWindowBuilder`: the
tokenizer's own question/context pair encoding, which transformers' question-answering pipeline builds).

Layout of one window (ids) in the template format:
    [BOS]  "Question: {question}\\nContext:\\n"  context[k : k + room]  "\\nAnswer:"

- Question first: in a causal model a context token can only be question-aware if the question came before it.
- The context is tokenised on its own, once per context, so every context token's offsets index the original
  context string directly. Those offsets are checked against the text (see `verified_spans`).
- The no-answer label sits on the LAST token of the window (the final token of the "\\nAnswer:" cue). BERT uses
  position 0 ([CLS]), which attends to the whole sequence; in a decoder position 0 attends to itself only, so
  its logit cannot depend on the window and could never tell "answer here" from "answer elsewhere". The last
  token has attended to the question and the whole context piece, it is the same cue token in every window (so
  the head learns one "null" direction there), and it lies outside the context, so it can never be mistaken for
  an answer token. GPT-1 put its classifier on the last token for the same reason.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from tokenizers import Tokenizer as _Backend
from tqdm.auto import tqdm

from llama_ft.tasks.squad.data import SquadExample

QUESTION_PREFIX = "Question: "
CONTEXT_PREFIX = "\nContext:\n"
ANSWER_CUE = "\nAnswer:"
MAX_QUESTION_TOKENS = 64   # longer questions are cut (BERT's run_squad max_query_length), and counted
QA_FORMATS = ("template", "pair")


class FeatureError(ValueError):
    """Windows that cannot be built as asked; the message says which setting to change."""


@dataclass
class QAWindow:
    """One window of one question.

    offsets[i] is the character span in the context of context token i (the token at position
    `context_start + i`), with surrounding whitespace trimmed; None for a whitespace-only token or one whose
    offsets could not be verified (never an answer boundary). start/end_positions: the answer's token span
    when this window holds the whole answer, else both equal to `null_index`.
    """
    qid: str
    window: int
    input_ids: list[int]
    context_start: int
    offsets: list[tuple[int, int] | None]
    start_positions: int
    end_positions: int
    has_answer: bool
    trainable: bool = True   # False: no exact label (answer not on token boundaries): prediction only

    @property
    def null_index(self) -> int:
        return len(self.input_ids) - 1

    @property
    def context_end(self) -> int:
        """Position after the last context token."""
        return self.context_start + len(self.offsets)

    def as_example(self) -> dict:
        """The engine's training example."""
        return {"input_ids": self.input_ids, "start_positions": self.start_positions,
                "end_positions": self.end_positions}


@dataclass
class FeatureCounts:
    questions: int = 0
    windows: int = 0
    windows_with_answer: int = 0
    windows_no_answer: int = 0
    multi_window_questions: int = 0     # contexts longer than one window
    max_windows: int = 0
    questions_truncated: int = 0        # question cut to MAX_QUESTION_TOKENS (or to fit the window)
    stride_capped: int = 0              # multi-window questions whose overlap was cut to half the context room
    answers_mid_token: int = 0          # the answer starts or ends inside a token: its windows not trained on
    questions_unlabelled: int = 0       # no answer placeable on verified tokens: windows not trained on
    offsets_repaired: int = 0           # tokens whose tokenizer offsets disagreed with the text, re-found
    offsets_unverified: int = 0         # tokens whose offsets could not be verified nor re-found
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dict(vars(self))
        d.update(d.pop("extra"))
        return d

    def summary(self) -> str:
        return (f"{self.questions:,} questions -> {self.windows:,} windows ({self.windows_with_answer:,} with the "
                f"answer, {self.windows_no_answer:,} without); {self.multi_window_questions} contexts span several "
                f"windows (max {self.max_windows}); {self.questions_truncated} questions truncated; "
                f"{self.stride_capped} overlaps capped at half the context room; "
                f"{self.answers_mid_token} answers end inside a token; {self.questions_unlabelled} unlabelled; "
                f"offsets: {self.offsets_repaired} repaired, {self.offsets_unverified} unverified")


def _core(text: str, s: int, e: int) -> tuple[int, int] | None:
    """The span [s, e) without leading/trailing whitespace; None when it is all whitespace."""
    seg = text[s:e]
    if not seg.strip():
        return None
    return s + len(seg) - len(seg.lstrip()), e - len(seg) + len(seg.rstrip())


def verified_spans(tokenizer, text: str, ids: list[int], offsets: list[tuple[int, int]]
                   ) -> tuple[list[tuple[int, int] | None], int, int]:
    """Each token's whitespace-trimmed span in `text`, checked: (spans, repaired, unverified).

    Check: the token decoded on its own and `text[start:end]` are equal after stripping whitespace at both ends.
    A run of tokens that each decode to U+FFFD (pieces of one multi-byte character) is checked as a group and
    every token of the run gets the group's span. A token that fails is searched for in the text right after the
    previous token (only whitespace may lie between): found, its span is repaired; else it is None (unverified).
    Whitespace-only tokens get None too: they can never be an answer boundary.
    """
    pieces = tokenizer.backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    spans: list[tuple[int, int] | None] = [None] * len(ids)
    repaired = unverified = 0
    cursor = 0
    i = 0
    while i < len(ids):
        j = i + 1
        piece = pieces[i]
        if "\ufffd" in piece:   # a multi-byte character split over tokens: grow the run until it decodes
            while j < len(ids) and "\ufffd" in tokenizer.decode(ids[i:j]) and j - i < 8:
                j += 1
            piece = tokenizer.decode(ids[i:j])
        s, e = offsets[i][0], offsets[j - 1][1]
        want = piece.strip()
        if text[s:e].strip() == want and e >= s:
            span = _core(text, s, e)
        else:
            found = text.find(want, cursor) if want else -1
            if want and found != -1 and not text[cursor:found].strip():
                span, repaired = (found, found + len(want)), repaired + (j - i)
            elif not want and not text[s:e].strip():
                span = None
            else:
                span, unverified = None, unverified + (j - i)
        for k in range(i, j):
            spans[k] = span
        if span is not None:
            cursor = span[1]
        i = j
    return spans, repaired, unverified


def answer_tokens(spans: list[tuple[int, int] | None], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) token index of the shortest token span covering characters [start, end), or None when a
    boundary character falls on no verified token."""
    first = next((i for i, sp in enumerate(spans) if sp is not None and sp[0] <= start < sp[1]), None)
    last = next((i for i in range(len(spans) - 1, -1, -1)
                 if spans[i] is not None and spans[i][0] < end <= spans[i][1]), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def label_span(ex: SquadExample, spans: list[tuple[int, int] | None], counts: FeatureCounts
               ) -> tuple[tuple[int, int] | None, bool, bool]:
    """(token span of the label or None, whether its characters are exactly the gold answer, whether the
    question can be trained on) for one question over its context tokens' trimmed `spans`.

    The label is the first gold answer whose characters are exactly a token span. An answer that starts or ends
    inside a token ("six" in "sixth") has no such span: the windows holding it are not trained on (their covering
    span would teach a text that is not the gold answer); the question's other windows still teach "no answer
    here"."""
    span, exact = None, False
    if not ex.is_impossible:
        for a in ex.answers:
            found = answer_tokens(spans, a.start, a.end)
            if found is not None:
                exact = (spans[found[0]][0], spans[found[1]][1]) == (a.start, a.end)
                if span is None or exact:
                    span = found
                if exact:
                    break
        counts.answers_mid_token += span is not None and not exact
    trainable = ex.is_impossible or span is not None
    if not trainable:
        counts.questions_unlabelled += 1
    return span, exact, trainable


class WindowBuilder:
    """Builds QAWindows for one tokenizer and window geometry; contexts are tokenised once and reused."""

    def __init__(self, tokenizer, max_length: int = 384, stride: int = 128,
                 max_question_tokens: int = MAX_QUESTION_TOKENS):
        self.tok = tokenizer
        self.max_length, self.stride, self.max_question_tokens = max_length, stride, max_question_tokens
        self.bos = [tokenizer.bos_token_id] if tokenizer.add_bos else []
        self.context_prefix = tokenizer.encode(CONTEXT_PREFIX, add_special_tokens=False)
        self.cue = tokenizer.encode(ANSWER_CUE, add_special_tokens=False)
        fixed = len(self.bos) + len(self.context_prefix) + len(self.cue) + 4
        if max_length - fixed - 16 <= 0:
            raise FeatureError(f"max_length={max_length} leaves no room for a question and context; use 128 or "
                               "more.")
        self._contexts: dict[str, tuple[list[int], list, int, int]] = {}
        self.counts = FeatureCounts()

    def _context(self, context: str):
        if context not in self._contexts:
            ids, offsets = self.tok.encode_with_offsets(context, add_special_tokens=False)
            spans, rep, unv = verified_spans(self.tok, context, ids, offsets)
            self.counts.offsets_repaired += rep
            self.counts.offsets_unverified += unv
            self._contexts[context] = (ids, spans)
        return self._contexts[context]

    def __call__(self, ex: SquadExample) -> list[QAWindow]:
        """The windows of one question, labelled with its first placeable gold answer."""
        c = self.counts
        q = self.tok.encode(QUESTION_PREFIX + ex.question, add_special_tokens=False)
        ids, spans = self._context(ex.context)
        # The question may take at most a third of the window, so the context always has room to move.
        q_cap = min(self.max_question_tokens, self.max_length // 3)
        if len(q) > q_cap:
            q, c.questions_truncated = q[:q_cap], c.questions_truncated + 1
        head = self.bos + q + self.context_prefix
        room = self.max_length - len(head) - len(self.cue)
        # Overlap is capped at half the room, so a window always advances by at least half its context.
        step = room - min(self.stride, room // 2)
        span, exact, trainable = label_span(ex, spans, c)
        out = []
        k = 0
        while True:
            piece = slice(k, min(k + room, len(ids)))
            win_ids = head + ids[piece] + self.cue
            null = len(win_ids) - 1
            inside = span is not None and piece.start <= span[0] and span[1] < piece.stop
            s = e = null
            if inside:
                s, e = len(head) + span[0] - k, len(head) + span[1] - k
            usable = trainable and not (inside and not exact)
            out.append(QAWindow(ex.qid, len(out), win_ids, len(head), spans[piece], s, e, inside, usable))
            c.windows_with_answer += inside
            c.windows_no_answer += not inside
            if piece.stop >= len(ids):
                break
            k += step
        c.questions += 1
        c.windows += len(out)
        c.multi_window_questions += len(out) > 1
        c.stride_capped += len(out) > 1 and self.stride > room // 2  # --study-windows: 64 of ~100 tokens
        c.max_windows = max(c.max_windows, len(out))
        return out


def pair_tokenizer(tokenizer):
    """A copy of `tokenizer` whose pair encoding is `[BOS] question EOS context EOS` (single texts unchanged).

    The EOS between the texts marks where the question ends (SmolLM2's own template adds nothing, which would run
    the two together); the final EOS is outside the context yet has attended to all of it: the window's
    no-answer position, as the answer cue is in the template format. Exported with the model, so that
    transformers' tokenizer builds exactly these ids."""
    eos, bos = tokenizer.eos_token, tokenizer.bos_token if tokenizer.add_bos else None
    if eos is None:
        raise FeatureError(f"{tokenizer.source}: the pair format separates question and context with the EOS "
                           "token and this tokenizer has none; set `eos_token` in tokenizer_config.json or use "
                           "qa_format='template'.")
    d = json.loads(tokenizer.backend.to_str())
    pp = d.get("post_processor")
    kept = [p for p in (pp["processors"] if pp and pp["type"] == "Sequence" else [pp] if pp else [])
            if p["type"] != "TemplateProcessing"]
    if any(p["type"] != "ByteLevel" for p in kept):
        raise FeatureError(f"{tokenizer.source}: post-processor {[p['type'] for p in kept]} is not a Llama-family "
                           "one (ByteLevel, TemplateProcessing); use qa_format='template'.")

    def special(token: str, type_id: int) -> dict:
        return {"SpecialToken": {"id": token, "type_id": type_id}}

    start = [special(bos, 0)] if bos else []
    template = {"type": "TemplateProcessing", "single": start + [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": start + [{"Sequence": {"id": "A", "type_id": 0}}, special(eos, 0),
                                 {"Sequence": {"id": "B", "type_id": 1}}, special(eos, 1)],
                "special_tokens": {t: {"id": t, "ids": [tokenizer.token_to_id(t)], "tokens": [t]}
                                   for t in dict.fromkeys(filter(None, (bos, eos)))}}
    d["post_processor"] = {"type": "Sequence", "processors": [*kept, template]}
    out = copy.copy(tokenizer)
    out.backend = _Backend.from_str(json.dumps(d))
    return out


class PairWindowBuilder:
    """QAWindows in the pair format: `pair_tokenizer`'s encoding of (question, context) cut as transformers'
    question-answering pipeline cuts it (the tokenizer's truncation "only_second", `stride` context tokens shared
    by consecutive windows), every token kept as the tokenizer made it.

    A context token's span is that of its whole word (the pipeline widens answers to words), never None; the
    labels are placed on the context's own tokens as in the template format; the no-answer position is the
    final EOS. A question too long to leave more than `stride` context tokens is an error, as in transformers.
    """

    def __init__(self, tokenizer, max_length: int = 384, stride: int = 128):
        self.tok = pair_tokenizer(tokenizer)
        self.max_length, self.stride = max_length, stride
        self._contexts: dict[str, tuple[list[int], list]] = {}
        self.counts = FeatureCounts()

    def _context(self, context: str):
        if context not in self._contexts:
            ids, offsets = self.tok.encode_with_offsets(context, add_special_tokens=False)
            self._contexts[context] = (ids, [_core(context, s, e) for s, e in offsets])
        return self._contexts[context]

    def encode(self, question: str, context: str) -> list:
        """The tokenizer's encodings (`tokenizers.Encoding`) of the pair's windows, in order."""
        backend = self.tok.backend
        room = self.max_length - len(backend.encode(question, add_special_tokens=False).ids) \
            - backend.num_special_tokens_to_add(True)
        if room <= self.stride:
            raise FeatureError(f"question {question[:60]!r} leaves {room} context tokens per window of max_length="
                               f"{self.max_length}, not more than stride={self.stride}; raise max_length or "
                               "lower stride.")
        backend.enable_truncation(self.max_length, stride=self.stride, strategy="only_second")
        try:
            first = backend.encode(question, context)
        finally:
            backend.no_truncation()
        return [first, *first.overflowing]

    def __call__(self, ex: SquadExample) -> list[QAWindow]:
        """The windows of one question, labelled with its first placeable gold answer."""
        c = self.counts
        ids, spans = self._context(ex.context)
        span, exact, trainable = label_span(ex, spans, c)
        out, k = [], 0
        for enc in self.encode(ex.question, ex.context):
            ctx = [i for i, sid in enumerate(enc.sequence_ids) if sid == 1]
            c0, n = ctx[0], len(ctx)
            if ctx != list(range(c0, c0 + n)) or enc.ids[c0:c0 + n] != ids[k:k + n]:
                raise FeatureError(f"question {ex.qid}: the pair encoding's context tokens are not the context's "
                                   "own tokens; use qa_format='template'.")
            words: dict[int, tuple[int, int]] = {}
            for i in ctx:
                a, b = enc.offsets[i]
                w = enc.word_ids[i]
                words[w] = (min(a, words[w][0]), max(b, words[w][1])) if w in words else (a, b)
            null = len(enc.ids) - 1
            inside = span is not None and k <= span[0] and span[1] < k + n
            s = e = null
            if inside:
                s, e = c0 + span[0] - k, c0 + span[1] - k
            offsets = [words[enc.word_ids[i]] for i in ctx]
            out.append(QAWindow(ex.qid, len(out), list(enc.ids), c0, offsets, s, e, inside,
                                trainable and not (inside and not exact)))
            c.windows_with_answer += inside
            c.windows_no_answer += not inside
            k += n - self.stride
        c.questions += 1
        c.windows += len(out)
        c.multi_window_questions += len(out) > 1
        c.max_windows = max(c.max_windows, len(out))
        return out


def window_builder(tokenizer, max_length: int = 384, stride: int = 128, qa_format: str = "template"):
    """The window builder of `qa_format` (one of QA_FORMATS)."""
    if qa_format not in QA_FORMATS:
        raise FeatureError(f"qa_format={qa_format!r}: use one of {', '.join(QA_FORMATS)}.")
    return (PairWindowBuilder if qa_format == "pair" else WindowBuilder)(tokenizer, max_length, stride)


def build_windows(tokenizer, examples: list[SquadExample], max_length: int = 384, stride: int = 128,
                  progress: bool = False, desc: str = "windows", qa_format: str = "template"
                  ) -> tuple[list[QAWindow], FeatureCounts]:
    """All windows of `examples` in `qa_format`, in question order, and what building them counted."""
    builder = window_builder(tokenizer, max_length, stride, qa_format)
    windows: list[QAWindow] = []
    for ex in tqdm(examples, desc=desc, unit="q", disable=not progress, dynamic_ncols=True):
        windows.extend(builder(ex))
    return windows, builder.counts


def training_examples(windows: list[QAWindow]) -> list[dict]:
    """The engine's train set: every window of every labellable question."""
    return [w.as_example() for w in windows if w.trainable]
