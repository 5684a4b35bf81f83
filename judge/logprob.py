"""Logprob judging: the verdict's probabilities from one forward pass, no decoding loop.

A judge with `method: logprob` in the rubric is asked for a one-token answer and we read the
distribution of that first token instead of letting it write:

- pairwise: P("A") vs P("B"), normalised over the two; the judgment's score is P(shown first
  wins). Both orders are always judged, and `pairwise.reconcile` averages P(a wins) over them,
  which cancels a judge's slot preference (position-debiased) instead of calling it a tie.
- pointwise: P over the scale's levels (one digit each), normalised; the score is the expected
  level sum(p * level), also stored as `score_expected`.

Where the backend has `label_logprobs` (hf) the probabilities come from the full vocabulary in a
batched forward pass. Elsewhere (vllm, any OpenAI-compatible server that returns logprobs) it is a
1-token request with `top_logprobs=20` through the call cache, and a label outside the top 20
counts as probability 0. Judgments are stored like others: `raw` holds the label probabilities
(JSON), `meta.method = "logprob"`, and a judgment whose labels all have no mass is `failed`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterator

from backends import Backend, ChatRequest, Completion, SamplingParams
from backends.hf import MAX_BATCH_TOKENS, token_batches
from corpus import Failure, Flag, Judgment, Record, UserError

from .render import FENCE_RULE, fence, render_conversation
from .rubric import Criterion, JudgeSpec, Rubric

TOP = 20  # alternatives asked of servers (the OpenAI API's maximum)
WINDOW = 256  # judge prompts rendered at a time
STREAM = 16  # judgments per write where the backend scores remotely (each call is cached as it arrives)
PAIR_LABELS = ("A", "B")


def pairwise_request(rubric: Rubric, c: Criterion, messages: list[dict[str, str]], first: str, second: str) -> ChatRequest:
    system = (
        f"You are a strict, impartial judge comparing two answers.\n\nTask: {rubric.task.strip()}\n\n"
        f"Criterion: {c.name}\n{c.description.strip()}\n\n{FENCE_RULE}\n\nThe order in which the answers are "
        "shown says nothing about their quality. Reply with one letter: A if response A is better, B if response B is."
    )
    user = (
        f"{fence('PROMPT', render_conversation(messages))}\n\n{fence('RESPONSE A', first)}\n\n"
        f"{fence('RESPONSE B', second)}\n\nWhich response is better on {c.name}? Answer with the single letter A or B."
    )
    return _request(system, user)


def pointwise_request(rubric: Rubric, c: Criterion, messages: list[dict[str, str]], response: str) -> ChatRequest:
    scale = "\n".join(f"{level}: {text}" for level, text in sorted((c.scale or {}).items()))
    system = (
        f"You are a strict, impartial judge.\n\nTask of the answer you judge: {rubric.task.strip()}\n\n"
        f"Criterion: {c.name}\n{c.description.strip()}\n\nScale (integers {c.lo} to {c.hi}):\n{scale}\n\n"
        f"{FENCE_RULE}\n\nJudge only this criterion. Length is not quality. Reply with the score only: one digit."
    )
    user = (
        f"{fence('PROMPT', render_conversation(messages))}\n\n{fence('ANSWER', response)}\n\n"
        f"Score the answer on {c.name} ({c.lo}-{c.hi}). Reply with the digit only."
    )
    return _request(system, user)


def _request(system: str, user: str) -> ChatRequest:
    return ChatRequest(messages=({"role": "system", "content": system}, {"role": "user", "content": user}),
                       params=SamplingParams(temperature=0.0, max_new_tokens=1), top_logprobs=TOP)


def _scorer(backend: Backend) -> Any:
    """The innermost backend with `label_logprobs` (hf under the cache and prefix reuse), or None."""
    b: Any = backend
    while b is not None:
        if hasattr(b, "label_logprobs"):
            return b
        b = getattr(b, "inner", None)
    return None


def _from_top(comp: Completion, labels: tuple[str, ...]) -> dict[str, float] | str:
    """Label logprobs from a 1-token completion's first-token alternatives (labels not shown: -inf)."""
    if not comp.ok:
        return comp.error or "the call failed"
    if not comp.logprobs:
        return "the backend returned no logprobs for this request; use method: generate with this server"
    first = comp.logprobs[0]
    mass: dict[str, float] = {}
    for token, lp in {**first.top, first.token: first.logprob}.items():
        s = token.strip()
        if s in labels and lp is not None and math.isfinite(lp):
            mass[s] = mass.get(s, 0.0) + math.exp(lp)  # "A" and " A" are the same answer
    return {lab: math.log(mass[lab]) if lab in mass else -math.inf for lab in labels}


