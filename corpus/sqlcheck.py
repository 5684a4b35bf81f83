"""SQL a user typed, checked by DuckDB's own parser before it runs.

The shape is checked here (exactly one statement; exactly one expression for `--where`), and
the run itself happens on a connection where DuckDB refuses writes (`Corpus.reader()`). Neither
depends on keywords: `/* x */ UPDATE ...`, `WITH x AS (...) DELETE ...` and `1=1) ; DROP ...`
are told apart by the parser, and a write that slips past the shape check still meets a
read-only connection.
"""

from __future__ import annotations

import threading

import duckdb

from .errors import UserError

_parser: duckdb.DuckDBPyConnection | None = None
_lock = threading.Lock()  # a DuckDB connection is not for two threads at once


def _con() -> duckdb.DuckDBPyConnection:
    global _parser
    if _parser is None:  # a private in-memory connection: parsing touches no file
        _parser = duckdb.connect(":memory:")
    return _parser


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def statements(sql: str, flag: str) -> list[duckdb.Statement]:
    """The statements in `sql` as DuckDB parses them; a parse error is a one-line UserError."""
    if not sql.strip():
        raise UserError(f"{flag}: empty; give one SQL query")
    try:
        with _lock:
            return list(_con().extract_statements(sql))
    except duckdb.Error as e:
        raise UserError(f"{flag}: {_first_line(e)}") from None


def one_statement(sql: str, flag: str, select: bool = False) -> duckdb.Statement:
    """The single statement in `sql`, else a UserError (exit 2). `select=True` also requires a
    query (SELECT, WITH ... SELECT, FROM ..., VALUES ...)."""
    stmts = statements(sql, flag)
    if len(stmts) != 1:
        raise UserError(f"{flag}: give exactly one SQL statement, found {len(stmts)}; "
                        "run them one at a time (writes need `python -m corpus sql --write`)")
    if select and stmts[0].type != duckdb.StatementType.SELECT:
        raise UserError(f"{flag}: give a SELECT query (got a {stmts[0].type.name} statement); {flag} only reads the corpus")
    return stmts[0]


def where_expression(expr: str, flag: str = "--where") -> str:
    """`expr` re-rendered from DuckDB's parse tree, if it is exactly one SQL expression.

    The returned text, not the user's, is what goes into the query: it has balanced
    parentheses and no comments, so it cannot close the WHERE clause or hide what follows.
    """
    if not expr.strip():
        raise UserError(f"{flag}: empty; give a SQL condition, e.g. {flag} \"g.model = 'x'\"")
    try:
        parsed = duckdb.SQLExpression(expr)
    except duckdb.Error as e:
        raise UserError(f"{flag} {expr!r}: not one SQL expression ({_first_line(e)}); "
                        f"give a single condition, e.g. {flag} \"g.model = 'x'\"") from None
    text = str(parsed)
    if text.strip() == "*":
        raise UserError(f"{flag} {expr!r}: not a condition; give e.g. {flag} \"g.model = 'x'\"")
    return text


def where_query(select: str, expr: str | None, tail: str = "", flag: str = "--where") -> str:
    """`select` + ` WHERE (<checked expr>)` + `tail`, verified to be one SELECT statement."""
    sql = select + (f" WHERE ({where_expression(expr, flag)})" if expr is not None else "") + tail
    one_statement(sql, flag, select=True)
    return sql
