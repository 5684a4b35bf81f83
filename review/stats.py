"""Small statistics the release gate and the report need: Wilson intervals and Cohen's kappa."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) when n is 0.

    Chosen over the normal interval because the gate works with small samples and rates near
    1, where the normal interval overshoots 1 and is too narrow.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in 0..n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # the exact bounds at the ends (floating point leaves ~1e-17 there)
    return (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)


def cohen_kappa(table: list[list[int]]) -> float | None:
    """Cohen's kappa of a square confusion table (rows: rater A, columns: rater B).

    None when chance agreement is 1 (both raters used a single, identical class): kappa is
    undefined there, and reporting 0 or 1 would mislead.
    """
    k = len(table)
    if any(len(row) != k for row in table):
        raise ValueError("the table must be square")
    n = sum(sum(row) for row in table)
    if n == 0:
        return None
    po = sum(table[i][i] for i in range(k)) / n
    rows = [sum(table[i]) for i in range(k)]
    cols = [sum(table[i][j] for i in range(k)) for j in range(k)]
    pe = sum(rows[i] * cols[i] for i in range(k)) / (n * n)
    if pe >= 1:
        return None
    return (po - pe) / (1 - pe)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    approved: int
    reviewed: int
    rate: float | None
    lower: float
    upper: float
    threshold: float
    min_reviews: int
    missing: list[str]


def release_gate(approved: int, reviewed: int, threshold: float, min_reviews: int, confidence: float = 0.95) -> GateResult:
    """Pass when at least `min_reviews` items are reviewed and the Wilson lower bound of the
    approval rate is >= `threshold`; otherwise `missing` says what is lacking, in words."""
    lower, upper = wilson_interval(approved, reviewed, confidence)
    missing = []
    if reviewed < min_reviews:
        missing.append(f"{min_reviews - reviewed} more reviewed items (have {reviewed}, need {min_reviews})")
    if reviewed == 0 or lower < threshold:
        missing.append(
            f"approval lower bound {lower:.3f} < threshold {threshold:.3f} "
            f"({approved}/{reviewed} approved, {confidence:.0%} Wilson interval)"
        )
    return GateResult(
        passed=not missing, approved=approved, reviewed=reviewed,
        rate=approved / reviewed if reviewed else None, lower=lower, upper=upper,
        threshold=threshold, min_reviews=min_reviews, missing=missing,
    )
