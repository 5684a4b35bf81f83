"""`run_filters`: load candidates and judge scores, run the prompt and response pipelines, build
the SFT set and the preference pairs, and write every decision as a flag, all in one transaction.
Nothing is deleted: the views follow the latest successful filters run."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb

from corpus import Corpus, Flag, Pair, Record, UserError
from corpus.sqlcheck import where_query

from .base import Decision, Item, Step, run_pipeline
from .config import FilterConfig, load_config
from .decontam import Decontaminate, EvalIndex
from .dedup import ExactDedup, MinHashDedup
from .heuristics import (
    EmptyFilter, LanguageFilter, LengthFilter, RefusalFilter, RepetitionFilter, TruncatedFilter,
)
from .judged import JudgeGate
from .pairs import build_pairs, select_sft


class FilterSelection(Record):
    """One item a filters run put in a training set (table filter_selections, m020)."""

    table = "filter_selections"
    id_fields = ("run_id", "kind", "item_id")
    id: str = ""
    run_id: str
    kind: str
    item_id: str
    prompt_id: str
    score: float | None = None
    method: str | None = None
    rank: int | None = None


def _opts(step, *skip: str) -> dict[str, Any]:
    return step.model_dump(exclude={"as_rejected", *skip})


def build_prompt_steps(cfg: FilterConfig, index: EvalIndex | None) -> list[Step]:
    p, steps = cfg.prompts, []
    if p.exact_dedup:
        steps.append(ExactDedup(as_rejected=False))
    if p.near_dedup:
        steps.append(MinHashDedup(**_opts(p.near_dedup)))
    if p.decontaminate and index is not None:
        steps.append(Decontaminate(index[p.decontaminate.ngram, p.decontaminate.min_words]))
    return steps


class BestFirst(Step):
    """Reorders the stream so that the copy a dedup step keeps is the best one: candidates that
    may be chosen before those that may only be rejected, then by score."""

    name = "best_first"

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        items = sorted(items, key=_best_first)
        for item in items:
            item.meta.pop("_words", None)  # the word filters are done: free the token lists
        yield from items


def _best_first(g: Item) -> tuple:
    return (g.rejected_only, g.score is None, -(g.score or 0.0), g.prompt_id or "", g.meta.get("sample_idx", 0), g.id)


def build_response_steps(cfg: FilterConfig, index, policies_ctx: dict[str, Any]) -> list[Step]:
    r, steps = cfg.responses, []
    simple = {"empty": EmptyFilter, "truncated": TruncatedFilter}
    for name, cls in simple.items():
        if getattr(r, name):
            steps.append(cls(as_rejected=getattr(r, name).as_rejected))
    if r.refusal:
        steps.append(RefusalFilter(**_opts(r.refusal), as_rejected=r.refusal.as_rejected))
    if r.repetition:
        steps.append(RepetitionFilter(**_opts(r.repetition), as_rejected=r.repetition.as_rejected))
    if r.language:
        steps.append(LanguageFilter(**_opts(r.language), as_rejected=r.language.as_rejected))
    if r.length:
        steps.append(LengthFilter(**_opts(r.length), as_rejected=r.length.as_rejected))
    # judge decisions before dedup, so a duplicate cluster keeps a copy the judge did not drop
    j = cfg.judge
    steps.append(JudgeGate(j.unscored, j.min_score, j.thresholds, j.flags, policies_ctx["approved"],
                           policies_ctx["overruled"]))
    steps.append(BestFirst())
    if r.exact_dedup:
        steps.append(ExactDedup(as_rejected=r.exact_dedup.as_rejected))
    if r.near_dedup:
        steps.append(MinHashDedup(**_opts(r.near_dedup), as_rejected=r.near_dedup.as_rejected))
    if r.decontaminate and index is not None:
        steps.append(Decontaminate(index[r.decontaminate.ngram, r.decontaminate.min_words],
                                   as_rejected=r.decontaminate.as_rejected))
    return steps


class _Indexes(dict):
    """EvalIndex per (ngram, min_words), built once, on first use, before anything is written."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = paths

    def __missing__(self, key: tuple[int, int]) -> EvalIndex:
        self[key] = idx = EvalIndex(self.paths, ngram=key[0], min_words=key[1])
        return idx


