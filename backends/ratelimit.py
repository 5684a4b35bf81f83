"""Client-side request and token budgets (--rpm, --tpm) for the openai backend.

Why it is built this way:
- aiolimiter's leaky bucket does the waiting. The request bucket holds half a second's worth of
  requests (at least one), leaking at rpm/60 per second: requests go out evenly spaced, and a
  wake-up that came late (a busy machine) may catch up by that much, never more. Providers
  enforce a per-minute limit over shorter slices (OpenAI: 60,000 RPM may be enforced as 1,000
  per second), so half a second's worth stays inside what they allow.
- Tokens are not known before the answer. A request is charged its prompt estimate (UTF-8 bytes
  / 4, corrected by the ratio the server's `usage` reported so far) plus the completion it will
  probably get (the mean of completions so far, starting at the token cap). When usage shows a
  request cost more than charged, the difference is charged too (the next requests wait for it);
  the bucket cannot give back an over-charge, so the estimate learns instead.
- The server has the last word: `x-ratelimit-limit-requests` below --rpm lowers the budget,
  `x-ratelimit-remaining-requests: 0` and a 429's Retry-After pause every request (not only the
  one refused) until the reset.
- Seconds spent waiting are counted, so the progress line can show them.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiolimiter import AsyncLimiter

from .base import ChatRequest, prompt_bytes

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """OpenAI's reset durations ('1s', '6m0s', '250ms') in seconds; None if unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    return sum(float(n) * _UNIT[u] for n, u in parts) if parts else None


def _request_bucket(rpm: float) -> AsyncLimiter:
    burst = max(1.0, rpm / 120)  # half a second's worth
    return AsyncLimiter(burst, burst * 60.0 / rpm)


class RateLimiter:
    """Awaited before each attempt (`acquire`), told of each answer (`settle`, `observe`)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._requests = _request_bucket(rpm) if rpm else None
        # a tenth of a minute of tokens may go at once: one large prompt must fit in the bucket
        self._tokens = AsyncLimiter(tpm / 10, 6.0) if tpm else None
        self.pause_until = 0.0
        self.waited_s = 0.0
        self._prompt_ratio = 1.0
        self._completion_mean: float | None = None
        self._answers = 0

    def estimate(self, req: ChatRequest) -> tuple[int, int]:
        """(prompt tokens, completion tokens) to charge before sending."""
        prompt = (prompt_bytes(req) / 4 + 4 * len(req.messages)) * self._prompt_ratio
        cap = req.params.max_new_tokens
        completion = cap if self._completion_mean is None else min(cap, self._completion_mean * 1.2 + 1)
        return max(1, round(prompt)), max(1, round(completion))

    async def acquire(self, req: ChatRequest) -> int:
        """Wait for the budgets; return the tokens charged (hand them back to `settle`)."""
        t0 = time.monotonic()
        while (delay := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._requests is not None:
            await self._requests.acquire()
        charged = 0
        if self._tokens is not None:
            charged = min(sum(self.estimate(req)), int(self._tokens.max_rate))
            await self._tokens.acquire(charged)
        self.waited_s += time.monotonic() - t0
        return charged

    async def settle(self, req: ChatRequest, charged: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Learn from the usage an answer reported; charge what the estimate missed."""
        if prompt_tokens or completion_tokens:
            est_prompt = max(1.0, (prompt_bytes(req) / 4 + 4 * len(req.messages)))
            self._answers += 1
            w = 1 / min(self._answers, 50)
            self._prompt_ratio += w * (prompt_tokens / est_prompt - self._prompt_ratio)
            mean = self._completion_mean if self._completion_mean is not None else float(completion_tokens)
            self._completion_mean = mean + w * (completion_tokens - mean)
        extra = prompt_tokens + completion_tokens - charged
        if self._tokens is not None and charged and extra > 0:
            await self._tokens.acquire(min(extra, self._tokens.max_rate))

    def observe(self, headers: Any, retry_after: float | None = None) -> None:
        """Adapt to what the server says about its limits (any response's headers)."""
        if headers is None:
            return
        if retry_after is not None:
            self.pause_until = max(self.pause_until, time.monotonic() + retry_after)
        limit = headers.get("x-ratelimit-limit-requests")
        try:
            server_rpm = float(limit) if limit else None
        except ValueError:
            server_rpm = None
        if server_rpm and (self.rpm is None or server_rpm < self.rpm):
            self.rpm = server_rpm
            self._requests = _request_bucket(server_rpm)
        if headers.get("x-ratelimit-remaining-requests") == "0":
            reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
            if reset:
                self.pause_until = max(self.pause_until, time.monotonic() + reset)

    def note(self) -> str:
        return f"rate-limit waits {self.waited_s:.1f} s" if self.waited_s >= 0.05 else ""
