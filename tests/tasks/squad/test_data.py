"""llama_ft/data/squad.py: loading (JSON, zip, Hub parquet), answer repair and counting, the study's split."""
import json
import sys
import types
import zipfile

import pytest

from llama_ft.tasks.squad import data as squad
from llama_ft.tasks.squad.data import SquadDataError, load_squad, place_answer, study_split


def write_squad(path, paragraphs, version="1.1", zipped=False):
    doc = {"version": version, "data": [{"title": "T", "paragraphs": paragraphs}]}
    if zipped:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(path.stem, json.dumps(doc))
    else:
        path.write_text(json.dumps(doc))
    return path


def qa(qid, question, answers, **kw):
    return {"id": qid, "question": question,
            "answers": [{"text": t, "answer_start": s} for t, s in answers], **kw}


@pytest.fixture(scope="module")
def train(shared):
    return load_squad(shared / "data/squad_v1.1/train-v1.1-rebuilt.json.zip")


def test_real_train_file_loads_whole_and_clean(train):
    assert train.version == "1.1" and len(train.examples) == 87_599
    c = train.counts
    assert (c.questions, c.answers, c.answers_skipped, c.skipped_empty_context) == (87_599, 87_599, 0, 0)
    first = train.examples[0]
    assert first.answers[0] == squad.Answer("Saint Bernadette Soubirous", 515)
    assert all(ex.context[a.start:a.end] == a.text for ex in train.examples[:5000] for a in ex.answers)


def test_study_split_sizes_disjoint_and_from_the_first_questions(train):
    tr, te = study_split(train.examples, 4000)
    assert (len(tr), len(te)) == (4000, 1000)
    ids_tr, ids_te = {e.qid for e in tr}, {e.qid for e in te}
    assert not ids_tr & ids_te
    assert ids_tr | ids_te == {e.qid for e in train.examples[:5000]}
    again = study_split(train.examples, 4000)
    assert [e.qid for e in again[1]] == [e.qid for e in te]
    # 24,000 draws from a different pool (the first 25,000), as the study did.
    tr24, te24 = study_split(train.examples, 24_000)
    assert (len(tr24), len(te24)) == (24_000, 1000)
    with pytest.raises(SquadDataError, match="lower --n"):
        study_split(train.examples[:100], 4000)


def test_dev_file_has_several_gold_answers(shared):
    dev = load_squad(shared / "data/squad_v1.1/dev-v1.1-open.json.zip")
    assert len(dev.examples) == 8839 and dev.counts.answers == 29_031
    assert dev.examples[0].gold_texts == ["Denver Broncos"] * 3
    assert dev.examples[0].answers == [squad.Answer("Denver Broncos", 177)]  # duplicates collapse


def test_place_answer_repairs_only_when_unambiguous():
    ctx = "Paris is big. Lyon is small. Paris again."
    assert place_answer(ctx, "Lyon", 14) == (14, "ok")
    assert place_answer(ctx, "Lyon", 3) == (14, "repaired")           # the only occurrence
    assert place_answer(ctx, "Paris", 30) == (29, "repaired")         # the only one within MAX_SHIFT
    assert place_answer(ctx, "Paris", 14) == (None, "skipped")        # two occurrences, neither singled out
    assert place_answer(ctx, "Paris", None) == (None, "skipped")
    assert place_answer(ctx, "Berlin", 0) == (None, "skipped")


def test_bad_answers_are_repaired_skipped_and_counted(tmp_path):
    ctx = "Alpha beta gamma. Alpha delta."
    path = write_squad(tmp_path / "bad.json", [
        {"context": ctx, "qas": [
            qa("ok", "q1?", [("beta", 6)]),
            qa("moved", "q2?", [("gamma", 0)]),
            qa("ambiguous", "q3?", [("Alpha", 5)]),
            qa("absent", "q4?", [("omega", 0)]),
            qa("spaces", "q5?", [(" delta ", 23)]),
        ]},
        {"context": "   ", "qas": [qa("empty", "q6?", [("x", 0)])]},
        {"context": ctx, "qas": [qa("noq", "  ", [("beta", 6)])]},
    ])
    data = load_squad(path)
    c = data.counts
    assert [e.qid for e in data.examples] == ["ok", "moved", "ambiguous", "absent", "spaces"]
    assert (c.answers_repaired, c.answers_skipped, c.answers_stripped) == (1, 2, 1)
    assert (c.skipped_empty_context, c.skipped_empty_question, c.questions_without_span) == (1, 1, 2)
    by = {e.qid: e for e in data.examples}
    assert by["moved"].answers == [squad.Answer("gamma", 11)]
    assert by["spaces"].answers == [squad.Answer("delta", 24)]
    # A skipped answer is no training label but still a gold text for scoring.
    assert by["absent"].answers == [] and by["absent"].gold_texts == ["omega"] and not by["absent"].trainable
    assert "1 repaired, 2 skipped" in c.summary()


