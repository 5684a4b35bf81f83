"""Small composable steps, datatrove style: a pipeline is a list of steps; a Filter implements
only `filter(item) -> bool | (False, reason) | (False, reason, details)` and the base class counts
kept and dropped items per reason and remembers each drop so it can become a flag row.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


_WORD = re.compile(r"\w+")


@dataclass
class Item:
    """One thing a filter looks at: a prompt or a candidate response (a generation)."""

    id: str
    kind: str                          # prompt | generation
    text: str
    prompt_id: str | None = None       # for a generation
    finish_reason: str | None = None
    score: float | None = None         # overall score_norm in [0, 1] (generation_scores)
    criteria: dict[str, float] = field(default_factory=dict)  # criterion -> score_norm
    judge_flags: list[tuple[str, str]] = field(default_factory=list)  # (kind, reason) from stage 'judge'
    # set by filters configured with as_rejected: the item may still be the rejected side of a pair,
    # never an SFT example nor the chosen side
    rejected_only: bool = False
    no_pairs: bool = False             # set by the judge 'tie' policy: the score is not trusted to rank
    meta: dict[str, Any] = field(default_factory=dict)

    def words(self) -> list[str]:
        """Lower-cased word tokens, computed once and shared by every filter that counts words."""
        w = self.meta.get("_words")
        if w is None:
            w = self.meta["_words"] = _WORD.findall(self.text.lower())
        return w


@dataclass
class Decision:
    """A filter's verdict on one item; becomes a flags row (stage 'filters')."""

    item: Item
    filter: str
    reason: str
    details: dict[str, Any]
    action: str                        # drop | as_rejected | review


@dataclass
class FilterStats:
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count


class Step:
    """A pipeline step: items in, items out (a generator)."""

    name = "step"

    def run(self, items: Iterable[Item]) -> Iterator[Item]:  # pragma: no cover - interface
        raise NotImplementedError


class Filter(Step):
    """Subclasses implement `filter`. A failed item leaves the stream and is recorded in
    `decisions`, unless `as_rejected` is set: then it continues, marked `rejected_only`, so a
    refusal or a truncated answer can still serve as the rejected side of a preference pair."""

    name = "filter"

    def __init__(self, as_rejected: bool = False):
        self.as_rejected = as_rejected
        self.stats = FilterStats()
        self.decisions: list[Decision] = []

    def filter(self, item: Item) -> bool | tuple:
        raise NotImplementedError

    def judge(self, item: Item) -> bool:
        """Apply `filter`, record the outcome; True when the item goes on downstream."""
        self.stats.seen += 1
        out = self.filter(item)
        if out is True or (isinstance(out, tuple) and out[0]):
            self.stats.kept += 1
            return True
        reason = out[1] if isinstance(out, tuple) and len(out) > 1 else self.name
        details = out[2] if isinstance(out, tuple) and len(out) > 2 else {}
        self.stats.dropped[reason] += 1
        action = "as_rejected" if self.as_rejected else "drop"
        self.decisions.append(Decision(item, self.name, reason, dict(details), action))
        if self.as_rejected:
            item.rejected_only = True
            return True
        item.meta.pop("_words", None)  # a dropped item is only kept for its flag
        return False

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if self.judge(item):
                yield item


def run_pipeline(steps: list[Step], items: Iterable[Item]) -> list[Item]:
    """Chain the steps lazily and return the items that came out of the last one."""
    stream: Iterable[Item] = items
    for step in steps:
        stream = step.run(stream)
    return list(stream)
