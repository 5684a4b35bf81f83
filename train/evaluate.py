"""`python -m train eval`: how a trained model compares with the model it started from.

- win rate: a pairwise judge that did not produce the training labels compares the model's
  reply with the baseline's, in both orders (position bias cancels); without a judge, the
  checkable-instruction verifiers decide (more checks passed wins);
- verifier pass rates on prompts with meta["checks"] (overall, all-checks, per check type);
- mean reply length in words (a DPO model that games its judge by getting longer shows here);
- for a reward model: its accuracy on held-out preference pairs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backends import Backend, BackendError, ChatRequest, SamplingParams
from corpus import Corpus, UserError
from generate.sources import jsonl_records, record_to_prompt

from .checks import pass_fraction, run_checks, validate_check
from .heldout import group_metrics, per_prompt
from .policy import PolicyBackend, serve_hint
from .records import ModelEval
from .registry import get_model, lineage, resolve_base

PAIRWISE_SYSTEM = (
    "You compare two answers to the same user request. Decide which answer follows the request "
    "better and is more helpful. Reply with a single letter: A or B."
)


def load_eval_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """[{messages, checks}] from JSONL with messages | prompt | turns, and checks at the top
    level or in meta (what `python -m train prompts --out` writes)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--prompts {p}: no such file")
    out = []
    for where, d in jsonl_records(p):
        # the same reading as generate's: messages, prompt or turns, each checked with file:line
        msgs = record_to_prompt(d, where, str(p), fields=("messages", "prompt", "turns")).messages
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise UserError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
        checks = d.get("checks") or (meta or {}).get("checks") or []
        if not isinstance(checks, list):
            raise UserError(f'{where}: checks must be a list of objects, e.g. [{{"type": "max_words", "n": 50}}]')
        for c in checks:
            if err := validate_check(c):
                raise UserError(f"{where}: {err}")
        out.append({"messages": msgs, "checks": checks})
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"--prompts {p}: no prompts in it")
    return out