def test_v2_with_and_without_is_impossible(tmp_path):
    ctx = "Alpha beta gamma."
    marked = write_squad(tmp_path / "v2.json", [{"context": ctx, "qas": [
        qa("a", "q?", [("beta", 6)], is_impossible=False), qa("b", "q?", [], is_impossible=True)]}], "v2.0")
    data = load_squad(marked)
    assert data.version == "2.0" and data.counts.impossible == 1 and data.counts.impossible_inferred == 0
    assert data.examples[1].is_impossible and data.examples[1].trainable and data.examples[1].gold_texts == []
    bare = write_squad(tmp_path / "v2bare.json", [{"context": ctx, "qas": [
        qa("a", "q?", [("beta", 6)]), qa("b", "q?", [])]}], "v2.0")
    data = load_squad(bare)
    assert [e.is_impossible for e in data.examples] == [False, True]
    assert data.counts.impossible_inferred == 1
    assert squad.references(data.examples) == {"a": ["beta"], "b": []}


def test_zipped_and_plain_json_load_the_same(tmp_path):
    paras = [{"context": "Alpha beta.", "qas": [qa("a", "q?", [("beta", 6)])]}]
    plain = load_squad(write_squad(tmp_path / "x.json", paras))
    zipped = load_squad(write_squad(tmp_path / "x.json.zip", paras, zipped=True))
    assert plain.examples == zipped.examples


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [ {"title": ')
    with pytest.raises(SquadDataError, match=r"broken\.json: malformed JSON at line 1"):
        load_squad(bad)
    notsquad = tmp_path / "other.json"
    notsquad.write_text('{"rows": []}')
    with pytest.raises(SquadDataError, match=r"other\.json: not the official SQuAD layout"):
        load_squad(notsquad)
    with pytest.raises(SquadDataError, match="no such file"):
        load_squad(tmp_path / "missing.json")
    twomembers = tmp_path / "two.zip"
    with zipfile.ZipFile(twomembers, "w") as z:
        z.writestr("a.json", "{}")
        z.writestr("b.json", "{}")
    with pytest.raises(SquadDataError, match="exactly one .json member"):
        load_squad(twomembers)


def test_hub_needs_pyarrow_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SquadDataError, match="pip install pyarrow"):
        load_squad(None)


def test_hub_parquet_rows_map_to_examples(monkeypatch, tmp_path):
    rows = [{"id": "x1", "title": "T", "context": "Alpha beta.", "question": "q?",
             "answers": {"text": ["beta"], "answer_start": [6]}},
            {"id": "x2", "title": "T", "context": "Alpha beta.", "question": "q?",
             "answers": {"text": [], "answer_start": []}}]
    table = types.SimpleNamespace(to_pylist=lambda: rows)
    parquet = types.ModuleType("pyarrow.parquet")
    parquet.read_table = lambda path: table if path.name.startswith("train-") else pytest.fail(path)
    arrow = types.ModuleType("pyarrow")
    arrow.parquet = parquet
    monkeypatch.setitem(sys.modules, "pyarrow", arrow)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", parquet)
    import huggingface_hub
    asked = []

    def snapshot_download(repo, repo_type, revision=None, token=None, allow_patterns=()):
        asked.append((repo, repo_type, tuple(allow_patterns)))
        for name in ("train", "validation"):
            (tmp_path / "squad_v2").mkdir(exist_ok=True)
            (tmp_path / f"squad_v2/{name}-00000-of-00001.parquet").write_text("")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    data = load_squad(None, split="train", version="2.0")
    assert asked == [("rajpurkar/squad_v2", "dataset", ("*train-*.parquet",))]
    assert data.version == "2.0" and [e.is_impossible for e in data.examples] == [False, True]
    assert data.counts.impossible_inferred == 1 and data.examples[0].answers == [squad.Answer("beta", 6)]


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [{"id": "a", "question": "Where?",
                                                    "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert [ex.answers[0].text for ex in load_squad(p).examples] == ["France"]


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    p = tmp_path / "latin1.json"
    p.write_bytes(b'{"data": [\n{"title": "caf\xe9"}]}')
    with pytest.raises(SquadDataError, match=r"latin1.json, line 2: byte 0xe9 is not UTF-8"):
        load_squad(p)


def test_training_questions_without_any_usable_span_say_so(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [{"id": str(i), "question": "Where?",
                                                    "answers": [{"text": "Spain", "answer_start": 0}]}
                                                   for i in range(3)]}]}]}
    p = tmp_path / "nospan.json"
    p.write_text(json.dumps(doc))
    data = load_squad(p)
    with pytest.raises(SquadDataError, match="nospan.json: none of the 3 training questions has a usable answer"):
        squad.check_trainable(data.examples, data.source)


def test_answers_that_are_not_a_list_are_no_answers(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [{"id": "a", "question": "Where?", "answers": 5}]}]}]}
    p = tmp_path / "odd.json"
    p.write_text(json.dumps(doc))
    assert load_squad(p).examples[0].answers == []
