"""`run_judge`: judge every candidate not yet judged under a rubric version.

Work is content-addressed: a judgment's id hashes (target, judge, rubric, criterion, criterion
hash, sample, order), so before asking anything we compute the ids of all the judgments the
rubric calls for and ask only for the missing ones. Editing one criterion's text changes only
that criterion's hash, so only that criterion is asked again; the call cache (`calls`) catches
identical requests made under another rubric name.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import duckdb
import pyarrow as pa

from backends import Backend, BackendError, CachedBackend, load_backend
from backends.embedded import EMBEDDED_NAME
from corpus import Corpus, Flag, Judgment, Record, UserError, content_id
from corpus.sqlcheck import where_query
from corpus.progress import progress as progress_display

from . import aggregate, logprob, pairwise
from .calls import LLMTask, ask, to_records
from .injection import find_injection
from .render import pointwise_request
from .rubric import JudgeSpec, Rubric, load_rubric
from .verifiers import preflight, resolve_reward_model, run_verifier, unsafe_allowed

# judge requests rendered at a time: a prompt is rendered only shortly before it is sent, so memory
# does not grow with the number of judgments; judgments are stored as each answer is final (ask)
WINDOW = 256
# code_exec answers per sandbox round between judgment writes (a round runs them on two workers)
VERIFIER_CHUNK = 16


def judgment_id(fields: dict[str, Any]) -> str:
    """The id `Judgment` would compute, without building the record (fast on 100k rows)."""
    return content_id(Judgment.table, {f: fields.get(f) for f in Judgment.id_fields})


def judge_name(spec: JudgeSpec) -> str:
    model = spec.model or (EMBEDDED_NAME if spec.backend in ("hf", "vllm") else "default")
    return f"{spec.backend}:{model}" + ("+logprob" if spec.method == "logprob" else "")


def load_candidates(corpus: Corpus, where: str | None) -> list[dict[str, Any]]:
    """Ids of the candidates in scope (generation id, prompt id); `hydrate` adds the texts.

    Only ids are read up front: a rerun where everything is judged never reads 10,000 texts.
    """
    # one checked expression, run where DuckDB refuses writes (corpus.sqlcheck)
    sql = where_query("SELECT g.id, g.prompt_id FROM generations g JOIN prompts p ON p.id = g.prompt_id",
                      where, " ORDER BY g.prompt_id, g.id")
    try:
        with corpus.reader() as con:
            cols = con.sql(sql).fetchnumpy()
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"--where {where!r}: {first}; write a SQL condition on generations g / prompts p, "
                        "e.g. --where \"g.model = 'x'\"") from None
    return [{"id": i, "prompt_id": p} for i, p in zip(cols["id"].tolist(), cols["prompt_id"].tolist())]


def hydrate(corpus: Corpus, cands: list[dict[str, Any]], ids: set[str]) -> None:
    """Add response, model, prompt messages and meta (parsed) to the candidates named in `ids`."""
    if not ids:
        return
    with corpus.connect() as con:
        wanted = pa.table({"k": sorted(ids)})  # noqa: F841  (DuckDB reads the local by name)
        rows = con.execute(
            "SELECT g.id, g.response, g.model, p.messages, p.meta FROM generations g JOIN prompts p ON p.id = g.prompt_id "
            "WHERE g.id IN (SELECT k FROM wanted)").fetchall()
    full = {r[0]: r for r in rows}
    for g in cands:
        r = full.get(g["id"])
        if r is not None:
            g.update(response=r[1], model=r[2], messages=json.loads(r[3]) if r[3] else [], meta=json.loads(r[4]) if r[4] else {})


class Judges:
    """The jury's backends, loaded only when there is LLM work to do (a cached rerun loads none)."""

    def __init__(self, rubric: Rubric, corpus: Corpus, run_id: str, backend: Backend | None, prefix_reuse: bool,
                 limits: dict[str, Any] | None = None):
        self.rubric, self.corpus, self.run_id = rubric, corpus, run_id
        self.given = backend
        self.prefix_reuse = prefix_reuse
        # --judge-timeout, --judge-max-prompt-bytes (and for hf, --judge-batch-size, --judge-device) for the rubric's judges
        self.limits = limits or {}
        if backend is not None:
            inner = backend.inner if isinstance(backend, CachedBackend) else backend
            base = rubric.judges[0] if rubric.judges else JudgeSpec()
            self.specs = [base]
            self.names = [f"{inner.name}:{inner.model_id}" + ("+logprob" if base.method == "logprob" else "")]
        else:
            self.specs = list(rubric.judges)
            self.names = [judge_name(s) for s in self.specs]
        self._loaded: list[Backend] | None = None

    def backends(self) -> list[Backend]:
        if self._loaded is None:
            loaded = []
            for spec in self.specs:
                inner = self.given.inner if isinstance(self.given, CachedBackend) else self.given
                if inner is None:
                    opts = {"base_url": spec.base_url, "api_key_env": spec.api_key_env} if spec.backend == "openai" else {}
                    if spec.backend == "openai" and "timeout" in self.limits:
                        opts["timeout"] = self.limits["timeout"]
                    if spec.backend == "hf":  # --judge-batch-size / --judge-device reach the rubric's hf judges too
                        opts.update({k: self.limits[k] for k in ("batch_size", "device") if self.limits.get(k) is not None})
                    inner = load_backend(spec.backend, spec.model, **opts)
                    if "max_prompt_bytes" in self.limits:
                        inner.max_prompt_bytes = self.limits["max_prompt_bytes"]
                if self.prefix_reuse and inner.name == "hf" and hasattr(inner, "tokenizer"):
                    from .prefix_cache import PrefixReuseBackend

                    inner = PrefixReuseBackend(inner)
                loaded.append(CachedBackend(inner, self.corpus, run_id=self.run_id))
            self._loaded = loaded
        return self._loaded

    def close(self) -> None:
        if self._loaded and self.given is None:
            for b in self._loaded:
                b.close()


