"""Where the reward service puts what it scored, without a request ever waiting on DuckDB.

DuckDB lets one process write a file, and opening it costs tens of milliseconds, so a request
thread never touches the corpus: it hands its records to `RewardLog`, whose single writer thread
appends them in one transaction every `seconds` or `every` records. A SIGKILL loses at most the
unflushed buffer; every row is content-addressed, so the retried batch writes the same rows.

Judge calls are cached by `MemoryCalls`: lookups are answered from memory (never from the file),
answers go to memory and to the writer, so `calls` still holds every paid answer.

Under Ray Serve the replicas must not open the corpus (one writer per file): `ShardSink` writes
each flush as Parquet shards under a work folder, and the driver merges them (`merge_shards`), as
generate's Ray path does with its call shards.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from corpus import Call, Corpus, Record

from .records import CriterionScore

log = logging.getLogger("judge.serve")


class ServedReward(Record):
    """One item a trainer asked about (m120), tagged with the caller's run and step."""

    table = "served_rewards"
    id_fields = ("reward_key", "caller_run", "step", "slot")
    json_fields = ("scores", "flags")
    id: str = ""
    reward_key: str
    generation_id: str
    prompt_id: str
    rubric: str
    rubric_version: str | None = None
    rubric_hash: str
    reward: float | None = None
    scores: dict[str, float | None] = {}
    flags: list[str] = []
    error: str | None = None
    label: str | None = None
    caller_run: str | None = None
    step: int | None = None
    slot: int = 0
    cached: bool = False
    latency_ms: float | None = None
    run_id: str | None = None


class MemoryCalls:
    """A call store for `CachedBackend` that answers from memory and saves through a writer."""

    def __init__(self, write: Callable[[list[Record]], None], limit: int = 200_000):
        self._calls: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._write, self._limit = write, limit

    def preload(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            for r in rows:
                self._calls[r["key"]] = r["response"]

    def lookup_calls(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: self._calls[k] for k in keys if k in self._calls}

    def save_calls(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            for r in rows:
                if r["status"] != "failed":  # a transient failure is asked again next time
                    if len(self._calls) >= self._limit:
                        self._calls.pop(next(iter(self._calls)))  # oldest first: dicts keep order
                    self._calls[r["key"]] = r["response"]
        self._write([Call(**r) for r in rows])


class CorpusSink:
    """Appends records to the corpus file (the one-process default)."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def write(self, records: list[Record]) -> int:
        scores = [r for r in records if isinstance(r, CriterionScore)]
        rest = [r for r in records if not isinstance(r, CriterionScore)]
        n = self.corpus.insert(rest)
        if scores:  # derived data: the latest aggregate wins, as in judge/aggregate.py
            n += self.corpus.insert(scores, replace=True)
        return n


class ShardSink:
    """Writes each flush as one Parquet file per table under `folder` (Ray Serve replicas)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.seq = 0

    def write(self, records: list[Record]) -> int:
        import pyarrow.parquet as pq

        from corpus.store import _to_arrow

        by: dict[str, list[Record]] = {}
        for r in records:
            by.setdefault(r.table, []).append(r)
        self.seq += 1
        for table, recs in by.items():
            d = self.folder / table
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{self.tag}-{self.seq}.parquet"
            pq.write_table(_to_arrow(recs), tmp)
            tmp.rename(d / f"{self.tag}-{self.seq}.parquet")  # a reader never sees half a shard
        return len(records)


def merge_shards(corpus: Corpus, folder: str | os.PathLike[str]) -> int:
    """Insert every finished shard under `folder` into the corpus (ids already there are skipped;
    criterion_scores are replaced) and delete it. Returns rows written."""
    import pyarrow.parquet as pq

    root = Path(folder)
    files = sorted(root.glob("*/[!.]*.parquet"))
    if not files:
        return 0
    written = 0
    with corpus.transaction() as con:
        for f in files:
            table, key = f.parent.name, "key" if f.parent.name == "calls" else "id"
            shard = pq.read_table(f)  # noqa: F841  (DuckDB reads the local by name)
            cols = ", ".join(f'"{c}"' for c in shard.column_names)
            if table == "criterion_scores":
                con.execute(f'DELETE FROM {table} WHERE "{key}" IN (SELECT "{key}" FROM shard)')
            res = con.execute(f'INSERT INTO {table} ({cols}) SELECT DISTINCT ON ("{key}") {cols} FROM shard '
                              f'WHERE "{key}" NOT IN (SELECT "{key}" FROM {table})').fetchone()
            written += int(res[0]) if res else 0
    for f in files:  # after the commit: a kill in between re-merges, which skips what is there
        f.unlink()
    return written


class RewardLog:
    """The single writer: `add` never blocks on the database; a thread flushes in batches."""

    def __init__(self, sink: Any, every: int = 512, seconds: float = 0.5):
        self.sink, self.every, self.seconds = sink, every, seconds
        self._q: "queue.Queue[list[Record] | None]" = queue.Queue()
        self.pending = 0  # rows handed over and not yet written (GET /health shows it)
        self._count = threading.Lock()  # add() runs on many threads: += is not atomic across them
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="reward-log", daemon=True)
        self._thread.start()

    def add(self, records: Iterable[Record]) -> None:
        recs = list(records)
        if recs:
            with self._count:
                self.pending += len(recs)
            self._q.put(recs)

    def _loop(self) -> None:
        buf: list[Record] = []
        last = time.monotonic()
        stop = False
        while not stop:
            try:
                item = self._q.get(timeout=self.seconds)
                if item is None:
                    stop = True
                else:
                    buf.extend(item)
            except queue.Empty:
                pass
            if buf and (stop or len(buf) >= self.every or time.monotonic() - last >= self.seconds):
                self._flush(buf)
                buf, last = [], time.monotonic()

    def _flush(self, buf: list[Record]) -> None:
        for attempt in range(3):
            try:
                self.written += self.sink.write(buf)
                with self._count:
                    self.pending -= len(buf)
                return
            except Exception as e:  # noqa: BLE001 - the server keeps answering; the failure is logged
                log.error("reward log: writing %d records failed (%s: %s)%s", len(buf), type(e).__name__,
                          str(e).splitlines()[0][:200] if str(e) else "", "; retrying" if attempt < 2 else "")
                time.sleep(0.5 * (attempt + 1))
        self.errors += len(buf)
        with self._count:
            self.pending -= len(buf)

    def close(self) -> None:
        """Flush what is queued and stop the writer."""
        self._q.put(None)
        self._thread.join(timeout=120)