# -- loading -------------------------------------------------------------------------------------

def _load(corpus: Corpus, cfg: FilterConfig, where: str | None = None) -> dict[str, Any]:
    conds, params = [], []
    for col, val in (("rubric", cfg.rubric), ("rubric_version", cfg.rubric_version)):
        if val is not None:
            conds.append(f"{col} = ?")
            params.append(val)
    rubric_sql = ("WHERE " + " AND ".join(conds)) if conds else ""
    tables = corpus.tables()
    # the user's --where: one checked expression, run where DuckDB refuses writes (corpus.sqlcheck)
    sql = where_query("SELECT g.id, g.prompt_id, g.response, g.finish_reason, g.sample_idx, g.provenance "
                      "FROM generations g JOIN prompts p ON p.id = g.prompt_id", where,
                      " ORDER BY g.prompt_id, g.sample_idx, g.id")
    try:
        with corpus.reader() as con:
            cur = con.execute(sql)
            names = [d[0] for d in cur.description]
            gens = [dict(zip(names, r)) for r in cur.fetchall()]
    except duckdb.Error as e:
        raise UserError(f"--where {where!r}: {str(e).strip().splitlines()[0]}; use columns of generations g "
                        "and prompts p, e.g. \"g.model = 'x'\"") from None
    with corpus.session():
        in_scope = {g["prompt_id"] for g in gens}
        prompts = [p for p in corpus.query("SELECT id, text, messages FROM prompts ORDER BY created_at, id")
                   if p["id"] in in_scope]
        scores, criteria, verdicts = {}, defaultdict(dict), defaultdict(list)
        if "generation_scores" in tables:
            for r in corpus.query(f"SELECT generation_id AS g, avg(score_norm) AS s FROM generation_scores {rubric_sql} GROUP BY 1", params):
                scores[r["g"]] = r["s"]
        if "judge_scores" in tables:
            for r in corpus.query(f"SELECT generation_id AS g, criterion AS c, avg(score_norm) AS s FROM judge_scores {rubric_sql} GROUP BY 1, 2", params):
                if r["s"] is not None:
                    criteria[r["g"]][r["c"]] = r["s"]
        if "pair_verdicts" in tables:
            for r in corpus.query(f"SELECT prompt_id, generation_a, generation_b, winner, consistent FROM pair_verdicts {rubric_sql}", params):
                verdicts[r["prompt_id"]].append((r["generation_a"], r["generation_b"], r["winner"] if r["consistent"] else "tie"))
        judge_flags = corpus.query("SELECT target_id, kind, reason, details FROM flags WHERE stage = 'judge' ORDER BY id")
        gen_ids = {g["id"] for g in gens}
        resolve = _flag_targets(corpus, [f["target_id"] for f in judge_flags if f["target_id"] not in gen_ids], tables)
        for f in judge_flags:  # a pairwise flag names its two candidates in details
            d = json.loads(f["details"]) if f["details"] else {}
            if f["target_id"] not in gen_ids and d.get("generation_a") and d.get("generation_b"):
                resolve[f["target_id"]] = [d["generation_a"], d["generation_b"]]
        # each reviewer's current verdict (review's view when present); as in review_queue, a
        # strict majority of approvals approves, anything else overrules the reply
        source = "review_verdicts" if "review_verdicts" in tables else "reviews"
        human = corpus.query(
            f"SELECT target_id, count(*) FILTER (WHERE verdict = 'approve') AS a, count(*) AS n, "
            f"count(*) FILTER (WHERE verdict = 'edit') AS e FROM {source} GROUP BY target_id")
        approved = {r["target_id"] for r in human if 2 * r["a"] > r["n"]}
        overruled = {r["target_id"]: ("edit" if r["e"] else "reject") for r in human if 2 * r["a"] <= r["n"]}
    per_gen, tie_pairs = defaultdict(list), set()
    for f in judge_flags:
        targets = [f["target_id"]] if f["target_id"] in gen_ids else resolve.get(f["target_id"], [])
        policy = cfg.judge.flags.get(f["kind"], "keep")
        if len(targets) == 2 and policy == "tie":
            tie_pairs.add(frozenset(targets))  # a pairwise flag: only these two never pair
            continue
        for t in targets:
            per_gen[t].append((f["kind"], f["reason"] or ""))
    return dict(prompts=prompts, gens=gens, scores=scores, criteria=criteria, verdicts=verdicts,
                judge_flags=per_gen, tie_pairs=tie_pairs, approved=approved, overruled=overruled)


