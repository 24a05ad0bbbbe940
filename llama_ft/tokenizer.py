"""Tokenizer: a `tokenizers.Tokenizer` with the model's special tokens, pad policy, QA windows and chat template."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from tokenizers import Tokenizer as _Backend

# Meta's Llama 3 pre-tokenisation pattern (tiktoken `pat_str`).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PAD_TOKEN = "<|finetune_right_pad_id|>"
_T = TypeVar("_T")

# Where the pad token came from: `Tokenizer.pad_token_source`, recorded as `pad_token_source` in
# tokenizer_config.json and as `pad_token_id_source` in an exported config.json.
PAD_FROM_FINETUNE_TOKEN = LLAMA3_PAD_TOKEN
PAD_FROM_MODEL = "pad_token"
PAD_FROM_EOS = "eos"
PAD_FROM_NOTHING = "none"


def choose_pad(finetune_pad: _T | None, model_pad: _T | None, eos: _T | None) -> tuple[_T | None, str]:
    """(pad token, where it came from): Llama 3's reserved `<|finetune_right_pad_id|>` when the vocabulary
    has it, else the model's own pad token, else its EOS; (None, "none") when it has none of them. The one
    choice the tokenizer, the loaded model and its export all make (as strings or as ids alike)."""
    for value, source in ((finetune_pad, PAD_FROM_FINETUNE_TOKEN), (model_pad, PAD_FROM_MODEL),
                          (eos, PAD_FROM_EOS)):
        if value is not None:
            return value, source
    return None, PAD_FROM_NOTHING


class TokenizerError(ValueError):
    """A tokenizer that cannot be built or used as asked; the message names the file, the field and the fix."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by every byte-level BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# ------------------------------------------------------------------ tokenizer.json building blocks
def byte_level_pre_tokenizer(kind: str) -> dict:
    """The tokenizer.json `pre_tokenizer` of a byte-level BPE family: 'gpt2', 'llama3' or 'smollm'."""
    if kind == "gpt2":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if kind == "llama3":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    if kind == "smollm":
        # SmolLM2 / StarCoder: every digit is its own pre-token, then GPT-2's regex.
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    raise TokenizerError(f"unknown byte-level pre-tokenizer family {kind!r}; use 'gpt2', 'llama3' or 'smollm'.")


def byte_level_post_processor(bos: tuple[str, int] | None = None, eos: tuple[str, int] | None = None) -> dict:
    """A post-processor that keeps raw offsets (no trimming) and adds BOS/EOS when given."""
    # trim_offsets=False: a token's span is exactly the text it encodes, leading space included.
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    if bos is None and eos is None:
        return byte_level

    def piece(seq: str, type_id: int) -> list[dict]:
        out = []
        if bos:
            out.append({"SpecialToken": {"id": bos[0], "type_id": type_id}})
        out.append({"Sequence": {"id": seq, "type_id": type_id}})
        if eos:
            out.append({"SpecialToken": {"id": eos[0], "type_id": type_id}})
        return out

    specials = {t[0]: {"id": t[0], "ids": [t[1]], "tokens": [t[0]]} for t in (bos, eos) if t is not None}
    template = {"type": "TemplateProcessing", "single": piece("A", 0), "pair": piece("A", 0) + piece("B", 1),
                "special_tokens": specials}
    return {"type": "Sequence", "processors": [byte_level, template]}


