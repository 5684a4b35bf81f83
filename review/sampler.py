"""Fill the review queue: disputed items first, then a sample stratified over criteria and
score buckets, so every criterion's low, middle and high scores get human eyes.

Disputed means: a judge flag of kind jury_disagreement or position_inconsistent on the item
(or on a pairwise judgment that involved it), or an overall score within `margin` of the
threshold the filters use. Disputed items take at most `disputed_share` of the sample so the
strata are still covered; among them the most disputed come first.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from corpus import Corpus, UserError, content_id

DISPUTE_FLAGS = ("jury_disagreement", "position_inconsistent")


@dataclass
class Candidate:
    generation_id: str
    prompt_id: str | None
    score_norm: float | None
    strata: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    closeness: float = 1.0  # distance of the overall score to the threshold


def bucket_of(score: float, buckets: int) -> int:
    return min(int(score * buckets), buckets - 1) if score >= 0 else 0


def _population_sql(corpus: Corpus, population: str) -> str:
    tables = corpus.tables()
    if population == "accepted":
        if "accepted_sft" not in tables:
            raise UserError("--population accepted: the view accepted_sft is missing; run `python -m filters` first")
        return "SELECT id AS generation_id FROM accepted_sft"
    if population == "judged":
        return "SELECT DISTINCT generation_id FROM judge_scores"
    if population == "auto":
        if "accepted_sft" in tables and corpus.query("SELECT count(*) AS n FROM accepted_sft")[0]["n"]:
            return "SELECT id AS generation_id FROM accepted_sft"
        return "SELECT DISTINCT generation_id FROM judge_scores"
    raise UserError(f"--population {population}: choose auto, accepted or judged")


def load_candidates(
    corpus: Corpus, population: str = "auto", buckets: int = 4, threshold: float = 0.5,
    margin: float = 0.05, rubric: str | None = None,
) -> list[Candidate]:
    """Every not-yet-queued item of the population with its strata and dispute reasons."""
    with corpus.session():
        pop = _population_sql(corpus, population)
        base = (
            f"WITH pop AS ({pop}) SELECT g.id, g.prompt_id FROM generations g "
            "WHERE g.id IN (SELECT generation_id FROM pop) "
            "AND g.id NOT IN (SELECT target_id FROM review_sample) ORDER BY g.id"
        )
        cands = {r["id"]: Candidate(r["id"], r["prompt_id"], None) for r in corpus.query(base)}
        if not cands:
            return []
        rub = "AND rubric = ?" if rubric else ""
        params = [rubric] if rubric else []
        for r in corpus.query(
            f"SELECT generation_id, rubric, criterion, score_norm FROM judge_scores "
            f"WHERE score_norm IS NOT NULL {rub} ORDER BY rubric, criterion", params,
        ):
            c = cands.get(r["generation_id"])
            if c:
                c.strata.append(f"{r['rubric']}/{r['criterion']}/{bucket_of(r['score_norm'], buckets)}")
        for r in corpus.query(
            f"SELECT generation_id, min(score_norm) AS s FROM generation_scores WHERE score_norm IS NOT NULL {rub} "
            "GROUP BY generation_id", params,
        ):
            c = cands.get(r["generation_id"])
            if c:
                c.score_norm = r["s"]
                c.closeness = abs(r["s"] - threshold)
                if c.closeness <= margin:
                    c.reasons.append("near_threshold")
        kinds = ", ".join(f"'{k}'" for k in DISPUTE_FLAGS)
        # a pairwise flag names the pair; it disputes both generations the judges compared
        for r in corpus.query(
            f"SELECT DISTINCT f.target_id AS gid, f.kind FROM flags f WHERE f.kind IN ({kinds}) "
            f"UNION SELECT DISTINCT unnest([j.generation_a, j.generation_b]) AS gid, f.kind FROM flags f "
            f"JOIN judgments j ON j.target_id = f.target_id OR j.id = f.target_id "
            f"WHERE f.kind IN ({kinds}) AND j.generation_a IS NOT NULL ORDER BY 1, 2"
        ):
            c = cands.get(r["gid"])
            if c and r["kind"] not in c.reasons:
                c.reasons.append(r["kind"])
    for c in cands.values():
        c.strata = sorted(set(c.strata)) or ["unscored"]
        c.reasons.sort()
    return list(cands.values())


def choose(cands: list[Candidate], size: int, disputed_share: float = 0.5, seed: int = 0) -> list[tuple[Candidate, str]]:
    """Pick up to `size` candidates: disputed first, then round-robin over the strata."""
    rng = random.Random(seed)
    pool = sorted(cands, key=lambda c: c.generation_id)
    rng.shuffle(pool)  # ties below are broken at random, reproducibly
    disputed = sorted((c for c in pool if c.reasons), key=lambda c: (-len(c.reasons), c.closeness))
    n_disputed = min(len(disputed), int(round(size * disputed_share)))
    picked: list[tuple[Candidate, str]] = [(c, "disputed") for c in disputed[:n_disputed]]
    taken = {c.generation_id for c, _ in picked}
    by_stratum: dict[str, list[Candidate]] = defaultdict(list)
    for c in pool:
        for s in c.strata:
            by_stratum[s].append(c)
    order = sorted(by_stratum)
    while len(picked) < size:
        progressed = False
        for s in order:
            if len(picked) >= size:
                break
            queue = by_stratum[s]
            while queue and queue[0].generation_id in taken:
                queue.pop(0)
            if queue:
                c = queue.pop(0)
                picked.append((c, s))
                taken.add(c.generation_id)
                progressed = True
        if not progressed:
            break
    return picked


def sample_queue(
    corpus: Corpus, size: int, population: str = "auto", buckets: int = 4, threshold: float = 0.5,
    margin: float = 0.05, disputed_share: float = 0.5, seed: int = 0, rubric: str | None = None,
) -> dict[str, Any]:
    """Add up to `size` new items to the queue, after the ones already there."""
    if size < 1:
        raise UserError(f"--size {size}: must be at least 1")
    if buckets < 1:
        raise UserError(f"--buckets {buckets}: must be at least 1")
    if not 0 <= disputed_share <= 1:
        raise UserError(f"--disputed-share {disputed_share}: must be between 0 and 1")
    config = {k: v for k, v in locals().items() if k != "corpus"}
    cands = load_candidates(corpus, population, buckets, threshold, margin, rubric)
    picked = choose(cands, size, disputed_share, seed)
    with corpus.run("review sample", config) as run:
        with corpus.transaction() as con:
            start = con.execute("SELECT coalesce(max(priority), -1) + 1 FROM review_sample").fetchone()[0]
            cols = ["id", "target_id", "target_kind", "prompt_id", "priority", "stratum", "disputed",
                    "reason", "score_norm", "run_id"]
            rows = [
                (content_id("review_sample", c.generation_id), c.generation_id, "generation", c.prompt_id,
                 start + i, s, bool(c.reasons), ",".join(c.reasons) or None, c.score_norm, run.id)
                for i, (c, s) in enumerate(picked)
            ]
            if rows:
                batch = pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])  # noqa: F841
                con.execute(f"INSERT INTO review_sample ({', '.join(cols)}) SELECT {', '.join(cols)} FROM batch")
        strata: dict[str, int] = defaultdict(int)
        for _, s in picked:
            strata[s] += 1
        summary = {
            "added": len(picked), "candidates": len(cands),
            "disputed": sum(1 for c, _ in picked if c.reasons), "strata": dict(sorted(strata.items())),
        }
        run.summary = summary
    return summary