def label_logprobs(backend: Backend, requests: list[ChatRequest], labels: tuple[str, ...]) -> list[tuple[Any, bool]]:
    """Per request: (label -> logprob, or an error string; whether an error is worth retrying)."""
    scorer = _scorer(backend)
    if scorer is not None:
        return [(r, False) for r in scorer.label_logprobs(requests, list(labels))]
    comps = backend.generate(requests)
    return [(_from_top(c, labels), not c.ok and not c.permanent) for c in comps]


def check_backends(specs: list[JudgeSpec], backends: list[Backend], fields: list[dict]) -> None:
    """Refuse, before anything is written, a logprob judge whose backend gives no logprobs."""
    for j in sorted({f["_j"] for f in fields}):
        b = backends[j]
        if _scorer(b) is None and not b.supports_logprobs:
            raise UserError(f"judge {j + 1} ({specs[j].backend}) has method: logprob, but the {b.name} backend returns no "
                            "logprobs: use the hf, vllm or openai backend, or method: generate")


def judge(rubric: Rubric, backends: list[Backend], fields: list[dict], run_id: str,
          progress: Callable[[int], None]) -> Iterator[tuple[list[Record], dict[str, int]]]:
    """Judgment records (and flags, failures) for the logprob judges' missing judgments, and their
    counts by status, one forward batch at a time (the hf backend's batch; elsewhere STREAM
    requests), so that the caller saves each as it is done: a stopped job keeps all but one batch."""
    by_judge: dict[int, list[dict]] = {}
    for f in fields:
        by_judge.setdefault(f["_j"], []).append(f)
    for j, all_fs in by_judge.items():
        for start in range(0, len(all_fs), WINDOW):  # prompts rendered a window at a time: flat memory
            fs = all_fs[start : start + WINDOW]
            reqs = [_request_of(rubric, f) for f in fs]
            for part in _batches(backends[j], reqs):
                recs: list[Record] = []
                counts = {"ok": 0, "retried": 0, "failed": 0, "transient": 0}
                pfs, preqs = [fs[i] for i in part], [reqs[i] for i in part]
                if pfs[0]["target_kind"] == "pair":
                    results = label_logprobs(backends[j], preqs, PAIR_LABELS)
                else:
                    results = _pointwise_results(backends[j], preqs, pfs)
                for f, (result, transient) in zip(pfs, results):
                    recs.extend(_records(f, result, transient, run_id, counts))
                progress(len(pfs))
                yield recs, counts


def _request_of(rubric: Rubric, f: dict) -> ChatRequest:
    if f["target_kind"] == "pair":
        return pairwise_request(rubric, f["_c"], f["_first"]["messages"], f["_first"]["response"], f["_second"]["response"])
    return pointwise_request(rubric, f["_c"], f["_g"]["messages"], f["_g"]["response"])


