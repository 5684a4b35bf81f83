"""Run any backend (hf, vllm, openai) on Ray: `RayExecutor` is itself a backend.

Stages, the call cache and the corpus do not change: the stage plans as it always does and hands
its cache misses to `generate`, which
1. answers what the work dir's shards from before already hold (a killed run's);
2. writes the rest as Parquet parts of `batch_size` requests (backends/ray_parts.py);
3. streams the parts to `workers` Ray actors (`Replica`), each of which built the inner backend
   once for the whole command: a replica gets its next part as soon as one of its two frees up,
   and each part's answers are delivered (so the call cache stores them) as its shard lands;
4. while the caller's own parts finish, replicas with room start on the parts `look_ahead`
   announced (the job's next chunks): a chunk is not a barrier, the driver stores one chunk
   while the replicas answer the next;
5. a part whose replica fails (an exception, a dead process) is sent again, at most
   `max_attempts` times in all; then its requests are recorded as transient failures with
   the cause and the job ends incomplete (exit 3). A cluster that stops answering ends the
   call with `ClusterError` within `DEAD_AFTER_S`.

Why actors and not Ray Data `map_batches`: a stage calls `generate` many times (the judge once
per 256 judgments and once per retry round); Ray Data starts a new actor pool, hence new
processes and a new model load per replica, on every call (a 60-request call measured here at
load 11: 59 s with `map_batches`, 2.0 s on warm actors).

A SIGKILLed driver loses at most the parts in flight. `corpus.call_shards` merges the shards
into `calls` with one DuckDB statement and prunes them; parts whose answers the caller has
stored are pruned at the next call, so the work dir does not grow with the job.
"""

from __future__ import annotations

import collections
import math
import os
import sys
from typing import Any, Callable, Collection, Iterable, Iterator

from .base import Backend, BackendError, ChatRequest, Completion, Deliver, Progress, canonical_json, request_key
from .embedded import EMBEDDED_NAME
from .ray_parts import (REQUEST_SCHEMA, SHARD_SCHEMA, Replica, ShardIndex, check_writable, open_work_dir,  # noqa: F401
                        read_shard, remove_part, write_failed_shard, write_part)
from .ray_session import WAIT_S, ClusterError, RaySession, cause, check_address, use_token, worker_env  # noqa: F401

_use_token = use_token  # the name bench/scale.py and the tests know

IN_FLIGHT = 2  # parts queued per replica: one being sent, one ready to start
MAX_ATTEMPTS = 3  # a part that fails its replica this many times is recorded as failed


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


