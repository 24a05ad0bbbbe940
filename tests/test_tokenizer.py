"""Tokenizers: Llama 3 from Meta's tiktoken file (tiktoken is the oracle), SmolLM2 from the embedded GGUF,
character offsets, QA windows, special tokens, pad policy, chat template, save/load.

Data: ../shared/data (llama3/tokenizer.model + Llama-3.2-1B configs, SST-2 train.tsv, SQuAD dev zip).
"""
import copy
import json
import zipfile

import pytest
import tiktoken
import tiktoken.load

from llama_ft.hf.loading import load_tokenizer
from llama_ft.tokenizer import (
    PairWindow,
    TokenizerError,
    bytes_to_unicode,
    llama3_tokenizer_from_tiktoken,
)

# Meta's pattern, written out here independently of llama_ft.tokenizer.LLAMA3_PATTERN.
META_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
EDGE = [
    "", " ", "   ", "\n", "\n\n\n", " \n \n", "\t\tx", "a\r\nb\r\n\r\n", "trailing   ", "  leading",
    "1", "12", "123", "1234", "12345678901234567890", "3.14159 and 1,000,000 and -42", "x1y22z333",
    "emoji 😀👍🏽🇺🇸 ❤️ 👩‍👩‍👧", "日本語のテキスト", "한국어 텍스트", "Россия", "مرحبا بالعالم", "Ångström naïve café",
    "I'm sure they'll say it's fine, don't you think? WE'VE SEEN IT'S", "def f(x):\n    return x ** 2  # c",
    "zero\u200bwidth and non\u00a0breaking", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", "combining e\u0301 and a\u0308", "\u2028line\u2029para",
    "a" * 300, " ".join(["word"] * 200), "!!!???...---((()))", "http://example.com/a?b=c&d=e#f",
]


@pytest.fixture(scope="module")
def data(shared):
    d = shared / "data"
    for rel in ("llama3/tokenizer.model", "llama3/Llama-3.2-1B/tokenizer_config.json", "sst2/train.tsv",
                "squad_v1.1/dev-v1.1-open.json.zip"):
        if not (d / rel).is_file():
            pytest.fail(f"{d / rel} is missing: the tokenizer tests need the shared data (see PROVENANCE.md).")
    return d


@pytest.fixture(scope="module")
def texts(data) -> list[str]:
    """SST-2 sentences, SQuAD contexts (all with non-ASCII characters, some without) and questions, edge cases."""
    lines = (data / "sst2/train.tsv").read_text(encoding="utf-8").splitlines()[1:2001]
    sst2 = [line.rsplit("\t", 1)[0] for line in lines]
    with zipfile.ZipFile(data / "squad_v1.1/dev-v1.1-open.json.zip") as z:
        squad = json.loads(z.read(z.namelist()[0]))
    paragraphs = [p for a in squad["data"] for p in a["paragraphs"]]
    unicode_ctx = [p["context"] for p in paragraphs if any(ord(c) > 127 for c in p["context"])]
    ascii_ctx = [p["context"] for p in paragraphs if p["context"].isascii()][:200]
    questions = [q["question"] for p in paragraphs[:100] for q in p["qas"]][:300]
    assert len(unicode_ctx) > 500
    return sst2 + unicode_ctx + ascii_ctx + questions + EDGE


@pytest.fixture(scope="module")
def llama3(data):
    return llama3_tokenizer_from_tiktoken(data / "llama3/tokenizer.model",
                                          data / "llama3/Llama-3.2-1B/tokenizer_config.json")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def tiktoken_llama3(data):
    ranks = tiktoken.load.load_tiktoken_bpe(str(data / "llama3/tokenizer.model"))
    added = json.loads((data / "llama3/Llama-3.2-1B/tokenizer_config.json").read_text())["added_tokens_decoder"]
    return tiktoken.Encoding("llama3", pat_str=META_PATTERN, mergeable_ranks=ranks,
                             special_tokens={v["content"]: int(k) for k, v in added.items()})


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(tok, token_id: int) -> bytes:
    return bytes(_UNICODE_TO_BYTE[c] for c in tok.id_to_token(token_id))


def check_offsets(tok, text: str) -> None:
    """Every token's span is the smallest run of characters holding its bytes; whole-character tokens
    decode to exactly text[start:end]."""
    ids, offsets = tok.encode_with_offsets(text, add_special_tokens=False)
    data = text.encode("utf-8")
    char_of_byte = [i for i, ch in enumerate(text) for _ in ch.encode("utf-8")]
    pos = 0
    for token_id, (start, end) in zip(ids, offsets):
        raw = token_bytes(tok, token_id)
        assert data[pos:pos + len(raw)] == raw, (text, token_id)
        assert (start, end) == (char_of_byte[pos], char_of_byte[pos + len(raw) - 1] + 1), (text, token_id)
        whole_chars = (pos == 0 or char_of_byte[pos - 1] != char_of_byte[pos]) and \
            (pos + len(raw) == len(data) or char_of_byte[pos + len(raw)] != char_of_byte[pos + len(raw) - 1])
        if whole_chars:
            assert raw.decode("utf-8") == text[start:end], (text, token_id)
        pos += len(raw)
    assert pos == len(data)


