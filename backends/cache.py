"""Per-call cache: an identical request (backend, model, messages, sampling) is never sent twice.

The store is anything with `lookup_calls(keys) -> {key: Completion-json}` and
`save_calls(rows)`; the corpus provides both. Backends stay free of the corpus this way.

Answers are saved as they arrive: the wrapped backend hands finished results to the cache while
its batch runs (`on_results`, see backends/base.py), and each group is committed before the
backend may send more in its place. A job killed with SIGKILL loses only the requests in flight.
Committing costs little, opening the corpus file does not (about 60 ms, for DuckDB to read its
catalog): a store with `session()` (the corpus) is kept open while answers keep coming, and
closed after `idle_s` without one or `hold_s` at most, so other processes get their turn.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Protocol

from .base import Backend, ChatRequest, Completion, Deliver, Progress, request_key


class CallStore(Protocol):
    def lookup_calls(self, keys: list[str]) -> dict[str, dict[str, Any]]: ...

    def save_calls(self, rows: list[dict[str, Any]]) -> None: ...


class _HeldStore:
    """Saves rows through the store, holding its connection across saves that come close together."""

    def __init__(self, store: CallStore, idle_s: float, hold_s: float):
        self.store, self.idle_s, self.hold_s = store, idle_s, hold_s
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None
        self._opened = 0.0
        self._timer: threading.Timer | None = None
        self.saves = 0

    def save(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._cancel_timer()
            session = getattr(self.store, "session", None)
            if self._stack is None and session is not None and self.hold_s > 0:
                stack = contextlib.ExitStack()
                stack.enter_context(session())
                self._stack, self._opened = stack, time.monotonic()
            self.store.save_calls(rows)
            self.saves += 1
            if self._stack is not None:
                if time.monotonic() - self._opened >= self.hold_s:
                    self._close_locked()
                else:
                    self._timer = threading.Timer(self.idle_s, self._idle)
                    self._timer.daemon = True
                    self._timer.start()

    @contextlib.contextmanager
    def busy(self) -> Any:
        """While inside, the idle timer cannot close the held connection: the caller stores what it
        built from the answers just saved (a judge's judgments) on that same connection."""
        with self._lock:
            yield

    def _idle(self) -> None:
        with self._lock:
            self._timer = None
            self._close_locked()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_locked(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def close(self) -> None:
        with self._lock:
            self._cancel_timer()
            self._close_locked()


class CachedBackend(Backend):
    """Wraps a backend; answers hits from the store and sends only the misses.

    Successful calls and permanent failures are replayed; transient failures (timeouts,
    5xx after every retry) are sent again on the next run.
    """

    streams_results = True

    def __init__(self, inner: Backend, store: CallStore, run_id: str | None = None, *,
                 idle_s: float = 0.2, hold_s: float = 2.0):
        super().__init__(inner.model)
        self.inner = inner
        self.store = store
        self.run_id = run_id
        self.name = inner.name  # type: ignore[misc]
        self.supports_json_schema = inner.supports_json_schema  # type: ignore[misc]
        self.supports_logprobs = inner.supports_logprobs  # type: ignore[misc]
        self.max_prompt_bytes = inner.max_prompt_bytes
        self.idle_s, self.hold_s = idle_s, hold_s
        self.hits = 0
        self.misses = 0
        self.saves = 0  # commits to the store: more than one per batch when answers stream in
        attach = getattr(inner, "attach_store", None)
        if attach is not None:  # batch mode records its batches beside the calls (backends/batch.py)
            attach(store, run_id)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def key(self, req: ChatRequest) -> str:
        return request_key(self.inner.name, self.inner.model_id, req)

    def _row(self, key: str, req: ChatRequest, comp: Completion) -> dict[str, Any]:
        return {
            "key": key,
            "backend": self.inner.name,
            "model": self.inner.model_id,
            "request": req.model_dump(mode="json"),
            "response": comp.model_dump(mode="json", exclude={"cached", "pending"}),
            "status": "ok" if comp.ok else ("failed_permanent" if comp.permanent else "failed"),
            "error": comp.error,
            "latency_ms": comp.latency_ms,
            "run_id": self.run_id,
        }

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver) -> list[Completion]:  # type: ignore[override]
        keys = [self.key(r) for r in requests]
        found = self.store.lookup_calls(sorted(set(keys)))
        out: list[Completion | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        hits = []
        for i, k in enumerate(keys):
            if k in found:
                out[i] = Completion.model_validate({**found[k], "cached": True})
                hits.append((i, out[i]))
                progress(1)
            else:
                todo.setdefault(k, []).append(i)
        self.hits += len(hits)
        if hits:
            deliver(hits)  # type: ignore[arg-type]
        if todo:
            order = list(todo)
            self.misses += len(order)
            held = _HeldStore(self.store, self.idle_s, self.hold_s)

            def arrived(results: list[tuple[int, Completion]]) -> None:
                rows, mine = [], []
                for k, comp in results:
                    key = order[k]
                    if not comp.pending:  # no answer yet: nothing to remember
                        rows.append(self._row(key, requests[todo[key][0]], comp))
                    for i in todo[key]:
                        out[i] = comp
                        mine.append((i, comp))
                with held.busy():
                    if rows:
                        held.save(rows)  # saved before the backend may send anything in their place
                    deliver(mine)

            try:
                self.inner.generate([requests[todo[k][0]] for k in order], progress, on_results=arrived)
            finally:
                held.close()
                self.saves += held.saves
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()
