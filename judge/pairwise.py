"""Pairwise and ranking rubrics: every pair of candidates for a prompt, judged in both orders.

A pair's verdict per (judge, sample) reconciles its two orders: if the 'ab' and 'ba' verdicts
name different winners the pair is a tie and gets a `position_inconsistent` flag (the judge was
swayed by position, not content). A logprob judge (judge/logprob.py) gives probabilities, not just
winners: its verdict is the side whose P(win) averaged over both orders is above one half, so a
slot preference cancels out; orders that disagree are still flagged. The jury's verdicts are then combined by majority. A
candidate's criterion score is its win rate over the pairs it was in (a tie counts half), which
also orders candidates for ranking mode.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from corpus import content_id

from .calls import LLMTask
from .render import pairwise_request
from .rubric import JudgeSpec, Rubric

MAX_CANDIDATES = 16  # per prompt: n(n-1) calls per criterion and judge grow fast


def pair_id(a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return content_id("pair", [lo, hi])


def fields(rubric: Rubric, names: list[str], specs: list[JudgeSpec], cands: list[dict]) -> list[dict]:
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for g in cands:
        by_prompt[g["prompt_id"]].append(g)
    out = []
    for c in rubric.llm_criteria():
        chash = rubric.criterion_hash(c)
        for gs in by_prompt.values():
            gs = sorted(gs, key=lambda g: g["id"])[:MAX_CANDIDATES]
            for a, b in combinations(gs, 2):
                pid = pair_id(a["id"], b["id"])
                for j, (spec, name) in enumerate(zip(specs, names)):
                    for s in range(spec.samples):
                        for order, first, second in (("ab", a, b), ("ba", b, a)):
                            out.append({
                                "target_id": pid, "target_kind": "pair", "generation_a": first["id"],
                                "generation_b": second["id"], "judge": name, "rubric": rubric.name,
                                "rubric_version": rubric.version, "rubric_hash": rubric.rubric_hash,
                                "criterion": c.name, "criterion_hash": chash, "sample_idx": s, "order": order,
                                "_first": first, "_second": second, "_c": c, "_j": j,
                            })
    return out


def task(rubric: Rubric, judges: Any, f: dict) -> LLMTask:
    first, second = f["_first"], f["_second"]
    req = pairwise_request(rubric, f["_c"], judges.specs[f["_j"]], first["messages"], first["response"],
                           second["response"], f["sample_idx"])
    rec = {k: v for k, v in f.items() if not k.startswith("_") and k != "id"}
    return LLMTask(request=req, judge_idx=f["_j"], fields=rec, pairwise=True, tags={"prompt_id": first["prompt_id"]})


def reconcile(rows: list[dict]) -> dict[tuple, dict[str, Any]]:
    """Judgment rows of pairs -> per (pair, criterion): winner id or None (tie), consistency.

    Rows: target_id, criterion, judge, sample_idx, order, generation_a, generation_b, winner_id,
    parse_status. A (judge, sample) with an order missing or unparsed contributes nothing.
    """
    votes: dict[tuple, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    probs: dict[tuple, dict[tuple, dict[str, float]]] = defaultdict(dict)
    members: dict[str, tuple[str, str]] = {}
    for r in rows:
        if r["parse_status"] == "failed":
            continue
        key, voter = (r["target_id"], r["criterion"]), (r["judge"], r["sample_idx"])
        members[r["target_id"]] = tuple(sorted((r["generation_a"], r["generation_b"])))  # type: ignore[assignment]
        votes[key].setdefault(voter, {})[r["order"]] = r["winner_id"]
        if r.get("method") == "logprob" and r["score"] is not None:
            # score = P(shown first wins); kept as P(the pair's first member wins) to average the orders
            first_member = members[r["target_id"]][0]
            p = float(r["score"]) if r["generation_a"] == first_member else 1.0 - float(r["score"])
            probs[key].setdefault(voter, {})[r["order"]] = p
    out = {}
    for key, by_voter in votes.items():
        verdicts, inconsistent, debiased = [], 0, 0
        for voter, orders in by_voter.items():
            if "ab" not in orders or "ba" not in orders:
                continue
            if orders["ab"] != orders["ba"]:
                inconsistent += 1
            p = probs[key].get(voter, {})
            if "ab" in p and "ba" in p:  # a logprob judge: average over both orders cancels slot bias
                debiased += 1
                mean = (p["ab"] + p["ba"]) / 2
                lo, hi = members[key[0]]
                verdicts.append(lo if mean > 0.5 else hi if mean < 0.5 else None)
            elif orders["ab"] == orders["ba"]:
                verdicts.append(orders["ab"])
            else:
                verdicts.append(None)  # position decided it: a tie
        if not verdicts:
            continue
        counts = Counter(verdicts)
        top = max(counts.values())
        leaders = [w for w, n in counts.items() if n == top]
        winner = leaders[0] if len(leaders) == 1 else None
        a, b = members[key[0]]
        out[key] = {"generation_a": a, "generation_b": b, "winner": winner, "n": len(verdicts),
                    "inconsistent": inconsistent, "consistent": inconsistent == 0, "debiased": debiased}
    return out


def win_rates(verdicts: dict[tuple, dict[str, Any]]) -> dict[tuple[str, str], tuple[float, int]]:
    """(generation, criterion) -> (win rate with ties as half, pairs compared)."""
    wins: dict[tuple[str, str], float] = defaultdict(float)
    n: dict[tuple[str, str], int] = defaultdict(int)
    for (_, criterion), v in verdicts.items():
        for g in (v["generation_a"], v["generation_b"]):
            n[(g, criterion)] += 1
            wins[(g, criterion)] += 1.0 if v["winner"] == g else 0.5 if v["winner"] is None else 0.0
    return {k: (wins[k] / n[k], n[k]) for k in n}