def _flag_targets(corpus: Corpus, ids: list[str], tables: dict[str, str]) -> dict[str, list[str]]:
    """Judge flags on a judgment or a pair of candidates -> the generation ids they concern."""
    if not ids:
        return {}
    import pyarrow as pa

    out: dict[str, list[str]] = {}
    with corpus.connect() as con:
        con.register("wanted", pa.table({"k": sorted(set(ids))}))
        rows = con.execute(
            "SELECT id, target_id, target_kind, generation_a, generation_b, id IN (SELECT k FROM wanted) AS by_id "
            "FROM judgments WHERE id IN (SELECT k FROM wanted) "
            "OR (target_kind = 'pair' AND target_id IN (SELECT k FROM wanted))"
        ).fetchall()
        verdicts = con.execute(
            "SELECT id, generation_a, generation_b FROM pair_verdicts WHERE id IN (SELECT k FROM wanted)"
        ).fetchall() if "pair_verdicts" in tables else []
        con.unregister("wanted")
    for jid, target, kind, ga, gb, by_id in rows:
        pair = [g for g in (ga, gb) if g]
        if by_id:
            out[jid] = [target] if kind == "generation" else pair
        if kind == "pair" and pair:
            out[target] = pair
    for vid, ga, gb in verdicts:
        out[vid] = [ga, gb]
    return out


def _conversation(prompt: dict[str, Any]) -> str:
    try:
        turns = json.loads(prompt["messages"]) if prompt.get("messages") else []
        return "\n".join(str(m.get("content", "")) for m in turns) or (prompt["text"] or "")
    except (json.JSONDecodeError, AttributeError):
        return prompt["text"] or ""


def _score(gen: dict[str, Any], scores: dict[str, float], human_score: float | None) -> float | None:
    """The judge's score; a reviewer's edited reply that no judge has scored gets human_score."""
    s = scores.get(gen["id"])
    if s is None and gen.get("provenance") == "human":
        return human_score
    return s


# -- running -------------------------------------------------------------------------------------

def _tracked(items: list[Item], label: str, progress) -> Iterator[Item]:
    if progress is None:
        yield from items
        return
    task = progress.add_task(label, total=len(items))
    for item in items:
        yield item
        progress.advance(task)


def _step_summary(stage: str, steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {"stage": stage, "filter": s.name, "seen": s.stats.seen, "kept": s.stats.kept,
         "failed": dict(sorted(s.stats.dropped.items())), "as_rejected": getattr(s, "as_rejected", False)}
        for s in steps if hasattr(s, "stats")
    ]


