"""Run any backend (hf, vllm, openai) on Ray: `RayExecutor` is itself a backend.

Stages, the call cache and the corpus do not change: the stage plans as it always does and hands
its cache misses to `generate`, which
1. answers what complete result shards in the work dir already hold (a rerun after a kill);
2. writes the rest as Parquet parts of `batch_size` requests under `<work_dir>/requests/<job>/`;
3. hands the parts to `workers` Ray actors (`Replica`), each of which built the inner backend
   once for the whole command (one model, one vLLM engine or one HTTP client per replica), so our
   retries, permanent failures and `Completion` records are exactly those of one process;
4. each part becomes one shard `<work_dir>/results/<part>.parquet` whose columns are those of
   the corpus' `calls` table, written to a temp name and renamed: only complete shards exist,
   and a call Ray retries (its replica died) finds its shard and sends nothing;
5. reads the completions back from the shards by call key, in the caller's order.

Why actors and not Ray Data `map_batches`: a stage calls `generate` many times (the judge once
per 256 judgments and once per retry round); Ray Data starts a new actor pool, hence new
processes and a new model load per replica, on every call (a 60-request call measured here at
load 11: 59 s with `map_batches`, 2.0 s on warm actors), and its fused read->map handed all
parts of a call to one actor. Parquet in, Parquet out is kept.

A SIGKILLed driver loses at most the part each replica was sending. `corpus.call_shards`
merges the shards into `calls` with one DuckDB statement (the fast path for millions of rows).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .base import Backend, BackendError, ChatRequest, Completion, Progress, canonical_json, request_key
from .embedded import EMBEDDED_NAME

IN_FLIGHT = 2  # parts queued per replica: one being sent, one ready to start
SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("backend", pa.string()), ("model", pa.string()), ("request", pa.string()),
    ("response", pa.string()), ("status", pa.string()), ("error", pa.string()), ("latency_ms", pa.float64()),
])
REQUEST_SCHEMA = pa.schema([("key", pa.string()), ("part", pa.string()), ("request", pa.string())])


def inner_model_id(name: str, model: str | None) -> str:
    """The model id the inner backend will record, known without loading it (see each backend)."""
    if name in ("hf", "vllm"):
        return EMBEDDED_NAME if model in (None, "", "embedded", EMBEDDED_NAME) else str(model)
    if name == "fake":
        return model or "fake"
    if not model:
        raise BackendError(f"--model is required with --backend {name} (the name the server serves)")
    return model


def _backend_class(name: str) -> type[Backend]:
    """The inner backend's class, for its capability flags; importing it loads no model."""
    import importlib

    mod, cls = {"hf": ("hf", "HFBackend"), "openai": ("openai_api", "OpenAIBackend"),
                "vllm": ("vllm_backend", "VLLMBackend"), "fake": ("fake", "FakeBackend")}.get(name, (None, None))
    if mod is None:
        raise BackendError(f"unknown backend {name!r} for --executor ray")
    return getattr(importlib.import_module(f"{__package__}.{mod}"), cls)


