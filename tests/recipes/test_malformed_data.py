"""Property: whatever bytes an SST-2 TSV/JSONL or a SQuAD JSON file holds, the recipe's loading path ends in its
clean one-line exit naming the file (or reaches the model, when the file is usable), never a raw exception from
deep inside, and it leaves no output folder behind."""
import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llama_ft

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ReachedTheModel(BaseException):
    """Raised in place of loading the tokenizer: the data was usable, loading is over."""


def run_recipe(recipe, filename: str, content: bytes, *flags: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single-class file warns; the warning is not the error line
        path, out = Path(tmp) / filename, Path(tmp) / "run"
        path.write_bytes(content)

        def reached(*_, **__):
            raise ReachedTheModel

        mp.setattr(llama_ft, "load_tokenizer", reached)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = recipe.main(["--data", str(path), "--output-dir", str(out), "--no-zero-shot", *flags])
            except ReachedTheModel:
                rc = None
        err = stderr.getvalue()
        if rc is not None:
            assert rc == 2, err
            assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
            assert filename in err, err
        assert not out.exists(), "a failed or interrupted load left an output folder"


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
labels = st.sampled_from(["0", "1", "2", "-1", "x", "", " 1", "1.0", "True", "01"])
tsv_line = st.one_of(st.tuples(text, labels).map(lambda t: f"{t[0]}\t{t[1]}"), text)
tsv_header = st.sampled_from(["sentence\tlabel", "label\tsentence", "sentence", "text\tlabel", "sentence\tscore",
                              "sentence\tlabel\tidx", ""])
tsv_files = st.builds(lambda h, lines, bom: (b"\xef\xbb\xbf" if bom else b"") + "\n".join([h, *lines]).encode(),
                      tsv_header, st.lists(tsv_line, max_size=12), st.booleans())
json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | text,
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3),
                           max_leaves=8)
jsonl_row = st.one_of(
    st.fixed_dictionaries({"sentence": st.one_of(text, json_values), "label": st.one_of(labels, json_values)}),
    json_values)
jsonl_files = st.lists(jsonl_row.map(json.dumps) | text, max_size=12).map(lambda ls: "\n".join(ls).encode())
raw_bytes = st.binary(max_size=64)

odd = st.sampled_from([None, 0, 3, -1, 2.5, True, "", "x", [], [1], {}, {"a": 1}])


def mostly(strategy):
    """`strategy` three times in four, a value of another type otherwise: files that are nearly SQuAD."""
    return st.one_of(strategy, strategy, strategy, odd)


context = st.sampled_from(["Paris is in France.", "", "  ", "A B C"])
answer = st.fixed_dictionaries({"text": mostly(st.sampled_from(["France", "Paris", "B", " B ", ""]) | text),
                                "answer_start": mostly(st.integers(-2, 30))})
qa = st.fixed_dictionaries({"id": mostly(st.sampled_from(["a", "b", "a"])), "question": mostly(text),
                            "answers": mostly(st.lists(answer, max_size=2))},
                           optional={"is_impossible": json_values})
paragraph = st.fixed_dictionaries({"context": mostly(context), "qas": mostly(st.lists(qa, min_size=1, max_size=4))})
article = st.fixed_dictionaries({"title": text, "paragraphs": mostly(st.lists(paragraph, min_size=1, max_size=3))})
squad_doc = st.fixed_dictionaries({"data": mostly(st.lists(article, min_size=1, max_size=2))},
                                  optional={"version": st.sampled_from(["1.1", "v2.0", "2.0", 2])})
squad_files = st.one_of(squad_doc.map(lambda d: json.dumps(d).encode()),
                        squad_doc.map(lambda d: json.dumps(d).encode()),
                        squad_doc.map(lambda d: json.dumps(d).encode()[:-3]),
                        squad_doc.map(lambda d: json.dumps(d).encode().replace(b"France", b"Fr\xe9nce")),
                        json_values.map(lambda d: json.dumps(d).encode()), raw_bytes)


@SETTINGS
@given(content=st.one_of(tsv_files, raw_bytes))
def test_sst2_tsv(sst2_recipe, content):
    run_recipe(sst2_recipe, "sst2.tsv", content)


@SETTINGS
@given(content=st.one_of(jsonl_files, raw_bytes))
def test_sst2_jsonl(sst2_recipe, content):
    run_recipe(sst2_recipe, "sst2.jsonl", content, "--max-train", "2")


@settings(SETTINGS, max_examples=100)
@given(content=squad_files)
def test_squad_json(squad_recipe, content):
    run_recipe(squad_recipe, "squad.json", content, "--n", "2", "--test-size", "1")