def byte_level_bpe_json(vocab: dict[str, int], merges: Sequence[tuple[str, str]], added: Iterable[dict],
                        pre_tokenizer: dict, post_processor: dict, ignore_merges: bool) -> dict:
    """A complete tokenizer.json dictionary for a byte-level BPE model."""
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [
            {"id": a["id"], "content": a["content"], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": a.get("normalized", False), "special": a.get("special", True)} for a in added],
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": [list(m) for m in merges]},
    }


# ------------------------------------------------------------------ the wrapper
@dataclass
class PairWindow:
    """One window of a (question, context) pair.

    `offsets[i]` is a character span into the question when `sequence_ids[i] == 0`, into the context when it
    is 1, and (0, 0) for special tokens (`sequence_ids[i] is None`).
    """
    ids: list[int]
    offsets: list[tuple[int, int]]
    sequence_ids: list[int | None]


def _token_text(value: Any) -> str | None:
    """The content of a tokenizer_config.json special-token entry (plain string or AddedToken object)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Byte-level BPE tokenizer of a Llama-family model (a thin wrapper over `tokenizers.Tokenizer`).

    Offsets are character spans into the input str. A token that holds only part of a multi-byte character
    (byte-level BPE can split an emoji into 2-3 tokens) gets the span of the whole character, so every
    fragment of that character has the same span and their bytes together decode to it.
    """

    def __init__(self, backend: _Backend, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None,
                 eos_token_ids: Sequence[int] = (), model_max_length: int | None = None,
                 source: str = "tokenizer") -> None:
        self.backend = backend
        self.backend.no_truncation()
        self.backend.no_padding()
        self.source = source
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if tok is not None and self.token_to_id(tok) is None:
                raise TokenizerError(f"{source}: `{name}` {tok!r} is not in the vocabulary; fix `{name}` in "
                                     "tokenizer_config.json or config.json.")
        self.bos_token, self.eos_token = bos_token, eos_token
        finetune_pad = LLAMA3_PAD_TOKEN if self.token_to_id(LLAMA3_PAD_TOKEN) is not None else None
        self.pad_token, self.pad_token_source = choose_pad(finetune_pad, pad_token, self.eos_token)
        if self.pad_token is None:
            raise TokenizerError(f"{source}: no pad token (no {LLAMA3_PAD_TOKEN}, no `pad_token`, no `eos_token`); "
                                 "set `eos_token` or `pad_token` in tokenizer_config.json.")
        ids = [i for i in eos_token_ids if isinstance(i, int)]
        if self.eos_token_id is not None and self.eos_token_id not in ids:
            ids.insert(0, self.eos_token_id)
        self.eos_token_ids: list[int] = ids

    # ---------------------------------------------------------------- special tokens
    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of `token_id` (byte-level characters), or None."""
        return self.backend.id_to_token(token_id)

    @property
    def bos_token_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None."""
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, or None."""
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int:
        """Id used for padding (see `pad_token_source` for why this one)."""
        return self.token_to_id(self.pad_token)

    @property
    def add_bos(self) -> bool:
        """Whether `encode(..., add_special_tokens=True)` starts with BOS (Llama 3 yes, SmolLM2 no)."""
        return self.bos_token_id is not None and self.backend.encode("").ids[:1] == [self.bos_token_id]

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_token_id(self) -> int:
        """The largest id this tokenizer can produce."""
        return max(self.backend.get_vocab(with_added_tokens=True).values())

    def check_fits(self, num_embeddings: int, where: str = "the model") -> None:
        """Raise TokenizerError when an id of this tokenizer has no row in an embedding of `num_embeddings`."""
        if self.max_token_id >= num_embeddings:
            raise TokenizerError(
                f"{self.source}: the tokenizer has ids up to {self.max_token_id} but {where} has an embedding of "
                f"{num_embeddings} rows (`vocab_size`); use the tokenizer that belongs to this model, or resize "
                "the embedding before fine-tuning.")

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (BOS added when the model expects it and add_special_tokens is True)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, unpadded."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their character spans in `text` ((0, 0) for added special tokens)."""
        e = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return e.ids, [tuple(o) for o in e.offsets]

    def encode_pair(self, question: str, context: str, max_length: int, stride: int = 128,
                    add_special_tokens: bool = True) -> list[PairWindow]:
        """Windows of at most `max_length` ids over (question, context): the question whole in each window,
        the context cut into pieces that overlap by `stride` tokens. Not thread-safe (it sets truncation on
        the shared backend for the call)."""
        n_question = len(self.backend.encode(question, add_special_tokens=False).ids)
        n_special = self.backend.num_special_tokens_to_add(True) if add_special_tokens else 0
        room = max_length - n_question - n_special
        if room <= stride:
            raise TokenizerError(
                f"{self.source}: max_length {max_length} leaves {room} context tokens per window after the "
                f"{n_question}-token question and {n_special} special tokens, not more than stride {stride}; "
                "raise max_length, lower stride or shorten the question.")
        self.backend.enable_truncation(max_length, stride=stride, strategy="only_second", direction="right")
        try:
            first = self.backend.encode(question, context, add_special_tokens=add_special_tokens)
        finally:
            self.backend.no_truncation()
        return [PairWindow(e.ids, [tuple(o) for o in e.offsets], list(e.sequence_ids))
                for e in [first, *first.overflowing]]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- chat
    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """The prompt string for `messages` ([{"role": ..., "content": ...}]) rendered with the model's
        Jinja chat template (tokenizer_config.json `chat_template`)."""
        if not self.chat_template:
            raise TokenizerError(f"{self.source}: no `chat_template` in tokenizer_config.json (base models have "
                                 "none); use the instruct model's tokenizer or set `tokenizer.chat_template`.")
        return _compiled_template(self.chat_template, str(self.source)).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)

    # ---------------------------------------------------------------- saving
    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / "tokenizer.json"))
        specials = {k: getattr(self, k) for k in ("bos_token", "eos_token", "pad_token")
                    if getattr(self, k) is not None}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "add_bos_token": self.add_bos, "pad_token_source": self.pad_token_source, **specials}
        if self.model_max_length:
            config["model_max_length"] = self.model_max_length
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
        return d

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, pad={self.pad_token!r} ({self.pad_token_source}))")