# ------------------------------------------------------------------ Llama 3 from tiktoken
def test_llama3_ids_match_tiktoken(llama3, tiktoken_llama3, texts):
    ours = llama3.encode_batch(texts, add_special_tokens=False)
    for text, got in zip(texts, ours):
        assert got == tiktoken_llama3.encode(text, disallowed_special=()), text
    assert len(texts) > 3000


def test_llama3_special_tokens(llama3, tiktoken_llama3, data):
    added = json.loads((data / "llama3/Llama-3.2-1B/tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert sorted(int(i) for i in added) == list(range(128000, 128256))
    for i, entry in added.items():
        assert llama3.token_to_id(entry["content"]) == int(i)
    assert llama3.vocab_size == 128256 and llama3.max_token_id == 128255
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert llama3.encode(text, add_special_tokens=False) == tiktoken_llama3.encode(text, allowed_special="all")
    assert (llama3.bos_token_id, llama3.eos_token_id) == (128000, 128001)
    assert llama3.add_bos and llama3.encode("Hello") == [128000] + tiktoken_llama3.encode("Hello")
    assert llama3.encode("") == [128000]
    assert llama3.decode(llama3.encode("Hello world"), skip_special_tokens=True) == "Hello world"


def test_llama3_special_tokens_come_from_the_config_file_given_whatever_its_name(tmp_path, data):
    renamed = tmp_path / "llama32_tokenizer_config.json"  # no config.json or tokenizer_config.json beside it
    renamed.write_text((data / "llama3/Llama-3.2-1B/tokenizer_config.json").read_text())
    tok = llama3_tokenizer_from_tiktoken(data / "llama3/tokenizer.model", renamed)
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos) == (128000, 128001, True)
    assert tok.encode("hi")[0] == 128000


def test_llama3_pad_policy(llama3):
    assert llama3.pad_token_id == 128004 and llama3.pad_token == "<|finetune_right_pad_id|>"
    assert llama3.pad_token_source == "<|finetune_right_pad_id|>"


def test_llama3_known_ids(llama3):
    assert llama3.encode("Paris, 2024") == [128000, 60704, 11, 220, 2366, 19]


def test_load_tokenizer_finds_meta_files(data, monkeypatch):
    """load_tokenizer on the Llama-3.2-1B config folder (tokenizer.model one level up) or on the file itself."""
    import llama_ft.hf.loading as module

    calls = []
    monkeypatch.setattr(module, "llama3_tokenizer_from_tiktoken", lambda *a: calls.append(a))
    load_tokenizer(data / "llama3/Llama-3.2-1B")
    load_tokenizer(data / "llama3/tokenizer.model", tokenizer_config=data / "llama3/Llama-3.2-1B/tokenizer_config.json")
    model, config = data / "llama3/tokenizer.model", data / "llama3/Llama-3.2-1B/tokenizer_config.json"
    assert calls == [(model, config), (model, config)]


def test_tiktoken_file_errors(tmp_path, data):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"IQ== 0\nnot-a-line\n")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: line 2 is not"):
        llama3_tokenizer_from_tiktoken(bad, data / "llama3/Llama-3.2-1B/tokenizer_config.json")
    with pytest.raises(TokenizerError, match=r"no such file"):
        llama3_tokenizer_from_tiktoken(tmp_path / "missing.model", data / "llama3/Llama-3.2-1B/config.json")


# ------------------------------------------------------------------ offsets
@pytest.mark.parametrize("name", ["llama3", "smollm2"])
def test_offsets_map_back_to_text(name, request, texts):
    tok = request.getfixturevalue(name)
    for text in texts:
        check_offsets(tok, text)


def test_split_character_fragments_share_its_span(llama3):
    text = "x👍🏽 b"
    ids, offsets = llama3.encode_with_offsets(text, add_special_tokens=False)
    thumbs = [o for i, o in zip(ids, offsets) if text[o[0]:o[1]] == "👍"]
    assert len(thumbs) >= 2  # the emoji is split into byte tokens, each spanning the whole character
    assert b"".join(token_bytes(llama3, i) for i, o in zip(ids, offsets) if o in thumbs) == "👍".encode()


