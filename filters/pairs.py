"""Training sets from the candidates that survived the filters: rejection-sampling SFT (the best
candidates of each prompt) and preference pairs (best vs worst, all pairs above a margin, or
West-of-N by pairwise wins). A pair never holds one candidate twice nor two identical texts."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from .base import Item
from .dedup import normalize


@dataclass
class PairChoice:
    prompt_id: str
    chosen: Item
    rejected: Item
    margin: float
    method: str


@dataclass
class PairOutcome:
    pairs: list[PairChoice] = field(default_factory=list)
    ties: list[tuple[str, str, dict]] = field(default_factory=list)  # (prompt_id, reason, details)


def select_sft(by_prompt: dict[str, list[Item]], min_score: float | None, per_prompt: int) -> list[tuple[Item, int]]:
    """(candidate, rank) for the best `per_prompt` candidates of each prompt at or above min_score.
    Candidates without a score only qualify when min_score is None, after the scored ones."""
    out = []
    for items in by_prompt.values():
        ok = [
            i for i in items if not i.rejected_only
            and (min_score is None or (i.score is not None and i.score >= min_score))
        ]
        ok.sort(key=lambda i: (i.score is None, -(i.score or 0.0), i.id))
        out.extend((item, rank) for rank, item in enumerate(ok[:per_prompt], 1))
    return out


def _can_pair(a: Item, b: Item, tie_pairs: set[frozenset]) -> bool:
    return a.id != b.id and frozenset((a.id, b.id)) not in tie_pairs and _norm(a) != _norm(b)


def _norm(item: Item) -> str:
    if "_normalized" not in item.meta:  # computed once per candidate, not once per comparison
        item.meta["_normalized"] = normalize(item.text)
    return item.meta["_normalized"]


def _length_gap(a: Item, b: Item) -> float:
    """How far apart two replies are in length: |log| of the ratio of their word counts (+1)."""
    return abs(math.log((len(a.words()) + 1) / (len(b.words()) + 1)))


def _best_worst(pid: str, pool: list[Item], choosable: list[Item], key, method: str,
                min_margin: float, tie_pairs: set[frozenset], out: PairOutcome, length_balance: bool = False) -> None:
    rank = lambda i: (key(i), i.score)  # noqa: E731  equal ranks: the better score
    top = max(rank(i) for i in choosable)
    bests = sorted((i for i in choosable if rank(i) == top), key=lambda i: i.id, reverse=True)
    if not length_balance:
        bests = bests[:1]  # the best by id, as before: one chosen, its worst rejected
    options = []  # (chosen, rejected) among the tied best and, for each, its tied worst
    for best in bests:
        rejectable = [r for r in pool if _can_pair(best, r, tie_pairs)]
        if rejectable:
            low = min(rank(r) for r in rejectable)
            options += [(best, r) for r in sorted(rejectable, key=lambda i: i.id) if rank(r) == low]
    if not options:
        out.ties.append((pid, "no_rejected_candidate", {"best": bests[0].id}))
        return
    # length_balance: of the tied choices, the pair closest in length, so that length is not what
    # the pair teaches where the check did not ask for it; otherwise the first (lowest id) worst
    best, worst = min(options, key=lambda bw: _length_gap(*bw)) if length_balance else options[0]
    margin = key(best) - key(worst)
    if margin <= 0 or margin < min_margin:
        out.ties.append((pid, f"margin<{min_margin:g}", {"best": best.id, "worst": worst.id, "margin": round(margin, 4)}))
        return
    out.pairs.append(PairChoice(pid, best, worst, round(margin, 6), method))


def build_pairs(by_prompt: dict[str, list[Item]], method: str = "best_worst", min_margin: float = 0.1,
                max_per_prompt: int | None = None, tie_pairs: set[frozenset] | None = None,
                verdicts: dict[str, list[tuple[str, str, str]]] | None = None,
                length_balance: bool = False) -> PairOutcome:
    """verdicts: prompt_id -> [(generation_a, generation_b, winner 'a'|'b'|'tie')] for west_of_n.
    length_balance (best_worst, west_of_n): among candidates tied for best and for worst, pair the
    two closest in length (words) rather than the first by id."""
    tie_pairs = tie_pairs or set()
    out = PairOutcome()
    for pid, items in by_prompt.items():
        pool = [i for i in items if i.score is not None and not i.no_pairs]
        choosable = [i for i in pool if not i.rejected_only]
        if len(pool) < 2 or not choosable:
            reason = "fewer_than_2_candidates" if len(pool) < 2 else "no_choosable_candidate"
            out.ties.append((pid, reason, {"candidates": len(pool)}))
            continue
        if method == "best_worst":
            _best_worst(pid, pool, choosable, lambda i: i.score, method, min_margin, tie_pairs, out, length_balance)
        elif method == "west_of_n":
            rate = _win_rates(pool, (verdicts or {}).get(pid, []))
            if rate is None:  # no pairwise verdicts for every candidate: rank by pointwise score
                _best_worst(pid, pool, choosable, lambda i: i.score, method, min_margin, tie_pairs, out, length_balance)
            else:
                _best_worst(pid, pool, choosable, lambda i: rate[i.id], method, min_margin, tie_pairs, out, length_balance)
        elif method == "all":
            found = [
                PairChoice(pid, c, r, round(c.score - r.score, 6), method)
                for c in choosable for r in pool
                if _can_pair(c, r, tie_pairs) and c.score - r.score > 0 and c.score - r.score >= min_margin
            ]
            found.sort(key=lambda p: (-p.margin, p.chosen.id, p.rejected.id))
            if not found:
                out.ties.append((pid, f"margin<{min_margin:g}", {"candidates": len(pool)}))
            out.pairs.extend(found[:max_per_prompt] if max_per_prompt else found)
        else:
            raise ValueError(f"unknown pair method {method!r}")
    return out


def _win_rates(pool: list[Item], verdicts: list[tuple[str, str, str]]) -> dict[str, float] | None:
    """Copeland-style win rate of each candidate over the pairwise verdicts among the pool (a tie
    is half a win); None when some candidate has no verdict at all."""
    ids = {i.id for i in pool}
    wins: dict[str, float] = defaultdict(float)
    games: dict[str, int] = defaultdict(int)
    for a, b, winner in verdicts:
        if a not in ids or b not in ids or a == b:
            continue
        games[a] += 1
        games[b] += 1
        if winner == "a":
            wins[a] += 1
        elif winner == "b":
            wins[b] += 1
        else:
            wins[a] += 0.5
            wins[b] += 0.5
    if any(games[i] == 0 for i in ids):
        return None
    return {i: wins[i] / games[i] for i in ids}
