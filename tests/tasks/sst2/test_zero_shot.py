"""Zero-shot SST-2 by prompting: the prompt, the label tokens, left-padded batching, and batch calibration."""
import numpy as np
import pytest

import llama_ft
from llama_ft.tasks.sst2.zero_shot import batch_calibrate, classify_by_prompt, label_token_ids, sentiment_prompt

SENTENCES = ["a gorgeous , witty , seductive movie .", "dull", "the plot is nothing but boilerplate clichés from "
             "start to finish , and the script assumes that not only would subtlety be lost on the target audience",
             "it 's a charming and often affecting journey .", "unflinchingly bleak and desperate"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return llama_ft.load_tokenizer(smollm2_dir)


def test_prompt_uses_the_chat_template_and_ends_at_the_assistant_turn(tokenizer):
    text = tokenizer.decode(sentiment_prompt(tokenizer, "dull"))
    assert "Review: dull" in text and "positive or negative" in text
    assert text.rstrip().endswith("assistant")


def test_label_tokens_are_distinct_per_label(tokenizer):
    neg, pos = label_token_ids(tokenizer)
    assert neg and pos and not set(neg) & set(pos)
    assert tokenizer.encode("positive", add_special_tokens=False)[0] in pos


def test_batched_left_padded_scoring_equals_one_at_a_time(tiny_model_dir, tokenizer):
    lm = llama_ft.from_pretrained(tiny_model_dir, task="causal-lm", dtype="float32")
    pred, p = classify_by_prompt(lm, tokenizer, SENTENCES, batch_size=8, amp="none", progress=False)
    _, p_one = classify_by_prompt(lm, tokenizer, SENTENCES, batch_size=1, amp="none", progress=False)
    np.testing.assert_allclose(p, p_one, atol=1e-5)
    assert ((0 < p) & (p < 1)).all() and (pred == (p > 0.5)).all()


def test_batch_calibration_divides_out_the_label_prior():
    rng = np.random.default_rng(0)
    logit = rng.normal(size=1000)
    gold = (logit > 0).astype(int)
    biased = 1 / (1 + np.exp(-(logit + 3.0)))  # the prompt's prior: odds x e^3 for "positive"
    assert (biased > 0.5).mean() > 0.9  # as it answers: nearly everything positive
    calibrated = batch_calibrate(biased)
    np.testing.assert_array_equal(calibrated, batch_calibrate(1 / (1 + np.exp(-logit))))  # prior-invariant
    assert (calibrated == gold).mean() > 0.95


def test_batch_calibration_rejects_a_single_sentence():
    with pytest.raises(ValueError, match="at least 2"):
        batch_calibrate(np.array([0.7]))
