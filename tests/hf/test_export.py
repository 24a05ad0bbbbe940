"""Exports load in `transformers` with the same outputs, carry a Hub model card, are written atomically."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

import llama_ft
from tiny import export_qa
from llama_ft import LlamaConfig
from llama_ft.hf import export
from llama_ft.hf.export import ExportError
from llama_ft.hf.model_card import ModelCardError, render_model_card
from llama_ft.model.lora import LoRALinear, add_lora
from llama_ft.sources.resolve import SourceError

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 101, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "max_position_embeddings": 256, "rope_theta": 10000.0,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
AUTO = {"classification": "AutoModelForSequenceClassification", "qa": "AutoModelForQuestionAnswering",
        "causal-lm": "AutoModelForCausalLM"}
CARD = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "datasets": ["stanfordnlp/sst2"],
        "policy": {"name": "lora", "rank": 8, "layers": "all"},
        "hyperparameters": {"lr": 2e-4, "batch_size": 16},
        "command": "python train_sst2.py --policy lora --rank 8 --lr 2e-4 --push-to-hub me/sst2"}




def small_model(task, tie=False, seed=0, **kw):
    cfg = LlamaConfig.from_dict({**SMALL, "tie_word_embeddings": tie})
    model = llama_ft.random_model(cfg, task, seed=seed, **kw)
    with torch.no_grad():  # trained-looking weights: random init gives near-zero logits, too easy to match
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def padded_batch(vocab, pad, lengths=(12, 7, 4), width=12, seed=0):
    """Rows left-padded, right-padded and unpadded in one batch; real tokens avoid the pad id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), pad)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        start = width - n if i % 2 else 0
        ids[i, start:start + n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, start:start + n] = 1
    return ids, mask


def ours(model, ids, mask):
    with torch.no_grad():
        out = model(ids, mask)
    return torch.stack(out) if model.task == "qa" else out


def theirs(folder, task, ids, mask, dtype=torch.float32):
    cls = getattr(transformers, AUTO[task])
    model = cls.from_pretrained(folder, dtype=dtype).eval()
    # Left padding: transformers' default positions count pads, so pass ours (count real tokens only).
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos)
    if task == "qa":
        return torch.stack((out.start_logits, out.end_logits)).float()
    return out.logits.float()


