"""The batch generation job: n candidates per prompt, resumable, every call cached.

How a rerun after a crash (even SIGKILL) does only the missing work, with no duplicate:
- a candidate's id is a hash of (prompt, backend, model, sampling params, sample index), so the
  job knows before calling the model which candidates the corpus already holds, and skips them;
- each chunk of requests goes through `CachedBackend`, which writes the model's answers to the
  `calls` table as they arrive (each request, or each group that completed during the previous
  write; each hf sub-batch), before the backend sends more in their place; candidates go
  through a `BatchWriter` that flushes every few seconds. A kill loses at most the requests in
  flight and the unflushed candidates, and the rerun rebuilds those from `calls` without
  calling the model again;
- inserts skip ids already present, so a row flushed twice is still one row.

A prompt over the backend's `max_prompt_bytes` (--max-prompt-bytes, default 1 MB) is neither
stored nor sent: it becomes a `failures` row that gives its size, and the summary counts it.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.table import Table

from backends import Backend, CachedBackend, ChatRequest, Completion, SamplingParams
from backends.base import prompt_bytes, too_large
from corpus import BatchWriter, Corpus, Failure, Generation, Prompt, UserError
from corpus.progress import progress as progress_display

from .sources import keep_tasks_apart, load_prompts, prompts_from_sql


def candidate_seed(seed: int, prompt_id: str, sample_idx: int) -> int:
    """A 62-bit sampling seed per candidate: fixed by the job seed, the prompt and the index,
    so a rerun asks for exactly the same samples (and hits the call cache)."""
    h = hashlib.sha256(f"{seed}\x00{prompt_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 2


def generation_params(params: SamplingParams, seed: int, system: str | None) -> dict[str, Any]:
    """What defines a set of candidates besides prompt and model (per-sample seed excluded):
    changing any of these gives new candidates instead of 'already there'."""
    out: dict[str, Any] = {
        "temperature": params.temperature, "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens, "seed": seed,
    }
    if params.stop:
        out["stop"] = list(params.stop)
    if system:
        out["system"] = system
    return out


def with_system(messages: Sequence[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """--system replaces the prompt's own system message, or goes first where it has none."""
    msgs = [dict(m) for m in messages]
    if not system:
        return msgs
    if msgs and msgs[0]["role"] == "system":
        msgs = msgs[1:]
    return [{"role": "system", "content": system}, *msgs]


@dataclass(frozen=True)
class Task:
    prompt_id: str
    sample_idx: int
    seed: int
    generation_id: str
    request: ChatRequest


def plan(prompts: Sequence[Prompt], backend: Backend, n: int, params: SamplingParams, seed: int, system: str | None) -> list[Task]:
    gparams = generation_params(params, seed, system)
    tasks = []
    for p in prompts:
        msgs = with_system(p.messages, system)
        for k in range(n):
            s = candidate_seed(seed, p.id, k)
            gid = Generation(
                prompt_id=p.id, backend=backend.name, model=backend.model_id, params=gparams, sample_idx=k, response="",
            ).id
            tasks.append(Task(p.id, k, s, gid, ChatRequest(messages=msgs, params=params.model_copy(update={"seed": s}))))
    return tasks


def _record(task: Task, comp: Completion, backend: Backend, gparams: dict[str, Any], call_key: str, run_id: str) -> Generation | Failure:
    if not comp.ok:
        return Failure(stage="generate", target_id=task.generation_id, error=comp.error or "unknown error", run_id=run_id)
    return Generation(
        id=task.generation_id, prompt_id=task.prompt_id, backend=backend.name, model=backend.model_id, params=gparams,
        sample_idx=task.sample_idx, seed=task.seed, response=comp.text, finish_reason=comp.finish_reason,
        prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens, latency_ms=comp.latency_ms,
        call_key=call_key, run_id=run_id,
    )