def open_work_dir(work_dir: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a local folder or any pyarrow URI (s3://, gs://, hdfs://)."""
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
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise BackendError(f"--work-dir {work_dir}: cannot write there ({reason}); give a folder this user can "
                           "write, on storage every Ray node sees") from None


def check_address(address: str) -> None:
    """Fail in a second, not after Ray's minute of retries, when nothing listens at host:port."""
    if address == "auto":
        return
    u = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = u.port
    except ValueError:
        port = None
    if not u.hostname or not port:
        raise BackendError(f"--ray-address {address}: give host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        socket.create_connection((u.hostname, port), timeout=5).close()
    except OSError as e:
        raise BackendError(f"--ray-address {address}: cannot connect ({e.strerror or e}); start the cluster "
                           "(`ray start --head`) or fix the address") from None


def digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _status(c: Completion) -> str:
    return "ok" if c.ok else ("failed_permanent" if c.permanent else "failed")


class Replica:
    """One Ray actor: builds the inner backend once, then turns request parts into result shards."""

    def __init__(self, name: str, model: str | None, options: dict[str, Any], work_dir: str, model_id: str):
        from . import load_backend

        self.backend = load_backend(name, model, **options)
        if self.backend.model_id != model_id:
            raise BackendError(f"{name} on this node records model {self.backend.model_id!r}, the driver {model_id!r}")
        self.fs, self.root = open_work_dir(work_dir)

    def run(self, part: str) -> int:
        """Answer `requests/<job>/<part>.parquet` into `results/<part>.parquet`; return its rows."""
        path = f"{self.root}/results/{part}.parquet"
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.File:  # a retried call whose shard was written: send nothing
            return pq.read_metadata(path, filesystem=self.fs).num_rows
        rows = pq.read_table(f"{self.root}/requests/{part.rsplit('-', 1)[0]}/{part}.parquet", filesystem=self.fs)
        keys, requests = rows["key"].to_pylist(), rows["request"].to_pylist()
        comps = self.backend.generate([ChatRequest.model_validate_json(r) for r in requests])
        table = pa.table({
            "key": keys, "backend": [self.backend.name] * len(keys), "model": [self.backend.model_id] * len(keys),
            "request": requests, "response": [canonical_json(c.model_dump(mode="json", exclude={"cached"})) for c in comps],
            "status": [_status(c) for c in comps], "error": [c.error for c in comps],
            "latency_ms": [c.latency_ms for c in comps],
        }, schema=SHARD_SCHEMA)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, path)  # a rename: readers see a complete shard or none
        return len(keys)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.backend.close()


class ShardIndex:
    """Which call keys the complete shards in `<root>/results` hold, read once per shard."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.dir = fs, f"{root}/results"
        self.seen: set[str] = set()
        self.index = pa.table({"key": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                               "file": pa.array([], pa.string())})

    def refresh(self) -> None:
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
        new = sorted(i.path for i in infos if i.path.endswith(".parquet") and i.path not in self.seen)
        parts = [self.index]
        for path in new:
            t = pq.read_table(path, columns=["key", "status"], filesystem=self.fs)
            parts.append(t.append_column("file", pa.array([path] * t.num_rows, pa.string())))
            self.seen.add(path)
        if new:
            self.index = pa.concat_tables(parts)

    def lookup(self, keys: list[str], with_failed: bool) -> dict[str, Completion]:
        """Completions for `keys` found in shards; transient failures only if `with_failed`
        (a resume sends those again, as the call cache does); a success wins over a failure."""
        self.refresh()
        if not keys or self.index.num_rows == 0:
            return {}
        mask = pc.is_in(self.index["key"], value_set=pa.array(keys, pa.string()))
        if not with_failed:
            mask = pc.and_(mask, pc.not_equal(self.index["status"], "failed"))
        hits = self.index.filter(mask)
        wanted = pa.array(keys, pa.string())
        out: dict[str, Completion] = {}
        for path in sorted(set(hits["file"].to_pylist())):
            t = pq.read_table(path, columns=["key", "status", "response"], filesystem=self.fs)
            t = t.filter(pc.is_in(t["key"], value_set=wanted))
            for k, status, resp in zip(t["key"].to_pylist(), t["status"].to_pylist(), t["response"].to_pylist()):
                if k in out and (status == "failed" or out[k].ok or out[k].permanent):
                    continue
                if status == "failed" and not with_failed:
                    continue
                out[k] = Completion.model_validate_json(resp)
        return out


class RayExecutor(Backend):
    """A backend that sends its requests through replicas of an inner backend on Ray.

    `address`: a running cluster (host:port, ray://host:10001, auto); None means RAY_ADDRESS or,
    if unset, a private local cluster that stops with this process (backends/ray_cluster.py).
    """

    name = "ray"

    def __init__(self, inner: str, model: str | None = None, options: dict[str, Any] | None = None, *,
                 work_dir: str, address: str | None = None, workers: int = 2, num_cpus_per_worker: float = 1.0,
                 num_gpus_per_worker: float = 0.0, batch_size: int = 128):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise BackendError("--executor ray needs Ray: pip install 'rlaif-engine[ray]' (or '.[ray]' in a checkout)") from None
        for flag, v, lo in (("--ray-workers", workers, 1), ("--ray-batch-size", batch_size, 1)):
            if v < lo:
                raise BackendError(f"{flag} {v}: must be at least {lo}")
        if num_cpus_per_worker < 0 or num_gpus_per_worker < 0:
            raise BackendError("--num-cpus-per-worker and --num-gpus-per-worker must not be negative")
        cls = _backend_class(inner)
        self.name = cls.name  # type: ignore[misc]  # the calls and the corpus record the inner backend
        self.supports_json_schema = cls.supports_json_schema  # type: ignore[misc]
        self.supports_logprobs = cls.supports_logprobs  # type: ignore[misc]
        self.inner_model, self.options = model, dict(options or {})
        super().__init__(inner_model_id(inner, model))
        # replicas run in other folders (and on other nodes): they get an absolute path or a URI
        self.work_dir = work_dir if "://" in work_dir else os.path.abspath(os.path.expanduser(work_dir))
        self.fs, self.root = open_work_dir(work_dir)
        check_writable(self.fs, self.root, work_dir)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address == "local":  # Ray's own local start leaves agents behind on SIGKILL: ours does not
            self.address = None
        if self.address:
            check_address(self.address)
        self.workers, self.batch_size = workers, batch_size
        self.num_cpus, self.num_gpus = num_cpus_per_worker, num_gpus_per_worker
        self.shards = ShardIndex(self.fs, self.root)
        self.cluster: Any = None
        self._pool: list[Any] | None = None
        self._connected = False
        self.sent = 0  # requests this executor handed to Ray (not answered from shards)

    # -- the backend interface ---------------------------------------------------------------

    def _generate(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        keys = [request_key(self.name, self.model_id, r) for r in requests]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        found = self.shards.lookup(list(first), with_failed=False)
        progress(sum(1 for k in keys if k in found))
        missing = [k for k in first if k not in found]
        if missing:
            self._run([(k, requests[first[k]]) for k in missing], progress)
            todo = set(missing)
            progress(sum(1 for k in keys if k in todo) - len(todo))  # repeats share their first's answer
            found.update(self.shards.lookup(missing, with_failed=True))
        lost = [k for k in missing if k not in found]
        if lost:
            raise BackendError(f"ray: {len(lost)} requests came back without a result shard (first key {lost[0]})")
        return [found[k] for k in keys]

    def _run(self, todo: list[tuple[str, ChatRequest]], progress: Progress) -> None:
        """Write the requests as parts, keep every replica busy with at most `IN_FLIGHT` parts
        (one sending, one queued: a killed driver re-sends at most one part per replica)."""
        import ray

        replicas = self._replicas()
        job = digest(sorted(k for k, _ in todo))
        folder = f"{self.root}/requests/{job}"
        self.fs.create_dir(folder, recursive=True)
        parts = []
        size = max(1, min(self.batch_size, math.ceil(len(todo) / self.workers)))  # a small call still uses every replica
        for n, start in enumerate(range(0, len(todo), size)):
            chunk = todo[start : start + size]
            part = f"{job}-{n:05d}"
            path = f"{folder}/{part}.parquet"
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                table = pa.table({"key": [k for k, _ in chunk], "part": [part] * len(chunk),
                                  "request": [canonical_json(r.model_dump(mode="json")) for _, r in chunk]},
                                 schema=REQUEST_SCHEMA)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.move(tmp, path)
            parts.append(part)
        self.sent += len(todo)
        queue = list(reversed(parts))
        busy: dict[Any, int] = {}  # call -> replica index
        load = [0] * len(replicas)
        try:
            while queue or busy:
                for i, r in enumerate(replicas):
                    while queue and load[i] < IN_FLIGHT:
                        busy[r.run.remote(queue.pop())] = i
                        load[i] += 1
                done, _ = ray.wait(list(busy), num_returns=1)
                for ref in done:
                    load[busy.pop(ref)] -= 1
                    progress(ray.get(ref))
        except ray.exceptions.RayError as e:  # a replica that cannot start (bad model), a lost cluster
            raise BackendError(f"ray: {_last_line(e)}") from None

    def _replicas(self) -> list[Any]:
        """Start the replicas once: each builds its model or HTTP client once for the whole run.
        Ray restarts a replica whose process dies and sends its call again (`max_restarts`)."""
        if self._pool is None:
            import ray

            self._connect()
            actor = ray.remote(Replica).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=-1, max_task_retries=-1)
            kw = {"name": self.name, "model": self.inner_model, "options": self.options, "work_dir": self.work_dir,
                  "model_id": self.model_id}
            self._pool = [actor.remote(**kw) for _ in range(self.workers)]
        return self._pool

    # -- the cluster -------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        from .ray_cluster import LocalCluster

        logging.getLogger("ray").setLevel(logging.WARNING)
        address = self.address
        env: dict[str, str] = {}
        if not ray.is_initialized():
            if not address:
                # A token of our own: nobody else can use this cluster while it runs.
                env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
                root = str(Path(__file__).resolve().parent.parent)  # workers import our code, not another copy
                env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
                cpus = max(os.cpu_count() or 1, math.ceil(self.workers * self.num_cpus) + 1)
                self.cluster = LocalCluster(num_cpus=cpus, env=env)
                try:
                    address = self.cluster.start()
                except RuntimeError as e:
                    self.cluster = None
                    raise BackendError(str(e)) from None
                self._env_before = _use_token({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                         configure_logging=True)
            except Exception as e:
                self.close()
                raise BackendError(f"--ray-address {address}: cannot join the Ray cluster ({_last_line(e)})") from None
            self._owns_ray = True
        self._connected = True

    def close(self) -> None:
        if self._pool is not None:
            import ray

            for actor in self._pool:  # inside someone else's Ray session our replicas must go too
                ray.kill(actor)
            self._pool = None
        if getattr(self, "_owns_ray", False):
            import ray

            ray.shutdown()
            self._owns_ray = False
        self._connected = False
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
            _use_token(self._env_before)


def executor_from_args(args: Any, prefix: str = "") -> RayExecutor:
    """The `RayExecutor` that the backend flags and `add_executor_args` flags describe."""
    a = prefix.replace("-", "_")
    name, model = getattr(args, f"{a}backend"), getattr(args, f"{a}model")
    options: dict[str, Any] = {}
    if name == "openai":
        options = {"base_url": getattr(args, f"{a}base_url"), "api_key_env": getattr(args, f"{a}api_key_env"),
                   "concurrency": getattr(args, f"{a}concurrency")}
        if getattr(args, f"{a}timeout", None) is not None:
            options["timeout"] = getattr(args, f"{a}timeout")
    elif name == "hf":
        options = {"batch_size": getattr(args, f"{a}batch_size"), "device": getattr(args, f"{a}device")}
    if not args.work_dir:
        raise BackendError("--executor ray needs --work-dir: a folder (or s3://... URI) every Ray node can reach")
    return RayExecutor(name, model, options, work_dir=args.work_dir, address=args.ray_address,
                       workers=args.ray_workers, num_cpus_per_worker=args.num_cpus_per_worker,
                       num_gpus_per_worker=args.num_gpus_per_worker, batch_size=args.ray_batch_size)


def _use_token(env: dict[str, str | None]) -> dict[str, str | None]:
    """Make this process present our cluster's token (None values: unset); return what was
    there before. Ray reads the auth mode and token once at import: make it read them again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    before = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return before


def _last_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]