class RayExecutor(Backend):
    """A backend that sends its requests through replicas of an inner backend on Ray.

    `address`: a running cluster (host:port, ray://host:10001, auto); None means RAY_ADDRESS or,
    if unset, a private local cluster that stops with this process (backends/ray_cluster.py).
    """

    name = "ray"
    streams_results = True

    def __init__(self, inner: str, model: str | None = None, options: dict[str, Any] | None = None, *,
                 work_dir: str, address: str | None = None, workers: int = 2, num_cpus_per_worker: float = 1.0,
                 num_gpus_per_worker: float = 0.0, batch_size: int = 128, max_attempts: int = MAX_ATTEMPTS):
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
        self.session = RaySession(address, num_cpus=math.ceil(workers * num_cpus_per_worker) + 1)
        self.workers, self.batch_size, self.max_attempts = workers, batch_size, max_attempts
        self.num_cpus, self.num_gpus = num_cpus_per_worker, num_gpus_per_worker
        self.shards = ShardIndex(self.fs, self.root)
        self._pool: list[Any] | None = None
        self.sent = 0  # requests this executor handed to Ray (not answered from shards)
        self.given_up: list[str] = []  # one line per part recorded as failed after max_attempts
        # the dispatcher's state, across calls (a part started for a later call keeps running)
        self._queue: collections.deque[str] = collections.deque()
        self._keys_of: dict[str, list[str]] = {}  # part -> its keys, while queued or running
        self._part_of: dict[str, str] = {}  # key -> its part, while queued or running
        self._calls: dict[Any, tuple[int, int, str, int]] = {}  # Ray call -> (slot, replica generation, part, order)
        self._seq = 0
        self._gen: list[int] = []
        self._blamed: set[tuple[int, int]] = set()  # dead replicas whose running part was counted
        self._attempts: collections.Counter[str] = collections.Counter()
        self._ready: dict[str, Completion] = {}  # answers that landed before their call asked
        self._landed: list[tuple[str, list[str]]] = []  # parts answered: pruned once the caller stored them
        self._ahead: Iterator[ChatRequest] | None = None
        self._known: Callable[[list[str]], Collection[str]] = lambda keys: ()

    def look_ahead(self, requests: Iterable[ChatRequest], known: Callable[[list[str]], Collection[str]] | None = None) -> None:
        """Requests the caller will ask for after the current call, read lazily: replicas with
        room start on them, so storing one chunk does not idle the cluster. `known(keys)` gives
        the keys already answered elsewhere (the call cache), which are not sent."""
        self._ahead = iter(requests)
        self._known = known or (lambda keys: ())

    # -- the backend interface ---------------------------------------------------------------

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver) -> list[Completion]:
        self._prune()
        keys = [request_key(self.name, self.model_id, r) for r in requests]
        where: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            where.setdefault(k, []).append(i)
        out: list[Completion | None] = [None] * len(keys)

        def land(k: str, c: Completion) -> bool:
            idx = where.get(k)
            if idx is None or out[idx[0]] is not None:
                return False
            for i in idx:
                out[i] = c
            deliver([(i, c) for i in idx])
            progress(len(idx))
            return True

        for k in [k for k in where if k in self._ready]:
            land(k, self._ready.pop(k))
        for k, c in self.shards.lookup([k for k in where if out[where[k][0]] is None and k not in self._part_of]).items():
            land(k, c)
        new = [k for k in where if out[where[k][0]] is None and k not in self._part_of]
        if new:
            size = max(1, min(self.batch_size, math.ceil(len(new) / self.workers)))  # a small call uses every replica
            front = [self._add_part([(k, requests[where[k][0]]) for k in new[s : s + size]])
                     for s in range(0, len(new), size)]
            self._queue.extendleft(reversed(front))  # needed now: before the parts started ahead
        left = sum(1 for k in where if out[where[k][0]] is None)
        while left:
            self._fill()
            for part in self._wait():
                for k, c in read_shard(self.fs, self.root, part):
                    if land(k, c):
                        left -= 1
                    elif k not in where:
                        self._ready[k] = c
        return out  # type: ignore[return-value]

    # -- the dispatcher ----------------------------------------------------------------------

    def _add_part(self, todo: list[tuple[str, ChatRequest]]) -> str:
        keys = [k for k, _ in todo]
        part = write_part(self.fs, self.root, keys, [canonical_json(r.model_dump(mode="json")) for _, r in todo])
        self._keys_of[part] = keys
        for k in keys:
            self._part_of[k] = part
        self.sent += len(keys)
        return part

    def _pull_ahead(self) -> None:
        """Queue the next look-ahead part, unless answers not yet asked for pile up."""
        cap = 4 * self.workers * IN_FLIGHT * self.batch_size
        while self._ahead is not None and not self._queue and len(self._ready) < cap:
            batch: dict[str, ChatRequest] = {}
            for r in self._ahead:
                batch.setdefault(request_key(self.name, self.model_id, r), r)
                if len(batch) >= self.batch_size:
                    break
            else:
                self._ahead = None  # exhausted
            known = set(self._known(list(batch))) if batch else set()
            todo = [(k, r) for k, r in batch.items() if k not in known and k not in self._ready and k not in self._part_of]
            if todo:
                self._queue.append(self._add_part(todo))

    def _fill(self) -> None:
        """Give every replica up to IN_FLIGHT parts, one at a time round the replicas."""
        pool = self._replicas()
        load = [0] * len(pool)
        for slot, gen, _, _ in self._calls.values():
            load[slot] += gen == self._gen[slot]
        while True:
            slot = min(range(len(pool)), key=load.__getitem__)
            if load[slot] >= IN_FLIGHT:
                return
            if not self._queue:
                self._pull_ahead()
            if not self._queue:
                return
            part = self._queue.popleft()
            self._seq += 1
            self._calls[pool[slot].run.remote(part)] = (slot, self._gen[slot], part, self._seq)
            load[slot] += 1

    def _wait(self) -> list[str]:
        """Parts that landed (their shard is written); failures are sent again or given up."""
        import ray

        if not self._calls:
            raise BackendError("ray: nothing in flight but answers missing (a part's shard lacks keys it was sent)")
        refs = list(self._calls)
        try:
            done, rest = ray.wait(refs, num_returns=1, timeout=WAIT_S, fetch_local=False)
            if done and rest:  # whatever else landed meanwhile
                done += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
        except ray.exceptions.RaySystemError as e:
            raise ClusterError(f"ray: the cluster failed under the job ({cause(e)})") from None
        if not done:
            self.session.check_alive()
            return []
        self.session.seen()
        landed = []
        for ref in sorted(done, key=lambda r: self._calls[r][3]):  # oldest first: the one a replica was running
            slot, gen, part, _ = self._calls.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if "creation task" in str(e):  # the replica cannot start (a bad model): not the part's fault
                    raise BackendError(f"ray: a replica could not start: {cause(e)}") from None
                # a dead replica fails all its calls; only the oldest was running, the rest only queued
                running = (slot, gen) not in self._blamed
                self._blamed.add((slot, gen))
                if gen == self._gen[slot]:
                    self._replace(slot)
                if self._retry(part, f"its replica died ({cause(e)})", counted=running):
                    landed.append(part)
                continue
            except ray.exceptions.RayTaskError as e:
                if self._retry(part, cause(e), counted=True):
                    landed.append(part)
                continue
            except ray.exceptions.RayError as e:
                self.session.check_alive()
                raise ClusterError(f"ray: {cause(e)}") from None
            landed.append(part)
        for part in landed:
            keys = self._keys_of.pop(part, [])
            for k in keys:
                self._part_of.pop(k, None)
            self._attempts.pop(part, None)
            self._landed.append((part, keys))
        return landed

    def _retry(self, part: str, why: str, counted: bool) -> bool:
        """Queue `part` again; after max_attempts failures write its shard as failed instead and
        return True (it landed, as failures)."""
        self._attempts[part] += int(counted)
        if self._attempts[part] < self.max_attempts:
            self._queue.appendleft(part)
            return False
        line = (f"ray: part {part} ({len(self._keys_of.get(part, []))} requests) failed on its replica "
                f"{self._attempts[part]} times, last: {why}; recorded as failed, a rerun sends it again")
        self.given_up.append(line)
        print(line, file=sys.stderr)
        write_failed_shard(self.fs, self.root, part, line, self.name, self.model_id)
        return True

    def _prune(self) -> None:
        """Remove the parts whose answers went out in an earlier call (the caller stored them)."""
        keep = []
        for part, keys in self._landed:
            if any(k in self._ready for k in keys):
                keep.append((part, keys))
            else:
                remove_part(self.fs, self.root, part)
        self._landed = keep

    def _spawn(self) -> Any:
        import ray

        kw = {"name": self.name, "model": self.inner_model, "options": self.options, "work_dir": self.work_dir,
              "model_id": self.model_id}
        # no restarts by Ray: the dispatcher replaces a dead replica and counts the attempts itself
        return ray.remote(Replica).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": worker_env(self.options.get("api_key_env"))}).remote(**kw)

    def _replace(self, slot: int) -> None:
        import ray

        assert self._pool is not None
        self.session.ensure_alive()  # replicas die with their cluster: starting one would block in Ray
        try:
            ray.kill(self._pool[slot])
        except Exception:  # already gone
            pass
        self._pool[slot] = self._spawn()
        self._gen[slot] += 1

    def _connect(self) -> None:
        self.session.connect()

    @property
    def _dead(self) -> bool:
        return self.session.dead

    def close(self) -> None:
        if self._pool is not None and not self.session.dead:  # a dead cluster cannot kill anything
            import ray

            for actor in self._pool:  # inside someone else's Ray session our replicas must go too
                try:
                    ray.kill(actor)
                except Exception:
                    pass
        self._pool = None
        self.session.close()

    def _replicas(self) -> list[Any]:
        """Start the replicas once: each builds its model or HTTP client once for the whole run."""
        if self._pool is None:
            self.session.connect()
            self._pool = [self._spawn() for _ in range(self.workers)]
            self._gen = [0] * self.workers
        return self._pool

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