def pointwise_fields(rubric: Rubric, judges: Judges, cands: list[dict[str, Any]]) -> Iterator[dict]:
    """The fields of every LLM judgment the rubric calls for; the request is built only if missing."""
    rname, rversion, rhash = rubric.name, rubric.version, rubric.rubric_hash
    for c in rubric.llm_criteria():
        chash = rubric.criterion_hash(c)
        for j, (spec, name) in enumerate(zip(judges.specs, judges.names)):
            for s in range(spec.samples):
                for g in cands:
                    yield {
                        "target_id": g["id"], "target_kind": "generation", "judge": name, "rubric": rname,
                        "rubric_version": rversion, "rubric_hash": rhash, "criterion": c.name,
                        "criterion_hash": chash, "sample_idx": s, "_g": g, "_c": c, "_j": j,
                    }


def run_judge(corpus: Corpus, rubric_path: str, where: str | None = None, backend: Backend | None = None,
              progress: bool = True, prefix_reuse: bool = True, unsafe_exec: bool = False,
              limits: dict[str, Any] | None = None, verify: Any = None) -> dict[str, Any]:
    """Judge the candidates (generations joined with prompts, filtered by `where`) under a rubric.

    backend=None uses the rubric's judges; `limits` ({"timeout": s, "max_prompt_bytes": n},
    from `backends.backend_limits`, optionally "batch_size" and "device" for hf judges) apply to them.
    `verify` replaces `run_verifier` (on Ray: judge/ray_verifiers.py). Each judgment is stored as soon
    as it is final, so a stopped run keeps every one it finished. Returns a summary dict: judged, cached, parse
    failures, flags by kind, score distribution per criterion.
    """
    rubric = load_rubric(rubric_path)
    if rubric.llm_criteria() and not rubric.judges and backend is None:
        raise UserError(f"{rubric_path}: the rubric has LLM criteria but `judges: []`; add a judge "
                        "(e.g. `judges: [{backend: hf}]`) or pass --judge-backend")
    cands = load_candidates(corpus, where)
    if any(c.verifier and c.verifier.type == "reward_model" for c in rubric.criteria):
        for c in rubric.verifier_criteria():
            if c.verifier and c.verifier.type == "reward_model":
                resolve_reward_model(corpus, c.verifier.model)  # fail before writing anything
    # code_exec: refuse before writing anything when the sandbox cannot start (unless allowed)
    specs = [c.verifier for c in rubric.verifier_criteria() if c.verifier]
    isolation = preflight(specs, unsafe_exec)
    config = {"rubric": rubric.name, "rubric_version": rubric.version, "rubric_hash": rubric.rubric_hash,
              "rubric_path": str(rubric_path), "where": where, "prefix_reuse": prefix_reuse}
    if isolation:
        config.update(unsafe_exec=unsafe_allowed(specs, unsafe_exec), code_exec_isolation=isolation)
    with corpus.run("judge", config) as run:
        judges = Judges(rubric, corpus, run.id, backend, prefix_reuse, limits)
        try:
            summary = _judge(corpus, rubric, cands, judges, run.id, progress, unsafe_exec, verify)
        except BackendError as e:
            raise UserError(str(e)) from None
        finally:
            judges.close()
        run.summary = summary
    return summary


