"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, `vllm serve`,
llama.cpp's server, ...), through the official SDK.

Why it is built this way:
- The SDK's own retries are off: one retry policy (tenacity) that we can reason about and test,
  with exponential backoff and full jitter, honouring the server's Retry-After.
- Transient failures (429, 5xx, 408, timeouts, dropped connections, bodies that are not a chat
  completion) are retried; other 4xx never are, and their completion is marked `permanent` so
  the call cache does not send them again.
- One failed request never raises: its Completion carries the reason. Only an endpoint that
  cannot be reached at all raises `BackendError`, because then every request would fail.
- The API key is read from an environment variable and handed to the SDK only; every error
  text is scrubbed of it before it leaves this module (servers have been seen echoing it).
- `--rpm`/`--tpm` (backends/ratelimit.py) space requests before they are sent; `--batch`
  (backends/batch.py) sends the same requests through the Batch API instead; `--export-batch`
  writes them to a file for `vllm run-batch`. Every answer's usage is counted per mode, and
  priced when a price file is given (backends/pricing.py); `--max-cost` holds back what would
  go over it.
- `generate()` is synchronous and runs its own event loop (in a worker thread when the caller
  already has one running), so stages stay plain functions.
- Answers are delivered as they arrive (group commit): whatever completed while the previous
  delivery ran goes out in one call, on a worker thread, while the other requests proceed. A
  request that got its answer keeps its concurrency slot until that delivery returns, so at any
  moment at most `concurrency` answers exist that the caller has not saved.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from .base import Backend, BackendError, ChatRequest, Completion, Deliver, Progress, TokenLogprob, prompt_bytes
from .batch import BatchOptions, BatchSender, export_requests
from .pricing import Budget, Price
from .ratelimit import RateLimiter

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
# Statuses with which servers refuse a `json_schema` response_format they do not support
# (llama.cpp's server answers 500): try `json_object` once before treating it as a failure.
SCHEMA_REJECT_STATUS = frozenset({400, 422, 500, 501})


class BadBody(Exception):
    """A 200 whose body is not a chat completion: a proxy's HTML page, a truncated JSON."""


class Unreachable(Exception):
    """No connection could be made before any response came back: no request can succeed."""


def _redact_url(url: str) -> str:
    """A base URL as it may be shown: without any user:password part."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, `retry-after` in seconds, or an
    HTTP date. None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS
    # APITimeoutError is an APIConnectionError: timeouts and dropped connections alike.
    return isinstance(exc, (openai.APIConnectionError, BadBody))


def _is_connect_failure(exc: BaseException) -> bool:
    """No TCP connection at all (refused, unknown host, connect timeout), as opposed to a
    connection that broke or a server that was slow to answer."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, openai.APIConnectionError) and isinstance(
        cause, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError)
    )