def run_filters(corpus: Corpus, config_path: str | Path | None = None, *, eval_sets: Iterable[str] | None = None,
                where: str | None = None, progress: bool = False, config: FilterConfig | None = None) -> dict[str, Any]:
    """Run the filter chain over every candidate and rebuild accepted_sft / preference_pairs.

    `where`: an SQL condition on generations g / prompts p that limits the candidates (e.g. one
    round's model); the views then hold only what this run selected.

    Returns the run summary: per filter the items seen, kept and failed per reason, and the sizes
    of the SFT set and the pair set. Raises UserError (before writing anything) on a bad config
    or a missing evaluation file."""
    cfg = config or load_config(config_path)
    paths = cfg.eval_paths(list(eval_sets or []))
    indexes = _Indexes(paths)
    if paths:  # fail on a bad eval file now, not halfway through
        for dc in (cfg.prompts.decontaminate, cfg.responses.decontaminate):
            if dc:
                indexes[dc.ngram, dc.min_words]
    data = _load(corpus, cfg, where)
    prompt_steps = build_prompt_steps(cfg, indexes if paths else None)
    response_steps = build_response_steps(cfg, indexes if paths else None, data)

    # a prompt is its whole conversation: the same last turn after a different history is new
    prompt_items = [Item(id=p["id"], kind="prompt", text=_conversation(p)) for p in data["prompts"]]
    prompt_text = {p["id"]: p["text"] or "" for p in data["prompts"]}
    gen_items = [
        Item(id=g["id"], kind="generation", text=g["response"] or "", prompt_id=g["prompt_id"],
             finish_reason=g["finish_reason"], score=_score(g, data["scores"], cfg.judge.human_score),
             criteria=dict(data["criteria"].get(g["id"], {})), judge_flags=data["judge_flags"].get(g["id"], []),
             meta={"sample_idx": g["sample_idx"], "prompt_text": prompt_text.get(g["prompt_id"], "")})
        for g in data["gens"]
    ]
    config_dump = cfg.model_dump(mode="json") | {"eval_sets": [str(p) for p in paths], "where": where}
    with corpus.run("filters", config_dump) as run:
        bar = None
        if progress:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
        try:
            kept_prompts = run_pipeline(prompt_steps, _tracked(prompt_items, "prompts", bar))
            alive = {p.id for p in kept_prompts}
            ordered = sorted((g for g in gen_items if g.prompt_id in alive), key=_best_first)
            survivors = run_pipeline(response_steps, _tracked(ordered, "candidates", bar))
        finally:
            if bar is not None:
                bar.stop()
        by_prompt: dict[str, list[Item]] = defaultdict(list)
        for g in survivors:
            by_prompt[g.prompt_id].append(g)
        sft = select_sft(by_prompt, cfg.sft.min_score, cfg.sft.per_prompt)
        outcome = build_pairs(by_prompt, cfg.pairs.method, cfg.pairs.min_margin, cfg.pairs.max_per_prompt,
                              data["tie_pairs"], data["verdicts"], cfg.pairs.length_balance)

        records: list[Record] = []
        decisions: list[Decision] = [d for s in prompt_steps + response_steps for d in getattr(s, "decisions", [])]
        n_by_prompt = defaultdict(int)
        for g in gen_items:
            n_by_prompt[g.prompt_id] += 1
        for d in decisions:
            details = {"action": d.action, **d.details}
            if d.item.kind == "prompt":
                details["candidates"] = n_by_prompt[d.item.id]
            records.append(Flag(target_id=d.item.id, target_kind=d.item.kind, kind=d.filter, reason=d.reason,
                                stage="filters", details=details, run_id=run.id))
        for pid, reason, details in outcome.ties:
            records.append(Flag(target_id=pid, target_kind="prompt", kind="pairs", reason=reason,
                                stage="filters", details={"action": "no_pair", **details}, run_id=run.id))
        for item, rank in sft:
            records.append(FilterSelection(run_id=run.id, kind="sft", item_id=item.id, prompt_id=item.prompt_id,
                                           score=item.score, method="rejection_sampling", rank=rank))
        for pc in outcome.pairs:
            pair = Pair(prompt_id=pc.prompt_id, chosen_id=pc.chosen.id, rejected_id=pc.rejected.id,
                        margin=pc.margin, method=pc.method, run_id=run.id)
            records.append(pair)
            records.append(FilterSelection(run_id=run.id, kind="pair", item_id=pair.id, prompt_id=pc.prompt_id,
                                           score=pc.margin, method=pc.method))
        corpus.insert(records)
        summary = {
            "run_id": run.id,
            "prompts": len(prompt_items), "prompts_kept": len(kept_prompts),
            "candidates": len(gen_items), "candidates_kept": len(survivors),
            "steps": _step_summary("prompts", prompt_steps) + _step_summary("responses", response_steps),
            "sft": len(sft), "pairs": len(outcome.pairs), "pair_ties": len(outcome.ties),
            "flags": sum(isinstance(r, Flag) for r in records),
            "method": cfg.pairs.method,
        }
        run.summary.update(summary)
    return summary
