"""Merge result shards (Parquet files whose columns are those of `calls`) into the corpus.

`RayExecutor` (backends/ray_executor.py) writes one shard per batch of requests under
`<work_dir>/results/`; this is the one DuckDB writer that moves them into `calls` by key, in one
statement: a million rows take seconds (bench/scale.py), where building a record per row would
take minutes. A key already stored is kept, except a transient failure, which a stored success
or permanent failure replaces; within the shards a success wins over a failure. Running it twice
adds nothing the second time. With `prune`, the merged shards and their request parts are then
deleted: the corpus holds their rows, and the next merge does not scan them again.
"""

from __future__ import annotations

import os

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .errors import UserError
from .store import Corpus

COLUMNS = ("key", "backend", "model", "request", "response", "status", "error", "latency_ms")


def shard_files(work_dir: str) -> tuple[pafs.FileSystem, list[str]]:
    """The complete shards under `<work_dir>/results` (a writer's temp files are not `.parquet`)."""
    uri = work_dir if "://" in work_dir else os.path.abspath(os.path.expanduser(work_dir))
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/results", allow_not_found=True))
    except (OSError, ValueError) as e:
        raise UserError(f"--work-dir {work_dir}: cannot read it ({e})") from None
    return fs, sorted(i.path for i in infos if i.path.endswith(".parquet") and i.type == pafs.FileType.File)


def merge_call_shards(corpus: Corpus, work_dir: str, run_id: str | None = None, prune: bool = False) -> int:
    """Insert the shards' calls that the corpus lacks (or holds only as transient failures).
    Returns the rows written. `prune` only while no replica works in `work_dir`."""
    fs, files = shard_files(work_dir)
    if not files:
        return 0
    n = _merge(corpus, fs, files, run_id)
    if prune:  # after the commit: a crash before it leaves the shards for the next merge
        for path in files:
            request = path.rsplit("/results/", 1)
            for p in (path, f"{request[0]}/requests/{request[1]}" if len(request) == 2 else None):
                if p:
                    try:
                        fs.delete_file(p)
                    except OSError:
                        pass  # gone already: nothing depends on it
    return n


def _merge(corpus: Corpus, fs: pafs.FileSystem, files: list[str], run_id: str | None) -> int:
    cols = ", ".join(COLUMNS)
    if isinstance(fs, pafs.LocalFileSystem):
        src, params = "read_parquet($files)", {"files": files}  # DuckDB's own parallel reader: the fast path
    else:  # s3://, gs://, hdfs://: pyarrow reads, DuckDB scans the dataset as it streams
        shards = ds.dataset(files, filesystem=fs, format="parquet")  # noqa: F841  (DuckDB reads the local by name)
        src, params = "shards", {}
    with corpus.transaction() as con:
        if con.execute("SELECT count(*) FROM calls WHERE status = 'failed'").fetchone()[0]:
            con.execute(f"DELETE FROM calls WHERE status = 'failed' AND key IN "
                        f"(SELECT key FROM {src} WHERE status <> 'failed')", params)
        # a key twice in the shards (a part sent again after a kill): keep one, a success first
        dup = con.execute(f"SELECT count(*) - count(DISTINCT key) FROM {src}", params).fetchone()[0]
        one = " QUALIFY row_number() OVER (PARTITION BY key ORDER BY status = 'failed') = 1" if dup else ""
        row = con.execute(
            f"INSERT INTO calls ({cols}, run_id) SELECT {cols}, $run FROM (SELECT {cols} FROM {src} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM calls c WHERE c.key = s.key){one})", {**params, "run": run_id}).fetchone()
    return int(row[0]) if row else 0
