"""Held-out evaluation that can show learning and forgetting.

Prompts fall into two groups: `trained` (every check type in it was trained on; the base prompt
was not) and `heldout` (no check type in it was trained on). Each group's prompt-level pass rate
(all checks passed) and the mean reply length get a 95% bootstrap interval over prompts; against
a baseline on the same prompts, the difference gets a paired bootstrap interval, so "M2 beats M0
by 10 points with the lower bound above 0" is one line of the report.
"""

from __future__ import annotations

import math
from typing import Any

from .checks import pass_fraction

GROUPS = ("trained", "heldout")
N_RESAMPLES = 2000


def prompt_group(checks: list[dict[str, Any]], trained_types: set[str] | None) -> str | None:
    if trained_types is None or not checks:
        return None
    types = {c["type"] for c in checks}
    if types <= trained_types:
        return "trained"
    if not types & trained_types:
        return "heldout"
    return None  # mixed: counts in the overall figures only


def looping(text: str) -> bool:
    """A degenerate loop (the same line again and again, or few distinct word 3-grams), by the
    filters' repetition check with its default thresholds."""
    from filters.base import Item
    from filters.heuristics import RepetitionFilter

    return RepetitionFilter().filter(Item(id="", kind="generation", text=text)) is not True


def per_prompt(prompts: list[dict[str, Any]], replies: list[str], trained_types: set[str] | None,
               cut: list[bool] | None = None) -> list[dict[str, Any]]:
    """One row per prompt; `cut` (one flag per reply: stopped at the token cap) adds a 'cut' key."""
    out = []
    for p, r, c in zip(prompts, replies, cut if cut is not None else [None] * len(replies)):
        frac = pass_fraction(r, p["checks"]) if p["checks"] else None
        row = {"group": p.get("group") or prompt_group(p["checks"], trained_types),
               "pass": None if frac is None else float(frac == 1.0), "frac": frac, "words": len(r.split()),
               "looping": looping(r)}
        if c is not None:
            row["cut"] = bool(c)
        out.append(row)
    return out


def mean_ci(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): percentile bootstrap over prompts, seeded so a rerun prints the same."""
    if not values:
        return None
    import numpy as np
    from scipy.stats import bootstrap

    m = float(np.mean(values))
    if len(values) < 2 or len(set(values)) == 1:
        return m, m, m
    ci = bootstrap((np.asarray(values, float),), np.mean, n_resamples=N_RESAMPLES, confidence_level=0.95,
                   method="percentile", rng=np.random.default_rng(0)).confidence_interval
    return m, float(ci.low), float(ci.high)


def delta_ci(ours: list[float], theirs: list[float]) -> tuple[float, float, float] | None:
    """Paired: the same prompts resampled for both models."""
    if not ours:
        return None
    import numpy as np

    d = [a - b for a, b in zip(ours, theirs)]
    return mean_ci(d) if len(set(d)) > 1 else (float(np.mean(d)),) * 3


def _fmt(ci: tuple[float, float, float] | None) -> list[float] | None:
    return None if ci is None else [round(x, 6) for x in ci]


def group_metrics(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """{group}_pass / {group}_words as [mean, low, high], {group}_n, and with a baseline
    {group}_pass_delta and {group}_words_ratio; group 'all' covers every prompt with checks."""
    m: dict[str, Any] = {}
    m["words"] = _fmt(mean_ci([float(r["words"]) for r in rows]))
    if rows and all("cut" in r for r in rows):
        # a mean length mixes replies that ended with ones that ran to the cap: report both parts
        m["cut_rate"] = sum(r["cut"] for r in rows) / len(rows)
        done = [float(r["words"]) for r in rows if not r["cut"]]
        m["finished_words"] = sum(done) / len(done) if done else None
    if rows and all("looping" in r for r in rows):
        m["looping_rate"] = sum(r["looping"] for r in rows) / len(rows)
    for g in ("all", *GROUPS):
        idx = [i for i, r in enumerate(rows) if r["pass"] is not None and (g == "all" or r["group"] == g)]
        m[f"{g}_n"] = len(idx)
        if not idx:
            continue
        m[f"{g}_pass"] = _fmt(mean_ci([rows[i]["pass"] for i in idx]))
        m[f"{g}_words"] = _fmt(mean_ci([float(rows[i]["words"]) for i in idx]))
        if baseline is not None and len(baseline) == len(rows):
            m[f"{g}_pass_delta"] = _fmt(delta_ci([rows[i]["pass"] for i in idx], [baseline[i]["pass"] for i in idx]))
            theirs = sum(baseline[i]["words"] for i in idx) / len(idx)
            ours = sum(rows[i]["words"] for i in idx) / len(idx)
            m[f"{g}_words_ratio"] = ours / theirs if theirs else (math.inf if ours else 1.0)
    if baseline is not None and len(baseline) == len(rows):
        s = [1.0 if a["frac"] > b["frac"] else 0.0 if a["frac"] < b["frac"] else 0.5
             for a, b in zip(rows, baseline) if a["frac"] is not None and b["frac"] is not None]
        m["verifier_win_rate"] = sum(s) / len(s) if s else None
    return m
