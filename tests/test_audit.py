"""Parameter audit: the study's exact counts for Llama-3.2-1B, from its config alone, quickly."""
import json
import subprocess
import sys
import time

from llama_ft.audit import audit

STUDY = {"causal-lm": 1_235_814_400, "classification": 1_235_818_496, "qa": 1_235_818_498}


def test_llama_3_2_1b_counts_match_the_study(shared):
    rep = audit(str(shared / "data/llama3/Llama-3.2-1B"))
    for task, n in STUDY.items():
        assert rep["tasks"][task]["total"] == n
    assert rep["tasks"]["classification"]["policies"]["head"]["trainable"] == 4096
    assert rep["tasks"]["qa"]["policies"]["head"]["trainable"] == 4098
    full = rep["tasks"]["classification"]["policies"]["full"]
    assert full["trainable"] == full["total"]
    # last:1 = one decoder layer + final norm + head
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048  # q,o + k,v (8 kv heads) + mlp + norms
    assert rep["tasks"]["classification"]["policies"]["last:1"]["trainable"] == layer + 2048 + 4096


def test_audit_cli_prints_exact_numbers_fast(shared):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "llama_ft.audit", str(shared / "data/llama3/Llama-3.2-1B")],
                         capture_output=True, text=True, check=True).stdout
    assert time.perf_counter() - t0 < 10  # the issue asks < 5 s; CI shares its 2 cores, so allow slack
    for n in STUDY.values():
        assert f"{n:,}" in out
    js = subprocess.run([sys.executable, "-m", "llama_ft.audit", "llama-3.2-1b", "--task", "qa", "--json",
                         "--train", "lora:8"], capture_output=True, text=True, check=True).stdout
    rep = json.loads(js)
    assert rep["tasks"]["qa"]["total"] == STUDY["qa"]
    assert rep["tasks"]["qa"]["policies"]["lora:8"]["trainable"] == 16 * 8 * (
        (2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 3) + 4098


def test_bad_source_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llama_ft.audit", str(tmp_path / "nope.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope.json" in r.stderr and "Traceback" not in r.stderr


def test_training_memory_counts_each_weight_once(shared):
    """Frozen weights bf16; a trainable weight is its fp32 master alone (4 bytes) + grad (4) + AdamW (8)."""
    rep = audit(str(shared / "data/llama3/Llama-3.2-1B"), tasks=("classification",), policies=("head", "full"))
    pol = rep["tasks"]["classification"]["policies"]
    n = 1_235_818_496
    assert pol["full"]["memory_bytes"]["total"] == 16 * n
    assert pol["head"]["memory_bytes"]["total"] == 2 * (n - 4096) + 16 * 4096


def test_bigger_llama_presets_have_the_published_parameter_counts():
    """Llama-3.2-3B (tied embeddings) and Llama-3.1-8B (untied) as their model cards count them."""
    for preset, n in (("llama-3.2-3b", 3_212_749_824), ("llama-3.1-8b", 8_030_261_248)):
        rep = audit(preset, tasks=("causal-lm",), policies=("head",))
        assert rep["tasks"]["causal-lm"]["total"] == n


def test_memory_plan_answers_eight_80gb_gpus_for_8b_full():
    args = [sys.executable, "-m", "llama_ft.audit", "llama-3.1-8b", "--task", "classification", "--policy", "full"]
    fsdp = subprocess.run(args + ["--devices", "8", "--shard", "fsdp"], capture_output=True, text=True,
                          check=True).stdout
    assert "memory per device, 8 device(s), FSDP, batch 16 x 384" in fsdp
    row = next(ln for ln in fsdp.splitlines() if ln.startswith("| full |") and ln.count("|") == 13)
    assert row.split("|")[9].strip() == "yes"
    js = json.loads(subprocess.run(args + ["--devices", "8", "--json", "--batch", "16", "--seq-len", "384"],
                                   capture_output=True, text=True, check=True).stdout)
    plan = js["tasks"]["classification"]["policies"]["full"]["memory_plan"]
    assert js["plan"]["shard"] == "none" and not plan["fits"] and not plan["fits_checkpointed"]


def test_train_is_an_alias_of_policy_and_bad_plans_name_the_flag():
    base = [sys.executable, "-m", "llama_ft.audit", "llama-3.2-1b", "--task", "qa", "--json"]
    a, b = (json.loads(subprocess.run(base + [flag, "lora:8"], capture_output=True, text=True, check=True).stdout)
            for flag in ("--policy", "--train"))
    assert a["tasks"] == b["tasks"] and list(a["tasks"]["qa"]["policies"]) == ["lora:8"]
    r = subprocess.run(base + ["--seq-len", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--seq-len 0" in r.stderr and "Traceback" not in r.stderr
