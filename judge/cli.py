"""`python -m judge --rubric R --db D [--where SQL]` and `python -m judge audit --rubric R --db D [--plot P]`.

`--where` is one SQL expression, checked by DuckDB's parser and run on a read-only connection.
Exit status 3: backend errors remain (rerun to retry them); see corpus.errors.EXIT_STATUS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from backends import BackendError, add_backend_args, add_executor_args, backend_from_args, backend_limits, report_paid_run
from backends.ray_session import ClusterError, RaySession
from corpus import ArgumentParser, Corpus, UserError
from corpus.errors import EXIT_STATUS, INCOMPLETE, report_incomplete
from corpus.call_shards import merge_call_shards

from .audit import run_audit
from .ray_verifiers import ray_verifier
from .rubric import load_rubric
from .run import run_judge


def _judge_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m judge", description="Judge every candidate not yet judged under a rubric version. "
                       "Subcommands: `python -m judge audit ...` prints the bias report; `python -m judge serve ...` serves the rubric as a reward service; `python -m judge eval ...` "
                       "measures the judges against human preference labels.", epilog=EXIT_STATUS)
    p.add_argument("--rubric", required=True, help="rubric YAML, e.g. prompts/code.yaml")
    p.add_argument("--db", required=True, help="the corpus DuckDB file")
    p.add_argument("--where", default=None, help="SQL condition on generations g / prompts p, e.g. \"g.model = 'x'\"")
    p.add_argument("--no-prefix-reuse", action="store_true", help="hf judges: do not reuse the rubric prefix's KV cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    p.add_argument("--unsafe-exec", action="store_true", help="code_exec: where the bwrap sandbox cannot start, run "
                   "answers without isolation (recorded on the run and on each judgment)")
    add_backend_args(p, prefix="judge-", default=None)  # type: ignore[arg-type]
    add_executor_args(p)
    return p


def _audit_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m judge audit", description="Bias report per judge and rubric version.")
    p.add_argument("--rubric", required=True, help="rubric YAML whose judgments to audit")
    p.add_argument("--db", required=True, help="the corpus DuckDB file")
    p.add_argument("--plot", default=None, help="write the report as a PNG here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "audit":
        return audit_main(argv[1:])
    if argv and argv[0] == "serve":
        from .serve_main import serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "eval":
        from .eval_report import eval_main

        return eval_main(argv[1:])
    args = _judge_parser().parse_args(argv)
    on_ray = args.executor == "ray"
    if on_ray and not args.judge_backend and load_rubric(args.rubric).llm_criteria():
        raise UserError("--executor ray runs the judge given by --judge-backend (and --judge-model); "
                        "add them, or drop --executor ray to use the rubric's judges in this process")
    if on_ray and not args.work_dir:
        args.work_dir = f"{args.db}.ray"
    paid = [f for f in ("batch", "no_wait", "rpm", "tpm", "max_cost") if getattr(args, f"judge_{f}", None)]
    if paid and not args.judge_backend:  # the rubric's own judges are not the openai backend the flag is for
        flag = "--judge-" + paid[0].replace("_", "-")
        raise UserError(f"{flag} applies to the judge named by --judge-backend openai --judge-model NAME; add them")
    corpus = Corpus(args.db, create=False)
    backend, session, verify = None, None, None
    try:
        limits = {**backend_limits(args, prefix="judge-"), "batch_size": args.judge_batch_size, "device": args.judge_device}
        if args.judge_backend:
            backend = backend_from_args(args, prefix="judge-")
        if on_ray:  # verifiers spread over the same cluster: the judge backend's session, or one of their own
            session = backend.session if backend is not None else RaySession(args.ray_address, args.ray_workers + 1)
            verify = ray_verifier(session, args.unsafe_exec)
    except BackendError as e:
        raise UserError(str(e)) from None
    try:
        if on_ray and backend is not None:  # a killed run's shards become cache hits, in one statement
            merge_call_shards(corpus, args.work_dir, prune=True)
        summary = run_judge(corpus, args.rubric, where=args.where, backend=backend, progress=not args.quiet,
                            prefix_reuse=not args.no_prefix_reuse, unsafe_exec=args.unsafe_exec, limits=limits,
                            verify=verify)
    except UserError as e:
        if not isinstance(e.__cause__ or e.__context__, ClusterError):
            raise
        print(f"judge: error: {e}", file=sys.stderr)  # infrastructure, not the input: exit 3
        return INCOMPLETE
    except ClusterError as e:
        print(f"judge: error: {e}", file=sys.stderr)
        return INCOMPLETE
    finally:
        if backend is not None:
            backend.close()  # on Ray: the replicas and a local cluster stop here
            if on_ray and not backend.session.dead:
                merge_call_shards(corpus, args.work_dir, prune=True)  # leaves an empty work dir
        elif session is not None:
            session.close()
    if not args.quiet:
        print_summary(summary)
    # 0: every planned judgment stored (parse failures are stored results); 3: backend errors remain
    planned = int(summary.get("judged", 0)) + int(summary.get("transient", 0))
    paid = report_paid_run(backend, "judge", int(summary.get("pending", 0)), args.db) if backend is not None else None
    return report_incomplete("judge", int(summary.get("transient", 0)), planned, "judge calls") or paid or 0


def audit_main(argv: Sequence[str]) -> int:
    args = _audit_parser().parse_args(list(argv))
    if args.plot and not Path(args.plot).parent.exists():
        raise UserError(f"--plot {args.plot}: folder {Path(args.plot).parent} does not exist; create it first")
    report = run_audit(Corpus(args.db, create=False, read_only=True), args.rubric, plot=args.plot)  # reads only
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print_audit(report)
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def print_summary(s: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 120))
    t = Table(title=f"judge {s['rubric']} v{s['rubric_version']}")
    t.add_column("what")
    t.add_column("count", justify="right")
    for key, label in (("candidates", "candidates in scope"), ("judged", "judged now"), ("cached", "already judged (skipped)"),
                       ("calls_cached", "answered from the call cache"), ("retried", "parsed after a retry"),
                       ("failed", "parse failures"), ("transient", "backend errors (retried next run)")):
        t.add_row(label, str(s.get(key, 0)))
    for kind, n in sorted(s.get("flags", {}).items()):
        t.add_row(f"flag {kind}", str(n))
    console.print(t)
    d = Table(title="scores per criterion (jury aggregate)")
    for col in ("criterion", "n", "mean", "min", "median", "max", "histogram"):
        d.add_column(col, justify="left" if col in ("criterion", "histogram") else "right")
    for crit, st in s.get("scores", {}).items():
        hist = " ".join(f"{k}:{v}" for k, v in st.get("hist", {}).items())
        d.add_row(crit, str(st.get("n", 0)), _fmt(st.get("mean")), _fmt(st.get("min")), _fmt(st.get("median")),
                  _fmt(st.get("max")), hist)
    console.print(d)


def print_audit(report: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 120))
    t = Table(title=f"judge audit: {report['rubric']}")
    cols = [("judge", "judge"), ("rubric_version", "version"), ("n", "judgments"), ("position_flip_rate", "flip rate"),
            ("first_slot_win_rate", "first slot wins"), ("length_corr", "score~length rho"),
            ("self_preference", "self-pref"), ("parse_failure_rate", "parse fail")]
    for _, label in cols:
        t.add_column(label, justify="left" if label in ("judge",) else "right")
    for row in report["judges"]:
        t.add_row(*[_fmt(row.get(k)) for k, _ in cols])
    console.print(t)
    if report["jury_alpha"]:
        a = Table(title="jury agreement (Krippendorff's alpha, interval)")
        a.add_column("version:criterion")
        a.add_column("alpha", justify="right")
        for k, v in report["jury_alpha"].items():
            a.add_row(k, _fmt(v))
        console.print(a)
    if report.get("plot"):
        console.print(f"wrote {report['plot']}")


def cli_parsers() -> dict[str, ArgumentParser]:
    """Every parser of `python -m judge`, for the generated CLI reference."""
    from .eval_report import eval_parser
    from .serve_main import serve_parser

    return {"python -m judge": _judge_parser(), "python -m judge audit": _audit_parser(),
            "python -m judge eval": eval_parser(), "python -m judge serve": serve_parser()}
