"""The one interface every LLM backend implements.

A backend takes a batch of chat requests and returns one `Completion` per request, in order.
It never raises for a single failed request: the completion carries `error` instead, so a batch
of 10,000 never dies on one bad call. It raises only for what makes every call fail (a model
that cannot be loaded, an endpoint that cannot be reached at all): `BackendError`.

Answers as they arrive: `generate(..., on_results=fn)` hands finished `(index, Completion)`
pairs to `fn` while the batch runs (the call cache saves them there, so a killed job keeps what
it was sent). A backend that can report early sets `streams_results = True` and calls the
`deliver` its `_generate` is given: hf after each sub-batch, openai as requests complete, vllm
after each engine batch. `fn` is never called twice at once, may be called from a worker thread,
and when it returns the results are safe: a streaming backend does not reuse a request's slot
(openai) or start the next batch (hf, vllm) before that. Whatever a backend did not deliver
itself is delivered when `_generate` returns.

A prompt larger than `max_prompt_bytes` (UTF-8 bytes of all its messages; default 1 MB) is not
sent: its completion is a permanent failure that says so.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BackendError(RuntimeError):
    """A failure that concerns the whole backend; its message says how to fix it."""


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1, le=131072)
    seed: int | None = Field(None, description="per-request seed; same seed, same sample")
    stop: tuple[str, ...] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: tuple[dict[str, str], ...]
    params: SamplingParams = SamplingParams()
    json_schema: dict[str, Any] | None = Field(
        None, description="ask for JSON matching this schema (guided decoding where supported)"
    )
    top_logprobs: int | None = Field(None, ge=0, le=20, description="alternatives per token")

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, v: Any) -> Any:
        if not v:
            raise ValueError("messages must not be empty")
        for m in v:
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                raise ValueError("each message must be {role, content}")
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"unknown role {m['role']!r}")
        return tuple(dict(m) for m in v)


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class Completion(BaseModel):
    text: str = ""
    finish_reason: Literal["stop", "length", "content_filter", "error"] = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None
    # True when the error will happen again whatever we do (a 400, a prompt too long):
    # the cache remembers such failures and does not send them again.
    permanent: bool = False
    cached: bool = False
    # True when no answer exists yet but one is on its way (a batch still running, a request
    # held back by --max-cost): never saved to the call cache, asked for again on the next run
    pending: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(backend: str, model: str, request: ChatRequest) -> str:
    """The cache key of one call: same backend, model, messages and sampling, same key."""
    payload = {"backend": backend, "model": model, **request.model_dump(mode="json")}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]


Progress = Callable[[int], None]
Deliver = Callable[[list[tuple[int, Completion]]], None]

DEFAULT_MAX_PROMPT_BYTES = 1_000_000


def prompt_bytes(request: ChatRequest) -> int:
    """The size of a request's prompt as sent: UTF-8 bytes of every message's content."""
    return sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in request.messages)


def too_large(size: int, limit: int) -> str:
    """The failure reason of a prompt over the limit (stored instead of the prompt)."""
    return (f"prompt too large: {size:,} bytes, over the limit of {limit:,} (--max-prompt-bytes); "
            "shorten it or raise the limit")


class Backend(ABC):
    """Subclasses set the class attributes and implement `_generate`."""

    name: ClassVar[str]
    supports_json_schema: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False
    # True when `_generate` takes a `deliver` argument and reports results before it returns
    streams_results: ClassVar[bool] = False
    max_prompt_bytes: int | None = DEFAULT_MAX_PROMPT_BYTES

    def __init__(self, model: str):
        self.model = model

    @property
    def model_id(self) -> str:
        """What the corpus records as the model: stable across machines."""
        return self.model

    def generate(
        self, requests: list[ChatRequest], progress: Progress | None = None, on_results: Deliver | None = None,
    ) -> list[Completion]:
        """One completion per request, in order. `on_results` gets them as they finish (see the
        module docstring); every index is delivered exactly once."""
        if not requests:
            return []
        tick = progress or (lambda n: None)
        out: list[Completion | None] = [None] * len(requests)
        sent: list[int] = []
        for i, r in enumerate(requests):
            size = prompt_bytes(r) if self.max_prompt_bytes is not None else 0
            if self.max_prompt_bytes is not None and size > self.max_prompt_bytes:
                out[i] = Completion(finish_reason="error", error=too_large(size, self.max_prompt_bytes), permanent=True)
            else:
                sent.append(i)
        delivered: set[int] = set()

        def deliver(results: list[tuple[int, Completion]]) -> None:
            fresh = [(sent[k], c) for k, c in results if sent[k] not in delivered]
            delivered.update(i for i, _ in fresh)
            if on_results is not None and fresh:
                on_results(fresh)

        refused = [(i, c) for i, c in enumerate(out) if c is not None]
        if refused:
            delivered.update(i for i, _ in refused)
            tick(len(refused))
            if on_results is not None:
                on_results(refused)  # type: ignore[arg-type]
        if sent:
            reqs = [requests[i] for i in sent]
            if self.streams_results:
                got = self._generate(reqs, tick, deliver=deliver)  # type: ignore[call-arg]
            else:
                got = self._generate(reqs, tick)
            if len(got) != len(sent):
                raise BackendError(f"{self.name} returned {len(got)} completions for {len(sent)} requests")
            for k, c in enumerate(got):
                out[sent[k]] = c
            deliver(list(enumerate(got)))  # whatever the backend did not deliver itself
        return out  # type: ignore[return-value]

    @abstractmethod
    def _generate(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        """Streaming backends (`streams_results = True`) also take `deliver: Deliver`."""

    def close(self) -> None:
        """Release GPU memory, sockets, subprocesses."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
