"""Ask LLM judges and turn their replies into `Judgment` records (shared by pointwise and pairwise).

A request whose reply cannot be parsed is asked once more (per `rubric.retries`) with the error
shown; if it still fails the judgment is stored with `parse_status='failed'`, `score=None` and a
`parse_failed` flag. A transient backend failure stores nothing (a rerun will ask again) and is
recorded in `failures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from backends import Backend, ChatRequest, Completion
from corpus import Failure, Flag, Judgment, Record

from .parse import Parsed, expected_score, parse_pairwise, parse_pointwise
from .render import retry_request


@dataclass
class LLMTask:
    """One judge call to make, and the judgment row it becomes."""

    request: ChatRequest
    judge_idx: int
    fields: dict[str, Any]  # Judgment fields except score/rationale/raw/parse_status
    lo: int = 0
    hi: int = 1
    pairwise: bool = False
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    task: LLMTask
    parsed: Parsed | None
    completion: Completion
    attempts: int
    first_raw: str | None = None


def _parse(task: LLMTask, text: str) -> Parsed:
    return parse_pairwise(text) if task.pairwise else parse_pointwise(text, task.lo, task.hi)


def ask(backends: list[Backend], tasks: list[LLMTask], retries: int, progress: Callable[[int], None],
        done: Callable[[list[Outcome]], None] | None = None) -> list[Outcome]:
    """Send tasks grouped by judge, parse, retry the unparseable ones in one more batch each round.

    `done` gets each outcome as soon as it is final (parsed, failed for good, or out of retries),
    while the backend is still answering the rest, so the caller can store it at once: a job
    stopped half way keeps every judgment it finished. Every outcome reaches `done` exactly once.
    """
    outcomes: list[Outcome | None] = [None] * len(tasks)
    reported: set[int] = set()

    def final(i: int, rounds_left: int) -> bool:
        o = outcomes[i]
        return o is not None and (rounds_left == 0 or not o.completion.ok or o.parsed.ok)  # type: ignore[union-attr]

    def report(idxs: list[int], rounds_left: int) -> None:
        ready = [i for i in idxs if i not in reported and final(i, rounds_left)]
        reported.update(ready)
        if done is not None and ready:
            done([outcomes[i] for i in ready])  # type: ignore[misc]

    by_judge: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        by_judge.setdefault(t.judge_idx, []).append(i)
    for j, idxs in by_judge.items():
        def first(results: list[tuple[int, Completion]], idxs: list[int] = idxs) -> None:
            for k, c in results:
                i = idxs[k]
                outcomes[i] = Outcome(tasks[i], _parse(tasks[i], c.text) if c.ok else None, c, 1)
            report([idxs[k] for k, _ in results], retries)

        backends[j].generate([tasks[i].request for i in idxs], progress, on_results=first)
        for n in range(retries):
            redo = [i for i in idxs if i not in reported]
            if not redo:
                break
            reqs = [retry_request(tasks[i].request, outcomes[i].completion.text, outcomes[i].parsed.error) for i in redo]  # type: ignore[union-attr]

            def again(results: list[tuple[int, Completion]], redo: list[int] = redo, left: int = retries - n - 1) -> None:
                for k, c in results:
                    i, prev = redo[k], outcomes[redo[k]]
                    outcomes[i] = Outcome(tasks[i], _parse(tasks[i], c.text) if c.ok else prev.parsed,  # type: ignore[union-attr]
                                          c if c.ok else prev.completion, prev.attempts + 1,  # type: ignore[union-attr]
                                          prev.first_raw or prev.completion.text)  # type: ignore[union-attr]
                report([redo[k] for k, _ in results], left)

            backends[j].generate(reqs, on_results=again)
        report(idxs, 0)
    return outcomes  # type: ignore[return-value]


def to_records(outcomes: list[Outcome], run_id: str) -> tuple[list[Record], dict[str, int]]:
    """Judgments (+ parse_failed flags, + failures for transient errors) and counts by status."""
    recs: list[Record] = []
    counts = {"ok": 0, "retried": 0, "failed": 0, "transient": 0, "pending": 0}
    for o in outcomes:
        f, c = o.task.fields, o.completion
        if c.pending:  # in a batch still running, or held back by --max-cost: the next run asks again
            counts["pending"] += 1
            continue
        if not c.ok and not c.permanent:
            counts["transient"] += 1
            recs.append(Failure(stage="judge", target_id=f["target_id"], error=(c.error or "unknown error")[:500], run_id=run_id))
            continue
        meta: dict[str, Any] = {**o.task.tags, "attempts": o.attempts}
        if o.first_raw is not None:
            meta["first_raw"] = o.first_raw[:2000]
        score = expected = None
        rationale = None
        if o.parsed is not None and o.parsed.ok and o.parsed.verdict:
            v = o.parsed.verdict
            rationale = v.get("rationale")
            if o.task.pairwise:
                meta["winner"] = v["winner"]
                score = {"A": 1.0, "B": 0.0, "tie": 0.5}[v["winner"]]
                shown = (f["generation_a"], f["generation_b"])
                meta["winner_id"] = shown[0] if v["winner"] == "A" else shown[1] if v["winner"] == "B" else None
            else:
                score = float(v["score"])
                expected = expected_score(c.logprobs, o.parsed.score_offset, o.task.lo, o.task.hi)
                meta["score_norm"] = (score - o.task.lo) / (o.task.hi - o.task.lo)
            meta["extra_prose"] = o.parsed.extra_prose
            status = "ok" if o.attempts == 1 else "retried"
        else:
            status = "failed"
            meta["error"] = c.error if not c.ok else (o.parsed.error if o.parsed else "no reply")
        counts[status] += 1
        recs.append(Judgment(**f, score=score, score_expected=expected, rationale=rationale, raw=c.text[:4000],
                             parse_status=status, meta=meta, run_id=run_id))
        if status == "failed":
            recs.append(Flag(target_id=f["target_id"], target_kind=f["target_kind"], kind="parse_failed", stage="judge",
                             reason=f"{f['judge']} on {f['criterion']}: {meta['error']}"[:300],
                             details={"criterion": f["criterion"], "judge": f["judge"], "raw": c.text[:300]}, run_id=run_id))
    return recs, counts
