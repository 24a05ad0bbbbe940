"""llama_ft/tasks/text/data.py: own data in every file type and from the Hub, label order, unlabelled rows, and
text pairs encoded as transformers encodes them."""
import json
import sys

import pytest

import llama_ft
from llama_ft.tasks.sst2 import data as sst2
from llama_ft.tasks.text import data as text

ROWS = [("a gem, truly", "pos"), ('said "meh"', "neutral"), ("dull\tand long", "neg"), ("fine", "pos")]
COLUMNS = text.Columns(text="review", label="stars")


def write(tmp_path, kind: str, rows=ROWS):
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        import csv
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "review", "stars"])
            w.writerows([i, t, y] for i, (t, y) in enumerate(rows))
    elif kind == "tsv":  # GLUE's TSVs cannot hold a tab inside a field
        path.write_text("review\tstars\n" + "".join(f"{t.replace(chr(9), ' ')}\t{y}\n" for t, y in rows))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"review": [t for t, _ in rows], "stars": [y for _, y in rows]}), path)
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_every_file_type_reads_the_same_rows(tmp_path, kind):
    rows = text.read_rows(write(tmp_path, kind), COLUMNS)
    expected = [(t.replace("\t", " ") if kind == "tsv" else t, y) for t, y in ROWS]
    assert [(r.text, r.label) for r in rows] == expected
    labels = text.label_set(rows, "data")
    assert labels.names == ("neg", "neutral", "pos")  # names: sorted
    assert [e.label for e in text.to_examples(rows, labels, "data")] == [2, 1, 0, 2]


def test_integer_labels_are_in_numeric_order_and_mixed_ones_are_names():
    def rows(*labels):
        return [text.RawRow("x", None, y, str(i), i + 1) for i, y in enumerate(labels)]
    numeric = text.label_set(rows("10", 2, " 1", 2.0), "f")
    assert numeric.values == (1, 2, 10) and numeric.names == ("1", "2", "10")  # 10 after 2, not before
    assert numeric.id_of("10", "f") == 2
    assert text.label_set(rows(0, 1), "f", names={0: "neg", 1: "pos"}).names == ("neg", "pos")
    assert text.label_set(rows(1), "f", names={0: "a", 1: "b", 2: "c"}).values == (0, 1, 2)  # ClassLabel ids kept
    mixed = text.label_set(rows("1", "b", "a"), "f")
    assert mixed.values == ("1", "a", "b") and mixed.id_of(1, "f") == 0
    with pytest.raises(text.TextDataError, match="needs at least two labels"):
        text.label_set(rows("x", "x"), "train.csv")


def test_a_label_unknown_to_training_names_the_file_and_row(tmp_path):
    labels = text.label_set(text.read_rows(write(tmp_path, "csv"), COLUMNS), "train")
    other = write(tmp_path, "jsonl", [("ok", "pos"), ("new", "great")])
    with pytest.raises(text.TextDataError, match=r"data.jsonl, row 2: label 'great' is not one of the training labels"):
        text.to_examples(text.read_rows(other, COLUMNS), labels, str(other))


def test_glue_test_tsv_is_read_for_prediction_and_refused_for_training(shared):
    glue_test = shared / "data/sst2/test.tsv"
    rows = text.to_examples(text.read_rows(glue_test, text.Columns(), labelled=False), None, "test")
    assert rows[0].index == "0" and rows[0].label is None and rows[0].text.startswith("uneasy mishmash")
    with pytest.raises(text.TextDataError) as e:
        text.read_rows(glue_test, text.Columns())
    assert "test.tsv: no `label` column" in str(e.value) and "predict_file=" in str(e.value)
    with pytest.raises(sst2.DataError, match="predict_file="):
        sst2.read_file(glue_test)


def test_missing_columns_and_empty_text_name_the_column(tmp_path):
    path = write(tmp_path, "csv")
    with pytest.raises(text.TextDataError, match=r"no column `sentence`.*text_column="):
        text.read_rows(path, text.Columns(label="stars"))
    with pytest.raises(text.TextDataError, match="no `label` column"):
        text.read_rows(path, text.Columns(text="review"))
    path.write_text("review,stars\n,pos\n")
    with pytest.raises(text.TextDataError, match="row 2: column `review` is empty"):
        text.read_rows(path, COLUMNS)


def test_sst2_train_tsv_read_as_own_data_gives_the_sst2_readers_rows(shared):
    own = text.read_rows(shared / "data/sst2/train.tsv", text.Columns())
    ref = sst2.read_file(shared / "data/sst2/train.tsv")
    assert [(r.text, int(r.label)) for r in own] == [(r.sentence, r.label) for r in ref]


def test_a_hub_dataset_keeps_its_class_label_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"s1": datasets.Value("string"), "s2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"])})
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"s1": ["a", "b"], "s2": ["c", "d"], "label": [1, 0]}, features),
            "test": datasets.Dataset.from_dict({"s1": ["e"], "s2": ["f"], "label": [-1]}, features)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    splits, names = text.load_text("nyu-mll/glue", text.Columns("s1", "s2"), "mrpc")
    assert calls == [("nyu-mll/glue", "mrpc")]
    assert names == {0: "not_equivalent", 1: "equivalent"}
    assert [(r.text, r.text_pair, r.label) for r in splits["train"]] == [("a", "c", 1), ("b", "d", 0)]
    assert splits["test"][0].label is None  # GLUE's test labels are -1: unlabelled


def test_without_datasets_a_hub_id_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(text.TextDataError, match="pip install datasets"):
        text.load_text("someone/reviews", text.Columns())


@pytest.fixture(scope="module")
def llama3_tokenizer(shared):
    return llama_ft.load_tokenizer(shared / "data/llama3/Llama-3.2-1B")


A = "the movie was long and the plot went nowhere at all"
B = "a short review"


@pytest.mark.parametrize("max_length", [100, 12, 9, 6, 3])
def test_pairs_encode_and_truncate_as_transformers_does(llama3_tokenizer, max_length):
    """Llama 3's template marks the pair (BOS A BOS B): the ids and the longest-first truncation are those of
    transformers' tokenizer(a, b, truncation='longest_first')."""
    from transformers import PreTrainedTokenizerFast
    ref = PreTrainedTokenizerFast(tokenizer_object=llama3_tokenizer.backend)
    expected = ref(A, B, truncation="longest_first", max_length=max_length)["input_ids"]
    assert text.pair_ids(llama3_tokenizer, A, B, max_length) == expected


def test_a_tokenizer_without_a_pair_template_joins_the_pair_with_eos(smollm2_dir):
    tok = llama_ft.load_tokenizer(smollm2_dir)
    a, b = tok.encode(A), tok.encode(B, add_special_tokens=False)
    assert text.pair_ids(tok, A, B, 100) == a + [tok.eos_token_id] + b
    cut = text.pair_ids(tok, A, B, 8)
    assert cut == a[:4] + [tok.eos_token_id] + b[:3] and len(cut) == 8
    one = text.encode([text.TextExample(A, 1), text.TextExample(A, None, B)], tok, 5)
    assert one == [{"input_ids": a[:5], "label": 1}, {"input_ids": text.pair_ids(tok, A, B, 5)}]
