"""The corpus: one DuckDB file that every stage reads and writes.

Concurrency design: DuckDB lets one process hold a file open for writing, and then no other
process may open it. So nothing holds the file for long: every read and every batched write
opens the file, does its work in one short transaction, and closes it; a process that finds the
file locked retries with jittered backoff (up to `lock_timeout` seconds). A long batch job
(generate, judge) buffers rows in memory and flushes them every few seconds, so a reviewer's
click gets in between two flushes and no decision waits more than one flush.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from . import schema
from .batches import BatchLedger
from .errors import DAMAGED, UserError, damaged, disk_full
from .ids import canonical_json
from .provenance import code_version, redact_urls, scrub_argv, scrub_secrets  # noqa: F401  (re-exported)
from .records import RECORDS, Record, Run, now

NOTICE_AFTER_S = 1.0  # a lock wait longer than this is announced (see Corpus._lock_notice)


def _holder(e: BaseException | None) -> str:
    """' by <program> (PID n)' as DuckDB names the process holding the file's lock."""
    m = re.search(r"Conflicting lock is held in (.*?)(?:\. See also|$)", str(e or ""))
    return f" by {m.group(1).strip()}" if m else " by another process"


def _is_lock_error(e: BaseException) -> bool:
    msg = str(e)
    return isinstance(e, (duckdb.IOException, duckdb.ConnectionException)) and (
        "lock" in msg.lower() or "Conflicting" in msg
    )


def _to_arrow(records: Sequence[Record]) -> pa.Table:
    cls = type(records[0])
    rows = []
    for r in records:
        d = r.model_dump()
        for f in cls.json_fields:
            if d.get(f) is not None:
                d[f] = canonical_json(d[f])
        rows.append(d)
    return pa.Table.from_pylist(rows)