def _judge(corpus: Corpus, rubric: Rubric, cands: list[dict], judges: Judges, run_id: str, progress: bool,
           unsafe_exec: bool = False, verify: Any = None) -> dict[str, Any]:
    counts = {"candidates": len(cands), "judged": 0, "cached": 0, "calls_cached": 0, "ok": 0, "retried": 0,
              "failed": 0, "transient": 0, "pending": 0}
    flags: dict[str, int] = {}
    touched: set[str] = set()

    def note(recs: list[Record]) -> None:
        for r in recs:
            if isinstance(r, Flag):
                flags[r.kind] = flags.get(r.kind, 0) + 1

    def save(recs: list[Record], st: dict[str, int] | None = None) -> None:
        """Store judgments the moment they are final: a stopped or killed job keeps all of them."""
        for k, v in (st or {}).items():
            counts[k] += v
        note(recs)
        corpus.insert(recs)

    if rubric.mode == "pointwise":
        wanted = [*pointwise_fields(rubric, judges, cands), *_verifier_fields(rubric, cands)]
    else:
        wanted = pairwise.fields(rubric, judges.names, judges.specs, cands)
    with corpus.session():
        todo = _missing(corpus, wanted)
    counts["cached"] = len(wanted) - len(todo)
    touched = {f["target_id"] if f["target_kind"] == "generation" else f["generation_a"] for f in todo}
    touched |= {f["generation_b"] for f in todo if f.get("generation_b")}
    hydrate(corpus, cands, touched)
    llm = [f for f in todo if not f["judge"].startswith("verifier:")]
    ver = [f for f in todo if f["judge"].startswith("verifier:")]
    by_logprob = [f for f in llm if judges.specs[f["_j"]].method == "logprob"]  # no decoding: judge/logprob.py
    llm = [f for f in llm if judges.specs[f["_j"]].method != "logprob"]
    if by_logprob:
        logprob.check_backends(judges.specs, judges.backends(), by_logprob)
    if llm:
        with progress_display(f"judging {rubric.name} v{rubric.version}", len(llm), progress) as tick:
            # a batch-mode judge gets every request at once: one provider batch, not one per window
            size = len(llm) or 1 if any(getattr(getattr(b, "inner", b), "batch", None) for b in judges.backends()) else WINDOW
            for start in range(0, len(llm), size):
                tasks = [pairwise.task(rubric, judges, f) if rubric.mode != "pointwise" else _pointwise_task(rubric, judges, f)
                         for f in llm[start : start + size]]
                ask(judges.backends(), tasks, rubric.retries, tick, done=lambda outs: save(*to_records(outs, run_id)))
    if by_logprob:
        with progress_display(f"logprob judging {rubric.name} v{rubric.version}", len(by_logprob), progress) as tick:
            for recs, st in logprob.judge(rubric, judges.backends(), by_logprob, run_id, tick):
                save(recs, st)
    if ver:
        infra: list[str] = []

        def save_verified(recs: list[Record]) -> None:
            judged = [r for r in recs if isinstance(r, Judgment)]
            failed = sum(r.parse_status == "failed" for r in judged)
            save(recs, {"ok": len(judged) - failed, "failed": failed})

        _run_verifiers(corpus, rubric, ver, run_id, unsafe_exec, infra, verify, save=save_verified)
        counts["transient"] += len(infra)
        if infra:
            counts["sandbox_failure"] = infra[0][:300]  # the first one, so the user sees why
    save(_injection_flags(corpus, cands, touched, run_id))
    counts["judged"] = counts["ok"] + counts["retried"] + counts["failed"]
    if judges._loaded:
        counts["calls_cached"] = sum(b.hits for b in judges._loaded if isinstance(b, CachedBackend))
    with corpus.session():
        agg_flags = aggregate.update(corpus, rubric, cands, touched, run_id)
        scores = aggregate.distribution(corpus, rubric, cands)
    for k, v in agg_flags.items():
        flags[k] = flags.get(k, 0) + v
    return {**counts, "flags": flags, "scores": scores, "rubric": rubric.name, "rubric_version": rubric.version}


def _missing(corpus: Corpus, fields: list[dict]) -> list[dict]:
    """The judgments not stored yet (a transient failure stored none, so it is asked again)."""
    if not fields:
        return []
    for f in fields:
        f["id"] = judgment_id(f)
    have = corpus.existing_ids("judgments", [f["id"] for f in fields])
    return [f for f in fields if f["id"] not in have]


