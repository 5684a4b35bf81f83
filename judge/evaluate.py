"""`python -m judge eval`: measure the judges a rubric configures against human preference labels.

The labelled set is pairs with method `human` in the corpus (from `corpus import-pairs`), a
file in any import-pairs shape (JudgeBench's question/response_A/response_B/label included;
it is imported first, so its answers are ordinary generations), or the pairs a reward model held
out of its training (`--heldout-of MODEL`). The judging itself is `run_judge` on the labelled
answers, so whatever the rubric says runs here: LLM judges on any backend, pointwise or
pairwise, a jury, verifiers, a reward model; and judgments already in the corpus are reused.

Figures per jury member, for the jury's aggregate (when there are several members) and for the
"longer answer wins" baseline: see `eval_metrics`. They are stored in `judge_evals` (one row
per judge and labelled set), where the jury's `weighted` aggregation finds them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from backends import Backend
from corpus import Corpus, UserError, snapshot_hash

from . import pairwise
from .eval_metrics import PairOutcome, baseline_metrics, judge_metrics, longer
from .records import JudgeEval
from .rubric import Rubric, load_rubric
from .run import Judges, run_judge

BASELINE = "baseline:longer"


def labelled_pairs(corpus: Corpus, labels: str | None = None, source: str | None = None,
                   heldout_of: str | None = None, split: str | None = None, limit: int | None = None,
                   argv: list[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """The labelled pairs (ids, texts, category) and a name for the set."""
    ids: list[str] | None = None
    if labels:
        from corpus.import_pairs import import_pairs

        ids = import_pairs(corpus, labels, source=source, split=split, argv=argv)["pair_ids"]
        name = str(labels)
    elif heldout_of:
        rows = corpus.query("SELECT config FROM models WHERE id = ? AND kind = 'rm'", [heldout_of])
        if not rows:
            raise UserError(f"--heldout-of {heldout_of}: no reward model with that id; list them with "
                            "`python -m corpus sql \"SELECT id, path FROM models WHERE kind = 'rm'\"`")
        ids = json.loads(rows[0]["config"] or "{}").get("heldout_pair_ids") or []
        if not ids:
            raise UserError(f"--heldout-of {heldout_of}: that model held no pairs out (trained with --eval-fraction 0?)")
        name = f"heldout-of:{heldout_of}"
    else:
        name = f"human pairs (source {source})" if source else "human pairs"
    sql = ("SELECT pr.id, pr.prompt_id, pr.chosen_id, pr.rejected_id, c.response AS chosen, r.response AS rejected, "
           "coalesce(json_extract_string(p.meta, '$.category'), p.source, 'all') AS category "
           "FROM pairs pr JOIN prompts p ON p.id = pr.prompt_id JOIN generations c ON c.id = pr.chosen_id "
           "JOIN generations r ON r.id = pr.rejected_id ")
    with corpus.connect() as con:
        if ids is not None:
            wanted = pa.table({"k": ids})  # noqa: F841  (DuckDB reads the local by name)
            cur = con.execute(sql + "WHERE pr.id IN (SELECT k FROM wanted) ORDER BY pr.id")
        else:
            cur = con.execute(sql + "WHERE pr.method = 'human' AND (? IS NULL OR p.source = ?) ORDER BY pr.id", [source, source])
        cols = [d[0] for d in cur.description]
        pairs = [dict(zip(cols, r)) for r in cur.fetchall()]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise UserError("no labelled pairs: import some with `python -m corpus import-pairs FILE --db ...`, "
                        "or pass --labels FILE" + (f" (none has source {source!r})" if source else ""))
    return pairs, name


def _norm(rubric: Rubric, row: dict[str, Any]) -> float | None:
    meta = json.loads(row["meta"]) if row["meta"] else {}
    if meta.get("score_norm") is not None:
        return float(meta["score_norm"])
    c = next((c for c in rubric.criteria if c.name == row["criterion"]), None)
    if row["score"] is None or c is None or c.hi <= c.lo:
        return None
    return (float(row["score"]) - c.lo) / (c.hi - c.lo)


def _judgments(corpus: Corpus, rubric: Rubric, targets: list[str], kind: str) -> list[dict[str, Any]]:
    with corpus.connect() as con:
        wanted = pa.table({"k": targets})  # noqa: F841
        hs = pa.table({"h": [rubric.criterion_hash(c) for c in rubric.criteria]})  # noqa: F841
        cur = con.execute(
            "SELECT target_id, generation_a, generation_b, judge, criterion, sample_idx, \"order\", score, parse_status, meta "
            "FROM judgments WHERE rubric = ? AND rubric_version IS NOT DISTINCT FROM ? AND target_kind = ? "
            "AND criterion_hash IN (SELECT h FROM hs) AND target_id IN (SELECT k FROM wanted)",
            [rubric.name, rubric.version, kind])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def _prefer(s_chosen: float | None, s_rejected: float | None) -> float | None:
    if s_chosen is None or s_rejected is None:
        return None
    return 1.0 if s_chosen > s_rejected else 0.5 if s_chosen == s_rejected else 0.0


def pointwise_outcomes(corpus: Corpus, rubric: Rubric, pairs: list[dict[str, Any]]) -> dict[str, list[PairOutcome]]:
    """judge -> outcomes: a member prefers the answer with the higher rubric-weighted score."""
    gens = sorted({p[k] for p in pairs for k in ("chosen_id", "rejected_id")})
    weight = {c.name: c.weight for c in rubric.criteria}
    per: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in _judgments(corpus, rubric, gens, "generation"):
        n = _norm(rubric, r) if r["parse_status"] != "failed" else None
        if n is not None:
            per[r["judge"]][r["target_id"]][r["criterion"]].append(n)
    scores: dict[str, dict[str, float]] = {}
    for judge, by_gen in per.items():
        scores[judge] = {}
        for g, by_c in by_gen.items():
            w = sum(weight[c] for c in by_c)
            if w > 0:
                scores[judge][g] = sum(weight[c] * sum(v) / len(v) for c, v in by_c.items()) / w
    if len(scores) > 1:
        with corpus.connect() as con:
            wanted = pa.table({"k": gens})  # noqa: F841
            rows = con.execute("SELECT generation_id, score_norm FROM generation_scores WHERE rubric = ? AND "
                               "rubric_version IS NOT DISTINCT FROM ? AND generation_id IN (SELECT k FROM wanted)",
                               [rubric.name, rubric.version]).fetchall()
        scores["jury"] = {g: float(s) for g, s in rows if s is not None}
    return {j: [PairOutcome(p["id"], p["category"], _prefer(s.get(p["chosen_id"]), s.get(p["rejected_id"])),
                            longer(p["chosen"], p["rejected"])) for p in pairs] for j, s in scores.items()}


def _winner_id(r: dict[str, Any], meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """(winner id or None for a tie, 'A'|'B'|'tie') of one pairwise judgment."""
    w = meta.get("winner")
    if w is None and r["score"] is not None:  # a judge that stores only P(first wins)
        w = "A" if r["score"] > 0.5 else "B" if r["score"] < 0.5 else "tie"
    return (r["generation_a"] if w == "A" else r["generation_b"] if w == "B" else None), w


def _preference(orders: dict[str, tuple], chosen: str, rejected: str, same: bool) -> float:
    """1 / 0.5 / 0: one voter's verdict on the chosen answer from its two orders. A logprob judge
    decides by P(chosen wins) averaged over both orders (slot bias cancels, as in pairwise.reconcile);
    otherwise orders that name different winners make a tie."""
    if all(v[3] is not None for v in orders.values()):
        p = sum(v[3] if v[2] == chosen else 1.0 - v[3] for v in orders.values()) / len(orders)
        return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
    v = orders["ab"][0] if same else None
    return 1.0 if v == chosen else 0.0 if v == rejected else 0.5


def pairwise_outcomes(corpus: Corpus, rubric: Rubric, pairs: list[dict[str, Any]]) -> dict[str, list[PairOutcome]]:
    """judge -> outcomes: each (criterion, sample) voter's two orders reconciled (a changed winner is a tie)."""
    key = {pairwise.pair_id(p["chosen_id"], p["rejected_id"]): p for p in pairs}
    votes: dict[str, dict[str, dict[tuple, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in _judgments(corpus, rubric, list(key), "pair"):
        if r["parse_status"] == "failed":
            continue
        meta = json.loads(r["meta"]) if r["meta"] else {}
        wid, w = _winner_id(r, meta)
        # a logprob judge's score is P(shown first wins): kept as P(generation_a wins) to average the orders
        p_first = float(r["score"]) if meta.get("method") == "logprob" and r["score"] is not None else None
        votes[r["judge"]][r["target_id"]].setdefault((r["criterion"], r["sample_idx"]), {})[r["order"]] = (wid, w, r["generation_a"], p_first)
    out: dict[str, list[PairOutcome]] = {}
    for judge, by_pair in votes.items():
        rows = []
        for pid, p in key.items():
            o = PairOutcome(p["id"], p["category"], None, longer(p["chosen"], p["rejected"]))
            prefs = []
            for orders in by_pair.get(pid, {}).values():
                o.first_slot += [v[1] == "A" for v in orders.values()]
                if "ab" in orders and "ba" in orders:
                    same = orders["ab"][0] == orders["ba"][0]
                    o.flips.append(not same)
                    prefs.append(_preference(orders, p["chosen_id"], p["rejected_id"], same))
            o.agree = sum(prefs) / len(prefs) if prefs else None
            rows.append(o)
        out[judge] = rows
    if len(votes) > 1:
        verdicts = corpus.query("SELECT generation_a, generation_b, winner FROM pair_verdicts WHERE rubric = ? "
                                "AND rubric_version IS NOT DISTINCT FROM ?", [rubric.name, rubric.version])
        by: dict[tuple[str, str], list[float]] = defaultdict(list)
        for v in verdicts:
            by[(v["generation_a"], v["generation_b"])].append({"a": 1.0, "b": 0.0}.get(v["winner"], 0.5))
        jury = []
        for p in pairs:
            a, b = sorted((p["chosen_id"], p["rejected_id"]))
            got = by.get((a, b))
            agree = None
            if got:
                a_wins = sum(got) / len(got)  # share won by generation_a
                agree = a_wins if a == p["chosen_id"] else 1.0 - a_wins
            jury.append(PairOutcome(p["id"], p["category"], agree, longer(p["chosen"], p["rejected"])))
        out["jury"] = jury
    return out


def run_judge_eval(corpus: Corpus, rubric_path: str, *, labels: str | None = None, source: str | None = None,
                   heldout_of: str | None = None, split: str | None = None, limit: int | None = None,
                   backend: Backend | None = None, seed: int = 0, plot: str | None = None, progress: bool = True,
                   argv: list[str] | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge the labelled pairs with the rubric's judges (reusing stored judgments), compute the
    figures, store them in judge_evals and optionally draw them; returns the report dict.
    `limits` go to `run_judge` (the rubric's judges' batch size, timeout, prompt size limit)."""
    rubric = load_rubric(rubric_path)
    if plot and not Path(plot).parent.exists():
        raise UserError(f"--plot {plot}: folder {Path(plot).parent} does not exist; create it first")
    pairs, name = labelled_pairs(corpus, labels, source, heldout_of, split, limit, argv)
    gens = sorted({p[k] for p in pairs for k in ("chosen_id", "rejected_id")})
    labels_hash = snapshot_hash("judge-eval", [p["id"] for p in pairs])
    config = {"rubric": rubric.name, "rubric_version": rubric.version, "rubric_hash": rubric.rubric_hash,
              "labels": name, "labels_hash": labels_hash, "pairs": len(pairs), "seed": seed}
    with corpus.run("judge eval", config, argv=argv) as run:
        summary = run_judge(corpus, rubric_path, where="g.id IN (" + ", ".join(f"'{g}'" for g in gens) + ")",
                            backend=backend, progress=progress, limits=limits)
        with corpus.session():
            outcomes = (pointwise_outcomes if rubric.mode == "pointwise" else pairwise_outcomes)(corpus, rubric, pairs)
        # this configuration's judges only: other judges stored under the rubric are not measured here
        members = set(Judges(rubric, corpus, run.id, backend, False).names) if rubric.llm_criteria() else set()
        members |= {f"verifier:{c.verifier.type}" for c in rubric.verifier_criteria() if c.verifier}
        outcomes = {j: o for j, o in outcomes.items() if j in members or (j == "jury" and len(members) > 1)}
        for j in members - set(outcomes):  # a judge whose every answer failed to parse still gets its row
            outcomes[j] = [PairOutcome(p["id"], p["category"], None, longer(p["chosen"], p["rejected"])) for p in pairs]
        any_outcomes = next(iter(outcomes.values()), None) or [
            PairOutcome(p["id"], p["category"], None, longer(p["chosen"], p["rejected"])) for p in pairs]
        judges = [{"judge": j, "kind": "jury" if j == "jury" else "member", **judge_metrics(o, seed)}
                  for j, o in sorted(outcomes.items(), key=lambda kv: (kv[0] == "jury", kv[0]))]
        judges.append({"judge": BASELINE, "kind": "baseline", **baseline_metrics(any_outcomes, seed)})
        criteria = [c.name for c in rubric.criteria]
        recs = [JudgeEval(rubric=rubric.name, rubric_version=rubric.version, rubric_hash=rubric.rubric_hash,
                          judge=j["judge"], labels=name, labels_hash=labels_hash, n_pairs=len(pairs),
                          accuracy=j["accuracy"]["value"], accuracy_lower=j["accuracy"]["lower"],
                          accuracy_upper=j["accuracy"]["upper"], run_id=run.id,
                          metrics={**{k: v for k, v in j.items() if k not in ("judge",)}, "criteria": criteria})
                for j in judges]
        corpus.insert(recs, replace=True)
        report = {"rubric": rubric.name, "rubric_version": rubric.version, "mode": rubric.mode, "labels": name,
                  "pairs": len(pairs), "judges": judges,
                  "judge_run": {k: summary.get(k) for k in ("judged", "cached", "failed", "retried", "transient")}}
        if plot:
            from .eval_report import plot_eval

            plot_eval(report, plot)
            report["plot"] = plot
        run.summary = {"pairs": len(pairs), "accuracy": {j["judge"]: j["accuracy"]["value"] for j in judges}}
    return report
