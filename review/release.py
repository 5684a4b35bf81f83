"""The release gate: the filtered snapshot goes to training only when the human sample passes.

Approval rate = reviewed items (of the current snapshot) that a strict majority of their
reviewers approved / reviewed items. The gate passes when at least `min_reviews` items are
reviewed and the Wilson lower bound of that rate is >= `threshold`. A release names its rows
in `release_items`; items people rejected or corrected are left out of it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from corpus import Corpus, Release, canonical_json, snapshot_hash

from .stats import release_gate

DEFAULT_THRESHOLD = 0.7
DEFAULT_MIN_REVIEWS = 30


def _snapshot(corpus: Corpus) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """accepted_sft ids, (pair id, chosen generation id), and what is missing to have them."""
    tables = corpus.tables()
    missing = [v for v in ("accepted_sft", "preference_pairs") if v not in tables]
    sft = [r["id"] for r in corpus.query("SELECT id FROM accepted_sft ORDER BY id")] if "accepted_sft" in tables else []
    pairs = []
    if "preference_pairs" in tables:
        pairs = [
            (r["id"], r["chosen_id"]) for r in corpus.query(
                "SELECT pp.id, p.chosen_id FROM preference_pairs pp LEFT JOIN pairs p ON p.id = pp.id ORDER BY pp.id"
            )
        ]
    return sft, pairs, missing


def release(
    corpus: Corpus, threshold: float | None = None, min_reviews: int | None = None, auto: bool = False,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Record a release of the current filtered snapshot if the gate passes (or auto=True).

    Returns dict(decision 'released' | 'auto_released' | 'blocked', release_id, snapshot_hash,
    sft_items, pair_items, approved, reviewed, rate, lower, upper, missing). A blocked attempt is
    recorded too (no items), so the history shows every decision.
    """
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    min_reviews = DEFAULT_MIN_REVIEWS if min_reviews is None else min_reviews
    config = {"threshold": threshold, "min_reviews": min_reviews, "auto": auto, "confidence": confidence}
    with corpus.run("review release", config) as run:
        with corpus.session():
            sft, pairs, views_missing = _snapshot(corpus)
            in_snapshot = set(sft) | {chosen for _, chosen in pairs if chosen}
            status = {
                r["target_id"]: r["status"]
                for r in corpus.query("SELECT target_id, status FROM review_queue WHERE n_reviews > 0")
            }
        relevant = {t: s for t, s in status.items() if t in in_snapshot}
        approved = sum(1 for s in relevant.values() if s == "approved")
        gate = release_gate(approved, len(relevant), threshold, min_reviews, confidence)
        missing = list(gate.missing)
        if views_missing:
            missing.insert(0, f"the filtered snapshot: view(s) {', '.join(views_missing)} missing; run `python -m filters`")
        elif not sft and not pairs:
            missing.insert(0, "a filtered snapshot with rows: accepted_sft and preference_pairs are empty")
        outside = len(status) - len(relevant)
        if outside and gate.reviewed < min_reviews:
            missing.append(f"{outside} reviewed items are not in the current snapshot; queue snapshot items "
                           "with `python -m review sample --population accepted`")
        no_snapshot = bool(views_missing) or (not sft and not pairs)
        if auto and not no_snapshot:  # auto skips the people, never the need for data
            decision = "auto_released"
        else:
            decision = "released" if not missing else "blocked"
        # people rejected (or had to correct) these: they stay out of the training data
        refused = {t for t, s in status.items() if s == "rejected"}
        items = []
        if decision != "blocked":
            items = [("sft", i) for i in sft if i not in refused] + [("pair", p) for p, c in pairs if c not in refused]
            if not items:  # reviewers refused everything there was: nothing to train on
                decision = "blocked"
                missing.append("a snapshot with rows reviewers did not reject: every row was rejected or edited")
        snap = snapshot_hash("release", [f"{k}:{i}" for k, i in items] if items else
                             [f"sft:{i}" for i in sft] + [f"pair:{p}" for p, _ in pairs])
        stats = {
            "approved": approved, "reviewed": len(relevant), "rate": gate.rate, "lower": gate.lower,
            "upper": gate.upper, "threshold": threshold, "min_reviews": min_reviews, "confidence": confidence,
            "human_checked": not auto, "missing": missing,
            "sft_items": sum(1 for k, _ in items if k == "sft"), "pair_items": sum(1 for k, _ in items if k == "pair"),
            "left_out_by_review": (len(sft) + len(pairs)) - len(items) if items else 0,
        }
        if auto:
            stats["note"] = "auto-released: no human checked this snapshot; the gate was not applied"
        rel = Release(snapshot_hash=snap, sample_stats=stats, decision=decision, run_id=run.id)
        with corpus.transaction() as con:
            fresh = not con.execute("SELECT 1 FROM releases WHERE id = ?", [rel.id]).fetchone()
            if fresh:
                con.execute(
                    "INSERT INTO releases (id, snapshot_hash, sample_stats, decision, run_id) VALUES (?, ?, ?, ?, ?)",
                    [rel.id, rel.snapshot_hash, canonical_json(stats), decision, run.id],
                )
                if items:
                    batch = pa.table({  # noqa: F841
                        "release_id": [rel.id] * len(items), "kind": [k for k, _ in items], "item_id": [i for _, i in items],
                    })
                    con.execute("INSERT INTO release_items SELECT release_id, kind, item_id FROM batch")
        run.summary = {"decision": decision, "release_id": rel.id, "missing": missing}
    return {"decision": decision, "release_id": rel.id, "snapshot_hash": snap, **stats}