class OpenAIBackend(Backend):
    name = "openai"
    supports_json_schema = True
    supports_logprobs = True
    streams_results = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 6,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        batch: BatchOptions | None = None,
        export_path: str | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        price: Price | None = None,
        max_cost: float | None = None,
    ):
        super().__init__(model)
        if concurrency < 1:
            raise BackendError(f"--concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise BackendError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise BackendError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key and base_url is None and "api.openai.com" in self.base_url and not export_path:
            raise BackendError(
                f"no API key: set the environment variable {api_key_env} "
                "(or point --base-url at a local server)"
            )
        # Local servers (vllm serve, llama.cpp) accept any key; the SDK insists on one.
        self._key = key or "EMPTY"
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.json_mode = "json_schema"  # becomes "json_object" once a server rejects json_schema
        # becomes "max_completion_tokens" once a server refuses max_tokens (OpenAI's reasoning
        # models do); max_tokens first, because most OpenAI-compatible servers only know that one
        self.max_tokens_key = "max_tokens"
        self._reached = False  # a response ever came back: later refusals are a restart, not a typo
        self.batch, self.export_path = batch, export_path
        self.limiter = RateLimiter(rpm, tpm) if (rpm or tpm) else None
        self.budget = Budget(price, max_cost)
        self.held_reason: str | None = None
        self.store: Any = None  # the corpus, for batch mode's ledger (attach_store)
        self.run_id: str | None = None
        if export_path:
            open(export_path, "w", encoding="utf-8").close()  # noqa: SIM115 - each run writes the file anew

    def attach_store(self, store: Any, run_id: str | None) -> None:
        """Called by CachedBackend: where batch mode records its batches and request keys."""
        self.store, self.run_id = store, run_id

    def release_spend(self, requests: list[ChatRequest], mode: str) -> None:
        self.budget.release(*_worst_case(requests), mode)

    def endpoint(self) -> str:
        return _redact_url(self.base_url)

    def may_spend(self, requests: list[ChatRequest], mode: str) -> bool:
        """Reserve the worst-case cost of these requests under --max-cost; False when it would go over."""
        if self.budget.allow(*_worst_case(requests), mode):
            return True
        self.held_reason = (f"held back: --max-cost ${self.budget.max_cost:g} reached; "
                            "rerun the same command to go on with a new budget")
        return False

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={_redact_url(self.base_url)!r})"

    # -- error text -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """One line, no secret, bounded length: what a Completion.error or a log may hold."""
        if self._key and self._key != "EMPTY":
            text = text.replace(self._key, "***")
        if self.base_url != _redact_url(self.base_url):
            text = text.replace(self.base_url, _redact_url(self.base_url))
            password = urlsplit(self.base_url).password
            if password:
                text = text.replace(password, "***")
        text = " ".join(text.split())
        return text[:500]

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, openai.APIStatusError):
            msg = exc.message
            body = exc.body
            if isinstance(body, dict):
                err = body.get("error", body)
                msg = (err.get("message") if isinstance(err, dict) else None) or str(err)
            return self._scrub(f"HTTP {exc.status_code}: {msg}")
        if isinstance(exc, openai.APITimeoutError):
            return f"timeout: no answer within {self.timeout:g} s"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return self._scrub(f"connection failed: {type(cause).__name__ if cause else ''} {cause or exc}")
        return self._scrub(f"{type(exc).__name__}: {exc}")

    # -- one request ------------------------------------------------------------------------

    def _kwargs(self, req: ChatRequest, json_mode: str, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
        p = req.params
        kw: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in req.messages],
            "temperature": p.temperature,
            "top_p": p.top_p,
            max_tokens_key: p.max_new_tokens,
        }
        if p.seed is not None:
            kw["seed"] = p.seed
        if p.stop:
            kw["stop"] = list(p.stop)
        if req.json_schema is not None:
            if json_mode == "json_schema":
                kw["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": req.json_schema},
                }
            else:
                # llama.cpp constrains json_object output with this extra `schema` field.
                kw["response_format"] = {"type": "json_object", "schema": req.json_schema}
        if req.top_logprobs is not None:
            kw["logprobs"] = True
            if req.top_logprobs > 0:
                kw["top_logprobs"] = req.top_logprobs
        return kw

    async def _create(self, client: openai.AsyncOpenAI, kw: dict[str, Any]) -> Any:
        try:
            if self.limiter is None:
                resp = await client.chat.completions.create(**kw)
            else:  # the raw response carries the x-ratelimit-* headers the limiter adapts to
                raw = await client.chat.completions.with_raw_response.create(**kw)
                self.limiter.observe(raw.headers)
                resp = raw.parse()
        except openai.APIStatusError:
            self._reached = True
            raise
        except openai.APIConnectionError as e:
            if not self._reached and _is_connect_failure(e):
                raise Unreachable() from e
            raise
        except ValueError as e:  # the SDK's json.loads of a body that is not JSON
            self._reached = True
            raise BadBody(f"response body is not JSON ({e})") from None
        self._reached = True
        if not getattr(resp, "choices", None) or resp.choices[0].message is None:
            raise BadBody(f"response is not a chat completion: {str(resp)[:120]}")
        return resp

    async def _send(self, client: openai.AsyncOpenAI, req: ChatRequest) -> Any:
        """One attempt. A server that refuses json_schema, or max_tokens, gets the request again
        with json_object, or max_completion_tokens; once that succeeds the backend keeps it for
        the rest of the run instead of paying a refused call each time."""
        mode0, key0 = self.json_mode, self.max_tokens_key
        mode, key = mode0, key0
        while True:
            try:
                resp = await self._create(client, self._kwargs(req, mode, key))
            except openai.APIStatusError as e:
                if req.json_schema is not None and mode == "json_schema" and e.status_code in SCHEMA_REJECT_STATUS:
                    mode = "json_object"
                    continue
                if key == "max_tokens" and e.status_code == 400 and "max_completion_tokens" in self._describe(e):
                    key = "max_completion_tokens"
                    continue
                raise
            if mode != mode0:  # only what this request learnt: others may have learnt it meanwhile
                self.json_mode = mode
            if key != key0:
                self.max_tokens_key = key
            return resp

    def _wait_s(self, attempt: int, exc: BaseException | None) -> float:
        backoff = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
        after = parse_retry_after(exc.response.headers) if isinstance(exc, openai.APIStatusError) else None
        if self.limiter is not None and isinstance(exc, openai.APIStatusError):
            self.limiter.observe(exc.response.headers, after if exc.status_code == 429 else None)
        if after is None:
            return backoff
        # The server said when; a little jitter keeps many clients from returning at once.
        return min(after, self.max_retry_after_s) + random.uniform(0, 0.1 * self.backoff_s)

    async def _one(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, req: ChatRequest) -> tuple[Completion, bool]:
        """The request's completion, and whether it still holds a slot of `sem` (it does after
        an answer: the caller frees the slot once the answer is delivered)."""
        t0 = time.perf_counter()
        attempts = 0
        charged = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1),
                retry=retry_if_exception(_is_transient),
                wait=lambda rs: self._wait_s(rs.attempt_number, rs.outcome.exception() if rs.outcome else None),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    # held per attempt, so a request waiting to retry frees its slot
                    await sem.acquire()
                    # checked once a slot is free, so the money of answers already back counts
                    if attempts == 1 and not self.may_spend([req], "online"):
                        sem.release()
                        return Completion(finish_reason="error", pending=True, error=self.held_reason), False
                    try:
                        if self.limiter is not None:
                            charged = await self.limiter.acquire(req)
                        resp = await self._send(client, req)
                    except BaseException:
                        sem.release()
                        raise
        except Unreachable:
            raise
        except Exception as e:  # noqa: BLE001 - every failure of one request becomes its Completion
            self.release_spend([req], "online")
            permanent = not _is_transient(e)
            reason = self._describe(e)
            if not permanent:
                reason = f"{reason} (gave up after {attempts} attempts)"
            return Completion(
                finish_reason="error", error=reason, permanent=permanent,
                latency_ms=(time.perf_counter() - t0) * 1000,
            ), False
        try:
            comp = self._completion(resp, (time.perf_counter() - t0) * 1000)
            self.release_spend([req], "online")
            if self.limiter is not None:
                await self.limiter.settle(req, charged, comp.prompt_tokens, comp.completion_tokens)
            return comp, True
        except BaseException:
            sem.release()
            raise

    def _completion(self, resp: Any, latency_ms: float, mode: str = "online") -> Completion:
        choice = resp.choices[0]
        logprobs = None
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if content:
            logprobs = [
                TokenLogprob(
                    token=t.token, logprob=t.logprob,
                    top={a.token: a.logprob for a in (t.top_logprobs or [])},
                )
                for t in content
            ]
        usage = resp.usage
        if usage:
            self.budget.add(mode, usage.prompt_tokens or 0, usage.completion_tokens or 0)
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason if choice.finish_reason in ("length", "content_filter") else "stop",
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            latency_ms=latency_ms,
            logprobs=logprobs,
        )

    # -- the batch --------------------------------------------------------------------------

    async def _batch(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver | None) -> list[Completion]:
        client = openai.AsyncOpenAI(
            api_key=self._key, base_url=self.base_url, timeout=self.timeout, max_retries=0,
        )
        sem = asyncio.Semaphore(self.concurrency)
        saver = _GroupCommit(deliver) if deliver is not None else None

        async def run(i: int, req: ChatRequest) -> Completion:
            comp, holding = await self._one(client, sem, req)
            try:
                progress(1)
                if self.limiter is not None and self.limiter.note() and hasattr(progress, "note"):
                    progress.note(self.limiter.note())
                if saver is not None:
                    await saver.put(i, comp)
            finally:
                if holding:
                    sem.release()
            return comp

        try:
            tasks = [asyncio.ensure_future(run(i, r)) for i, r in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            if saver is not None:
                await saver.stop()
            await client.close()

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver | None = None) -> list[Completion]:  # type: ignore[override]
        deliver = deliver or (lambda results: None)
        if self.export_path:
            return export_requests(self, requests, deliver)
        if self.batch is not None:
            return BatchSender(self, self.batch, self.store, self.run_id).run(requests, progress, deliver)
        try:
            return _run_sync(self._batch(requests, progress, deliver))
        except Unreachable as e:
            cause = e.__cause__.__cause__ if e.__cause__ else None
            if isinstance(cause, httpx2.ConnectTimeout):
                why = f"no connection within {self.timeout:g} s"
            else:
                why = self._scrub(str(cause) or type(cause).__name__) if cause else "connection refused"
            raise BackendError(
                f"cannot reach {_redact_url(self.base_url)} ({why}): start the server or fix --base-url"
            ) from None