def generate_replies(path: str, prompts: list[dict[str, Any]], max_new_tokens: int, batch_size: int = 16,
                     policy: PolicyBackend | None = None, first: bool = False,
                     progress: bool = False) -> tuple[list[str], list[bool]]:
    """Greedy replies (an eval should not change between two runs of the same model), and per reply
    whether it stopped at the token cap rather than on its own."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    policy = policy or PolicyBackend()
    with policy.open(path, first=first, batch_size=batch_size) as b, \
            Progress(TextColumn("eval replies"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                     disable=not progress) as bar:
        task = bar.add_task("eval", total=len(prompts))
        params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
        try:
            comps = b.generate([ChatRequest(messages=p["messages"], params=params) for p in prompts],
                               progress=lambda k: bar.advance(task, k))
        except BackendError as e:  # a backend that dies as a whole (vLLM's engine): one line, the cause
            raise UserError(f"eval: --backend {policy.name} failed on {path}: {e}") from e
    failed = [c.error for c in comps if not c.ok]
    if failed and len(failed) == len(comps):
        hint = f"; {serve_hint(path)}" if policy.name == "openai" else ""
        raise UserError(f"eval: every reply of {policy.model_name(path, first)} failed ({failed[0][:160]}){hint}")
    return [c.text for c in comps], [c.finish_reason == "length" for c in comps]


def _verdict(text: str) -> str | None:
    m = re.search(r"\b([AB])\b", text.strip()[:40])
    return m.group(1) if m else None


def judge_win_rate(judge: Backend, prompts: list[dict[str, Any]], ours: list[str], theirs: list[str]) -> dict[str, Any]:
    """Both orders per prompt; a win in one order and a loss in the other is a tie (0.5)."""
    reqs = []
    for p, a, b in zip(prompts, ours, theirs):
        for first, second in ((a, b), (b, a)):
            user = (f"[Request]\n{p['messages'][-1]['content']}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
                    "Which answer is better? Reply A or B.")
            reqs.append(ChatRequest(messages=[{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}],
                                    params=SamplingParams(temperature=0.0, max_new_tokens=4)))
    comps = judge.generate(reqs)
    scores, unparsed = [], 0
    for i in range(0, len(comps), 2):
        v1, v2 = _verdict(comps[i].text), _verdict(comps[i + 1].text)
        unparsed += (v1 is None) + (v2 is None)
        s = [x for x in ((1.0 if v1 == "A" else 0.0) if v1 else None, (1.0 if v2 == "B" else 0.0) if v2 else None) if x is not None]
        if s:
            scores.append(sum(s) / len(s))
    return {"judge_win_rate": sum(scores) / len(scores) if scores else None, "judge_unparsed": unparsed,
            "judge": f"{judge.name}:{judge.model_id}"}


def reply_metrics(prompts: list[dict[str, Any]], replies: list[str], prefix: str = "") -> dict[str, Any]:
    words = [len(r.split()) for r in replies]
    m: dict[str, Any] = {f"{prefix}mean_words": sum(words) / len(words)}
    checked = [(p, r) for p, r in zip(prompts, replies) if p["checks"]]
    if checked:
        fracs = [pass_fraction(r, p["checks"]) or 0.0 for p, r in checked]
        m[f"{prefix}pass_rate"] = sum(fracs) / len(fracs)
        m[f"{prefix}all_pass_rate"] = sum(f == 1.0 for f in fracs) / len(fracs)
        by: dict[str, list[bool]] = {}
        for p, r in checked:
            for c, ok in zip(p["checks"], run_checks(r, p["checks"]).values()):
                by.setdefault(c["type"], []).append(ok)
        m[f"{prefix}pass_rate_by_check"] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
        m[f"{prefix}n_by_check"] = {k: len(v) for k, v in sorted(by.items())}
    return m


def verifier_win_rate(prompts: list[dict[str, Any]], ours: list[str], theirs: list[str]) -> float | None:
    s = []
    for p, a, b in zip(prompts, ours, theirs):
        if p["checks"]:
            fa, fb = pass_fraction(a, p["checks"]) or 0.0, pass_fraction(b, p["checks"]) or 0.0
            s.append(1.0 if fa > fb else 0.0 if fa < fb else 0.5)
    return sum(s) / len(s) if s else None


def label_judges(corpus: Corpus, release_id: str | None) -> set[str]:
    """The judges whose scores built a release's data: the eval judge must not be one of them."""
    if not release_id:
        return set()
    rows = corpus.query(
        """
        SELECT DISTINCT j.judge FROM judgments j
        WHERE j.target_id IN (
            SELECT item_id FROM release_items WHERE release_id = ? AND kind = 'sft'
            UNION SELECT chosen_id FROM pairs WHERE id IN (SELECT item_id FROM release_items WHERE release_id = ? AND kind = 'pair')
            UNION SELECT rejected_id FROM pairs WHERE id IN (SELECT item_id FROM release_items WHERE release_id = ? AND kind = 'pair'))
        """,
        [release_id, release_id, release_id],
    ) if "release_items" in corpus.tables() else []
    return {r["judge"] for r in rows}


