"""Scripted replies for tests: nothing here pretends to be a model a user would run."""

from __future__ import annotations

from collections import deque
from typing import Callable

from .base import Backend, ChatRequest, Completion, Progress

Reply = str | Completion | Callable[[ChatRequest], "str | Completion"]


class FakeBackend(Backend):
    """Answers from a queue of scripted replies, then from `default`.

    `default` may be a callable of the request, so a test can answer by content
    (e.g. a judge that always picks "A"). Every request is kept in `history`.
    """

    name = "fake"
    supports_json_schema = True
    supports_logprobs = False

    def __init__(self, model: str = "fake", replies: list[Reply] | None = None, default: Reply | None = None):
        super().__init__(model)
        self.queue: deque[Reply] = deque(replies or [])
        self.default = default
        self.history: list[ChatRequest] = []

    def enqueue(self, replies: list[Reply]) -> None:
        self.queue.extend(replies)

    def _one(self, req: ChatRequest) -> Completion:
        self.history.append(req)
        reply = self.queue.popleft() if self.queue else self.default
        if reply is None:
            reply = "echo: " + req.messages[-1]["content"]
        if callable(reply):
            reply = reply(req)
        if isinstance(reply, Completion):
            return reply
        words = reply.split()
        n = min(len(words), req.params.max_new_tokens)
        text = " ".join(words[:n]) if n < len(words) else reply
        return Completion(
            text=text,
            finish_reason="length" if n < len(words) else "stop",
            prompt_tokens=sum(len(m["content"].split()) for m in req.messages),
            completion_tokens=n,
        )

    def _generate(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        out = []
        for r in requests:
            out.append(self._one(r))
            progress(1)
        return out
