"""Reward-model training rows and the held-out figure its run reports.

- `split_heldout`: a fixed share of the release's pairs is kept out of training, whole prompts
  at a time, chosen by a hash of (seed, prompt id), so the same release and seed hold out the
  same pairs on any machine and no held-out prompt is trained on through another of its pairs;
- `fit_dialogues`: TRL's RewardTrainer drops every pair longer than `max_length` tokens, which
  on multi-turn data (HH-RLHF) silently throws away the long dialogues; dropping the earliest
  turns instead keeps the pair and the turns nearest the answer;
- `heldout_accuracy`: chosen outscores rejected on the held-out pairs (a tie counts half), with
  a 95% Wilson interval (the batch accuracy TRL logs says little about a model that has seen the batch).
"""

from __future__ import annotations

import math
from typing import Any

from corpus import content_id, snapshot_hash

from .data import TrainingSet


def split_heldout(ts: TrainingSet, fraction: float, seed: int) -> tuple[TrainingSet, list[dict[str, Any]], list[str]]:
    """(the training part as a TrainingSet, held-out rows, held-out ids); fraction 0 holds out none.

    Whole prompts are held out (ranked by a hash of seed and prompt id), so no pair of a held-out
    prompt is trained on; the held-out share is about `fraction`, rounded to whole prompts."""
    if fraction <= 0 or len(ts.rows) < 2:
        return ts, [], []
    n_held = min(len(ts.rows) - 1, max(1, round(fraction * len(ts.rows))))
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(ts.prompt_ids or ts.ids):
        groups.setdefault(pid or ts.ids[i], []).append(i)
    held: set[int] = set()
    for pid in sorted(groups, key=lambda g: content_id("heldout", [seed, g])):
        if len(held) >= n_held:
            break
        if len(held) + len(groups[pid]) < len(ts.rows):  # something must be left to train on
            held.update(groups[pid])
    train_idx = [i for i in range(len(ts.ids)) if i not in held]
    held_idx = sorted(held)
    train_ids = [ts.ids[i] for i in train_idx]
    train = TrainingSet(ts.release_id, ts.kind, train_ids, [ts.rows[i] for i in train_idx],
                        snapshot_hash("train:pair", train_ids),
                        [ts.prompt_ids[i] for i in train_idx] if ts.prompt_ids else None)
    return train, [ts.rows[i] for i in held_idx], [ts.ids[i] for i in held_idx]


def fit_dialogues(rows: list[dict[str, Any]], tok: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Rows whose chosen and rejected conversations fit `max_length` tokens once the earliest
    prompt turns are dropped (the last user turn always stays); returns (rows, rows shortened)."""
    def length(msgs: list[dict[str, str]]) -> int:
        text = tok.apply_chat_template(msgs, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    out, shortened = [], 0
    for r in rows:
        prompt = list(r["prompt"])
        cut = False
        while len(prompt) > 1 and max(length(prompt + r["chosen"]), length(prompt + r["rejected"])) > max_length:
            prompt = prompt[1:]
            while len(prompt) > 1 and prompt[0]["role"] != "user":  # start on a user turn
                prompt = prompt[1:]
            cut = True
        shortened += cut
        out.append({**r, "prompt": prompt})
    return out, shortened


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def heldout_accuracy(model_dir: str, rows: list[dict[str, Any]], max_length: int = 2048) -> dict[str, Any]:
    """Accuracy of the saved reward model on held-out rows, each fitted to `max_length` tokens as
    training fitted its rows (earliest turns dropped); a tie counts half, as in `judge eval`."""
    from .reward import RewardScorer

    if not rows:
        return {}
    scorer = RewardScorer(model_dir, max_length=max_length)
    rows, _ = fit_dialogues(rows, scorer.tok, max_length)
    chosen = scorer.score([r["prompt"] + r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] + r["rejected"] for r in rows])
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    lo, hi = wilson(wins, len(rows))
    longer = sum(_longer(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows)
    return {"heldout_accuracy": wins / len(rows), "heldout_lower": lo, "heldout_upper": hi, "heldout_pairs": len(rows),
            "heldout_longer_wins": longer / len(rows),
            "heldout_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(rows)}


def _longer(chosen: str, rejected: str) -> float:
    """The "longer answer wins" baseline on one pair (characters; equal lengths count half)."""
    return 1.0 if len(chosen) > len(rejected) else 0.5 if len(chosen) == len(rejected) else 0.0