def _batches(backend: Backend, reqs: list[ChatRequest]) -> list[list[int]]:
    """Request indexes in the groups to score and save together. With a local scorer: exactly its
    forward batches (longest first, cut by rows and by padded tokens, as backends/hf.py cuts
    them), so each batch is saved before the next one runs; elsewhere STREAM at a time."""
    scorer = _scorer(backend)
    tokens = getattr(scorer, "prompt_ids", None) or getattr(getattr(scorer, "inner", None), "prompt_ids", None)
    if scorer is None or tokens is None:
        return [list(range(s, min(s + STREAM, len(reqs)))) for s in range(0, len(reqs), STREAM)]
    lengths = [len(tokens(r)) for r in reqs]
    order = sorted(range(len(reqs)), key=lambda i: -lengths[i])
    cuts = token_batches([lengths[i] for i in order], getattr(scorer, "batch_size", STREAM),
                         getattr(scorer, "max_batch_tokens", MAX_BATCH_TOKENS))
    return [order[a:b] for a, b in cuts]


def _pointwise_results(backend: Backend, reqs: list[ChatRequest], fs: list[dict]) -> list[tuple[Any, bool]]:
    """Requests grouped by scale (criteria may differ in range), answers back in order."""
    out: list[tuple[Any, bool]] = [("", False)] * len(fs)
    by_scale: dict[tuple[str, ...], list[int]] = {}
    for i, f in enumerate(fs):
        by_scale.setdefault(tuple(str(x) for x in range(f["_c"].lo, f["_c"].hi + 1)), []).append(i)
    for labels, idxs in by_scale.items():
        for i, r in zip(idxs, label_logprobs(backend, [reqs[i] for i in idxs], labels)):
            out[i] = r
    return out


def _records(f: dict, result: Any, transient: bool, run_id: str, counts: dict[str, int]) -> list[Record]:
    fields = {k: v for k, v in f.items() if not k.startswith("_") and k != "id"}
    if isinstance(result, str) and transient:
        counts["transient"] += 1
        return [Failure(stage="judge", target_id=f["target_id"], error=result[:500], run_id=run_id)]
    meta: dict[str, Any] = {"method": "logprob"}
    if f["target_kind"] == "pair":
        meta["prompt_id"] = f["_first"]["prompt_id"]
    probs = {k: math.exp(v) for k, v in result.items()} if isinstance(result, dict) else {}
    total = sum(probs.values())
    if isinstance(result, str) or total <= 0:
        error = result if isinstance(result, str) else f"none of {', '.join(probs)} has probability as the first token"
        counts["failed"] += 1
        meta["error"] = error
        return [Judgment(**fields, parse_status="failed", raw=json.dumps(probs) if probs else None, meta=meta, run_id=run_id),
                Flag(target_id=f["target_id"], target_kind=f["target_kind"], kind="parse_failed", stage="judge",
                     reason=f"{f['judge']} on {f['criterion']}: {error}"[:300],
                     details={"criterion": f["criterion"], "judge": f["judge"]}, run_id=run_id)]
    counts["ok"] += 1
    meta["probs"] = {k: float(f"{p:.6g}") for k, p in probs.items()}  # tiny probabilities keep their digits
    meta["mass"] = round(total, 6)  # how much of the first token's probability the labels hold
    expected = None
    if f["target_kind"] == "pair":
        p_first = probs["A"] / total
        winner = "A" if p_first > 0.5 else "B" if p_first < 0.5 else "tie"
        shown = (f["generation_a"], f["generation_b"])
        meta.update(winner=winner, winner_id=shown[0] if winner == "A" else shown[1] if winner == "B" else None)
        score = p_first
    else:
        lo, hi = f["_c"].lo, f["_c"].hi
        expected = sum(int(k) * p for k, p in probs.items()) / total
        meta.update(score_norm=(expected - lo) / (hi - lo), argmax=int(max(probs, key=lambda k: probs[k])))
        score = expected
    return [Judgment(**fields, score=score, score_expected=expected, raw=json.dumps(meta["probs"]), parse_status="ok",
                     meta=meta, run_id=run_id)]