def assert_close(task, a, b, mask, atol, rtol=0.0):
    # Outputs at pad positions are read by no one (and differ between libraries): compare real tokens only.
    if task == "qa":  # [2, B, T]
        a, b = a[:, mask.bool()], b[:, mask.bool()]
    elif task == "causal-lm":  # [B, T, vocab]
        a, b = a[mask.bool()], b[mask.bool()]
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("task", ["classification", "qa"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, task):
    kw = {"num_labels": 3} if task == "classification" else {}
    model = small_model(task, **kw)
    if task == "classification":
        model.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    ids, mask = padded_batch(101, 0)
    want = ours(model, ids, mask)

    fp32 = llama_ft.save_pretrained(model, tmp_path / "fp32", dtype=torch.float32)
    assert_close(task, theirs(fp32, task, ids, mask), want, mask, atol=1e-5)

    bf16 = llama_ft.save_pretrained(model, tmp_path / "bf16")  # bf16 is the default
    with safe_open(str(bf16 / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}
    prefix = "transformer." if task == "qa" else "model."
    assert all(k.startswith((prefix, "score.", "qa_outputs.")) for k in names)
    # The bf16 bytes read back identically by both libraries, and bf16 compute stays near fp32.
    rounded = llama_ft.from_pretrained(bf16)
    assert_close(task, theirs(bf16, task, ids, mask), ours(rounded, ids, mask), mask, atol=1e-5)
    assert_close(task, theirs(bf16, task, ids, mask, torch.bfloat16), want, mask, atol=0.05, rtol=0.05)

    cfg = json.loads((fp32 / "config.json").read_text())
    assert cfg["architectures"] == [model.architecture] and cfg["pad_token_id"] == 0
    assert cfg["dtype"] == cfg["torch_dtype"] == "float32"
    if task == "classification":
        assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
        assert cfg["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    back = llama_ft.from_pretrained(fp32)  # our own export, task and labels read from config.json
    assert back.task == task and torch.equal(ours(back, ids, mask), want)
    if task == "classification":
        assert back.num_labels == 3
        again = llama_ft.save_pretrained(back, tmp_path / "again", dtype="fp32")
        assert json.loads((again / "config.json").read_text())["id2label"]["2"] == "positive"


def test_causal_lm_export_ties_once_shards_and_generates(tmp_path):
    model = small_model("causal-lm", tie=True)
    model.tie_weights()
    ids, mask = padded_batch(101, 0)
    out = llama_ft.save_pretrained(model, tmp_path / "lm", dtype="fp32", max_shard_bytes=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"] and len(set(index["weight_map"].values())) > 1
    assert_close("causal-lm", theirs(out, "causal-lm", ids, mask), ours(model, ids, mask), mask, atol=1e-5)
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert not (out / "README.md").exists()


def test_lora_is_merged_into_the_export_and_the_model_left_alone(tmp_path):
    model = small_model("classification")
    add_lora(model, rank=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)  # a trained adapter; at init B = 0 would make merging trivial
    ids, mask = padded_batch(101, 0)
    want = ours(model, ids, mask)
    out = llama_ft.save_pretrained(model, tmp_path / "merged", dtype="fp32")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)
    assert_close("classification", theirs(out, "classification", ids, mask), want, None, atol=1e-5)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 14  # still unmerged, still trainable
    assert torch.equal(ours(model, ids, mask), want)


def test_lora_on_bf16_frozen_weights_exports_to_fp32_without_rounding_the_adapter(tmp_path):
    """After training the frozen base is bf16 (the engine's default) while the adapter is fp32: an fp32 export
    holds W + (alpha/r) B A summed in fp32, not that sum rounded to bf16 first (a small delta would vanish)."""
    model = small_model("classification")
    add_lora(model, rank=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.weight.data = m.weight.data.to(torch.bfloat16)
                m.lora_B.normal_(0, 1e-3)  # a delta far below bf16's resolution of W
    proj = model.backbone.layers[0].self_attn.q_proj
    want = proj.weight.float() + (proj.lora_B @ proj.lora_A) * proj.scaling
    out = llama_ft.save_pretrained(model, tmp_path / "fp32", dtype="fp32")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        got = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert proj.merged().weight.dtype == torch.bfloat16  # merged() alone keeps the base's dtype


def test_pad_token_id_is_filled_and_must_agree_with_the_tokenizer(tmp_path):
    class Tok:
        pad_token_id, pad_token_source = 5, "pad_token"

        def save(self, folder):
            (folder / "tokenizer.json").write_text("{}")

    model = small_model("classification")
    model.config.pad_token_id = None  # Llama 3 has none; transformers' classifier needs one to pool a batch
    cfg = json.loads((llama_ft.save_pretrained(model, tmp_path / "eos") / "config.json").read_text())
    assert (cfg["pad_token_id"], cfg["pad_token_id_source"]) == (2, "eos")
    out = llama_ft.save_pretrained(model, tmp_path / "tok", tokenizer=Tok())
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pad_token_id"], cfg["pad_token_id_source"]) == (5, "pad_token")
    assert (out / "tokenizer.json").is_file()
    model.config.pad_token_id = 0
    with pytest.raises(ExportError, match="differs from the tokenizer's pad id 5"):
        llama_ft.save_pretrained(model, tmp_path / "clash", tokenizer=Tok())
    assert not (tmp_path / "clash").exists()


def test_model_card_parses_as_hub_metadata_with_the_runs_numbers(tmp_path):
    model = small_model("classification")
    model.id2label = ["negative", "positive"]
    metrics = {"accuracy": 0.9174, "eval_loss": 0.2381, "step": 2000, "tokens_per_s": 5120.0}
    out = llama_ft.save_pretrained(model, tmp_path / "sst2", metrics=metrics, card=CARD)
    card = ModelCard.load(out / "README.md")
    d = card.data
    assert (d.license, d.base_model, d.datasets, d.pipeline_tag) == (
        "apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct", ["stanfordnlp/sst2"], "text-classification")
    assert {"llama_ft", "llama"} <= set(d.tags)
    got = {r.metric_type: r.metric_value for r in d.eval_results}
    assert got == {"accuracy": 0.9174, "loss": 0.2381}  # run bookkeeping (step, speed) left out
    assert {r.dataset_type for r in d.eval_results} == {"stanfordnlp/sst2"}
    assert CARD["command"] in card.text and "| rank | 8 |" in card.text and "| 1 | positive |" in card.text

    qa = render_model_card({"base_model": "meta-llama/Llama-3.2-1B", "task": "qa",
                            "datasets": "rajpurkar/squad", "metrics": {"exact_match": 71.3, "f1": 80.2},
                            "repo_id": "me/llama-squad"})
    d = ModelCard(qa).data
    assert (d.license, d.pipeline_tag) == ("llama3.2", "question-answering")
    assert {r.metric_type: r.metric_value for r in d.eval_results} == {"exact_match": 71.3, "f1": 80.2}
    assert 'AutoModelForQuestionAnswering.from_pretrained("me/llama-squad")' in qa


def test_model_card_refuses_malformed_values_and_warns_on_missing_ones():
    with pytest.raises(ModelCardError, match="base_model"):
        render_model_card({"task": "qa", "base_model": "SmolLM2 135M"})
    with pytest.raises(ModelCardError, match="task"):
        render_model_card({"base_model": "someone/m"})
    # Missing details must not fail an export at the end of a long run: left out, with a warning.
    with pytest.warns(UserWarning, match=r"no base_model, license, datasets known.*card=\{'base_model'"):
        text = render_model_card({"task": "qa", "metrics": {"f1": 80.0}})
    d = ModelCard(text).data
    assert (d.base_model, d.license, d.eval_results) == (None, None, None)
    assert d.pipeline_tag == "question-answering"
    assert "| f1 | 80 |" in text
    with pytest.warns(UserWarning, match="no license known"):
        render_model_card({"base_model": "someone/unknown-model", "task": "qa"})
    with pytest.warns(UserWarning, match="'f1' is nan"):
        text = render_model_card({"base_model": "someone/m", "license": "mit", "task": "qa",
                                  "datasets": ["rajpurkar/squad"],
                                  "metrics": {"f1": float("nan"), "exact_match": 1.0}})
    assert [r.metric_type for r in ModelCard(text).data.eval_results] == ["exact_match"]


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    first = small_model("qa", seed=1)
    llama_ft.save_pretrained(first, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ExportError, match="not empty.*overwrite=True"):
        llama_ft.save_pretrained(small_model("qa", seed=2), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    llama_ft.save_pretrained(small_model("qa", seed=2), target, overwrite=True)
    assert (target / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old folder left behind

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="no config.json"):
        llama_ft.save_pretrained(first, notes, overwrite=True)
    assert (notes / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ExportError, match="is a file"):
        llama_ft.save_pretrained(first, notes / "thesis.tex")


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    target = tmp_path / "out"
    model = small_model("classification")
    llama_ft.save_pretrained(model, target, dtype="fp32")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_save = export.save_weights

    def crash(state, folder, max_shard_bytes):
        real_save(dict(list(state.items())[:3]), folder, max_shard_bytes)  # some bytes on disk, then a crash
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(export, "save_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        llama_ft.save_pretrained(small_model("classification", seed=3), target, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        llama_ft.save_pretrained(model, tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old export, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # A killed process runs no clean-up: what it leaves is a hidden partial folder without config.json.
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        llama_ft.save_pretrained(model, tmp_path / "killed")
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert [p.name.startswith(".killed.partial-") for p in leftovers] == [True]
    assert not (leftovers[0] / "config.json").exists()
    with pytest.raises(llama_ft.ConfigError, match="config.json: no such file"):
        llama_ft.from_pretrained(leftovers[0])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_export_cleans_what_dead_exports_left(tmp_path):
    target = tmp_path / "out"
    model = small_model("classification")
    llama_ft.save_pretrained(model, target, dtype="fp32")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    dead, alive = _dead_pid(), os.getpid()
    for name in (f".out.partial-{dead}-aa", f".out.old-{dead}-bb", f".out.partial-{alive}-cc", ".out.partial-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    llama_ft.save_pretrained(model, tmp_path / "other", dtype="fp32")  # another name: nothing of out's touched
    assert len(list(tmp_path.glob(".out.*"))) == 4
    llama_ft.save_pretrained(model, target, dtype="fp32", overwrite=True)
    # The dead process's folders are gone; a live process's export and names not ours are left alone.
    assert sorted(p.name for p in tmp_path.glob(".out.*")) == [f".out.partial-{alive}-cc", ".out.partial-x"]
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_previous_export_moved_aside_by_a_killed_process_is_put_back(tmp_path):
    target = tmp_path / "out"
    model = small_model("classification")
    llama_ft.save_pretrained(model, target, dtype="fp32")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    dead = _dead_pid()
    # Killed between its two renames: the previous export moved aside, the new one complete but not in place.
    os.rename(target, tmp_path / f".out.old-{dead}-aa")
    llama_ft.save_pretrained(small_model("classification", seed=3), tmp_path / f".out.partial-{dead}-aa",
                             dtype="fp32")
    with pytest.raises(export.ExportError, match="not empty"):
        llama_ft.save_pretrained(model, target, dtype="fp32")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # put back, not overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_embedded_model_after_training_steps_loads_in_transformers(tmp_path):
    """SmolLM2-135M-Instruct under each head, a few AdamW steps on random tokens, exported in bf16 with its
    tokenizer and card: transformers reads the same bf16 weights to 1e-5, within bf16 rounding of fp32."""
    tok = llama_ft.load_tokenizer("smollm2-135m")
    pad = tok.pad_token_id
    ids, mask = padded_batch(2000, pad, lengths=(16, 9, 5), width=16)
    for task, dataset, metrics in (("classification", "stanfordnlp/sst2", {"accuracy": 0.5}),
                                   ("qa", "rajpurkar/squad", {"exact_match": 1.0, "f1": 10.0})):
        model = llama_ft.from_pretrained("smollm2-135m", task=task, seed=0)
        # Train the head and the top block only: every tensor still changes what the export must carry.
        trained = [*model.backbone.layers[-1].parameters(), *model.backbone.norm.parameters(),
                   *(p for m in model.head_modules() for p in m.parameters())]
        model.requires_grad_(False)
        for p in trained:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(trained, lr=1e-3)
        model.train()
        for _ in range(3):
            out = model(ids, mask)
            out = out if task == "classification" else torch.stack(out)[:, mask.bool()]
            out.float().pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        want = ours(model.eval(), ids, mask)
        out = llama_ft.save_pretrained(model, tmp_path / task, tokenizer=tok, metrics=metrics,
                                       card={"datasets": [dataset]})
        files = {p.name for p in out.iterdir()}
        assert {"tokenizer.json", "tokenizer_config.json", "README.md", "config.json",
                "model.safetensors"} <= files
        assert "_name_or_path" not in json.loads((out / "config.json").read_text())  # was a local .gguf path
        card = ModelCard.load(out / "README.md").data
        assert (card.base_model, card.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
        assert {r.metric_type: r.metric_value for r in card.eval_results} == metrics
        rounded = ours(llama_ft.from_pretrained(out), ids, mask)
        assert_close(task, theirs(out, task, ids, mask), rounded, mask, atol=1e-5)
        assert_close(task, rounded, want, mask, atol=0.05, rtol=0.05)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("Hello world")["input_ids"] == tok.encode("Hello world") and hf_tok.pad_token_id == pad


def test_killed_between_the_two_renames_from_pretrained_finds_the_previous_export(tmp_path):
    """The state a kill in the swap window leaves: no `out`, the previous export at .out.old-PID-*, the new
    one complete at .out.partial-PID-*. Loading `out` puts the previous export back and loads it."""
    target = tmp_path / "out"
    model = small_model("classification")
    llama_ft.save_pretrained(model, target, dtype="fp32")
    dead = _dead_pid()
    os.rename(target, tmp_path / f".out.old-{dead}-aa")
    llama_ft.save_pretrained(small_model("classification", seed=3), tmp_path / f".out.partial-{dead}-aa",
                             dtype="fp32")
    ids, mask = padded_batch(SMALL["vocab_size"], SMALL["pad_token_id"])
    loaded = llama_ft.from_pretrained(target)
    torch.testing.assert_close(ours(loaded, ids, mask), ours(model, ids, mask), atol=1e-6, rtol=0)
    assert (target / "config.json").is_file() and not (tmp_path / f".out.old-{dead}-aa").exists()


def test_a_folder_moved_aside_by_a_live_process_is_left_alone(tmp_path):
    target = tmp_path / "out"
    llama_ft.save_pretrained(small_model("classification"), target, dtype="fp32")
    aside = tmp_path / f".out.old-{os.getpid()}-aa"  # its publisher still runs: the swap is in progress
    os.rename(target, aside)
    with pytest.raises(SourceError, match="not an existing folder"):
        llama_ft.from_pretrained(target)
    assert aside.is_dir() and not target.exists()


@pytest.mark.parametrize("qa_format", ["template", "pair"])
def test_qa_card_states_the_input_format_and_its_code_answers_as_llama_ft(tiny_model_dir, tmp_path, capsys,
                                                                         qa_format):
    """The card of a QA export says which input the model was trained on; for the template format, which
    transformers' question-answering pipeline does not build, the card's own code (run here with transformers'
    tokenizer and model) gives llama_ft's answer."""
    out = export_qa(tiny_model_dir, tmp_path / "qa", qa_format, card=CARD)
    assert json.loads((out / "config.json").read_text())["qa_format"] == qa_format
    section = (out / "README.md").read_text().split("## Input format")[1]
    if qa_format == "pair":
        assert "what transformers' question-answering pipeline builds" in section
        assert 'pipeline("question-answering", model=' in section and "max_answer_len=30" in section
        return
    assert "does NOT build this input" in section and "llama_ft's `pipeline(\"question-answering\"" in section
    code = section.split("```python\n")[1].split("```")[0]
    exec(code, {"tokenizer": transformers.AutoTokenizer.from_pretrained(str(out)),
                "model": transformers.AutoModelForQuestionAnswering.from_pretrained(str(out), dtype=torch.float32)})
    printed = capsys.readouterr().out.strip()
    ours = llama_ft.pipeline("question-answering", model=out)(question="Where is the Eiffel Tower?",
                                                              context="The Eiffel Tower is in Paris.")
    assert printed == ours["answer"] and printed
