"""What crosses the network on `--executor ray`: request parts and result shards in the work dir.

A part is `<work_dir>/requests/<part>.parquet` (key, request JSON); its shard is
`<work_dir>/results/<part>.parquet` with the columns of the corpus' `calls` table. Both are
written under a temp name and renamed, so a reader sees a complete file or none. A part's name is
a digest of its keys: a part sent again (its replica died, the driver was killed) finds its
shard and sends nothing. The work dir is any pyarrow filesystem (a folder, a shared mount,
s3://, gs://); the DuckDB corpus never leaves the driver.

`Replica` is the Ray actor: it builds the inner backend once and turns parts into shards.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .base import BackendError, ChatRequest, Completion, canonical_json

SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("backend", pa.string()), ("model", pa.string()), ("request", pa.string()),
    ("response", pa.string()), ("status", pa.string()), ("error", pa.string()), ("latency_ms", pa.float64()),
])
REQUEST_SCHEMA = pa.schema([("key", pa.string()), ("request", pa.string())])


def open_work_dir(work_dir: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a local folder or any pyarrow URI (s3://, gs://, hdfs://)."""
    if "://" in work_dir and (urlparse(work_dir).password or urlparse(work_dir).username):
        # the work dir is recorded with the run's argv: a secret in it would land in the corpus
        raise BackendError(f"--work-dir {urlparse(work_dir).scheme}://...: credentials in the URI would be stored in "
                           "the corpus and logs; put them in the environment (e.g. AWS_ACCESS_KEY_ID, "
                           "AWS_SECRET_ACCESS_KEY), which reaches the workers through Ray's runtime_env")
    uri = work_dir if "://" in work_dir else os.path.abspath(os.path.expanduser(work_dir))
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise BackendError(f"--work-dir {work_dir}: {e}; give a folder or a URI such as s3://bucket/run") from None
    return fs, root.rstrip("/")


def check_writable(fs: pafs.FileSystem, root: str, work_dir: str) -> None:
    probe = f"{root}/results/.probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(f"{root}/results", recursive=True)
        fs.create_dir(f"{root}/requests", recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise BackendError(f"--work-dir {work_dir}: cannot write there ({reason[:200]}); give a folder this user can "
                           "write, on storage every Ray node sees") from None


def digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]


def _write(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # not `.parquet`: no reader ever lists a half-written file
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def part_paths(root: str, part: str) -> tuple[str, str]:
    return f"{root}/requests/{part}.parquet", f"{root}/results/{part}.parquet"


def write_part(fs: pafs.FileSystem, root: str, keys: list[str], requests: list[str]) -> str:
    """Write one part (keys and canonical request JSON) unless it is there; return its name."""
    part = f"p-{digest(keys)}"
    path, _ = part_paths(root, part)
    if fs.get_file_info(path).type != pafs.FileType.File:
        _write(fs, path, pa.table({"key": keys, "request": requests}, schema=REQUEST_SCHEMA))
    return part


def shard_table(keys: list[str], requests: list[str], comps: list[Completion], backend: str, model: str) -> pa.Table:
    return pa.table({
        "key": keys, "backend": [backend] * len(keys), "model": [model] * len(keys), "request": requests,
        "response": [canonical_json(c.model_dump(mode="json", exclude={"cached"})) for c in comps],
        "status": ["ok" if c.ok else ("failed_permanent" if c.permanent else "failed") for c in comps],
        "error": [c.error for c in comps], "latency_ms": [c.latency_ms for c in comps],
    }, schema=SHARD_SCHEMA)


def write_failed_shard(fs: pafs.FileSystem, root: str, part: str, error: str, backend: str, model: str) -> None:
    """The shard of a part given up on: each request a transient failure with the cause, so the
    corpus records it and a rerun sends it again."""
    rq, rs = part_paths(root, part)
    t = pq.read_table(rq, filesystem=fs)
    keys, reqs = t["key"].to_pylist(), t["request"].to_pylist()
    comps = [Completion(finish_reason="error", error=error) for _ in keys]
    _write(fs, rs, shard_table(keys, reqs, comps, backend, model))


def read_shard(fs: pafs.FileSystem, root: str, part: str) -> list[tuple[str, Completion]]:
    t = pq.read_table(part_paths(root, part)[1], columns=["key", "response"], filesystem=fs)
    return [(k, Completion.model_validate_json(r)) for k, r in zip(t["key"].to_pylist(), t["response"].to_pylist())]


def remove_part(fs: pafs.FileSystem, root: str, part: str) -> None:
    """Prune a part whose answers the corpus holds: the work dir does not grow with the job."""
    for path in part_paths(root, part):
        try:
            fs.delete_file(path)
        except (OSError, pa.ArrowException):
            pass  # already gone (pruned by a merge); nothing depends on it any more


class Replica:
    """One Ray actor: builds the inner backend once, then turns request parts into result shards."""

    def __init__(self, name: str, model: str | None, options: dict[str, Any], work_dir: str, model_id: str):
        from . import load_backend

        self.backend = load_backend(name, model, **options)
        if self.backend.model_id != model_id:
            raise BackendError(f"{name} on this node records model {self.backend.model_id!r}, the driver {model_id!r}")
        self.fs, self.root = open_work_dir(work_dir)

    def run(self, part: str) -> str:
        """Answer `requests/<part>.parquet` into `results/<part>.parquet`; return the part."""
        rq, rs = part_paths(self.root, part)
        if self.fs.get_file_info(rs).type == pafs.FileType.File:  # sent again after a kill: already answered
            return part
        rows = pq.read_table(rq, filesystem=self.fs)
        keys, requests = rows["key"].to_pylist(), rows["request"].to_pylist()
        comps = self.backend.generate([ChatRequest.model_validate_json(r) for r in requests])
        _write(self.fs, rs, shard_table(keys, requests, comps, self.backend.name, self.backend.model_id))
        return part

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.backend.close()


class ShardIndex:
    """Which call keys the shards already in `<root>/results` hold (a killed run's, when the
    executor is used without the CLI's merge), read once when the executor starts."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.dir = fs, f"{root}/results"
        self.index: pa.Table | None = None

    def _load(self) -> pa.Table:
        if self.index is None:
            infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
            parts = [pa.table({"key": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                               "file": pa.array([], pa.string())})]
            for path in sorted(i.path for i in infos if i.path.endswith(".parquet")):
                t = pq.read_table(path, columns=["key", "status"], filesystem=self.fs)
                parts.append(t.append_column("file", pa.array([path] * t.num_rows, pa.string())))
            self.index = pa.concat_tables(parts)
        return self.index

    def lookup(self, keys: list[str]) -> dict[str, Completion]:
        """Completions for `keys` found in those shards: successes and permanent failures only
        (a transient failure is sent again, as the call cache does)."""
        index = self._load()
        if not keys or index.num_rows == 0:
            return {}
        wanted = pa.array(keys, pa.string())
        hits = index.filter(pc.and_(pc.is_in(index["key"], value_set=wanted), pc.not_equal(index["status"], "failed")))
        out: dict[str, Completion] = {}
        for path in sorted(set(hits["file"].to_pylist())):
            try:
                t = pq.read_table(path, columns=["key", "status", "response"], filesystem=self.fs)
            except FileNotFoundError:  # pruned since (its part was sent again and landed): not needed
                continue
            t = t.filter(pc.and_(pc.is_in(t["key"], value_set=wanted), pc.not_equal(t["status"], "failed")))
            for k, resp in zip(t["key"].to_pylist(), t["response"].to_pylist()):
                out.setdefault(k, Completion.model_validate_json(resp))
        return out