# ------------------------------------------------------------------ loading
def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e}); restore the file.") from None
    if not isinstance(doc, dict):
        raise TokenizerError(f"{path}: must hold one JSON object of fields, found a JSON {type(doc).__name__}; "
                             "restore the file.")
    return doc


@lru_cache(maxsize=8)
def _compiled_template(template: str, source: str):
    """The Jinja template `template` compiled once: compiling it took longer than rendering it, and a prompted
    row renders it once per question (BENCHMARKS.md, session 24). `source` names the tokenizer in errors."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TokenizerError("rendering a chat template needs jinja2: pip install jinja2") from None

    def raise_exception(message: str) -> None:
        raise TokenizerError(f"{source}: chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template)


def _chat_template(folder: Path, tok_config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = tok_config.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl if isinstance(tpl, str) else None


def _special(backend: _Backend, name: str, tok_config: dict, model_config: dict) -> str | None:
    """A special token's string from tokenizer_config.json, else from config.json's `<name>_id`."""
    tok = _token_text(tok_config.get(name))
    if tok is not None:
        return tok
    tid = model_config.get(f"{name}_id")
    if isinstance(tid, list):
        tid = tid[0] if tid else None
    return backend.id_to_token(tid) if isinstance(tid, int) else None


def _eos_ids(model_config: dict, gen_config: dict) -> list[int]:
    out: list[int] = []
    for cfg in (gen_config, model_config):
        e = cfg.get("eos_token_id")
        for i in (e if isinstance(e, list) else [e]):
            if isinstance(i, int) and i not in out:
                out.append(i)
    return out


def _wrap(backend: _Backend, config_dir: Path, source: str, tok_config: dict | None = None) -> Tokenizer:
    """The Tokenizer over `backend`, its special tokens from `tok_config` (default: config_dir's
    tokenizer_config.json) and config_dir's special_tokens_map / config / generation_config."""
    if tok_config is None:
        tok_config = _read_json(config_dir / "tokenizer_config.json")
    special_map = _read_json(config_dir / "special_tokens_map.json")
    model_config = _read_json(config_dir / "config.json")
    gen_config = _read_json(config_dir / "generation_config.json")
    merged = {**special_map, **{k: v for k, v in tok_config.items() if v is not None}}
    max_len = tok_config.get("model_max_length")
    return Tokenizer(
        backend,
        bos_token=_special(backend, "bos_token", merged, model_config),
        eos_token=_special(backend, "eos_token", merged, model_config),
        pad_token=_special(backend, "pad_token", merged, model_config),
        chat_template=_chat_template(config_dir, tok_config),
        eos_token_ids=_eos_ids(model_config, gen_config),
        model_max_length=max_len if isinstance(max_len, int) and max_len < 10**9 else None,
        source=source)


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    """The tokenizer of a tokenizer.json, with the special tokens of the json files next to it."""
    path = Path(path)
    try:
        backend = _Backend.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- `tokenizers` raises a bare Exception for bad files
        raise TokenizerError(f"{path}: cannot be read by `tokenizers` ({e}); re-download the file.") from None
    return _wrap(backend, path.parent, str(path))


