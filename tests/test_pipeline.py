"""Text-in pipelines: what transformers' pipelines return, computed as the recipes compute it (SST-2 encoding,
the SQuAD recipe's windows and decoding), from an export or a run folder."""
import importlib
import json

import pytest
import torch

import llama_ft
from tiny import export_qa
from llama_ft.pipeline import PipelineError, QuestionAnsweringPipeline
from llama_ft.tasks.squad.data import SquadExample, load_squad
from llama_ft.tasks.squad.decode import decode_predictions
from llama_ft.tasks.squad.windows import PairWindowBuilder, build_windows, window_builder
from llama_ft.tasks.sst2 import data as sst2
from llama_ft.train import predict

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
           "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through "
           "generations of assimilation the descendants would gradually merge with the Carolingian-based "
           "cultures of West Francia. The identity of the Normans emerged in the first half of the 10th century; "
           "Caf\u00e9 d\u00e9j\u00e0 vu \U0001F600 is not part of it.")
QUESTIONS = ["In what country is Normandy located?", "Who was the Norse leader?",
             "When did the Normans give their name to Normandy?"]
TEXTS = ["a gem of a film", "contains no wit , only labored gags ", "it 's a charming and often affecting journey",
         "unflinchingly bleak and desperate"]




def export(base_dir, folder, task):
    """A tiny export with the real SmolLM2 tokenizer and a head big enough to make predictions differ (and,
    for QA, small enough that no single position takes all the probability)."""
    model = llama_ft.from_pretrained(base_dir, task=task, seed=0)
    with torch.no_grad():
        for head in model.head_modules():
            head.weight.normal_(0, 2.0 if task == "classification" else 0.5)
    if task == "classification":
        model.id2label = ["negative", "positive"]
    return llama_ft.save_pretrained(model, folder, dtype="float32", tokenizer=base_dir)


@pytest.fixture(scope="module")
def clf_dir(tiny_model_dir, tmp_path_factory):
    return export(tiny_model_dir, tmp_path_factory.mktemp("clf") / "model", "classification")


@pytest.fixture(scope="module")
def qa_dir(tiny_model_dir, tmp_path_factory):
    return export(tiny_model_dir, tmp_path_factory.mktemp("qa") / "model", "qa")


@pytest.fixture(scope="module")
def qa_pair_dir(tiny_model_dir, tmp_path_factory):
    return export_qa(tiny_model_dir, tmp_path_factory.mktemp("qa_pair") / "model", "pair")


@pytest.fixture(scope="module")
def dev_questions(shared):
    """Real SQuAD dev questions: the first 24, which share a few long contexts."""
    return load_squad(shared / "data/squad_v1.1/dev-v1.1-open.json.zip").examples[:24]


def one_by_one(folder, texts, max_length=None):
    """Softmax of each text alone (no padding), encoded as the SST-2 recipe encodes its sentences."""
    model = llama_ft.from_pretrained(folder)
    tok = llama_ft.load_tokenizer(folder)
    rows = sst2.encode([sst2.Example(t, 0) for t in texts], tok, max_length or 10**6)
    with torch.no_grad():
        return [model(torch.tensor([r["input_ids"]])).softmax(-1)[0] for r in rows]


def test_classification_matches_each_text_alone_with_label_names(clf_dir):
    pipe = llama_ft.pipeline("text-classification", model=clf_dir, batch_size=3)
    out = pipe(TEXTS)
    ref = one_by_one(clf_dir, TEXTS)
    assert [o["label"] for o in out] == [["negative", "positive"][int(p.argmax())] for p in ref]
    assert [o["score"] for o in out] == pytest.approx([float(p.max()) for p in ref], abs=1e-5)
    assert len({o["label"] for o in out}) == 2  # the head is strong enough for both labels to occur
    assert pipe(TEXTS[1]) == [out[1]]
    everything = pipe(TEXTS[1], top_k=None)
    assert [d["label"] for d in everything] == sorted(["negative", "positive"], key=lambda k: -float(
        ref[1][["negative", "positive"].index(k)]))
    assert sum(d["score"] for d in everything) == pytest.approx(1.0)


