"""`python -m generate` (candidates for prompts) and `python -m generate prompts` (synthesis).

Everything a user can get wrong is checked before the corpus file is opened: flags, the whole
prompt file, the model, the endpoint. A job that cannot start leaves no corpus behind.

Exit status: 0 every planned candidate is stored or failed for good (a permanent error), 2 a
mistake in the input (nothing written), 3 the job ran but transient failures remain (rerun
the same command: it asks only for what is missing), 130 interrupted.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from rich.console import Console

from backends import BackendError, SamplingParams, add_backend_args, add_executor_args, backend_from_args, report_paid_run
from backends.ray_executor import ClusterError
from corpus import ArgumentParser, Corpus, UserError
from corpus.errors import EXIT_STATUS, INCOMPLETE, report_incomplete
from corpus.call_shards import merge_call_shards
from corpus.store import redact_urls

from .job import run_generate, summary_table
from .sources import DEFAULT_FIELDS, load_prompts
from .synth import SEED_FIELDS, run_synth, synth_table


def _sampling_args(p: ArgumentParser, temperature: float, top_p: float, max_new_tokens: int) -> None:
    p.add_argument("--temperature", type=float, default=temperature, help=f"0 is greedy (default {temperature})")
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling mass in (0, 1] (default {top_p})")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens per reply (default {max_new_tokens})")
    p.add_argument("--seed", type=int, default=0, help="job seed: per-candidate seeds derive from it (default 0)")
    p.add_argument("--db", default="corpus.duckdb", help="the corpus file (default corpus.duckdb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    add_backend_args(p)


def _sampling(args) -> SamplingParams:
    """SamplingParams from flags, each bad value reported by its flag name."""
    if not 0 <= args.temperature <= 5:
        raise UserError(f"--temperature {args.temperature}: must be between 0 (greedy) and 5")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p}: must be above 0 and at most 1")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if getattr(args, "concurrency", 1) < 1:
        raise UserError(f"--concurrency {args.concurrency}: must be at least 1")
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)


def check_endpoint(base_url: str, timeout: float = 5.0) -> None:
    """Fail fast, before the corpus is touched, when nothing listens at --base-url."""
    u = urlparse(base_url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UserError(f"--base-url {redact_urls(base_url)}: not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--base-url {redact_urls(base_url)}: cannot connect ({e.strerror or e}); start the server or fix the URL") from None


def _backend(args):
    if args.backend == "openai" and args.base_url:
        check_endpoint(args.base_url)
    try:
        return backend_from_args(args)
    except BackendError as e:
        raise UserError(str(e)) from None


RAY_CHUNK = 4096  # candidates per chunk on Ray; no barrier: replicas start on the next chunk (look_ahead)


def _generate_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m generate",
        description="Generate n candidate replies per prompt into the corpus. "
        "`python -m generate prompts --help` synthesizes new prompts instead.",
        epilog=EXIT_STATUS,
    )
    src = p.add_argument_group("prompts (one of)")
    src.add_argument("--prompts", help="JSONL / JSON / Parquet file, or a folder saved with datasets' save_to_disk")
    src.add_argument("--from-sql", help="a query over the corpus returning prompt ids (id or prompt_id) or messages")
    p.add_argument("--field", action="append", default=None,
                   help=f"the field holding the prompt; repeat to try several in order (default: {', '.join(DEFAULT_FIELDS)})")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict (default: train, or the only one)")
    p.add_argument("--n", type=int, default=4, help="candidates per prompt (default 4)")
    p.add_argument("--system", default=None, help="system prompt put before every prompt")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--chunk-size", type=int, default=None, help="requests per backend call; answers are saved to the "
                   "call cache as they arrive, candidates per chunk "
                   f"(default 64; {RAY_CHUNK} with --executor ray, whose shards in --work-dir already bound what a kill loses)")
    _sampling_args(p, 0.7, 1.0, 256)
    p.add_argument("--export-batch", default=None, metavar="FILE",
                   help="send nothing: write the missing requests to FILE in the format `vllm run-batch` reads "
                        "(with --backend openai --model NAME); store its output with python -m corpus import-batch")
    add_executor_args(p)
    return p


def _synth_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m generate prompts",
        description="Synthesize new prompts Self-Instruct style from seed tasks; near-copies are dropped.",
    )
    p.add_argument("--seeds", required=True, help="seed tasks: JSONL/JSON/Parquet/dataset folder")
    p.add_argument("--field", action="append", default=None,
                   help=f"the field holding a seed instruction (default: {', '.join(SEED_FIELDS)})")
    p.add_argument("--n", type=int, default=200, help="new prompts wanted (default 200)")
    p.add_argument("--examples", type=int, default=3, help="seed tasks shown per request (default 3)")
    p.add_argument("--min-words", type=int, default=3, help="drop shorter instructions (default 3)")
    p.add_argument("--max-words", type=int, default=150, help="drop longer instructions (default 150)")
    p.add_argument("--threshold", type=float, default=0.7,
                   help="word 1+2-gram Jaccard at or above which an instruction is a near-copy (default 0.7)")
    p.add_argument("--max-requests", type=int, default=None, help="give up after this many requests (default 10 x --n)")
    _sampling_args(p, 0.7, 0.9, 96)
    return p


def unresolved(summary: dict) -> int:
    """Planned items neither stored nor failed for good: what a rerun would ask for again."""
    return max(0, int(summary.get("failures", 0)) - int(summary.get("failures_permanent", 0)))


def _check_db(db: str, must_exist: bool) -> None:
    path = Path(db)
    if must_exist and not path.exists():
        raise UserError(f"--db {db}: no such corpus; --from-sql reads prompts from an existing corpus")
    if not path.parent.exists():
        raise UserError(f"--db {db}: folder {path.parent} does not exist; create it first")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prompts":
        return synth_main(argv[1:], argv)
    args = _generate_parser().parse_args(argv)
    if (args.prompts is None) == (args.from_sql is None):
        raise UserError("give exactly one of --prompts FILE or --from-sql \"SELECT id FROM prompts WHERE ...\"")
    if args.n < 1:
        raise UserError(f"--n {args.n}: give at least 1 candidate per prompt")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if args.chunk_size is None:  # a batch holds every request of the run, not one chunk's
        args.chunk_size = 10**9 if (args.batch or args.export_batch) else RAY_CHUNK if args.executor == "ray" else 64
    if args.export_batch and not Path(args.export_batch).resolve().parent.is_dir():
        raise UserError(f"--export-batch {args.export_batch}: folder does not exist; create it first")
    if args.chunk_size < 1:
        raise UserError(f"--chunk-size {args.chunk_size}: must be at least 1")
    if args.executor == "ray" and not args.work_dir:
        args.work_dir = f"{args.db}.ray"
    params = _sampling(args)
    _check_db(args.db, must_exist=args.from_sql is not None)
    prompts = None
    if args.prompts is not None:
        prompts, _ = load_prompts(args.prompts, args.field, args.limit, args.split)
    backend = _backend(args)
    corpus = Corpus(args.db)
    try:
        if args.executor == "ray":  # a killed run's shards become cache hits, in one statement
            merge_call_shards(corpus, args.work_dir, prune=True)
        summary = run_generate(
            corpus, prompts=prompts, from_sql=args.from_sql, backend=backend, n=args.n, params=params,
            system=args.system, seed=args.seed, limit=args.limit, progress=not args.no_progress,
            chunk_size=args.chunk_size, argv=argv,
        )
    except ClusterError as e:  # infrastructure, not the input: the run is marked failed, exit 3
        print(f"generate: error: {e}", file=sys.stderr)
        return INCOMPLETE
    except BackendError as e:
        raise UserError(str(e)) from None
    finally:
        backend.close()
        if args.executor == "ray" and not getattr(backend, "_dead", False):
            merge_call_shards(corpus, args.work_dir, prune=True)  # answers not yet asked for; an empty work dir
        corpus.close()
    Console().print(summary_table(summary))
    apart = int(summary.get("prompts_kept_apart", 0))
    if apart:
        print(f"{apart} prompt(s) share their text with a stored prompt of another task (other meta) and were kept "
              "as separate prompts", file=sys.stderr)
    paid = report_paid_run(backend, "generate", int(summary.get("pending", 0)), args.db)
    incomplete = report_incomplete("generate", unresolved(summary), int(summary.get("candidates_planned", 0)), "candidates")
    return incomplete or paid or 0


def synth_main(args_list: Sequence[str], argv: Sequence[str]) -> int:
    args = _synth_parser().parse_args(list(args_list))
    if args.n < 1:
        raise UserError(f"--n {args.n}: ask for at least 1 prompt")
    for flag, value in (("--examples", args.examples), ("--min-words", args.min_words)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold}: a Jaccard similarity above 0 and at most 1")
    if args.max_requests is not None and args.max_requests < 1:
        raise UserError(f"--max-requests {args.max_requests}: must be at least 1")
    params = _sampling(args)
    _check_db(args.db, must_exist=False)
    seeds, _ = load_prompts(args.seeds, args.field or SEED_FIELDS)
    backend = _backend(args)
    corpus = Corpus(args.db)
    try:
        summary = run_synth(
            corpus, args.seeds, backend=backend, n=args.n, params=params, examples=args.examples, seed=args.seed,
            min_words=args.min_words, max_words=args.max_words, threshold=args.threshold,
            max_requests=args.max_requests, progress=not args.no_progress, seed_records=seeds, argv=argv,
        )
    except BackendError as e:
        raise UserError(str(e)) from None
    finally:
        backend.close()
        corpus.close()
    Console().print(synth_table(summary))
    return 0


def cli_parsers() -> dict[str, ArgumentParser]:
    """Every parser of `python -m generate`, for the generated CLI reference."""
    return {"python -m generate": _generate_parser(), "python -m generate prompts": _synth_parser()}
