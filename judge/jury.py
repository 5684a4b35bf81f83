"""Juries: combine several judges (and several samples per judge) into one score per item.

Aggregation: `mean` (each judge's samples averaged, then judges averaged), `majority` (the
most common score, ties broken towards the median), `weighted` (judges weighted by their
measured agreement with human reviews from the view `judge_human_agreement`, else by their
accuracy on human preference labels from `judge_evals`; equal weights until either exists). Agreement is reported per item (1 - mean pairwise distance / scale range,
which is 1 when every judgment agrees) and per criterion across items as Krippendorff's alpha
(interval metric).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable

from corpus import Corpus


def human_agreement_weights(corpus: Corpus, rubric: str, rubric_version: str | None) -> dict[tuple[str, str], float]:
    """(judge, criterion) -> weight from people: agreement with human review verdicts
    (`judge_human_agreement`), else accuracy on human preference labels (`judge_evals`, from
    `python -m judge eval`; the latest measurement of each judge under this rubric version).

    The weight is clipped to [0.05, 1] so that one bad calibration sample cannot silence a
    judge entirely; a judge measured by neither gets 1. Reviews of this corpus's own items come
    first: they measure the judge on the data it is judging.
    """
    weights = _label_weights(corpus, rubric, rubric_version)
    try:
        rows = corpus.query(
            "SELECT judge, criterion, agreement, n FROM judge_human_agreement "
            "WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ?", [rubric, rubric_version])
    except Exception:  # a view another stage owns must not stop judging; fall back to equal weights
        rows = []
    weights.update({(r["judge"], r["criterion"]): _clip(float(r["agreement"]))
                    for r in rows if r.get("agreement") is not None and (r.get("n") or 0) > 0})
    return weights


def _clip(x: float) -> float:
    return min(1.0, max(0.05, x))


def _label_weights(corpus: Corpus, rubric: str, rubric_version: str | None) -> dict[tuple[str, str], float]:
    try:
        rows = corpus.query(
            "SELECT judge, accuracy, metrics FROM judge_evals WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ? "
            "AND judge NOT IN ('jury', 'baseline:longer') AND accuracy IS NOT NULL ORDER BY created_at",
            [rubric, rubric_version])
    except Exception:  # an older corpus without the table: equal weights
        return {}
    out: dict[tuple[str, str], float] = {}
    for r in rows:  # later rows (newer measurements) win
        criteria = (json.loads(r["metrics"]) if isinstance(r["metrics"], str) else r["metrics"] or {}).get("criteria") or []
        for c in criteria:
            out[(r["judge"], c)] = _clip(float(r["accuracy"]))
    return out


def aggregate(scores: dict[str, list[float]], method: str, lo: float, hi: float,
              weights: dict[str, float] | None = None) -> float | None:
    """One number from {judge: [sample scores]}; None when no judge produced a score."""
    scores = {j: s for j, s in scores.items() if s}
    if not scores:
        return None
    if method == "majority":
        flat = [x for s in scores.values() for x in s]
        counts = Counter(round(x) for x in flat)
        top = max(counts.values())
        modes = sorted(v for v, c in counts.items() if c == top)
        return float(modes[(len(modes) - 1) // 2])
    per_judge = {j: sum(s) / len(s) for j, s in scores.items()}
    if method == "weighted" and weights:
        w = {j: weights.get(j, 1.0) for j in per_judge}
        total = sum(w.values())
        if total > 0:
            return sum(per_judge[j] * w[j] for j in per_judge) / total
    return sum(per_judge.values()) / len(per_judge)


def item_agreement(values: list[float], lo: float, hi: float) -> float | None:
    """1 - mean |a - b| / range over all pairs of judgments; None for fewer than two."""
    if len(values) < 2 or hi <= lo:
        return None
    pairs = list(combinations(values, 2))
    return 1.0 - sum(abs(a - b) for a, b in pairs) / len(pairs) / (hi - lo)


def krippendorff_alpha(units: Iterable[list[float]]) -> float | None:
    """Interval-metric Krippendorff's alpha over units (items), each a list of ratings.

    alpha = 1 - D_o / D_e; units with fewer than two ratings carry no information and are
    skipped. None when there is nothing to compare or no variation at all.
    """
    units = [u for u in units if len(u) >= 2]
    n = sum(len(u) for u in units)
    if n < 2 or not units:
        return None
    d_o = sum(sum((a - b) ** 2 for a in u for b in u) / (len(u) - 1) for u in units) / n
    values = [v for u in units for v in u]
    d_e = sum((a - b) ** 2 for a in values for b in values) / (n * (n - 1)) if len(values) < 3000 else _fast_de(values)
    if d_e == 0:
        return 1.0 if d_o == 0 else None
    return 1.0 - d_o / d_e


def _fast_de(values: list[float]) -> float:
    # sum over all ordered pairs of (a - b)^2 = 2 n sum(x^2) - 2 (sum x)^2
    n = len(values)
    s, s2 = sum(values), sum(v * v for v in values)
    return (2 * n * s2 - 2 * s * s) / (n * (n - 1))


def group_scores(rows: Iterable[dict]) -> dict[tuple, dict[str, list[float]]]:
    """(target, criterion) -> {judge: [scores]} for rows with a score."""
    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["score"] is not None:
            out[(r["target_id"], r["criterion"])][r["judge"]].append(float(r["score"]))
    return out