def test_a_call_is_one_inference_pass_whose_auto_compilation_weighs_all_of_it(clf_dir, qa_dir, monkeypatch):
    """Many inputs go to `predict` at once, so its `compile="auto"` weighs the whole call (a long one repays the
    warm-up where no slice of it would), and its outputs come back in input order."""
    pipeline_module = importlib.import_module("llama_ft.pipeline")  # llama_ft.pipeline, the attribute, is the function
    calls = []

    def counted(model, examples, *args, **kwargs):
        calls.append((len(examples), kwargs.get("compile", "auto")))
        return predict(model, examples, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "predict", counted)
    texts = [f"{t} {i}" for i in range(10) for t in TEXTS]
    out = llama_ft.pipeline("text-classification", model=clf_dir, batch_size=1)(texts)
    assert calls == [(40, "auto")]
    assert [o["score"] for o in out[:4]] == pytest.approx([float(p.max()) for p in one_by_one(clf_dir, texts[:4])],
                                                          abs=1e-5)
    calls.clear()
    llama_ft.pipeline("question-answering", model=qa_dir, batch_size=1, max_length=48)(
        question=QUESTIONS * 6, context=[CONTEXT] * 18)
    assert len(calls) == 1 and calls[0][0] > 18  # every window of every question in the one pass


def test_run_folder_applies_the_runs_sentence_length(clf_dir, tmp_path):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "model").symlink_to(clf_dir, target_is_directory=True)
    (run / "run_config.json").write_text(json.dumps({"max_length": 3}))
    out = llama_ft.pipeline("text-classification", model=run)(TEXTS)
    ref = one_by_one(clf_dir, TEXTS, max_length=3)
    assert [o["score"] for o in out] == pytest.approx([float(p.max()) for p in ref], abs=1e-5)
    full = one_by_one(clf_dir, TEXTS)
    assert any(abs(float(a.max()) - float(b.max())) > 1e-3 for a, b in zip(ref, full))


def recipe_answers(folder, questions, context, max_length, stride, **decoding):
    """The SQuAD recipe's path: build_windows, predict, decode_predictions."""
    model = llama_ft.from_pretrained(folder)
    tok = llama_ft.load_tokenizer(folder)
    examples = [SquadExample(str(i), "", context, q, [], []) for i, q in enumerate(questions)]
    windows, _ = build_windows(tok, examples, max_length, stride)
    logits = predict(model, [w.as_example() for w in windows], batch_size=4, amp="none")
    return decode_predictions(examples, windows, logits, **decoding), windows, logits


def test_qa_answers_as_the_squad_recipe_decodes_with_offsets_into_the_context(qa_dir):
    qa = llama_ft.pipeline("question-answering", model=qa_dir, max_length=48, stride=16, batch_size=2)
    out = qa(question=QUESTIONS, context=[CONTEXT] * len(QUESTIONS))
    preds, windows, logits = recipe_answers(qa_dir, QUESTIONS, CONTEXT, 48, 16)
    assert len(windows) > 3 * len(QUESTIONS)  # several windows per question
    for i, o in enumerate(out):
        best = preds[str(i)].best
        assert (o["answer"], o["start"], o["end"]) == (best.text, best.start_char, best.end_char)
        assert o["answer"] == CONTEXT[o["start"]:o["end"]] and o["answer"]
    assert qa(question=QUESTIONS[0], context=CONTEXT) == out[0]
    assert qa({"question": QUESTIONS[1], "context": CONTEXT}) == out[1]


def test_qa_score_is_the_spans_probability_in_its_window(qa_dir):
    """Brute force over the winning window: softmax over its verified context tokens and no-answer position,
    the best p(start) * p(end) over allowed spans."""
    qa = llama_ft.pipeline("question-answering", model=qa_dir, max_length=48, stride=16)
    out = qa(question=QUESTIONS, context=[CONTEXT] * len(QUESTIONS))
    preds, windows, logits = recipe_answers(qa_dir, QUESTIONS, CONTEXT, 48, 16)
    for i, o in enumerate(out):
        k = next(j for j, w in enumerate(windows) if w.qid == str(i) and w.window == preds[str(i)].best.window)
        w, (s, e) = windows[k], logits[k]
        keep = [w.context_start + j for j, sp in enumerate(w.offsets) if sp is not None] + [w.null_index]
        ps, pe = s[keep].softmax(0), e[keep].softmax(0)
        n = len(keep) - 1
        best = max(float(ps[a] * pe[b]) for a in range(n) for b in range(a, min(n, a + 30)))
        assert o["score"] == pytest.approx(best, rel=1e-5)
        # The no-answer position holds far more of the probability than the tolerance: leaving it out shows.
        assert 0 < o["score"] < 1 and float(ps[-1] + pe[-1]) > 1e-4


