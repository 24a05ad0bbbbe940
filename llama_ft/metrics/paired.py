"""Is run B better than run A on the same questions? The paired bootstrap of per-item score differences.

Two runs scored on the same 1,000 questions differ on a few hundred of them; whether their mean difference is
more than the luck of which questions were drawn is answered by resampling the questions (with replacement) and
recomputing the mean difference each time. The percentile interval of those means is what
`scipy.stats.bootstrap(..., paired=True, method="percentile")` gives (tests/metrics/test_paired.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 10_000
CHUNK = 1_000  # resamples drawn at once: 1,000 x n int64 indices stay small for any test set


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, resamples: int = RESAMPLES,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float | int]:
    """Mean of `after - before` over paired items, and its percentile bootstrap interval at `confidence`.

    Returns {n, mean_difference, low, high, confidence, resamples, better, worse} with `better` / `worse` the
    items whose score rose / fell; scores are in the caller's units. Deterministic for a given `seed`."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: before and after must be 1-D and paired, got shapes {a.shape} and "
                         f"{b.shape}; score the same items in the same order.")
    if a.size < 2:
        raise ValueError(f"paired_bootstrap: {a.size} paired item(s); a bootstrap needs at least 2.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_bootstrap: confidence={confidence}; use a fraction such as 0.95.")
    if resamples < 100:
        raise ValueError(f"paired_bootstrap: resamples={resamples}; use at least 100 (10,000 is usual).")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, diff.size, size=(min(CHUNK, resamples - start), diff.size))]
                            .mean(axis=1) for start in range(0, resamples, CHUNK)])
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"n": int(diff.size), "mean_difference": float(diff.mean()), "low": float(low), "high": float(high),
            "confidence": confidence, "resamples": resamples,
            "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}


def paired_squad(before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]], *,
                 resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """{exact_match, f1}: `paired_bootstrap` in points (0-100) over the questions both per-question score maps
    hold (`llama_ft.metrics.squad.squad_em_f1_per_question`), in `after`'s order."""
    qids = [qid for qid in after if qid in before]
    if len(qids) < 2:
        raise ValueError(f"paired_squad: {len(qids)} question(s) are scored in both runs; pair runs scored on "
                         "the same questions (the same --dataset, the same --eval-limit).")
    return {name: paired_bootstrap([100.0 * before[q][i] for q in qids], [100.0 * after[q][i] for q in qids],
                                   resamples=resamples, confidence=confidence, seed=seed)
            for i, name in enumerate(("exact_match", "f1"))}


def format_paired(paired: Mapping[str, Mapping[str, float | int]]) -> str:
    """A markdown table of `paired_squad`'s result: one row per metric."""
    rows = ["| metric | after - before | interval | questions | better / worse |", "|---|---:|---:|---:|---:|"]
    for name, p in paired.items():
        rows.append(f"| {name} | {p['mean_difference']:+.2f} | {100 * p['confidence']:g}%: "
                    f"[{p['low']:+.2f}, {p['high']:+.2f}] | {p['n']:,} | {p['better']} / {p['worse']} |")
    return "\n".join(rows)
