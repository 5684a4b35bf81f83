"""How right is a judge? Figures from per-pair outcomes, each with a 95% bootstrap interval.

One `PairOutcome` per labelled pair and judge: the judge's preference for the people's choice
(1 = agrees, 0.5 = tie or no verdict, 0 = disagrees), and for pairwise judges what each order
said. From them:
- accuracy (ties and missing verdicts as half) and accuracy without ties (decided pairs only);
- position flip rate: share of (voter, sample) verdict pairs whose winner changed when the two
  answers swapped places (both orders are always asked); first-slot win rate: share of verdicts
  naming the answer shown first (0.5 is unbiased);
- length bias: how often the longer answer wins under the judge minus under the labels;
- accuracy per category (the prompt's category, else its source).
Intervals: percentile bootstrap over pairs (resampling pairs keeps a pair's orders together).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

B = 1000  # bootstrap resamples


@dataclass
class PairOutcome:
    pair_id: str
    category: str
    agree: float | None                 # 1 / 0.5 / 0; None: the judge gave no verdict
    chosen_longer: float                # 1 / 0.5 / 0 by length in characters
    flips: list[bool] = field(default_factory=list)        # pairwise: one per voter with both orders
    first_slot: list[bool] = field(default_factory=list)   # pairwise: one per parsed verdict


def longer(a: str, b: str) -> float:
    """1 when a is longer than b (characters), 0.5 when equally long, else 0."""
    return 1.0 if len(a) > len(b) else 0.5 if len(a) == len(b) else 0.0


def _interval(values: np.ndarray, rng: np.random.Generator, stat: Any = np.mean) -> dict[str, float | None]:
    if values.size == 0:
        return {"value": None, "lower": None, "upper": None, "n": 0}
    idx = rng.integers(0, values.size, size=(B, values.size))
    boots = stat(values[idx], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": float(stat(values)), "lower": float(lo), "upper": float(hi), "n": int(values.size)}


def _ratio_interval(num: np.ndarray, den: np.ndarray, rng: np.random.Generator) -> dict[str, float | None]:
    """sum(num)/sum(den) with pairs resampled (pairs carry different numbers of verdicts)."""
    keep = den > 0
    num, den = num[keep], den[keep]
    if den.sum() == 0:
        return {"value": None, "lower": None, "upper": None, "n": 0}
    idx = rng.integers(0, den.size, size=(B, den.size))
    boots = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": float(num.sum() / den.sum()), "lower": float(lo), "upper": float(hi), "n": int(den.sum())}


def judge_metrics(outcomes: list[PairOutcome], seed: int = 0) -> dict[str, Any]:
    """All figures for one judge over the labelled pairs."""
    rng = np.random.default_rng(seed)
    agree = np.array([0.5 if o.agree is None else o.agree for o in outcomes], dtype=float)
    decided = np.array([o.agree for o in outcomes if o.agree in (0.0, 1.0)], dtype=float)
    label_long = np.array([o.chosen_longer for o in outcomes], dtype=float)
    # the judge's preference for the longer answer: agree with the label when the label's choice is longer
    judge_long = np.where(label_long == 0.5, 0.5, np.where(label_long == 1.0, agree, 1.0 - agree))
    m: dict[str, Any] = {
        "pairs": len(outcomes),
        "no_verdict": sum(o.agree is None for o in outcomes),
        "ties": sum(o.agree == 0.5 for o in outcomes),
        "accuracy": _interval(agree, rng),
        "accuracy_no_ties": _interval(decided, rng),
        "longer_wins_judge": _interval(judge_long, rng),
        "longer_wins_labels": _interval(label_long, rng),
        "length_bias": _interval(judge_long - label_long, rng),
    }
    flips_n = np.array([sum(o.flips) for o in outcomes], dtype=float)
    flips_d = np.array([len(o.flips) for o in outcomes], dtype=float)
    first_n = np.array([sum(o.first_slot) for o in outcomes], dtype=float)
    first_d = np.array([len(o.first_slot) for o in outcomes], dtype=float)
    m["position_flip_rate"] = _ratio_interval(flips_n, flips_d, rng)
    m["first_slot_win_rate"] = _ratio_interval(first_n, first_d, rng)
    by_cat: dict[str, list[float]] = defaultdict(list)
    for o, a in zip(outcomes, agree):
        by_cat[o.category].append(float(a))
    m["by_category"] = {c: _interval(np.array(v), rng) for c, v in sorted(by_cat.items())}
    return m


def baseline_metrics(outcomes: list[PairOutcome], seed: int = 0) -> dict[str, Any]:
    """The "longer answer wins" judge on the same pairs: no model, just length."""
    as_judge = [PairOutcome(o.pair_id, o.category, o.chosen_longer, o.chosen_longer) for o in outcomes]
    return judge_metrics(as_judge, seed)
