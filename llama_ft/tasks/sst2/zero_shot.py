"""Zero-shot sentiment by prompting the causal LM: no training, one forward pass per sentence.

The prompt is fixed. With a chat template (instruct models) the user turn is

    Is the sentiment of this movie review positive or negative? Answer with one word.

    Review: {sentence}

and the assistant turn is scored; without one, the plain text `Review: {sentence}\nSentiment:` is.
The prediction is whichever label's first tokens (" positive"/"positive"/"Positive" vs the negative ones) get
more next-token probability mass.

Small instruct models lean towards one label whatever the review says (SmolLM2-135M answers "positive" for most
sentences). `batch_calibrate` removes that bias without labels, by batch calibration (Zhou et al. 2023,
"Batch Calibration: Rethinking Calibration for In-Context Learning and Prompt Engineering"): each label's
log-probability is centred on its mean over the unlabelled evaluation sentences before the two are compared.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from llama_ft.model.generate import prefill, shared_prefix
from llama_ft.train.config import inference_amp

INSTRUCTION = "Is the sentiment of this movie review positive or negative? Answer with one word."
LABEL_WORDS = (("negative", "Negative", " negative", " Negative"), ("positive", "Positive", " positive", " Positive"))


def sentiment_prompt(tokenizer, sentence: str) -> list[int]:
    """Token ids of the fixed prompt for one sentence (the chat template when the tokenizer has one)."""
    sentence = sentence.strip()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{INSTRUCTION}\n\nReview: {sentence}"}], add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(f"Review: {sentence}\nSentiment:")


def label_token_ids(tokenizer) -> list[list[int]]:
    """Per label, the distinct first token ids of its label words."""
    out = []
    for words in LABEL_WORDS:
        ids = {tokenizer.encode(w, add_special_tokens=False)[0] for w in words}
        out.append(sorted(ids))
    if set(out[0]) & set(out[1]):
        raise ValueError("the tokenizer maps a positive and a negative label word to the same first token; "
                         "prompt scoring cannot tell them apart.")
    return out


@torch.inference_mode()
def classify_by_prompt(lm, tokenizer, sentences: list[str], batch_size: int = 64,
                       amp: str = "auto", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels [N], P(positive) renormalised over the two label sets [N]) for each sentence; `amp`:
    the autocast dtype by name (auto, bf16, fp16 on CUDA, none; llama_ft.train.config.inference_amp), as for
    training and `predict`."""
    device = next(lm.parameters()).device
    amp_dtype = inference_amp(amp, lm, device)
    label_ids = label_token_ids(tokenizer)
    prompts = [sentiment_prompt(tokenizer, s) for s in sentences]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    p_pos = np.zeros(len(sentences))
    pad = lm.config.pad_token_id or 0
    prefix = shared_prefix(lm, prompts, amp_dtype)  # the instruction: once for all batches
    for start in tqdm(range(0, len(order), batch_size), desc="zero-shot prompt", disable=not progress,
                      unit="batch"):
        idx = order[start:start + batch_size]
        logits, _, _ = prefill(lm, [prompts[i] for i in idx], pad, amp_dtype, prefix=prefix)
        logits = logits.float()
        probs = logits.softmax(-1)
        neg = probs[:, label_ids[0]].sum(-1)
        pos = probs[:, label_ids[1]].sum(-1)
        p_pos[idx] = (pos / (pos + neg).clamp_min(1e-30)).cpu().numpy()
    return (p_pos > 0.5).astype(int), p_pos


def batch_calibrate(p_pos: np.ndarray) -> np.ndarray:
    """Labels after batch calibration of P(positive) over a set of sentences (no labels used).

    Predicts positive where log P(pos|x) - mean_x log P(pos|x) > log P(neg|x) - mean_x log P(neg|x): the
    label prior the prompt induces, estimated on the same unlabelled sentences, is divided out.
    """
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 1e-12, 1 - 1e-12)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"batch calibration needs P(positive) for at least 2 sentences (a 1-D array), got shape "
                         f"{p.shape}; score the whole evaluation set at once.")
    log_pos, log_neg = np.log(p), np.log1p(-p)
    return ((log_pos - log_pos.mean()) > (log_neg - log_neg.mean())).astype(int)
