"""Metrics of the study, each our own code and pinned by tests to its reference implementation.

classification (sklearn), squad (the official v1.1 / v2.0 scripts), bleu (evaluate's "bleu" = tensorflow/nmt,
and sacrebleu), rouge (rouge-score, evaluate's bootstrap), meteor (nltk; needs `python -m
llama_ft.metrics.nltk_data`).
"""

from llama_ft.metrics.bleu import bleu, sacrebleu_corpus_bleu, tokenize_13a
from llama_ft.metrics.classification import accuracy, class_labels, confusion_matrix, precision_recall_f1
from llama_ft.metrics.meteor import meteor, release_lexicon, single_meteor
from llama_ft.metrics.nltk_data import SetupError
from llama_ft.metrics.paired import format_paired, paired_bootstrap, paired_squad
from llama_ft.metrics.report import classification_report, format_classification_table, format_squad_table, squad_report
from llama_ft.metrics.rouge import ROUGE_TYPES, rouge, rouge_scores, rouge_tokenize
from llama_ft.metrics.squad import (
    exact_match_score,
    f1_score,
    f1_score_v2,
    normalize_answer,
    squad_em_f1,
    squad_em_f1_per_question,
    squad_v1,
    squad_v1_per_question,
    squad_v2,
)

__all__ = [
    "ROUGE_TYPES",
    "SetupError",
    "accuracy",
    "bleu",
    "class_labels",
    "classification_report",
    "confusion_matrix",
    "exact_match_score",
    "f1_score",
    "f1_score_v2",
    "format_classification_table",
    "format_paired",
    "format_squad_table",
    "meteor",
    "normalize_answer",
    "paired_bootstrap",
    "paired_squad",
    "precision_recall_f1",
    "release_lexicon",
    "rouge",
    "rouge_scores",
    "rouge_tokenize",
    "sacrebleu_corpus_bleu",
    "single_meteor",
    "squad_report",
    "squad_em_f1",
    "squad_em_f1_per_question",
    "squad_v1",
    "squad_v1_per_question",
    "squad_v2",
    "tokenize_13a",
]
