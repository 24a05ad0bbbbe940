"""LoRA adapters in PEFT's format: what llama_ft saves loads in `peft` with the same logits, and what `peft`
saves loads in llama_ft with the same logits."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import tiny_model

import llama_ft
from llama_ft.hf.adapters import AdapterError, load_adapter, save_adapter
from llama_ft.model.lora import LoRALinear, add_lora
from llama_ft.model.policies import apply_policy
from llama_ft.tasks.sst2 import data as sst2

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
AUTO = {"classification": "AutoModelForSequenceClassification", "qa": "AutoModelForQuestionAnswering"}




def trained_looking(model, seed=1):
    """LoRA B starts at zero (the adapter would be a no-op) and a fresh head is near zero: perturb every
    adapter and head weight so that a wrong key, scaling or transpose shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def batch(vocab=101, lengths=(12, 7, 4), pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def ours(model, ids, mask):
    with torch.no_grad():
        out = model(ids, mask)
    return torch.stack(out)[:, mask.bool()] if model.task == "qa" else out


def theirs(model, ids, mask):
    """Span logits at real tokens only: what a padded position gets is nobody's answer."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "start_logits"):
        return torch.stack((out.start_logits, out.end_logits))[:, mask.bool()]
    return out.logits


def hf_base(folder, task):
    return getattr(transformers, AUTO[task]).from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["lora:4", "lora:4:16"])
def test_saved_adapter_loads_in_peft_with_equal_logits(tmp_path, task, policy):
    model = tiny_model(task).eval()
    base = llama_ft.save_pretrained(model, tmp_path / "base", dtype="float32")
    apply_policy(model, policy)
    trained_looking(model)
    folder = llama_ft.save_adapter(model, tmp_path / "adapter")
    ids, mask = batch()
    peft_model = peft.PeftModel.from_pretrained(hf_base(base, task), folder).eval()
    torch.testing.assert_close(theirs(peft_model, ids, mask), ours(model, ids, mask), atol=1e-4, rtol=1e-4)


def test_saved_adapter_is_in_peft_layout(tmp_path):
    model = tiny_model("classification")
    apply_policy(model, "lora:4:8")
    folder = save_adapter(trained_looking(model), tmp_path / "adapter", base_model_name_or_path="me/base")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", "SEQ_CLS", 4, 8)
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                    "up_proj", "down_proj"])
    assert cfg["modules_to_save"] == ["score"] and cfg["base_model_name_or_path"] == "me/base"
    assert cfg["use_rslora"] is False and cfg["layers_to_transform"] is None
    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.score.weight" in keys
    assert "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight" in keys
    assert all(k.startswith("base_model.model.") and ".default." not in k for k in keys)
    assert len(keys) == 4 * 7 * 2 + 1


def test_adapter_on_some_layers_and_projections_loads_in_peft(tmp_path):
    """Different projections on different layers: written as a regex PEFT matches exactly."""
    model = tiny_model("classification").eval()
    base = llama_ft.save_pretrained(model, tmp_path / "base", dtype="float32")
    apply_policy(model, "head")
    add_lora(model.backbone, 2, 4.0, targets=("q_proj", "v_proj"), layers=[1, 3])
    add_lora(model.backbone, 2, 4.0, targets=("down_proj",), layers=[0])
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad or "lora_" in name)
    folder = save_adapter(trained_looking(model), tmp_path / "adapter")
    ids, mask = batch()
    peft_model = peft.PeftModel.from_pretrained(hf_base(base, "classification"), folder).eval()
    assert sum("lora_A" in n for n, _ in peft_model.named_parameters()) == 5
    torch.testing.assert_close(theirs(peft_model, ids, mask), ours(model, ids, mask), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("targets,layers", [(["q_proj", "v_proj"], None), (["up_proj", "o_proj"], [0, 2])])
def test_peft_saved_adapter_loads_in_llama_ft_with_equal_logits(tmp_path, task, targets, layers):
    base = llama_ft.save_pretrained(tiny_model(task), tmp_path / "base", dtype="float32")
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=targets, layers_to_transform=layers,
                          task_type="SEQ_CLS" if task == "classification" else "QUESTION_ANS")
    theirs_model = peft.get_peft_model(hf_base(base, task), cfg)
    trained_looking(theirs_model)
    theirs_model.save_pretrained(tmp_path / "adapter")
    model = load_adapter(llama_ft.from_pretrained(base, task=task), tmp_path / "adapter")
    ids, mask = batch()
    torch.testing.assert_close(ours(model, ids, mask), theirs(theirs_model.eval(), ids, mask), atol=1e-4, rtol=1e-4)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == len(targets) * (len(layers) if layers else 4)
    assert str(model.policy) == "lora:4:12"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = "score.weight" if task == "classification" else "qa_outputs.weight"
    assert head in trainable and all("lora_" in n or n.startswith(head.split(".")[0]) for n in trainable)


def test_adapter_round_trip_keeps_logits_and_trains_on(tmp_path):
    model = tiny_model("classification").eval()
    base = llama_ft.save_pretrained(model, tmp_path / "base", dtype="float32")
    apply_policy(model, "lora:4")
    save_adapter(trained_looking(model), tmp_path / "adapter")
    again = load_adapter(llama_ft.from_pretrained(base, task="classification"), tmp_path / "adapter")
    ids, mask = batch()
    torch.testing.assert_close(ours(again, ids, mask), ours(model, ids, mask), atol=1e-5, rtol=1e-5)
    assert again.policy == model.policy  # so train(..., TrainConfig(policy="lora:4")) continues it


def _peft_adapter(tmp_path, **config):
    base = llama_ft.save_pretrained(tiny_model("classification"), tmp_path / "base", dtype="float32")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="SEQ_CLS", **config)
    peft.get_peft_model(hf_base(base, "classification"), cfg).save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def test_rslora_adapter_is_refused_naming_the_field(tmp_path):
    base, folder = _peft_adapter(tmp_path, use_rslora=True)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: use_rslora.*lora_alpha / r"):
        load_adapter(llama_ft.from_pretrained(base, task="classification"), folder)


def test_adapter_for_another_task_is_refused(tmp_path):
    _, folder = _peft_adapter(tmp_path)
    qa_base = llama_ft.save_pretrained(tiny_model("qa"), tmp_path / "qa", dtype="float32")
    with pytest.raises(AdapterError, match=r"task_type 'SEQ_CLS'.*task='classification'"):
        load_adapter(llama_ft.from_pretrained(qa_base, task="qa"), folder)


def test_adapter_with_a_wrong_rank_names_the_tensor(tmp_path):
    base, folder = _peft_adapter(tmp_path)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(AdapterError, match=r"lora_A\.weight has shape \(4, 64\) but the model needs \(8, 64\)"):
        load_adapter(llama_ft.from_pretrained(base, task="classification"), folder)


def test_adapter_with_foreign_tensors_is_refused(tmp_path):
    base, folder = _peft_adapter(tmp_path)
    path = folder / "adapter_model.safetensors"
    with safe_open(path, "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**state, "base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 101)}, path)
    with pytest.raises(AdapterError, match="embed_tokens"):
        load_adapter(llama_ft.from_pretrained(base, task="classification"), folder)


def test_save_adapter_refuses_a_model_without_lora_and_an_existing_adapter(tmp_path):
    model = tiny_model("classification")
    with pytest.raises(AdapterError, match="no LoRA layers.*save_pretrained"):
        save_adapter(model, tmp_path / "a")
    apply_policy(model, "lora:2")
    save_adapter(model, tmp_path / "a")
    with pytest.raises(AdapterError, match="overwrite=True"):
        save_adapter(model, tmp_path / "a")
    save_adapter(model, tmp_path / "a", overwrite=True)


@pytest.mark.slow
def test_smollm2_adapter_loads_in_peft_with_equal_logits_on_sst2(tmp_path, shared, smollm2_dir):
    """The embedded SmolLM2-135M with lora:8 on real SST-2 sentences: PEFT over transformers agrees."""
    model = llama_ft.from_pretrained("smollm2-135m", task="classification", seed=0)
    apply_policy(model, "lora:8")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    folder = save_adapter(model.eval(), tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    theirs_model = peft.PeftModel.from_pretrained(hf_base(smollm2_dir, "classification"), folder).eval()
    tok = llama_ft.load_tokenizer(smollm2_dir)
    rows = sst2.read_tsv(shared / "data/sst2/train.tsv")[:12]
    for r in rows:
        ids = torch.tensor([tok.encode(r.sentence)])
        mask = torch.ones_like(ids)
        torch.testing.assert_close(theirs(theirs_model, ids, mask), ours(model, ids, mask), atol=1e-4, rtol=1e-4)


def test_a_wrapped_model_saves_the_inner_models_adapter(tmp_path):
    """DDP and torch.compile wrap the model (`.module`, `._orig_mod`): the file holds the inner names."""
    model = tiny_model("classification")
    apply_policy(model, "lora:2")
    wrapper = torch.nn.Module()
    wrapper.module = model
    with safe_open(save_adapter(wrapper, tmp_path / "a") / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in set(f.keys())
