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
