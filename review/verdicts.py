"""Reading the queue and recording verdicts: shared by the web page and the terminal flow.

Every verdict is a new `reviews` row (history kept); the view `review_verdicts` shows each
reviewer's latest one per item. An edit also writes the corrected text as a new generation
with provenance 'human' and parent_id = the original, in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

from corpus import Corpus, Generation, Review, UserError

VERDICTS = ("approve", "reject", "edit")
MAX_TEXT = 100_000


def progress(corpus: Corpus, reviewer: str) -> dict[str, int]:
    row = corpus.query(
        "SELECT count(*) AS total, count(v.id) AS done FROM review_sample s "
        "LEFT JOIN review_verdicts v ON v.target_id = s.target_id AND v.reviewer = ?",
        [reviewer],
    )[0]
    return {"total": int(row["total"]), "done": int(row["done"])}


def next_item(corpus: Corpus, reviewer: str, after: int | None = None) -> dict[str, Any] | None:
    """The first queued item this reviewer has not judged (after queue position `after`)."""
    rows = corpus.query(
        "SELECT s.* FROM review_sample s WHERE NOT EXISTS ("
        "  SELECT 1 FROM reviews r WHERE r.target_id = s.target_id AND r.reviewer = ?) "
        "AND s.priority > ? ORDER BY s.priority LIMIT 1",
        [reviewer, -1 if after is None else after],
    )
    return rows[0] if rows else None


def neighbours(corpus: Corpus, priority: int) -> tuple[str | None, str | None]:
    prev = corpus.query("SELECT id FROM review_sample WHERE priority < ? ORDER BY priority DESC LIMIT 1", [priority])
    nxt = corpus.query("SELECT id FROM review_sample WHERE priority > ? ORDER BY priority LIMIT 1", [priority])
    return (prev[0]["id"] if prev else None), (nxt[0]["id"] if nxt else None)


def item_details(corpus: Corpus, sample_id: str, reviewer: str) -> dict[str, Any] | None:
    """Everything a reviewer needs to judge one item, read in one connection."""
    with corpus.session():
        rows = corpus.query("SELECT * FROM review_sample WHERE id = ?", [sample_id])
        if not rows:
            return None
        item = rows[0]
        gen = corpus.query(
            "SELECT g.id, g.response, g.model, g.backend, g.provenance, p.messages "
            "FROM generations g LEFT JOIN prompts p ON p.id = g.prompt_id WHERE g.id = ?",
            [item["target_id"]],
        )
        if not gen:
            return None
        g = gen[0]
        judgments = corpus.query(
            "SELECT judge, rubric, rubric_version, criterion, avg(score) AS score, "
            "string_agg(DISTINCT rationale, ' | ') AS rationale, count(*) AS n, "
            "bool_or(parse_status = 'failed') AS parse_failed "
            "FROM judgments WHERE target_id = ? OR generation_a = ? OR generation_b = ? "
            "GROUP BY ALL ORDER BY rubric, criterion, judge",
            [g["id"], g["id"], g["id"]],
        )
        scores = corpus.query(
            "SELECT rubric, rubric_version, criterion, score_norm, n_judgments FROM judge_scores "
            "WHERE generation_id = ? ORDER BY rubric, criterion",
            [g["id"]],
        )
        flags = corpus.query(
            "SELECT DISTINCT kind, stage, reason FROM flags WHERE target_id = ? ORDER BY kind", [g["id"]]
        )
        mine = corpus.query(
            "SELECT verdict, note, created_at FROM reviews WHERE target_id = ? AND reviewer = ? "
            "ORDER BY created_at DESC",
            [g["id"], reviewer],
        )
        prev_id, next_id = neighbours(corpus, item["priority"])
    messages = json.loads(g["messages"]) if g["messages"] else []
    return {
        "item": item, "generation": g, "messages": messages, "judgments": judgments,
        "scores": scores, "flags": flags, "history": mine, "current": mine[0] if mine else None,
        "prev_id": prev_id, "next_id": next_id,
    }


def record_verdict(
    corpus: Corpus, target_id: str, reviewer: str, verdict: str,
    note: str | None = None, edited_response: str | None = None,
) -> Review:
    """Store one verdict (and, for an edit, the corrected generation) in one transaction."""
    if verdict not in VERDICTS:
        raise UserError(f"verdict {verdict!r}: choose one of {', '.join(VERDICTS)}")
    note = (note or "").strip()[:MAX_TEXT] or None
    if verdict == "reject" and not note:
        raise UserError("reject: give a reason, so the judge and filter authors can learn from it")
    records: list[Any] = []
    edited_id = None
    if verdict == "edit":
        original = corpus.query("SELECT prompt_id, response FROM generations WHERE id = ?", [target_id])
        if not original:
            raise UserError(f"edit: no generation {target_id}")
        text = (edited_response or "").replace("\r\n", "\n")
        if not text.strip():
            raise UserError("edit: the corrected response is empty; reject the item instead")
        if text == original[0]["response"]:
            raise UserError("edit: the response is unchanged; approve it instead")
        review = Review(target_id=target_id, reviewer=reviewer, verdict=verdict, note=note)
        gen = Generation(
            prompt_id=original[0]["prompt_id"], backend="human", model=f"human:{reviewer}",
            # the review id makes every edit its own row (the id hashes params, not the text)
            params={"review_id": review.id}, response=text[:MAX_TEXT],
            provenance="human", parent_id=target_id,
        )
        edited_id = gen.id
        review.edited_generation_id = edited_id
        records += [gen, review]
    else:
        records.append(Review(target_id=target_id, reviewer=reviewer, verdict=verdict, note=note))
    corpus.insert(records)
    return records[-1]