def _worst_case(requests: list[ChatRequest]) -> tuple[int, int]:
    """(prompt, completion) tokens at most: about 4 bytes a token, every reply at its cap."""
    return sum(max(1, prompt_bytes(r) // 4) for r in requests), sum(r.params.max_new_tokens for r in requests)


class _GroupCommit:
    """Hands results to `deliver` on a worker thread, one call at a time, each call taking every
    result that arrived while the previous one ran; `put` returns once its result is delivered."""

    def __init__(self, deliver: Deliver):
        self.deliver = deliver
        self.pending: list[tuple[int, Completion, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._loop())

    async def put(self, i: int, comp: Completion) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((i, comp, done))
        self.wake.set()
        await done

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            group, self.pending = self.pending, []
            if not group:
                continue
            try:
                await asyncio.to_thread(self.deliver, [(i, c) for i, c, _ in group])
            except asyncio.CancelledError:
                for _, _, f in group:
                    f.cancel()
                raise
            except Exception as e:  # a failed save fails the batch: nothing may look saved
                for _, _, f in group:
                    if not f.done():
                        f.set_exception(e)
            else:
                for _, _, f in group:
                    if not f.done():
                        f.set_result(None)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even if this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, name="openai-backend")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


__all__ = ["OpenAIBackend", "parse_retry_after"]