def test_qa_run_folder_uses_the_runs_window_geometry(qa_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model").symlink_to(qa_dir, target_is_directory=True)
    (run / "run_config.json").write_text(json.dumps({"max_length": 40, "stride": 8, "n_best": 5,
                                                     "max_answer_tokens": 3}))
    qa = llama_ft.pipeline("question-answering", model=run)
    assert isinstance(qa, QuestionAnsweringPipeline)
    assert (qa.max_length, qa.stride, qa.n_best, qa.max_answer_tokens) == (40, 8, 5, 3)
    out = qa(question=QUESTIONS, context=[CONTEXT] * 3)
    preds, _, _ = recipe_answers(qa_dir, QUESTIONS, CONTEXT, 40, 8, n_best=5, max_answer_tokens=3)
    assert [(o["start"], o["end"]) for o in out] == [(p.best.start_char, p.best.end_char) for p in preds.values()]


def test_errors_name_the_argument_and_the_fix(clf_dir, qa_dir, tmp_path):
    with pytest.raises(PipelineError, match=r"task='summarization': use one of text-classification"):
        llama_ft.pipeline("summarization", model=clf_dir)
    with pytest.raises(PipelineError, match=r"LlamaForQuestionAnswering, not LlamaForSequenceClassification.*"
                                            r"use task='question-answering'"):
        llama_ft.pipeline("text-classification", model=qa_dir)
    with pytest.raises(PipelineError, match=r"model=.*no such folder"):
        llama_ft.pipeline("text-classification", model=tmp_path / "nowhere")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint").mkdir()
    with pytest.raises(PipelineError, match=r"the run has not finished"):
        llama_ft.pipeline("text-classification", model=tmp_path / "run")
    with pytest.raises(PipelineError, match=r"stride=8: is a question-answering setting"):
        llama_ft.pipeline("text-classification", model=clf_dir, stride=8)
    with pytest.raises(PipelineError, match=r"amp='none': the weights are torch.bfloat16"):
        llama_ft.pipeline("text-classification", model=clf_dir, dtype="bf16", amp="none")
    with pytest.raises(PipelineError, match=r"inputs\[1\]='  ': give a non-empty string"):
        llama_ft.pipeline("text-classification", model=clf_dir)(["fine", "  "])
    with pytest.raises(PipelineError, match=r"context='3 contexts': give one per question \(2\)"):
        llama_ft.pipeline("question-answering", model=qa_dir)(question=QUESTIONS[:2], context=[CONTEXT] * 3)


def test_a_loaded_model_runs_with_its_tokenizer(clf_dir):
    model = llama_ft.from_pretrained(clf_dir)
    with pytest.raises(PipelineError, match="pass tokenizer="):
        llama_ft.pipeline("text-classification", model=model)
    out = llama_ft.pipeline("text-classification", model=model, tokenizer=clf_dir)(TEXTS)
    assert out == llama_ft.pipeline("text-classification", model=clf_dir)(TEXTS)


@pytest.mark.slow
def test_smollm2_agrees_with_transformers_text_classification_pipeline(shared, tmp_path):
    """The embedded SmolLM2-135M with a random head, exported: llama_ft's pipeline against transformers' on
    200 real SST-2 sentences."""
    transformers = pytest.importorskip("transformers")
    model = llama_ft.from_pretrained("smollm2-135m", task="classification", seed=0)
    model.id2label = ["negative", "positive"]
    folder = llama_ft.save_pretrained(model, tmp_path / "export", dtype="float32", tokenizer="smollm2-135m")
    # Sorted by length, so that transformers' batches (in input order) carry as little padding as ours.
    texts = sorted((r.sentence for r in sst2.read_tsv(shared / "data/sst2/train.tsv")[:200]), key=len)
    ours = llama_ft.pipeline("text-classification", model=folder, batch_size=32)(texts)
    ref = transformers.pipeline("text-classification", model=str(folder), dtype=torch.float32, device="cpu")
    theirs = ref(texts, batch_size=32)
    same = sum(a["label"] == b["label"] for a, b in zip(ours, theirs)) / len(texts)
    gap = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
    print(f"\nSST-2, 200 sentences: labels agree on {same:.1%}; largest score difference {gap:.2e}")
    assert same >= 0.99 and gap < 1e-3


# Pair format: what transformers' question-answering pipeline builds. Its preprocessing, as transformers 4.x
# calls the tokenizer (question first: the tokenizer pads on the right).
HF_QA_CALL = dict(truncation="only_second", return_token_type_ids=True, return_overflowing_tokens=True,
                  return_offsets_mapping=True, return_special_tokens_mask=True)


def test_pair_format_windows_are_what_transformers_builds_from_the_export(qa_pair_dir, dev_questions):
    """transformers' tokenizer, loaded from the export and called as its question-answering pipeline calls it,
    gives the same windows (ids), the same answerable positions (its p_mask: context tokens only), the same
    word-aligned character spans, and transformers' model the same span logits."""
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(qa_pair_dir))
    hf_model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(qa_pair_dir), dtype=torch.float32)
    assert hf_tok.padding_side == "right" and hf_tok.cls_token_id is None
    ours = llama_ft.pipeline("question-answering", model=qa_pair_dir, max_length=96, stride=32)
    builder = window_builder(ours.tokenizer, 96, 32, ours.qa_format)
    model = llama_ft.from_pretrained(qa_pair_dir)
    n_windows = 0
    for ex in dev_questions:
        windows = builder(ex)
        enc = hf_tok(ex.question, ex.context, max_length=96, stride=32, **HF_QA_CALL)
        assert [w.input_ids for w in windows] == enc["input_ids"]
        for k, w in enumerate(windows):
            e = enc[k]
            context = [i for i, sid in enumerate(e.sequence_ids) if sid == 1]
            assert context == list(range(w.context_start, w.context_end))
            assert [(e.word_to_chars(e.token_to_word(i), sequence_index=1)) for i in context] == w.offsets
        n_windows += len(windows)
        if ex is dev_questions[0]:
            ids = torch.tensor(enc["input_ids"][:1])
            with torch.no_grad():
                theirs = hf_model(input_ids=ids)
                start, end = model(ids)
            torch.testing.assert_close(start, theirs.start_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(end, theirs.end_logits, atol=1e-4, rtol=1e-4)
    assert n_windows > 2 * len(dev_questions)  # contexts of several windows
    assert ours.qa_format == "pair" and isinstance(builder, PairWindowBuilder)


def test_pair_format_answers_as_transformers_question_answering_pipeline(qa_pair_dir, dev_questions):
    """Answer strings, character spans and scores of transformers' own question-answering pipeline."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.pipelines import question_answering  # noqa: F401
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} has no question-answering pipeline (removed in "
                    "version 5); the windows and logits are checked against its tokenizer and model above")
    questions, contexts = [ex.question for ex in dev_questions], [ex.context for ex in dev_questions]
    ours = llama_ft.pipeline("question-answering", model=qa_pair_dir, max_length=96, stride=32,
                             max_answer_tokens=30)(question=questions, context=contexts)
    ref = transformers.pipeline("question-answering", model=str(qa_pair_dir), dtype=torch.float32, device="cpu")
    for q, c, a in zip(questions, contexts, ours):
        b = ref(question=q, context=c, max_seq_len=96, doc_stride=32, max_answer_len=30)
        assert (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"])
        assert a["score"] == pytest.approx(b["score"], rel=1e-3)


def test_template_format_is_not_what_transformers_builds(qa_dir, dev_questions):
    """The template export's windows are llama_ft's prompt, which transformers' pipeline never builds."""
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(qa_dir))
    qa = llama_ft.pipeline("question-answering", model=qa_dir, max_length=96, stride=32)
    assert qa.qa_format == "template"
    ex = dev_questions[0]
    windows, _ = build_windows(qa.tokenizer, [ex], 96, 32)
    assert [w.input_ids for w in windows] != hf_tok(ex.question, ex.context, max_length=96, stride=32,
                                                    **HF_QA_CALL)["input_ids"]
