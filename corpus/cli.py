"""`python -m corpus --db FILE sql|stats|tables|export|import-pairs`: the corpus from the shell.

Everything but `sql --write` and `import-pairs` opens the file read-only: DuckDB itself refuses
writes, and a corpus the user may not write (another uid, a read-only mount) can still be read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import duckdb

from . import batches, import_pairs
from .errors import ArgumentParser, UserError, is_duckdb_file, missing_table
from .sqlcheck import one_statement, statements
from .store import Corpus
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
    """Without `write`: exactly one statement, on a connection where DuckDB refuses writes.
    With `write`: exactly what the user wrote (one or more statements) in one transaction."""
    if write:
        stmts = statements(sql, "sql")
        if any(st.type == duckdb.StatementType.TRANSACTION for st in stmts):
            raise UserError("sql --write: runs everything in one transaction of its own; leave out BEGIN/COMMIT/ROLLBACK")
        ctx = corpus.transaction()
    else:
        one_statement(sql, "sql")
        ctx = corpus.reader()
    try:
        with ctx as con:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description or []]
            rows = cur.fetchall() if cur.description else []
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        if not write and "read-only mode" in first:
            raise UserError("sql: this statement changes the corpus; add --write if that is what you want") from None
        if not write and "disabled by configuration" in first:
            raise UserError(f"sql: a read-only query may not touch files outside the corpus ({first[:160]}); "
                            f"export a table with `python -m corpus --db {corpus.path} export TABLE --out FILE`") from None
        raise UserError(f"sql: {first}") from None
    return cols, rows


def stats(corpus: Corpus) -> list[tuple[str, str, int | str]]:
    """Rows per table and view; a view whose table is gone shows what is missing instead of a count."""
    out: list[tuple[str, str, int | str]] = []
    with corpus.session():
        for name, kind in corpus.tables().items():
            if name == "schema_migrations":
                continue
            try:
                n: int | str = corpus.query(f'SELECT count(*) AS n FROM "{name}"')[0]["n"]
            except duckdb.CatalogException as e:
                n = "error: " + str(e).strip().splitlines()[0][:120]
            out.append((name, kind, n))
    return out


def require_tables(corpus: Corpus) -> None:
    """A one-line UserError naming the first table an applied migration created that is gone."""
    for name, made_by in corpus.missing_tables().items():
        raise UserError(missing_table(name, made_by))


def check_out(corpus: Corpus, out: Path, force: bool) -> None:
    """An export never lands on the corpus (or its WAL), on any DuckDB file, or, without
    `--force`, on any file that exists: a typo in --out must not destroy data."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name, e.g. --out {out / 'export.parquet'}")
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    db = Path(corpus.path).resolve()
    if out.resolve() in (db, db.with_name(db.name + ".wal")):
        raise UserError(f"--out {out}: is the corpus itself; give another file name, e.g. --out export.parquet")
    if is_duckdb_file(out):
        raise UserError(f"--out {out}: is a DuckDB database; an export never replaces one, give another file name")
    if out.exists() and not force:
        raise UserError(f"--out {out}: exists; give a new file name, or add --force to replace it")


def export(corpus: Corpus, table: str, fmt: str, out: Path, force: bool = False) -> int:
    names = corpus.tables()
    if table not in names:
        raise UserError(f"export: no table or view {table!r}; choose one of: {', '.join(sorted(names))}")
    check_out(corpus, out, force)
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


def _print_cost(corpus: Corpus, prices_file: str | None) -> None:
    """Tokens and cost per run; prices are the user's (YAML), read with the backends' own reader."""
    prices = None
    if prices_file:
        prices = batches.load_price_file(prices_file)
    rows = batches.cost_rows(corpus, prices)
    if rows:
        _print_rows(["run", "command", "model", "mode", "calls", "tokens in", "tokens out", "USD"], rows, "table", 1000,
                    title="cost of the calls each run paid for" + ("" if prices else " (USD: give --prices FILE)"))


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="corpus", description="Query and export the DuckDB corpus.")
    ap.add_argument("--db", default="corpus.duckdb", help="corpus file (default corpus.duckdb)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("sql", help="run one SQL statement (read-only unless --write) and print the result")
    q.add_argument("query", help="one statement; it runs on a read-only connection, so DuckDB refuses any write")
    q.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    q.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    q.add_argument("--write", action="store_true",
                   help="run exactly what you wrote (one or more statements) in one transaction, writes allowed")
    st = sub.add_parser("stats", help="rows per table and view, runs and models, tokens and cost per run")
    st.add_argument("--prices", default=None, help="YAML of USD per million tokens per model (see --prices of generate): "
                    "adds the cost of each run")
    sub.add_parser("tables", help="tables and views with their columns")
    e = sub.add_parser("export", help="write a table or view to a file")
    e.add_argument("table")
    e.add_argument("--format", choices=sorted(FORMATS), default="parquet")
    e.add_argument("--out", required=True, type=Path,
                   help="the file to write; never the corpus or another DuckDB file, and not an existing file without --force")
    e.add_argument("--force", action="store_true", help="replace --out if it exists (still never a DuckDB file)")
    import_pairs.add_parser(sub)
    batches.add_parsers(sub)
    return ap


def cli_parsers() -> dict[str, ArgumentParser]:
    """The parser of `python -m corpus`, for the generated CLI reference."""
    return {"python -m corpus": _parser()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "import-pairs":
        return import_pairs.run(args, list(sys.argv[1:] if argv is None else argv))

    writes = (args.cmd == "sql" and args.write) or args.cmd == "import-batch" or (
        args.cmd == "batches" and bool(args.cancel or args.forget))
    corpus = Corpus(args.db, create=False, read_only=not writes)
    if args.cmd in ("batches", "import-batch"):
        return batches.main(corpus, args)
    if args.cmd == "sql":
        cols, rows = run_sql(corpus, args.query, args.write)
        _print_rows(cols, rows, args.format, args.max_rows)
    elif args.cmd == "stats":
        require_tables(corpus)
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
        _print_cost(corpus, args.prices)
    elif args.cmd == "tables":
        rows = corpus.query(
            "SELECT c.table_name, t.table_type, string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns "
            "FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'main' GROUP BY 1, 2 ORDER BY 2, 1"
        )
        _print_rows(["name", "kind", "columns"], [tuple(r.values()) for r in rows], "table", 1000)
    else:
        n = export(corpus, args.table, args.format, args.out, args.force)
        print(f"wrote {n} rows of {args.table} to {args.out} ({args.format})")
    return 0
