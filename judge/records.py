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


class JudgeEval(Record):
    """One judge measured against human preference labels (`python -m judge eval`)."""

    table = "judge_evals"
    id_fields = ("rubric", "rubric_version", "rubric_hash", "judge", "labels_hash")
    json_fields = ("metrics",)
    id: str = ""
    rubric: str
    rubric_version: str | None = None
    rubric_hash: str | None = None
    judge: str
    labels: str | None = None
    labels_hash: str | None = None
    n_pairs: int
    accuracy: float | None = None
    accuracy_lower: float | None = None
    accuracy_upper: float | None = None
    metrics: dict = {}
    run_id: str | None = None