def run_eval(
    corpus: Corpus, model: str, prompts: str | Path | list[dict[str, Any]] | None = None, *,
    baseline: str | None = None, judge: Backend | None = None, pairs: str | None = None,
    limit: int | None = None, max_new_tokens: int = 384, batch_size: int = 16,
    progress: bool = True, argv: list[str] | None = None, policy: PolicyBackend | None = None,
    trained_types: set[str] | None = None, baseline_per_prompt: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure `model` (a models.id, folder or 'embedded') and store a model_evals row.

    With `trained_types` (the check types the model was trained on; default: its config's), the
    prompts fall into trained-type and held-out-type groups, each reported with 95% bootstrap
    intervals. `baseline_per_prompt` (an earlier eval's `per_prompt`) pairs the comparison with
    the baseline without generating its replies again (the loop measures M_0 once)."""
    model_id, model_path = resolve_base(corpus, model, flag="--model")
    row = get_model(corpus, model_id) or {}
    chain = lineage(corpus, model_id)
    if baseline is None:
        baseline_id, baseline_path = chain[-1]["id"], chain[-1]["path"]  # the root: the base model
    else:
        baseline_id, baseline_path = resolve_base(corpus, baseline, flag="--baseline")
    prompt_label = str(prompts) if isinstance(prompts, (str, Path)) else ("<list>" if prompts else None)
    if row.get("kind") != "rm" and prompts is None:
        raise UserError("--prompts FILE is required to evaluate a generating model")
    if judge is not None and f"{judge.name}:{judge.model_id}" in label_judges(corpus, row.get("release_id")):
        raise UserError(f"--judge-model {judge.model_id}: this judge produced the training labels of {model_id}; "
                        "a win rate needs an independent judge: pick another model")
    metrics: dict[str, Any] = {"model_id": model_id, "baseline_id": baseline_id}
    with corpus.run("train eval", {"model": model_id, "baseline": baseline_id, "prompts": prompt_label,
                                   "pairs": pairs, "max_new_tokens": max_new_tokens}, argv=argv) as run:
        if row.get("kind") == "rm":
            metrics.update(_rm_metrics(corpus, model_path, row, pairs, limit))
        else:
            ps = load_eval_prompts(prompts, limit) if isinstance(prompts, (str, Path)) else list(prompts or [])[:limit]
            first = model_id == chain[-1]["id"]
            ours, cut = generate_replies(model_path, ps, max_new_tokens, batch_size, policy, first=first, progress=progress)
            metrics.update(reply_metrics(ps, ours))
            metrics["prompts"] = len(ps)
            types = trained_types if trained_types is not None else _trained_types(chain)
            mine = per_prompt(ps, ours, types, cut)
            base_rows = baseline_per_prompt
            if base_rows is None and baseline_id != model_id:
                theirs, their_cut = generate_replies(baseline_path, ps, max_new_tokens, batch_size, policy,
                                                     first=baseline_id == chain[-1]["id"], progress=progress)
                base_rows = per_prompt(ps, theirs, types, their_cut)
            metrics.update(group_metrics(mine, base_rows if baseline_id != model_id else None))
            metrics["per_prompt"] = mine
            if baseline_id != model_id and baseline_per_prompt is None:
                metrics.update(reply_metrics(ps, theirs, prefix="baseline_"))
                metrics["verifier_win_rate"] = verifier_win_rate(ps, ours, theirs)
                if judge is not None:
                    metrics.update(judge_win_rate(judge, ps, ours, theirs))
            if baseline_id != model_id:
                metrics["win_rate"] = metrics.get("judge_win_rate", metrics.get("verifier_win_rate"))
        rec = ModelEval(model_id=model_id, baseline_id=baseline_id, prompts=prompt_label or pairs,
                        judge=metrics.get("judge"), metrics=metrics, run_id=run.id)
        corpus.insert([rec], replace=True)
        if row:  # the latest eval also lands in models.metrics, beside the training figures
            old = json.loads(row["metrics"]) if isinstance(row.get("metrics"), str) else (row.get("metrics") or {})
            corpus.execute("UPDATE models SET metrics = ? WHERE id = ?",
                           [json.dumps({**old, "eval": {k: v for k, v in metrics.items() if k not in ("model_id", "per_prompt")}}), model_id])
        run.summary = {k: v for k, v in metrics.items() if k != "per_prompt"}
    return metrics


def _trained_types(chain: list[dict[str, Any]]) -> set[str] | None:
    """The check types a model (or any of its ancestors) was trained on, from their configs."""
    found: set[str] = set()
    for m in chain:
        cfg = m.get("config")
        cfg = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
        found |= set(cfg.get("trained_types") or [])
    return found or None


def _rm_metrics(corpus: Corpus, path: str, row: dict[str, Any], pairs: str | None, limit: int | None) -> dict[str, Any]:
    from .data import pairs_from_jsonl
    from .reward import RewardScorer

    if pairs:
        held = pairs_from_jsonl(pairs, limit)
    else:
        # pairs in the corpus that the reward model's release did not hold: held out by construction
        recs = corpus.query(
            """
            SELECT p.messages, c.response AS chosen, r.response AS rejected FROM pairs pr
            JOIN prompts p ON p.id = pr.prompt_id JOIN generations c ON c.id = pr.chosen_id
            JOIN generations r ON r.id = pr.rejected_id
            WHERE pr.id NOT IN (SELECT item_id FROM release_items WHERE release_id = ? AND kind = 'pair')
            ORDER BY pr.id
            """ + (f" LIMIT {int(limit)}" if limit else ""),
            [row.get("release_id")],
        )
        held = [{"prompt": json.loads(r["messages"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in recs]
        if not held:
            raise UserError("no held-out pairs in the corpus for this reward model: pass --pairs FILE.jsonl ({prompt, chosen, rejected})")
    return RewardScorer(path).pair_accuracy(held)
