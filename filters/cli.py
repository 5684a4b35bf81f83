"""`python -m filters --db FILE [--config filters.yaml] [--eval-set PATH ...]` runs the filter chain;
`python -m filters --db FILE export sft|pairs --format jsonl|parquet|datasets --out PATH` writes a set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from corpus import ArgumentParser, Corpus, UserError
from corpus.errors import check_figure_out, is_duckdb_file

from .export import FORMATS, export
from .run import run_filters


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m filters", description=__doc__)
    p.add_argument("--db", default="corpus.duckdb", help="the corpus file (default: corpus.duckdb)")
    p.add_argument("--config", help="filters YAML (default: filters/default.yaml)")
    p.add_argument("--eval-set", action="append", default=[], metavar="PATH",
                   help="evaluation file or folder to decontaminate against (repeatable; adds to the config's eval_sets)")
    p.add_argument("--where", help="SQL condition on generations g / prompts p limiting the candidates, e.g. \"g.model = 'x'\"")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--plot", metavar="PNG", help="also draw the run: score histogram, pair margins, drops per filter")
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("export", help="write accepted_sft or preference_pairs of the latest filters run")
    e.add_argument("kind", choices=["sft", "pairs"], help="sft: accepted_sft (messages); pairs: preference_pairs (prompt/chosen/rejected)")
    e.add_argument("--format", default="jsonl", choices=FORMATS, help="jsonl (default), parquet, or datasets (a save_to_disk folder)")
    e.add_argument("--out", required=True, help="file (jsonl, parquet) or folder (datasets) to write")
    e.add_argument("--db", dest="export_db", metavar="DB", help="the corpus file (same as --db before 'export')")
    return p


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"filters run {summary['run_id']}")
    for col, just in (("stage", "left"), ("filter", "left"), ("seen", "right"), ("kept", "right"),
                      ("failed", "right"), ("reason", "left")):
        t.add_column(col, justify=just)
    for s in summary["steps"]:
        reasons = s["failed"] or {"": 0}
        for i, (reason, n) in enumerate(reasons.items()):
            first = i == 0
            t.add_row(s["stage"] if first else "", s["filter"] if first else "",
                      str(s["seen"]) if first else "", str(s["kept"]) if first else "", str(n) if reason else "0",
                      reason + (" (may still be rejected)" if reason and s.get("as_rejected") else ""))
    console = Console()
    console.print(t)
    console.print(
        f"prompts kept {summary['prompts_kept']}/{summary['prompts']}, candidates kept "
        f"{summary['candidates_kept']}/{summary['candidates']}; accepted_sft {summary['sft']} rows, "
        f"preference_pairs {summary['pairs']} ({summary['method']}), {summary['pair_ties']} prompts without a pair; "
        f"{summary['flags']} flags"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        corpus = Corpus(args.export_db or args.db, create=False)
        out = Path(args.out).resolve()
        if out == Path(corpus.path).resolve() or is_duckdb_file(out):  # a typo in --out must not replace a corpus
            raise UserError(f"--out {args.out}: is a DuckDB database; give a new file name for the export")
        res = export(corpus, args.kind, args.format, args.out)
        print(f"wrote {res['rows']} {res['view']} rows to {res['out']} ({res['format']})")
        print(f"snapshot {res['snapshot_hash']} (also in {res['snapshot_file']})")
        return 0
    if args.plot:  # checked before the run writes anything
        check_figure_out("--plot", args.plot)
    corpus = Corpus(args.db, create=False)
    summary = run_filters(corpus, args.config, eval_sets=args.eval_set, where=args.where, progress=not args.quiet)
    if not args.quiet:
        print_summary(summary)
    if args.plot:
        from .plot import config_of_run, plot_run

        cfg = config_of_run(corpus, summary["run_id"])
        png = plot_run(corpus, summary, args.plot, cfg["sft"]["min_score"], cfg["pairs"]["min_margin"])
        print(f"plot: {png}")
    return 0


def cli_parsers() -> dict[str, ArgumentParser]:
    """The parser of `python -m filters`, for the generated CLI reference."""
    return {"python -m filters": build_parser()}