class Corpus(BatchLedger):
    """A DuckDB corpus file. `Corpus(":memory:")` keeps one connection (tests, scratch)."""

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, lock_timeout: float | None = None,
        read_only: bool = False,
    ):
        """`lock_timeout`: seconds to wait for another process's lock (default: the environment
        variable RLAIF_LOCK_TIMEOUT, else 120). `read_only=True`: every connection is opened
        read-only, so DuckDB itself refuses any write; pending migrations are applied only if the
        file is writable (an archived corpus that the user cannot write can still be read)."""
        self.path = str(path)
        self.lock_timeout = _lock_timeout() if lock_timeout is None else lock_timeout
        self.read_only = read_only and self.path != ":memory:"
        # the connection held open for one thread's nested work: only that thread shares it (a
        # DuckDB connection is not for two threads at once, and the thread that opened it closes it)
        self._held: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._owner: int | None = None
        self._guard = threading.Lock()
        if self.path == ":memory:":
            self._held = _quiet(duckdb.connect(":memory:"))
            self._depth = 1
        else:
            p = Path(self.path)
            if p.is_dir():
                raise UserError(f"--db {self.path}: is a folder; give a corpus file, e.g. --db {p / 'corpus.duckdb'}")
            if not p.exists():
                if not create or read_only:
                    raise UserError(f"{self.path}: no such corpus; create one with `python -m generate ... --db {self.path}`")
                if not p.parent.exists():
                    raise UserError(f"--db {self.path}: folder {p.parent} does not exist; create it first")
        if self.read_only:
            with self.connect() as con:
                _require_corpus(con, self.path)
                pending = schema.pending_migrations(con)
            if pending and os.access(self.path, os.W_OK):
                with _writer(self) as con:
                    self.migrate(con)
            return
        with self.connect() as con:
            _require_corpus(con, self.path)
            self.migrate(con)

    # -- connections -------------------------------------------------------------------------

    def _mine(self) -> duckdb.DuckDBPyConnection | None:
        """The held connection if this thread may use it: the thread that opened it (any thread
        for an in-memory corpus, whose one connection is the database)."""
        held = self._held
        if held is not None and (self.path == ":memory:" or self._owner == threading.get_ident()):
            return held
        return None

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one short piece of work; nested calls in the same thread share it.

        Another thread gets a connection of its own while one is held: sharing it let a thread
        close the connection under another's transaction (the call cache's idle timer closed the
        held session while a batch poll wrote through it: "Connection already closed")."""
        with self._guard:
            con = self._mine()
            if con is not None:
                self._depth += 1
        if con is not None:
            try:
                yield con
            finally:
                with self._guard:
                    self._depth -= 1
            return
        con = self._open()
        with self._guard:
            register = self._held is None
            if register:
                self._held, self._depth, self._owner = con, 1, threading.get_ident()
        try:
            yield con
        finally:
            with self._guard:
                if register and self._held is con:
                    self._held, self._depth, self._owner = None, 0, None
            con.close()

    def _open(self, read_only: bool | None = None, sealed: bool = False) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting (with jittered backoff) while another process holds it.

        `sealed=True` (read-only only): DuckDB may touch no file but this one, so SQL a user
        typed cannot write elsewhere either (`COPY ... TO`, `EXPORT DATABASE`, `ATTACH`), and the
        setting is locked so the SQL cannot switch it back on.

        Every failure a user can cause or fix is a one-line UserError: a file that is not a
        corpus, one this user may not write, one another process keeps locked past `lock_timeout`.
        """
        read_only = self.read_only if read_only is None else read_only
        sealed = sealed and read_only
        config = SEALED if sealed else {}
        try:
            for attempt in Retrying(
                retry=retry_if_exception(_is_lock_error),
                wait=wait_random_exponential(multiplier=0.05, max=1.0),
                stop=stop_after_delay(self.lock_timeout),
                before_sleep=self._lock_notice(),
                reraise=True,
            ):
                with attempt:
                    con = _quiet(duckdb.connect(self.path, read_only=read_only, config=dict(config)))
                    if sealed:  # last: after this no statement may change a setting back
                        con.execute("SET lock_configuration = true")
                    return con
        except duckdb.Error as e:
            raise self._open_error(e, read_only) from None
        raise AssertionError("unreachable")

    def _lock_notice(self) -> Callable[[RetryCallState], None]:
        """Says once, on stderr, who holds the file and how long this process will wait, when a
        wait lasts long enough for a person to wonder (a writer's flush between two reads is
        milliseconds and passes in silence)."""
        said = False
        notice_after = min(NOTICE_AFTER_S, self.lock_timeout / 4)

        def notice(state: RetryCallState) -> None:
            nonlocal said
            if said or state.seconds_since_start < notice_after:
                return
            said = True
            e = state.outcome.exception() if state.outcome else None
            print(f"{self.path}: locked{_holder(e)}; waiting up to {self.lock_timeout:g} s for it "
                  "(RLAIF_LOCK_TIMEOUT sets how long)", file=sys.stderr, flush=True)

        return notice

    def _open_error(self, e: duckdb.Error, read_only: bool) -> Exception:
        msg = str(e)
        if _is_lock_error(e):
            return UserError(
                f"--db {self.path}: locked{_holder(e)} for more than {self.lock_timeout:g} s; gave up; "
                "wait for that job to finish (or stop it), then rerun"
            )
        if any(d in msg for d in DAMAGED):
            return UserError(damaged(f"--db {self.path}", msg.strip().splitlines()[0]))
        if "No space left on device" in msg:
            return UserError(disk_full(self.path))
        if "not a valid DuckDB database" in msg:
            return UserError(
                f"--db {self.path}: exists but is not a DuckDB corpus; point --db at a corpus file or a new path"
            )
        if "Permission denied" in msg or "Read-only file system" in msg:
            how = "read" if read_only else "write"
            return UserError(
                f"--db {self.path}: this user may not {how} it (permission denied); run as its owner, "
                f"fix its permissions (and its folder's), or copy it somewhere writable"
                + ("" if read_only else f"; reading still works: python -m corpus --db {self.path} stats")
            )
        return e

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection on which DuckDB itself refuses writes, for SQL a user typed.

        A file corpus with no connection open in this process gets its own read-only, sealed
        connection (see `_open`): it can neither change the corpus nor write any other file. DuckDB will not open a file read-only beside a read-write connection of the
        same process, so where one is held (an in-memory corpus, or inside `session()`) the
        work runs in a transaction that is always rolled back; callers pass only a checked
        single SELECT there (see corpus.sqlcheck).
        """
        if self.path != ":memory:" and (self._held is None or self.read_only):
            # a read-only corpus shares what is held, whichever thread opened it: it cannot write, and
            # DuckDB refuses a second connection to the file with another configuration (sealed)
            held = self._held if self.read_only else None
            if held is not None:
                yield held
                return
            con = self._open(read_only=True, sealed=True)
            try:
                yield con
            finally:
                con.close()
            return
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            finally:
                con.execute("ROLLBACK")

    @contextlib.contextmanager
    def read_session(self) -> Iterator["Corpus"]:
        """Like `session()`, but every query inside runs on one read-only connection: a page or
        report that promises to read cannot write, because DuckDB refuses it. Inside an open
        writer (or an in-memory corpus) it shares that connection, as `session()` does."""
        if self._held is not None or self.path == ":memory:":
            with self.connect():
                yield self
            return
        con = self._open(read_only=True)
        with self._guard:
            self._held, self._depth, self._owner = con, 1, threading.get_ident()
        try:
            yield self
        finally:
            with self._guard:
                if self._held is con:
                    self._held, self._depth, self._owner = None, 0, None
            con.close()

    @contextlib.contextmanager
    def session(self) -> Iterator["Corpus"]:
        """Hold the file open across many operations (single-process scripts, the SQL CLI)."""
        with self.connect():
            yield self

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: a failure inside leaves the corpus as it was."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    # -- schema --------------------------------------------------------------------------------

    def missing_tables(self) -> dict[str, str]:
        """Tables and views that an applied migration created but the file lacks -> that migration."""
        with self.connect() as con:
            return schema.missing_tables(con)

    migration_of = staticmethod(schema.migration_of)
    migrate = staticmethod(schema.migrate)

    def tables(self) -> dict[str, str]:
        """name -> 'table' | 'view' for everything a user can query."""
        rows = self.query(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY table_type, table_name"
        )
        return {r["table_name"]: ("view" if r["table_type"] == "VIEW" else "table") for r in rows}

    # -- reads and writes ----------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def arrow(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        with self.connect() as con:
            rel = con.execute(sql, params) if params is not None else con.execute(sql)
            return rel.to_arrow_table()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> None:
        with self.transaction() as con:
            con.execute(sql, params) if params is not None else con.execute(sql)

    def insert(self, records: Iterable[Record], *, replace: bool = False) -> int:
        """Write records in one transaction, per table in one bulk statement.

        Rows whose id is already present are skipped (content-addressed ids make that
        "already done"); `replace=True` overwrites them instead. Returns rows written.
        """
        by_table: dict[str, list[Record]] = {}
        for r in records:
            by_table.setdefault(r.table, []).append(r)
        if not by_table:
            return 0
        written = 0
        with self.transaction() as con:
            for table, recs in by_table.items():
                written += self._insert_table(con, table, recs, replace)
        return written

    @staticmethod
    def _insert_table(con: duckdb.DuckDBPyConnection, table: str, recs: list[Record], replace: bool) -> int:
        key = "key" if table == "calls" else "id"
        # last one wins within a batch
        uniq = list({getattr(r, key): r for r in recs}.values())
        batch = _to_arrow(uniq)  # noqa: F841  (DuckDB reads the local by name)
        cols = ", ".join(f'"{c}"' for c in batch.column_names)
        if replace:
            con.execute(f'DELETE FROM {table} WHERE "{key}" IN (SELECT "{key}" FROM batch)')
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM batch")
            return len(uniq)
        res = con.execute(
            f'INSERT INTO {table} ({cols}) SELECT {cols} FROM batch '
            f'WHERE "{key}" NOT IN (SELECT "{key}" FROM {table})'
        ).fetchone()
        return int(res[0]) if res else 0

    def existing_ids(self, table: str, ids: Iterable[str], key: str = "id") -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        with self.connect() as con:
            wanted = pa.table({"k": ids})  # noqa: F841
            rows = con.execute(f'SELECT "{key}" FROM {table} WHERE "{key}" IN (SELECT k FROM wanted)').fetchall()
        return {r[0] for r in rows}

    # -- the call cache (backends.cache.CallStore) ----------------------------------------------

    def lookup_calls(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        with self.connect() as con:
            wanted = pa.table({"k": keys})  # noqa: F841
            rows = con.execute(
                "SELECT key, response FROM calls WHERE key IN (SELECT k FROM wanted) "
                "AND status IN ('ok', 'failed_permanent')"
            ).fetchall()
        return {k: json.loads(resp) for k, resp in rows if resp}

    def save_calls(self, rows: list[dict[str, Any]]) -> None:
        from .records import Call

        self.insert([Call(**r) for r in rows], replace=True)

    # -- runs ------------------------------------------------------------------------------------

    def start_run(self, command: str, config: dict[str, Any] | None = None, argv: Sequence[str] | None = None) -> Run:
        run = Run(
            command=command,
            argv=scrub_argv(list(sys.argv[1:] if argv is None else argv)),
            config=scrub_secrets(config or {}),
            code_version=code_version(),
        )
        self.reap_dead_runs()
        self.insert([run])
        return run

    def reap_dead_runs(self) -> list[str]:
        """Mark 'killed' the runs still 'running' whose process on this host no longer exists.

        A job killed with SIGKILL (or by the OOM killer) cannot record its own end; the next job
        started on the same host does it for it. Runs of other hosts are left alone: their
        processes cannot be seen from here. Returns the ids marked.
        """
        rows = self.query(
            "SELECT id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
            [socket.gethostname()],
        )
        dead = [r["id"] for r in rows if not _pid_alive(int(r["pid"]))]
        if dead:
            with self.transaction() as con:
                con.executemany("UPDATE runs SET status = 'killed' WHERE id = ? AND status = 'running'", [[i] for i in dead])
        return dead

    def finish_run(self, run: Run, status: str, summary: dict[str, Any] | None = None) -> None:
        self.execute(
            "UPDATE runs SET status = ?, ended_at = ?, summary = ? WHERE id = ?",
            [status, now(), canonical_json(summary or {}), run.id],
        )

    @contextlib.contextmanager
    def run(self, command: str, config: dict[str, Any] | None = None, argv: Sequence[str] | None = None) -> Iterator[Run]:
        """Record a run: 'ok' on success, 'interrupted' on Ctrl-C, 'failed' on an error.

        Put a dict in `run.summary` to store it with the outcome.
        """
        run = self.start_run(command, config, argv)
        run.summary = {}
        try:
            yield run
        except KeyboardInterrupt:
            self.finish_run(run, "interrupted", run.summary)
            raise
        except BaseException as e:
            self.finish_run(run, "failed", {**(run.summary or {}), "error": str(e)[:500]})
            raise
        self.finish_run(run, "ok", run.summary)


class BatchWriter:
    """Buffers records and writes them in one transaction every `every` records or `seconds`.

    A job that is killed loses at most the unflushed buffer, which a rerun recomputes.
    """

    def __init__(self, corpus: Corpus, every: int = 256, seconds: float = 5.0):
        self.corpus, self.every, self.seconds = corpus, every, seconds
        self.buffer: list[Record] = []
        self.last = time.monotonic()
        self.written = 0

    def add(self, records: Iterable[Record]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.every or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.written += self.corpus.insert(self.buffer)
            self.buffer = []
        self.last = time.monotonic()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


# DuckDB's own switch: no file access beyond the attached corpus (no `allowed_directories` are
# given, so none is open). `lock_configuration` is switched on once the connection is set up, in
# `_open`, so no SQL can turn access back on.
SEALED = {"enable_external_access": False}


def _lock_timeout() -> float:
    raw = os.environ.get("RLAIF_LOCK_TIMEOUT", "120")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"RLAIF_LOCK_TIMEOUT={raw!r}: give the seconds to wait for a locked corpus, e.g. 120")
    return value


def _require_corpus(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """A DuckDB file that holds tables but no `schema_migrations` is someone else's database:
    refuse it, rather than add the corpus's tables beside theirs. An empty file is a new corpus."""
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables ORDER BY table_schema, table_name").fetchall()]
    if names and "schema_migrations" not in names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"--db {path}: is a DuckDB database but not a corpus ({len(names)} tables: {shown}; no "
                        "schema_migrations); nothing was changed: point --db at a corpus file or a new path")


def _quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """No DuckDB progress bar: our jobs print their own progress, and --no-progress means none."""
    con.execute("SET enable_progress_bar = false")
    return con


@contextlib.contextmanager
def _writer(corpus: "Corpus") -> Iterator[duckdb.DuckDBPyConnection]:
    con = corpus._open(read_only=False)
    try:
        yield con
    finally:
        con.close()


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
