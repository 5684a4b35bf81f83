"""From judgments to `criterion_scores` / `pair_verdicts` (and the flags they raise).

Recomputed for every candidate in scope on every run (cheap next to judging), but only rows
whose values changed are written, so a fully cached rerun writes nothing. Only judgments under
the rubric's current criterion hashes count: an edited criterion's old judgments stay in the
table for the audit but no longer feed the scores.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import pyarrow as pa

from corpus import Corpus, Flag

from . import pairwise
from .jury import aggregate as combine
from .jury import human_agreement_weights, item_agreement
from .records import CriterionScore, PairVerdict
from .rubric import Rubric


def _judgments(corpus: Corpus, rubric: Rubric, gen_ids: list[str], pairs: bool) -> list[dict[str, Any]]:
    hashes = [rubric.criterion_hash(c) for c in rubric.criteria]
    col = "generation_a" if pairs else "target_id"
    with corpus.connect() as con:
        wanted = pa.table({"k": gen_ids})  # noqa: F841  (DuckDB reads the local by name)
        hs = pa.table({"h": hashes})  # noqa: F841
        cur = con.execute(
            f"SELECT target_id, generation_a, generation_b, judge, criterion, sample_idx, \"order\", score, parse_status, "
            f"json_extract_string(meta, '$.winner_id') AS winner_id, json_extract_string(meta, '$.method') AS method FROM judgments "
            f"WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ? AND criterion_hash IN (SELECT h FROM hs) "
            f"AND target_kind = ? AND {col} IN (SELECT k FROM wanted)",
            [rubric.name, rubric.version, "pair" if pairs else "generation"],
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


_COLS = ("score", "score_norm", "n_judgments", "agreement", "weight", "criterion_hash")


def _existing_scores(corpus: Corpus, rubric: Rubric, gen_ids: list[str]) -> dict[tuple[str, str], tuple]:
    with corpus.connect() as con:
        wanted = pa.table({"k": gen_ids})  # noqa: F841
        rows = con.execute(
            f"SELECT generation_id, criterion, {', '.join(_COLS)} FROM criterion_scores WHERE rubric = ? "
            "AND rubric_version IS NOT DISTINCT FROM ? AND generation_id IN (SELECT k FROM wanted)",
            [rubric.name, rubric.version]).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def _same(now: tuple, prev: tuple | None) -> bool:
    if prev is None:
        return False
    return all((a is None and b is None) or (a is not None and b is not None and
               (abs(a - b) < 1e-9 if isinstance(a, float) else a == b)) for a, b in zip(now, prev))


def _existing_verdicts(corpus: Corpus, rubric: Rubric) -> dict[tuple, tuple]:
    rows = corpus.query("SELECT generation_a, generation_b, criterion, winner, consistent, n_judgments FROM pair_verdicts "
                        "WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ?", [rubric.name, rubric.version])
    return {(r["generation_a"], r["generation_b"], r["criterion"]): (r["winner"], r["consistent"], r["n_judgments"]) for r in rows}


def update(corpus: Corpus, rubric: Rubric, cands: list[dict], touched: set[str], run_id: str) -> dict[str, int]:
    """Recompute scores for the candidates in scope; flags only for candidates judged this run."""
    if not cands:
        return {}
    old = _existing_scores(corpus, rubric, [g["id"] for g in cands])
    if rubric.mode == "pointwise":
        changed, flags = _pointwise(corpus, rubric, cands, touched, run_id, old)
    else:
        changed, flags = _pairwise(corpus, rubric, cands, touched, run_id, old)
    corpus.insert([*changed, *flags], replace=True)  # one transaction: scores and their flags together
    out: dict[str, int] = {}
    for f in flags:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out


def _pointwise(corpus: Corpus, rubric: Rubric, cands: list[dict], touched: set[str], run_id: str, old: dict):
    """Changed CriterionScore records (records are built only where a value moved) and flags."""
    rows = _judgments(corpus, rubric, [g["id"] for g in cands], pairs=False)
    weights_raw = human_agreement_weights(corpus, rubric.name, rubric.version) if rubric.aggregation == "weighted" else {}
    grouped: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["score"] is not None and r["parse_status"] != "failed":
            grouped[(r["target_id"], r["criterion"])][r["judge"]].append(float(r["score"]))
    recs, flags = [], []
    plan = []  # per criterion, computed once: pydantic attribute access is slow in a 10,000-item loop
    for c in rubric.criteria:
        lo, hi = (c.lo, c.hi) if c.kind == "llm" else (0.0, 1.0)
        plan.append((c, lo, hi, rubric.criterion_hash(c), c.weight, {j: w for (j, crit), w in weights_raw.items() if crit == c.name}))
    rhash, threshold = rubric.rubric_hash, rubric.flags.jury_disagreement
    for g in cands:
        overall_w, overall = 0.0, 0.0
        for c, lo, hi, chash, cweight, weights in plan:
            scores = grouped.get((g["id"], c.name), {})
            score = combine(scores, rubric.aggregation, lo, hi, weights)
            flat = [x for s in scores.values() for x in s]
            agreement = item_agreement(flat, lo, hi)
            norm = None if score is None else (score - lo) / (hi - lo)
            agreement = None if agreement is None else round(agreement, 6)
            values = (score, norm, len(flat), agreement, cweight, chash)
            if not _same(values, old.get((g["id"], c.name))):
                recs.append(CriterionScore(
                    generation_id=g["id"], prompt_id=g["prompt_id"], rubric=rubric.name, rubric_version=rubric.version,
                    rubric_hash=rhash, criterion=c.name, criterion_hash=chash, kind=c.kind,
                    score=score, score_norm=norm, weight=c.weight, n_judgments=len(flat), agreement=agreement,
                    aggregation="weighted" if weights else ("mean" if rubric.aggregation == "weighted" else rubric.aggregation),
                    run_id=run_id))
            if norm is not None:
                overall += cweight * norm
                overall_w += cweight
            if agreement is not None and agreement < threshold and g["id"] in touched:
                flags.append(Flag(target_id=g["id"], kind="jury_disagreement", stage="judge", run_id=run_id,
                                  reason=f"{c.name}: agreement {agreement:.2f} < {threshold}",
                                  details={"criterion": c.name, "scores": {j: s for j, s in scores.items()}}))
        low = rubric.flags.low_score
        if low is not None and g["id"] in touched and overall_w > 0 and overall / overall_w < low:
            flags.append(Flag(target_id=g["id"], kind="low_score", stage="judge", run_id=run_id,
                              reason=f"overall {overall / overall_w:.2f} < {low}"))
    return recs, flags


def _pairwise(corpus: Corpus, rubric: Rubric, cands: list[dict], touched: set[str], run_id: str, old: dict):
    rows = _judgments(corpus, rubric, [g["id"] for g in cands], pairs=True)
    old_verdicts = _existing_verdicts(corpus, rubric)
    verdicts = pairwise.reconcile(rows)
    prompt_of = {g["id"]: g["prompt_id"] for g in cands}
    recs: list = []
    flags = []
    for (pid, criterion), v in verdicts.items():
        a, b = v["generation_a"], v["generation_b"]
        winner = "a" if v["winner"] == a else "b" if v["winner"] == b else "tie"
        if old_verdicts.get((a, b, criterion)) != (winner, v["consistent"], v["n"]):
            recs.append(PairVerdict(prompt_id=prompt_of.get(a), generation_a=a, generation_b=b, rubric=rubric.name,
                                    rubric_version=rubric.version, criterion=criterion, winner=winner,
                                    consistent=v["consistent"], n_judgments=v["n"], run_id=run_id))
        if v["inconsistent"] and (a in touched or b in touched):
            flags.append(Flag(target_id=pid, target_kind="pair", kind="position_inconsistent", stage="judge", run_id=run_id,
                              reason=f"{criterion}: {v['inconsistent']} of {v['n']} verdicts changed with the order; "
                              + ("decided by P(win) averaged over both orders" if v.get("debiased") else "counted as a tie"),
                              details={"generation_a": a, "generation_b": b, "criterion": criterion}))
    weights = {c.name: c.weight for c in rubric.criteria}
    hashes = {c.name: rubric.criterion_hash(c) for c in rubric.criteria}
    for (gid, criterion), (rate, n) in pairwise.win_rates(verdicts).items():
        if _same((rate, rate, n, None, weights.get(criterion, 1.0), hashes.get(criterion)), old.get((gid, criterion))):
            continue
        recs.append(CriterionScore(
            generation_id=gid, prompt_id=prompt_of.get(gid), rubric=rubric.name, rubric_version=rubric.version,
            rubric_hash=rubric.rubric_hash, criterion=criterion, criterion_hash=hashes.get(criterion), kind="llm",
            score=rate, score_norm=rate, weight=weights.get(criterion, 1.0), n_judgments=n, aggregation="win_rate",
            run_id=run_id))
    return recs, flags


def distribution(corpus: Corpus, rubric: Rubric, cands: list[dict]) -> dict[str, dict[str, Any]]:
    """Per criterion over the candidates in scope: n, mean, min, median, max of score, and a histogram."""
    if not cands:
        return {}
    with corpus.connect() as con:
        wanted = pa.table({"k": [g["id"] for g in cands]})  # noqa: F841
        rows = con.execute(
            "SELECT criterion, score FROM criterion_scores WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ? "
            "AND generation_id IN (SELECT k FROM wanted) AND score IS NOT NULL", [rubric.name, rubric.version]).fetchall()
    by: dict[str, list[float]] = defaultdict(list)
    for crit, score in rows:
        by[crit].append(float(score))
    out = {}
    for c in rubric.criteria:
        xs = by.get(c.name, [])
        if not xs:
            out[c.name] = {"n": 0}
            continue
        hist: dict[str, int] = defaultdict(int)
        for x in xs:
            hist[str(round(x)) if c.kind == "llm" and rubric.mode == "pointwise" else f"{round(x, 1):.1f}"] += 1
        out[c.name] = {"n": len(xs), "mean": round(statistics.fmean(xs), 3), "min": min(xs),
                       "median": statistics.median(xs), "max": max(xs), "hist": dict(sorted(hist.items()))}
    return out