def split_oversized(records: list[Prompt], limit: int | None, system: str | None, run_id: str) -> tuple[list[Prompt], list[Failure]]:
    """Prompts within `limit` bytes (as sent, with --system), and a failure for each one over it."""
    if limit is None:
        return records, []
    keep, failed = [], []
    for p in records:
        size = prompt_bytes(ChatRequest(messages=with_system(p.messages, system)))
        if size > limit:
            failed.append(Failure(stage="generate", target_id=p.id, error=too_large(size, limit), run_id=run_id))
        else:
            keep.append(p)
    return keep, failed


def run_generate(
    corpus: Corpus,
    prompts: str | Path | Sequence[Prompt] | None = None,
    from_sql: str | None = None,
    backend: Backend | None = None,
    n: int = 4,
    params: SamplingParams | None = None,
    system: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    *,
    fields: Sequence[str] | None = None,
    split: str | None = None,
    chunk_size: int = 64,
    argv: Sequence[str] | None = None,
    max_prompt_bytes: int | None | str = "backend",
) -> dict[str, Any]:
    """Generate `n` candidates for every prompt that lacks them; return the run's summary.

    `prompts` is a file/dataset path or already-loaded Prompt records; or give `from_sql`.
    `backend=None` loads the hf backend on the embedded default model. `max_prompt_bytes`
    defaults to the backend's own limit (--max-prompt-bytes); None means no limit.
    """
    if n < 1:
        raise UserError(f"--n {n}: give at least 1 candidate per prompt")
    if chunk_size < 1:
        raise UserError(f"--chunk-size {chunk_size}: must be at least 1")
    if (prompts is None) == (from_sql is None):
        raise UserError("give exactly one of --prompts FILE or --from-sql \"SELECT id FROM prompts ...\"")
    params = params or SamplingParams()
    t_start = time.perf_counter()
    if from_sql is not None:
        records, repeated = prompts_from_sql(corpus, from_sql, limit), 0
    elif isinstance(prompts, (str, Path)):
        records, repeated = load_prompts(prompts, fields, limit, split)
    else:
        records, repeated = list(prompts)[:limit] if limit else list(prompts), 0
    apart = 0
    if from_sql is None:  # tasks sharing a text: the corpus's stored owner keeps the plain id, the others their own
        records, apart = keep_tasks_apart(corpus, records)
    if backend is None:
        from backends import load_backend

        backend = load_backend("hf", None)

    gparams = generation_params(params, seed, system)
    config = {
        "prompts": str(prompts) if isinstance(prompts, (str, Path)) else None, "from_sql": from_sql,
        "backend": backend.name, "model": backend.model_id, "n": n, "params": gparams, "limit": limit,
        "chunk_size": chunk_size,
    }
    with corpus.run("generate", config, argv) as run:
        byte_limit = backend.max_prompt_bytes if max_prompt_bytes == "backend" else max_prompt_bytes
        records, oversized = split_oversized(records, byte_limit, system, run.id)  # type: ignore[arg-type]
        stamped = [p.model_copy(update={"run_id": run.id}) if p.run_id is None else p for p in records]
        prompts_new = corpus.insert(stamped)
        del stamped  # the records are held once
        corpus.insert(oversized)
        ahead = getattr(backend, "look_ahead", None)
        # Ray delivers a part at a time, so no need to hold the connection between saves; and the
        # look-ahead's cache lookups share that connection, which a held session's timer thread closes
        cached = CachedBackend(backend, corpus, run.id, **({"hold_s": 0.0} if ahead is not None else {}))
        # The plan streams: tasks are built a block of prompts at a time and dropped once stored;
        # the whole job holds only the prompts and the ids already stored (a few GB at 1M otherwise)
        per = max(1, chunk_size // n)

        def tasks() -> Iterator[Task]:
            for s in range(0, len(records), per):
                yield from plan(records[s : s + per], backend, n, params, seed, system)

        have = corpus.existing_ids("generations", (t.generation_id for t in tasks()))
        planned, todo_n = len(records) * n, len(records) * n - len(have)

        def todo() -> Iterator[Task]:
            return (t for t in tasks() if t.generation_id not in have)

        stats = {"pending": 0, "new": 0, "failures": 0, "permanent": 0, "tokens": 0, "prompt_tokens": 0, "fresh_tokens": 0, "model_s": 0.0}
        errors: dict[str, int] = {}
        if oversized:
            errors["prompt too large"] = len(oversized)
        if ahead is not None:  # Ray: replicas answer the next chunks while this one is stored
            ahead(itertools.islice((t.request for t in todo()), chunk_size, None), known=corpus.lookup_calls)
        stream = todo()
        with progress_display("generate", todo_n, progress) as bar, BatchWriter(corpus) as writer:
            while chunk := list(itertools.islice(stream, chunk_size)):
                t0 = time.perf_counter()
                comps = cached.generate([t.request for t in chunk], progress=bar)
                stats["model_s"] += time.perf_counter() - t0
                recs = []
                for t, c in zip(chunk, comps):
                    if c.pending:  # in a batch still running, exported, or held back by --max-cost
                        stats["pending"] += 1
                        continue
                    recs.append(_record(t, c, backend, gparams, cached.key(t.request), run.id))
                    if c.ok:
                        stats["new"] += 1
                        stats["tokens"] += c.completion_tokens
                        stats["prompt_tokens"] += c.prompt_tokens
                        if not c.cached:
                            stats["fresh_tokens"] += c.completion_tokens
                    else:
                        stats["failures"] += 1
                        stats["permanent"] += int(c.permanent)
                        reason = (c.error or "unknown").split(":")[0][:60]
                        errors[reason] = errors.get(reason, 0) + 1
                writer.add(recs)
                rate = stats["fresh_tokens"] / stats["model_s"] if stats["model_s"] else 0.0
                bar.note(f"{rate:.1f} tok/s")
        elapsed = time.perf_counter() - t_start
        run.summary = {
            "prompts": len(records), "prompts_new": prompts_new, "prompts_repeated": repeated, "prompts_kept_apart": apart,
            "candidates_planned": planned, "candidates_new": stats["new"], "candidates_existing": len(have),
            "calls_cached": cached.hits, "calls_sent": cached.misses,
            "tokens": stats["tokens"], "prompt_tokens": stats["prompt_tokens"],
            "tokens_per_s": round(stats["fresh_tokens"] / stats["model_s"], 2) if stats["model_s"] and stats["fresh_tokens"] else 0.0,
            "prompts_too_large": len(oversized), "pending": stats["pending"],
            "failures": stats["failures"] + len(oversized), "failures_permanent": stats["permanent"] + len(oversized),
            "failure_reasons": errors,
            "elapsed_s": round(elapsed, 2), "backend": backend.name, "model": backend.model_id, "run_id": run.id,
        }
    return dict(run.summary)


def summary_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"generate · run {summary['run_id']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("model", f"{summary['backend']}:{summary['model']}")
    t.add_row("prompts", f"{summary['prompts']} ({summary['prompts_new']} new)")
    if summary.get("prompts_too_large"):
        t.add_row("prompts too large (not stored)", str(summary["prompts_too_large"]))
    t.add_row("candidates new", str(summary["candidates_new"]))
    if summary.get("pending"):
        t.add_row("candidates pending (batch, export, --max-cost)", str(summary["pending"]))
    t.add_row("candidates already there", str(summary["candidates_existing"]))
    t.add_row("calls sent / from cache", f"{summary['calls_sent']} / {summary['calls_cached']}")
    t.add_row("tokens generated", str(summary["tokens"]))
    t.add_row("tokens/s (model time)", f"{summary['tokens_per_s']:.1f}")
    fails = str(summary["failures"])
    if summary["failure_reasons"]:
        fails += " (" + ", ".join(f"{k}: {v}" for k, v in summary["failure_reasons"].items()) + ")"
    t.add_row("failures", fails)
    t.add_row("elapsed", f"{summary['elapsed_s']:.1f} s")
    return t
