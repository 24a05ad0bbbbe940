"""SST-2 data: the study's stratified 80:20 split on the real train.tsv, file formats, and bad input."""
import json

import pytest

from llama_ft.tasks.sst2 import data as sst2


def test_study_split_is_80_20_stratified(shared):
    rows = sst2.load_sst2(shared / "data/sst2")["train"]
    assert len(rows) == 67_349
    assert rows[0].sentence == "hide new secretions from the parental units "  # verbatim, as the study read it
    train, test = sst2.stratified_split(rows, 0.2, seed=1)
    assert (len(train), len(test)) == (53_879, 13_470)  # ceil(0.2 n) test rows, as the study's 13,645 of 68,221
    pos = sum(r.label for r in rows)
    assert sum(r.label for r in test) == round(pos * len(test) / len(rows))
    assert sorted(map(id, train + test)) == sorted(map(id, rows))  # a partition
    again, _ = sst2.stratified_split(rows, 0.2, seed=1)
    assert again == train
    other, _ = sst2.stratified_split(rows, 0.2, seed=2)
    assert other != train


@pytest.mark.parametrize("n_test", [None, 2000, 7])
def test_split_is_the_rows_datasets_train_test_split_gives(shared, n_test):
    """The study split its pool with datasets' train_test_split(stratify_by_column="label", seed=1): the same
    rows in the same order, for the fraction (the study's split) and for a count (--max-train/--max-test)."""
    import datasets
    rows = sst2.load_sst2(shared / "data/sst2")["train"]
    ds = datasets.Dataset.from_dict({"idx": list(range(len(rows))), "label": [r.label for r in rows]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=sst2.LABELS))
    ref = ds.train_test_split(test_size=0.2 if n_test is None else n_test, stratify_by_column="label", seed=1)
    train, test = sst2.stratified_split(rows, 0.2, seed=1, n_test=n_test)
    where = {id(r): i for i, r in enumerate(rows)}
    assert [where[id(r)] for r in test] == ref["test"]["idx"]
    assert [where[id(r)] for r in train] == ref["train"]["idx"]


def test_study_counts_for_the_glue_pool():
    """The study pooled GLUE train + validation (68,221 rows) into 54,576 / 13,645."""
    rows = [sst2.Example(f"s{i}", int(i < 37_569 + 444)) for i in range(68_221)]
    train, test = sst2.stratified_split(rows, 0.2, seed=1)
    assert (len(train), len(test)) == (54_576, 13_645)


def test_subsample_is_stratified_and_exact(shared):
    rows = sst2.load_sst2(shared / "data/sst2/train.tsv")["train"]
    sub = sst2.subsample(rows, 2000)
    assert len(sub) == 2000
    assert abs(sum(r.label for r in sub) / 2000 - sum(r.label for r in rows) / len(rows)) < 0.001


def test_jsonl_and_tsv_agree(tmp_path, shared):
    rows = sst2.read_tsv(shared / "data/sst2/train.tsv")[:50]
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(json.dumps({"sentence": r.sentence, "label": r.label}) for r in rows))
    assert sst2.read_file(p) == rows
    tsv = tmp_path / "x.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{r.sentence}\t{r.label}\n" for r in rows) + "\n")
    assert sst2.read_file(tsv) == rows  # a trailing blank line is no row


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\nfine film\t2\n", "outside"),
    ("sentence\tlabel\n \t1\n", "empty sentence"),
    ("text,label\ngood,1\n", "header"),
    ("sentence\tscore\ngood\t1\n", "no `label` column"),
    ("sentence\tlabel\ngood\t1\textra\n", "fields"),
    ("sentence\tlabel\n", "no labelled rows"),
])
def test_bad_files_name_file_and_row(tmp_path, content, message):
    p = tmp_path / "bad.tsv"
    p.write_text(content)
    with pytest.raises(sst2.DataError, match=message) as e:
        sst2.read_file(p)
    assert "bad.tsv" in str(e.value)


def test_unlabelled_glue_test_file_is_refused(shared):
    with pytest.raises(sst2.DataError, match="unlabelled"):
        sst2.read_file(shared / "data/sst2/test.tsv")


@pytest.mark.parametrize("name,content", [
    ("bom.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\n"),
    ("bom.jsonl", '{"sentence": "good film", "label": 1}\n{"sentence": "bad film", "label": 0}\n'),
])
def test_a_utf8_byte_order_mark_is_read_not_refused(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + content.encode())
    assert sst2.read_file(p) == [sst2.Example("good film", 1), sst2.Example("bad film", 0)]


@pytest.mark.parametrize("name,content,line", [
    ("latin1.tsv", b"sentence\tlabel\ngood film\t1\nna\xefve film\t0\n", 3),
    ("latin1.jsonl", b'{"sentence": "good", "label": 1}\n{"sentence": "na\xefve", "label": 0}\n', 2),
])
def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path, name, content, line):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(sst2.DataError, match=rf"{name}, line {line}: byte 0xef .* is not UTF-8"):
        sst2.read_file(p)


def test_a_training_set_with_one_class_warns():
    with pytest.warns(UserWarning, match="every training row is labelled positive"):
        sst2.check_classes([sst2.Example("good", 1), sst2.Example("fine", 1)], "train.tsv")