# ------------------------------------------------------------------ QA windows
@pytest.mark.parametrize("name", ["llama3", "smollm2"])
def test_encode_pair_windows(name, request, texts):
    tok = request.getfixturevalue(name)
    question = "Which NFL team represented the AFC at Super Bowl 50?"
    context = max(texts[2000:2600], key=len)
    max_length, stride = 64, 16
    windows = tok.encode_pair(question, context, max_length=max_length, stride=stride)
    assert len(windows) > 3 and all(isinstance(w, PairWindow) for w in windows)
    q_ids = tok.encode(question, add_special_tokens=False)
    ctx_ids = tok.encode(context, add_special_tokens=False)
    seen = []
    for k, w in enumerate(windows):
        assert len(w.ids) <= max_length and len(w.ids) == len(w.offsets) == len(w.sequence_ids)
        assert [i for i, s in zip(w.ids, w.sequence_ids) if s == 0] == q_ids
        assert all(question[a:b] or a == b for (a, b), s in zip(w.offsets, w.sequence_ids) if s == 0)
        piece = [(i, o) for i, o, s in zip(w.ids, w.offsets, w.sequence_ids) if s == 1]
        if k:
            assert [i for i, _ in piece[:stride]] == seen[-stride:]  # windows overlap by `stride` tokens
            piece = piece[stride:]
        for token_id, (a, b) in piece:
            assert context.encode()[len(context[:a].encode()):].startswith(token_bytes(tok, token_id)) or \
                a == b
        seen += [i for i, _ in piece]
    assert seen == ctx_ids  # the windows cover the whole context, in order
    specials = [i for w in windows[:1] for i, s in zip(w.ids, w.sequence_ids) if s is None]
    assert specials == ([tok.bos_token_id] * 2 if tok.add_bos else [])
    with pytest.raises(TokenizerError, match="raise max_length"):
        tok.encode_pair(question, context, max_length=len(q_ids) + 4, stride=8)


# ------------------------------------------------------------------ SmolLM2 (from the embedded GGUF)
def test_smollm2_round_trip_and_specials(smollm2, texts):
    for text in texts[:2600:7] + EDGE:
        assert smollm2.decode(smollm2.encode(text)) == text
    assert not smollm2.add_bos and smollm2.bos_token_id == 1
    assert smollm2.encode("Hello") == smollm2.encode("Hello", add_special_tokens=False)
    assert len(smollm2.encode("12345", add_special_tokens=False)) == 5  # digits split one by one
    assert smollm2.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)[::2] == [1, 2]
    assert (smollm2.eos_token, smollm2.eos_token_id, smollm2.eos_token_ids) == ("<|im_end|>", 2, [2])
    assert (smollm2.pad_token_id, smollm2.pad_token_source) == (2, "pad_token")
    assert smollm2.vocab_size == 49152
    smollm2.check_fits(49152)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: the tokenizer has ids up to 49151 but"):
        smollm2.check_fits(32000, "config.json")


def test_smollm2_chat_template(smollm2):
    prompt = smollm2.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    ids = smollm2.encode(prompt)
    assert ids[0] == 1 and ids.count(2) == 2 and smollm2.decode(ids) == prompt


def test_a_chat_template_compiles_once_and_a_new_one_takes_effect(smollm2, monkeypatch):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    compiled = []
    from_string = ImmutableSandboxedEnvironment.from_string
    monkeypatch.setattr(ImmutableSandboxedEnvironment, "from_string",
                        lambda self, source, *a, **k: compiled.append(source) or from_string(self, source, *a, **k))
    tok = copy.copy(smollm2)
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert [tok.apply_chat_template([{"role": "user", "content": c}]) for c in ("a", "b")] == ["[a]", "[b]"]
    assert len(compiled) == 1  # the second prompt rendered the compiled template
    tok.chat_template = "{{ raise_exception('no system turn') }}"
    with pytest.raises(TokenizerError, match=r"chat template: no system turn"):
        tok.apply_chat_template([{"role": "user", "content": "a"}])
    assert len(compiled) == 2


def test_pad_falls_back_to_eos(smollm2, tmp_path):
    folder = smollm2.save(tmp_path / "tok")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "special_tokens_map.json").unlink()
    tok = load_tokenizer(folder)
    assert (tok.pad_token_id, tok.pad_token_source) == (2, "eos")


def test_no_chat_template_is_a_clear_error(llama3):
    with pytest.raises(TokenizerError, match="no `chat_template`"):
        llama3.apply_chat_template([{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------ save / load / sources
def test_save_and_reload(llama3, tmp_path, texts):
    import transformers

    folder = llama3.save(tmp_path / "llama3")
    back = load_tokenizer(folder)
    sample = texts[::25]
    assert back.encode_batch(sample) == llama3.encode_batch(sample)
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id, back.pad_token_source) == \
        (128000, 128001, 128004, "<|finetune_right_pad_id|>")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert [hf(t)["input_ids"] for t in sample] == llama3.encode_batch(sample)


def test_load_tokenizer_sources(smollm2_dir, smollm2):
    by_name = load_tokenizer("SmolLM2-135M")
    from llama_ft.sources.resolve import embedded_gguf

    by_gguf = load_tokenizer(embedded_gguf())
    by_file = load_tokenizer(smollm2_dir / "tokenizer.json")
    text = "Hello, 2024 wörld!"
    assert by_name.encode(text) == by_gguf.encode(text) == by_file.encode(text) == smollm2.encode(text)
    with pytest.raises(Exception, match="not an existing folder"):
        load_tokenizer("no such thing")


def test_a_config_json_holding_a_list_is_a_tokenizer_error_naming_it(smollm2, tmp_path):
    folder = smollm2.save(tmp_path / "tok")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match=rf"{folder}/config\.json: must hold one JSON object of fields, "
                                             "found a JSON list; restore the file"):
        load_tokenizer(folder)