def tokenizer_from_folder(folder: str | Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder (tokenizer.json + tokenizer_config.json/config.json)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise TokenizerError(f"{folder}: no tokenizer.json; put the model's tokenizer.json there, or pass the "
                             "folder of Meta's tokenizer.model with its tokenizer_config.json.")
    return tokenizer_from_file(folder / "tokenizer.json")


def read_tiktoken_ranks(model_path: str | Path) -> dict[bytes, int]:
    """The `token bytes -> rank` table of a tiktoken-format file (lines of `base64 rank`)."""
    path = Path(model_path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
            except ValueError:
                raise TokenizerError(
                    f"{path}: line {n} is not `<base64 token> <rank>`; this is not a tiktoken-format "
                    "tokenizer.model (a SentencePiece model needs its tokenizer.json instead).") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps or repeats; the file is "
                             "damaged; re-download Meta's tokenizer.model.")
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to tiktoken's rank-ordered merging: every split of every token into two
    vocabulary tokens, ordered by the merged token's rank (then by the parts' ranks)."""
    # tiktoken merges the adjacent pair whose concatenation has the lowest rank, whatever the pair's split;
    # listing all splits, ranked by the result, lets the Hugging Face BPE make the same choices.
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(m[3], m[4]) for m in merges]


def llama3_tokenizer_from_tiktoken(model_path: str | Path, tokenizer_config_path: str | Path) -> Tokenizer:
    """The Llama 3 tokenizer built from Meta's tiktoken `tokenizer.model` and a `tokenizer_config.json`
    that lists the special tokens (ids 128000-128255)."""
    model_path, config_path = Path(model_path), Path(tokenizer_config_path)
    for p in (model_path, config_path):
        if not p.is_file():
            raise TokenizerError(f"{p}: no such file; the Llama 3 tokenizer needs tokenizer.model and "
                                 "tokenizer_config.json.")
    ranks = read_tiktoken_ranks(model_path)
    tok_config = _read_json(config_path)
    decoder = tok_config.get("added_tokens_decoder")
    if not isinstance(decoder, dict) or not decoder:
        raise TokenizerError(f"{config_path}: no `added_tokens_decoder`; the Llama 3 special tokens "
                             f"(ids {len(ranks)}-{len(ranks) + 255}) must be listed there.")
    added = sorted(({"id": int(i), "content": v["content"], "special": v.get("special", True)}
                    for i, v in decoder.items()), key=lambda a: a["id"])
    clash = [a["id"] for a in added if a["id"] < len(ranks)]
    if clash:
        raise TokenizerError(f"{config_path}: `added_tokens_decoder` ids {clash[:5]} collide with the "
                             f"{len(ranks)} BPE ranks of {model_path}; they must start at {len(ranks)}.")
    table = bytes_to_unicode()
    chars = {tok: tok.decode("latin-1").translate(table) for tok in ranks}  # byte b -> character table[b]
    vocab = {chars[tok]: rank for tok, rank in ranks.items()}
    merges = [(chars[a], chars[b]) for a, b in merges_from_ranks(ranks)]
    bos = _token_text(tok_config.get("bos_token"))
    add_bos = tok_config.get("add_bos_token", True) and bos is not None
    by_content = {a["content"]: a["id"] for a in added}
    if bos is not None and bos not in by_content:
        raise TokenizerError(f"{config_path}: `bos_token` {bos!r} is not among the added tokens.")
    post = byte_level_post_processor(bos=(bos, by_content[bos]) if add_bos else None)
    spec = byte_level_bpe_json(vocab, merges, added, byte_level_pre_tokenizer("llama3"), post, ignore_merges=True)
    backend = _Backend.from_str(json.dumps(spec))
    return _wrap(backend, config_path.parent, str(model_path), tok_config)  # the file given, whatever its name
