"""The one interface every LLM backend implements.

A backend takes a batch of chat requests and returns one `Completion` per request, in order.
It never raises for a single failed request: the completion carries `error` instead, so a batch
of 10,000 never dies on one bad call. It raises only for what makes every call fail (a model
that cannot be loaded, an endpoint that cannot be reached at all): `BackendError`.
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


class Backend(ABC):
    """Subclasses set the class attributes and implement `_generate`."""

    name: ClassVar[str]
    supports_json_schema: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False

    def __init__(self, model: str):
        self.model = model

    @property
    def model_id(self) -> str:
        """What the corpus records as the model: stable across machines."""
        return self.model

    def generate(self, requests: list[ChatRequest], progress: Progress | None = None) -> list[Completion]:
        if not requests:
            return []
        out = self._generate(list(requests), progress or (lambda n: None))
        if len(out) != len(requests):
            raise BackendError(f"{self.name} returned {len(out)} completions for {len(requests)} requests")
        return out

    @abstractmethod
    def _generate(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]: ...

    def close(self) -> None:
        """Release GPU memory, sockets, subprocesses."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
