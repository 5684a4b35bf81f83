"""`python -m judge serve --rubric R --db D`: the judge stage behind HTTP, as a reward service.

Endpoints (JSON; every one but /health needs `Authorization: Bearer <token>` when a token is set):
- POST /v1/rewards  {"items": [{"prompt", "response", "label"?, "metadata"?}], "run"?, "step"?}
  -> {"rewards": [..], "items": [{"reward", "scores", "flags", "error", "cached"}], "rubric", "rubric_hash"}
- POST /get_reward  OpenRLHF's remote reward model: {"query": [..], "prompts": [..], "labels": [..]}
  -> {"rewards": [..], "scores": [..], "extra_logs": {criterion: [..]}}; tags as ?run=R&step=N
- GET /health       the rubric, requests in flight, rows waiting for the writer

Why it is built this way:
- Requests never wait on DuckDB: records go to one writer thread (judge/serve_log.py); the
  reward cache (identical items) is filled from the corpus once, at startup.
- Each item is its own unit of work on a thread pool with its own deadline: a slow or failing
  item gets an error in its slot; the rest of the batch is answered (never a 500 for the batch).
- Load is bounded: past `max_concurrency` requests in flight the answer is 429 with Retry-After,
  so a trainer backs off instead of piling up work the judges cannot do.
- The token comes from an environment variable (never argv, so never in `runs.argv`), is
  compared in constant time, and no log line carries it: uvicorn's access log is off.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .serve_log import RewardLog
from .serve_score import RubricScorer, Scored, ServeItem

log = logging.getLogger("judge.serve")


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ServeItem] = Field(min_length=1)
    run: str | None = Field(None, max_length=200, description="the caller's run tag")
    step: int | None = Field(None, ge=0, description="the caller's training step")


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward request (openrlhf/utils/agent.py posts query, prompts, labels)."""

    model_config = ConfigDict(extra="ignore")  # a newer OpenRLHF may send more keys: not ours to refuse
    query: list[str] = Field(min_length=1, description="prompt + response as one decoded text")
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def reason_of(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


class RewardService:
    """Scores batches of items: the cache, the pool, per-item deadlines, the records."""

    def __init__(self, scorer: RubricScorer, log_: RewardLog, workers: int = 8, item_timeout_s: float = 120.0):
        self.scorer, self.log = scorer, log_
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")
        self.item_timeout_s = item_timeout_s
        self.served = 0
        self.errors = 0

    def _one(self, item: ServeItem) -> Scored:
        try:
            s = self.scorer.score(item)
        except Exception as e:  # noqa: BLE001 - a bug or a broken backend fails this item only
            log.error("scoring failed: %s: %s", type(e).__name__, str(e)[:200])
            return Scored(None, {}, [], error=f"internal error: {type(e).__name__}: {str(e)[:200]}", transient=True)
        self.log.add(s.records)  # even when the request stopped waiting: the work was done, keep it
        return s

    async def score(self, items: list[ServeItem], caller_run: str | None, step: int | None) -> list[tuple[Scored, bool]]:
        t0 = time.monotonic()
        keys = [self.scorer.key(it) for it in items]
        found: dict[str, tuple[Scored, bool]] = {}
        futures: dict[str, asyncio.Future] = {}
        for it, k in zip(items, keys):
            if k in found or k in futures:
                continue  # a group of identical rollouts is scored once
            hit = self.scorer.lookup(k)
            if hit is not None:
                found[k] = (hit, True)
            else:
                futures[k] = asyncio.wrap_future(self.pool.submit(self._one, it))
        if futures:
            await asyncio.wait(list(futures.values()), timeout=self.item_timeout_s)
        for k, fut in futures.items():
            if fut.done():
                found[k] = (fut.result(), False)
                self.scorer.remember(k, found[k][0])
            else:
                found[k] = (Scored(None, {}, [], error=f"timed out after {self.item_timeout_s:g} s", transient=True), False)
        ms = (time.monotonic() - t0) * 1000
        out = [found[k] for k in keys]
        self.log.add([self.scorer.served_row(it, k, s, caller_run, step, i, cached, ms)
                      for i, (it, k, (s, cached)) in enumerate(zip(items, keys, out))])
        self.served += len(items)
        self.errors += sum(s.error is not None for s, _ in out)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


_SPECIAL_TAIL = re.compile(r"(?:\s*(?:<\|[^|<>\s]{1,40}\|>|</s>|<eos>))+\s*$")


def split_query(query: str, prompt: str | None) -> str:
    """OpenRLHF sends prompt + response decoded with special tokens: the response is what follows
    the prompt, without the end-of-turn tokens the tokenizer added."""
    response = query[len(prompt):] if prompt and query.startswith(prompt) else query
    return _SPECIAL_TAIL.sub("", response)


async def read_json(request: Request, limit: int) -> Any:
    import json

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes is over the limit of {limit} bytes (--max-body-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise BadRequest(413, f"body is over the limit of {limit} bytes (--max-body-bytes)")
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not JSON: {str(e)[:120]}") from None


def create_app(service: RewardService, token: str | None = None, max_body_bytes: int = 8 << 20, max_items: int = 1024,
               max_concurrency: int = 16, retry_after_s: int = 1, error_reward: float = 0.0) -> FastAPI:
    app = FastAPI(title="rlaif-engine reward service", docs_url=None, redoc_url=None, openapi_url=None)
    state = {"in_flight": 0}
    rubric = service.scorer.rubric
    expected = f"Bearer {token}".encode() if token else None

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202
        if request.url.path == "/health":
            return await call_next(request)
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if state["in_flight"] >= max_concurrency:
            return JSONResponse({"error": f"busy: {max_concurrency} requests in flight; retry after {retry_after_s} s"},
                                status_code=429, headers={"Retry-After": str(retry_after_s)})
        state["in_flight"] += 1
        try:
            return await call_next(request)
        finally:
            state["in_flight"] -= 1

    @app.exception_handler(BadRequest)
    async def bad(request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": e.reason}, status_code=e.status, headers=e.headers)

    def check_size(n: int) -> None:
        if n > max_items:
            raise BadRequest(413, f"{n} items is over the limit of {max_items} per request (--max-items); split the batch")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "rubric": rubric.name, "rubric_version": rubric.version, "rubric_hash": rubric.rubric_hash,
                "in_flight": state["in_flight"], "max_concurrency": max_concurrency, "served": service.served,
                "cache_hits": service.scorer.hits, "writes_pending": service.log.pending}

    @app.post("/v1/rewards")
    async def rewards(request: Request) -> dict[str, Any]:
        data = await read_json(request, max_body_bytes)
        if isinstance(data, dict) and isinstance(data.get("items"), list):
            check_size(len(data["items"]))
        try:
            req = RewardRequest.model_validate(data)
        except ValidationError as e:
            raise BadRequest(400, reason_of(e)) from None
        out = await service.score(req.items, req.run, req.step)
        return {"rewards": [s.reward for s, _ in out], "items": [{**s.public(), "cached": c} for s, c in out],
                "rubric": rubric.name, "rubric_version": rubric.version, "rubric_hash": rubric.rubric_hash}

    @app.post("/get_reward")
    async def openrlhf(request: Request) -> dict[str, Any]:
        data = await read_json(request, max_body_bytes)
        try:
            req = OpenRLHFRequest.model_validate(data)
        except ValidationError as e:
            raise BadRequest(400, reason_of(e)) from None
        n = len(req.query)
        check_size(n)
        for name, col in (("prompts", req.prompts), ("labels", req.labels)):
            if col is not None and len(col) != n:
                raise BadRequest(400, f"{name}: {len(col)} entries for {n} queries; send one per query")
        run = request.query_params.get("run")
        step_text = request.query_params.get("step")
        if step_text is not None and not step_text.isdigit():
            raise BadRequest(400, f"step={step_text!r}: expected a non-negative integer")
        prompts = req.prompts or [""] * n
        labels = req.labels or [None] * n
        try:
            items = [ServeItem(prompt=p, response=split_query(q, p), label=lb) for q, p, lb in zip(req.query, prompts, labels)]
        except ValidationError as e:
            raise BadRequest(400, reason_of(e)) from None
        out = await service.score(items, run, int(step_text) if step_text is not None else None)
        values = [error_reward if s.reward is None else s.reward for s, _ in out]
        logs: dict[str, list[float]] = {c.name: [] for c in rubric.criteria}
        for s, _ in out:
            for c in rubric.criteria:
                v = s.scores.get(c.name)
                logs[c.name].append(error_reward if v is None else v)  # JSON has no NaN
        logs["reward_error"] = [float(s.error is not None) for s, _ in out]
        return {"rewards": values, "scores": values, "extra_logs": logs}

    return app