def _pointwise_task(rubric: Rubric, judges: Judges, f: dict) -> LLMTask:
    c, g, j = f["_c"], f["_g"], f["_j"]
    backend_logprobs = bool(judges.backends()[j].supports_logprobs)
    req = pointwise_request(rubric, c, judges.specs[j], g["messages"], g["response"], f["sample_idx"], backend_logprobs)
    return LLMTask(request=req, judge_idx=j, fields=_record_fields(f), lo=c.lo, hi=c.hi)


def _record_fields(f: dict) -> dict:
    return {k: v for k, v in f.items() if not k.startswith("_") and k != "id"}


def _verifier_fields(rubric: Rubric, cands: list[dict]) -> Iterator[dict]:
    rname, rversion, rhash = rubric.name, rubric.version, rubric.rubric_hash
    for c in rubric.verifier_criteria():
        chash = rubric.criterion_hash(c)
        for g in cands:
            yield {"target_id": g["id"], "target_kind": "generation", "judge": f"verifier:{c.verifier.type}",  # type: ignore[union-attr]
                   "rubric": rname, "rubric_version": rversion, "rubric_hash": rhash,
                   "criterion": c.name, "criterion_hash": chash, "sample_idx": 0, "_g": g, "_c": c}


def _run_verifiers(corpus: Corpus, rubric: Rubric, fields: list[dict], run_id: str, unsafe_exec: bool = False,
                   transient: list[str] | None = None, verify: Any = None,
                   save: Callable[[list[Record]], None] | None = None) -> list[Record]:
    """The verifier judgments; an infrastructure failure adds a line to `transient` and stores nothing.

    With `save`, code_exec judgments are handed to it VERIFIER_CHUNK answers at a time as the
    sandbox finishes them (and the list returned holds only what was not saved)."""
    transient = [] if transient is None else transient
    recs: list[Record] = []
    by_criterion: dict[str, list[dict]] = {}
    for f in fields:
        by_criterion.setdefault(f["criterion"], []).append(f)
    for name, all_fs in by_criterion.items():
        spec = all_fs[0]["_c"].verifier
        # other verifiers are instant, or load a model per call (reward_model): one round each
        step = VERIFIER_CHUNK if save is not None and spec.type == "code_exec" else len(all_fs)
        for start in range(0, len(all_fs), step):
            fs = all_fs[start : start + step]
            items = [(f["_g"], f["_g"]["response"]) for f in fs]
            results = verify(spec, items, corpus) if verify else run_verifier(spec, items, corpus, unsafe_exec)
            done = _verifier_records(name, fs, results, run_id, transient)
            if save is not None:
                save(done)
            else:
                recs.extend(done)
    return recs


def _verifier_records(name: str, fs: list[dict], results: list, run_id: str, transient: list[str]) -> list[Record]:
    recs: list[Record] = []
    for f, r in zip(fs, results):
        if r.transient:  # the sandbox failed, not the answer: store nothing, the next run asks again
            transient.append(f"{name}: {r.error}")
            continue
        meta = {"detail": r.detail, "score_norm": r.score}
        if r.error:
            meta["error"] = r.error
        recs.append(Judgment(**_record_fields(f), score=r.score, parse_status="failed" if r.score is None else "ok",
                             meta=meta, run_id=run_id, sandbox=r.detail.get("isolation")))
        if r.score is None:
            recs.append(Flag(target_id=f["target_id"], kind="verifier_failed", stage="judge", run_id=run_id,
                             reason=f"{name}: {r.error}"[:300], details={"criterion": name}))
        elif r.detail.get("reason") == "hack_suspected":  # scored 0 like any failure, and findable as a flag
            recs.append(Flag(target_id=f["target_id"], kind="hack_suspected", stage="judge", run_id=run_id,
                             reason=f"{name}: {r.detail.get('detail', '')}"[:300], details={"criterion": name}))
    return recs


def _injection_flags(corpus: Corpus, cands: list[dict], touched: set[str], run_id: str) -> list[Record]:
    """One judge_injection flag per generation, however many rubrics judge it."""
    if not touched:
        return []
    with corpus.connect() as con:
        wanted = pa.table({"k": sorted(touched)})  # noqa: F841
        done = {r[0] for r in con.execute("SELECT target_id FROM flags WHERE kind = 'judge_injection' AND stage = 'judge' "
                                          "AND target_id IN (SELECT k FROM wanted)").fetchall()}
    out: list[Record] = []
    for g in cands:
        if g["id"] in touched and g["id"] not in done:
            hit = find_injection(g["response"])
            if hit:
                out.append(Flag(target_id=g["id"], kind="judge_injection", stage="judge", run_id=run_id,
                                reason=f"planted instruction: {hit!r}", details={"match": hit}))
    return out
