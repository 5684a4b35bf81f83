"""Per-call cache: an identical request (backend, model, messages, sampling) is never sent twice.

The store is anything with `lookup_calls(keys) -> {key: Completion-json}` and
`save_calls(rows)`; the corpus provides both. Backends stay free of the corpus this way.
"""

from __future__ import annotations

from typing import Any, Protocol

from .base import Backend, ChatRequest, Completion, Progress, request_key


class CallStore(Protocol):
    def lookup_calls(self, keys: list[str]) -> dict[str, dict[str, Any]]: ...

    def save_calls(self, rows: list[dict[str, Any]]) -> None: ...


class CachedBackend(Backend):
    """Wraps a backend; answers hits from the store and sends only the misses.

    Successful calls and permanent failures are replayed; transient failures (timeouts,
    5xx after every retry) are sent again on the next run.
    """

    def __init__(self, inner: Backend, store: CallStore, run_id: str | None = None):
        super().__init__(inner.model)
        self.inner = inner
        self.store = store
        self.run_id = run_id
        self.name = inner.name  # type: ignore[misc]
        self.supports_json_schema = inner.supports_json_schema  # type: ignore[misc]
        self.supports_logprobs = inner.supports_logprobs  # type: ignore[misc]
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def key(self, req: ChatRequest) -> str:
        return request_key(self.inner.name, self.inner.model_id, req)

    def _generate(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        keys = [self.key(r) for r in requests]
        found = self.store.lookup_calls(sorted(set(keys)))
        out: list[Completion | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k in found:
                out[i] = Completion.model_validate({**found[k], "cached": True})
                progress(1)
            else:
                todo.setdefault(k, []).append(i)
        self.hits += len(requests) - sum(len(v) for v in todo.values())
        if todo:
            first = [idx[0] for idx in todo.values()]
            self.misses += len(first)
            fresh = self.inner.generate([requests[i] for i in first], progress)
            rows = []
            for k, comp in zip(todo, fresh):
                for i in todo[k]:
                    out[i] = comp
                rows.append(
                    {
                        "key": k,
                        "backend": self.inner.name,
                        "model": self.inner.model_id,
                        "request": requests[todo[k][0]].model_dump(mode="json"),
                        "response": comp.model_dump(mode="json", exclude={"cached"}),
                        "status": "ok" if comp.ok else ("failed_permanent" if comp.permanent else "failed"),
                        "error": comp.error,
                        "latency_ms": comp.latency_ms,
                        "run_id": self.run_id,
                    }
                )
            self.store.save_calls(rows)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()
