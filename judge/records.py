"""Records of the tables the judge adds (m010): one per table, like corpus.records."""

from __future__ import annotations

from corpus import Record


class CriterionScore(Record):
    """The jury's aggregate for one (generation, rubric version, criterion). Derived data:
    a later run overwrites it (insert with replace=True)."""

    table = "criterion_scores"
    id_fields = ("generation_id", "rubric", "rubric_version", "criterion")
    id: str = ""
    generation_id: str
    prompt_id: str | None = None
    rubric: str
    rubric_version: str | None = None
    rubric_hash: str | None = None
    criterion: str
    criterion_hash: str | None = None
    kind: str | None = None
    score: float | None = None
    score_norm: float | None = None
    weight: float = 1.0
    n_judgments: int = 0
    agreement: float | None = None
    aggregation: str | None = None
    run_id: str | None = None


class PairVerdict(Record):
    """Both orders of a pair reconciled (and the jury combined): winner 'a' | 'b' | 'tie'."""

    table = "pair_verdicts"
    id_fields = ("generation_a", "generation_b", "rubric", "rubric_version", "criterion")
    id: str = ""
    prompt_id: str | None = None
    generation_a: str
    generation_b: str
    rubric: str
    rubric_version: str | None = None
    criterion: str
    winner: str
    consistent: bool
    n_judgments: int
    run_id: str | None = None
