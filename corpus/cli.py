"""`python -m corpus --db FILE sql|stats|tables|export`: the corpus from the shell."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import duckdb

from .errors import ArgumentParser, UserError
from .store import Corpus

_WRITES = re.compile(
    r"^\s*(insert|update|delete|create|drop|alter|copy|attach|detach|truncate|vacuum|checkpoint|import|export|install|load|set|begin|commit)\b",
    re.I,
)
FORMATS = {"parquet": "(FORMAT parquet)", "jsonl": "(FORMAT json)", "csv": "(FORMAT csv, HEADER)"}


def _print_rows(cols: list[str], rows: list[tuple[Any, ...]], fmt: str, max_rows: int, title: str | None = None) -> None:
    if fmt == "jsonl":
        for r in rows:
            print(json.dumps(dict(zip(cols, r)), default=str, ensure_ascii=False))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows[:max_rows]:
        t.add_row(*("NULL" if v is None else str(v)[:200] for v in r))
    console = Console()
    console.print(t)
    if len(rows) > max_rows:
        console.print(f"... {len(rows) - max_rows} more rows (use --max-rows or --format jsonl)")


def run_sql(corpus: Corpus, sql: str, write: bool = False) -> tuple[list[str], list[tuple[Any, ...]]]:
    if not write and _WRITES.match(sql):
        raise UserError("sql: this statement may change the corpus; add --write if that is what you want")
    try:
        with corpus.transaction() as con:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description or []]
            rows = cur.fetchall() if cur.description else []
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"sql: {first}") from None
    return cols, rows


def stats(corpus: Corpus) -> list[tuple[str, str, int]]:
    out = []
    with corpus.session():
        for name, kind in corpus.tables().items():
            if name == "schema_migrations":
                continue
            n = corpus.query(f'SELECT count(*) AS n FROM "{name}"')[0]["n"]
            out.append((name, kind, n))
    return out


def export(corpus: Corpus, table: str, fmt: str, out: Path) -> int:
    names = corpus.tables()
    if table not in names:
        raise UserError(f"export: no table or view {table!r}; choose one of: {', '.join(sorted(names))}")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name, e.g. --out {out / (table + '.' + fmt)}")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.with_name(out.name + ".partial")
    target = tmp.as_posix().replace("'", "''")  # a quote in the path must not end the SQL string
    try:
        with corpus.connect() as con:
            con.execute(f"COPY (SELECT * FROM \"{table}\") TO '{target}' {FORMATS[fmt]}")
            n = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        tmp.replace(out)  # a killed export never leaves a half file under the real name
    finally:
        tmp.unlink(missing_ok=True)
    return int(n)


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="corpus", description="Query and export the DuckDB corpus.")
    ap.add_argument("--db", default="corpus.duckdb", help="corpus file (default corpus.duckdb)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("sql", help="run SQL and print the result")
    q.add_argument("query")
    q.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    q.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    q.add_argument("--write", action="store_true", help="allow statements that change the corpus")
    sub.add_parser("stats", help="rows per table and view, runs and models")
    sub.add_parser("tables", help="tables and views with their columns")
    e = sub.add_parser("export", help="write a table or view to a file")
    e.add_argument("table")
    e.add_argument("--format", choices=sorted(FORMATS), default="parquet")
    e.add_argument("--out", required=True, type=Path)
    return ap


def cli_parsers() -> dict[str, ArgumentParser]:
    """The parser of `python -m corpus`, for the generated CLI reference."""
    return {"python -m corpus": _parser()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    corpus = Corpus(args.db, create=False)
    if args.cmd == "sql":
        cols, rows = run_sql(corpus, args.query, args.write)
        _print_rows(cols, rows, args.format, args.max_rows)
    elif args.cmd == "stats":
        _print_rows(["name", "kind", "rows"], stats(corpus), "table", 1000, title=args.db)
        runs = corpus.query(
            "SELECT command, status, count(*) AS runs, max(started_at) AS last FROM runs GROUP BY 1, 2 ORDER BY 1, 2"
        )
        if runs:
            _print_rows(list(runs[0]), [tuple(r.values()) for r in runs], "table", 1000, title="runs")
        gens = corpus.query(
            "SELECT model, count(*) AS candidates, count(DISTINCT prompt_id) AS prompts, "
            "sum(completion_tokens) AS tokens FROM generations GROUP BY 1 ORDER BY 2 DESC"
        )
        if gens:
            _print_rows(list(gens[0]), [tuple(r.values()) for r in gens], "table", 1000, title="generations by model")
    elif args.cmd == "tables":
        rows = corpus.query(
            "SELECT c.table_name, t.table_type, string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns "
            "FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'main' GROUP BY 1, 2 ORDER BY 2, 1"
        )
        _print_rows(["name", "kind", "columns"], [tuple(r.values()) for r in rows], "table", 1000)
    else:
        n = export(corpus, args.table, args.format, args.out)
        print(f"wrote {n} rows of {args.table} to {args.out} ({args.format})")
    return 0
