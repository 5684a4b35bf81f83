"""The corpus schema: append-only migrations in corpus/migrations/, applied in name order and
recorded in `schema_migrations`; and which migration creates which table (for error messages)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from .records import now

MIGRATIONS = Path(__file__).parent / "migrations"
_CREATES = re.compile(r'^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?', re.I | re.M)


def _files() -> list[Path]:
    return sorted(MIGRATIONS.glob("m*.sql"))


def _applied(con: duckdb.DuckDBPyConnection) -> tuple[set[str], set[str]]:
    """(tables and views in the file, migrations recorded as applied)."""
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()} if "schema_migrations" in have else set()
    return have, done


def pending_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    _, done = _applied(con)
    return [f.stem for f in _files() if f.stem not in done]


def missing_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Tables and views that an applied migration created but the file lacks -> that migration."""
    have, done = _applied(con)
    out: dict[str, str] = {}
    for f in _files():
        if f.stem in done:
            for name in _CREATES.findall(f.read_text()):
                if name not in have:
                    out.setdefault(name, f.stem)
    return out


def migration_of(table: str) -> str | None:
    """The migration that creates `table` (or view), e.g. 'm001_core', or None."""
    for f in _files():
        if table in _CREATES.findall(f.read_text()):
            return f.stem
    return None


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this file lacks, in name order, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    applied = []
    for f in _files():
        if f.stem in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f.read_text())
            con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [f.stem, now()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(f.stem)
    return applied
