"""Judge-based decisions: score thresholds (overall and per criterion) and a policy for each judge
flag kind. drop: out of every set. tie: the candidate's score is not trusted to rank it, so it is
kept for SFT but makes no preference pair. review: held out and flagged for a human until a review
approves it. keep: ignore the flag. A reply a reviewer rejected or rewrote (reviews.verdict
'reject' | 'edit') is never SFT nor chosen, but may be the rejected side of a pair."""

from __future__ import annotations

from typing import Iterable, Iterator

from .base import Decision, FilterStats, Item, Step


class JudgeGate(Step):
    name = "judge"

    def __init__(self, unscored: str = "drop", min_score: float | None = None,
                 thresholds: dict[str, float] | None = None, policies: dict[str, str] | None = None,
                 approved: set[str] | None = None, overruled: dict[str, str] | None = None):
        self.unscored, self.min_score = unscored, min_score
        self.thresholds = thresholds or {}
        self.policies = policies or {}
        self.approved = approved or set()   # generation ids a human reviewer approved
        self.overruled = overruled or {}    # generation id -> 'reject' | 'edit' by a reviewer
        self.stats = FilterStats()
        self.decisions: list[Decision] = []

    def _decide(self, item: Item, reason: str, action: str, **details) -> None:
        self.stats.dropped[reason] += 1
        self.decisions.append(Decision(item, self.name, reason, details, action))

    def keep(self, item: Item) -> bool:
        self.stats.seen += 1
        n_before = sum(self.stats.dropped.values())
        for kind, why in item.judge_flags:
            policy = self.policies.get(kind, "keep")
            if policy == "drop":
                self._decide(item, f"{kind}:drop", "drop", judge_reason=why)
                return False
            if policy == "review":
                if item.id in self.approved:
                    continue
                self._decide(item, f"{kind}:review", "review", judge_reason=why)
                return False
            if policy == "tie":
                item.no_pairs = True
                self._decide(item, f"{kind}:tie", "tie", judge_reason=why)
        if item.id in self.overruled:
            item.rejected_only = True
            self._decide(item, f"human_{self.overruled[item.id]}", "as_rejected")
        if item.score is None:
            if self.unscored == "drop":
                self._decide(item, "unscored", "drop")
                return False
        elif self.min_score is not None and item.score < self.min_score:
            item.rejected_only = True
            self._decide(item, f"score<{self.min_score:g}", "as_rejected", score=round(item.score, 4))
        for criterion, minimum in self.thresholds.items():
            s = item.criteria.get(criterion)
            if s is not None and s < minimum:
                item.rejected_only = True
                self._decide(item, f"{criterion}<{minimum:g}", "as_rejected", score=round(s, 4))
        if sum(self.stats.dropped.values()) == n_before:
            self.stats.kept += 1
        return True

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if self.keep(item):
                yield item
