"""Batch mode of the openai backend: the same requests, sent through the provider's Batch API
(upload a JSONL file, create a batch, poll, read the output and error files) at its batch price.

A way of sending, not a stage: answers reach the caller through `deliver` exactly as online
answers do, so the call cache stores them in `calls` by key. What batch mode adds is a ledger
(the store, the corpus's `batches` and `batch_requests` tables) that makes paying twice
impossible across kills:

- A batch's row and its request keys are recorded *before* its file is uploaded, under a random
  tag that also goes into the batch's metadata. A process killed after `batches.create` and
  before recording the provider's id leaves a row without one; the rerun lists the provider's
  batches, finds the tag, and adopts that batch instead of creating another (curator #190, and
  the window between "created" and "recorded").
- A rerun reattaches to every live batch that holds one of its keys; only keys in no live batch
  go into new batches.
- Lines are stored as each output file is read (in groups), then the batch is marked collected.
  Failed (429/5xx), expired, cancelled and missing lines alone go into a new batch (curator
  #226, #296); 4xx lines are permanent failures, stored and never sent again.
- The provider's ids are looked up by id, never by API key, so another key of the same project
  finds them; a key that cannot see them stops the run instead of paying again.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from .base import BackendError, ChatRequest, Completion, Deliver, Progress, request_key

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RESEND_CODES = frozenset({"batch_expired", "batch_cancelled"})


class BatchStore(Protocol):
    """What batch mode needs of the corpus (corpus/batches.py implements it)."""

    def record_batch(self, row: dict[str, Any], keys: list[str], requests: list[dict[str, Any]] | None = None) -> None: ...

    def update_batch(self, batch_id: str, **fields: Any) -> None: ...

    def live_batches(self, backend: str, model: str) -> list[dict[str, Any]]: ...

    def batch_keys(self, batch_id: str) -> list[str]: ...


@dataclass
class BatchOptions:
    poll_s: float = 30.0
    max_requests: int = 50_000  # OpenAI's limits per input file
    max_bytes: int = 200 * 1024 * 1024
    wait: bool = True  # False: submit, collect what is finished, return the rest as pending
    rounds: int = 3  # new batches for failed/expired lines within one run, before giving up
    completion_window: str = "24h"


@dataclass
class _Live:
    row: dict[str, Any]
    keys: set[str]
    status: str = ""
    errors: list[str] = field(default_factory=list)
    reserved: list[ChatRequest] = field(default_factory=list)  # its worst case, held under --max-cost


def batch_line(custom_id: str, body: dict[str, Any]) -> str:
    """One line of an input file, the format of OpenAI's Batch API and of `vllm run-batch`."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body},
                      ensure_ascii=False, separators=(",", ":"))


def split_parts(lines: list[tuple[str, str]], max_requests: int, max_bytes: int) -> list[list[tuple[str, str]]]:
    """(key, line) pairs in input files within both limits, in order."""
    parts: list[list[tuple[str, str]]] = [[]]
    size = 0
    for key, line in lines:
        n = len(line.encode()) + 1
        if parts[-1] and (len(parts[-1]) >= max_requests or size + n > max_bytes):
            parts.append([])
            size = 0
        parts[-1].append((key, line))
        size += n
    return [p for p in parts if p]


def _epoch(value: Any) -> float | None:
    return value.timestamp() if hasattr(value, "timestamp") else None


class BatchSender:
    """Sends one `generate` call's requests through batches; see the module docstring."""

    def __init__(self, backend: Any, options: BatchOptions, store: BatchStore | None, run_id: str | None):
        self.b, self.opt, self.store, self.run_id = backend, options, store, run_id
        self.client = openai.OpenAI(api_key=backend._key, base_url=backend.base_url, timeout=backend.timeout,
                                    max_retries=0)

    # -- calls to the provider, retried on transient failures ------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, attempts: int = 4, **kw: Any) -> Any:
        from .openai_api import _is_transient

        try:
            for attempt in Retrying(stop=stop_after_attempt(attempts), retry=retry_if_exception(_is_transient),
                                    wait=wait_random_exponential(multiplier=min(1.0, self.opt.poll_s), max=30), reraise=True):
                with attempt:
                    return fn(*args, **kw)
        except openai.APIConnectionError as e:
            raise BackendError(f"batch mode: {self.b._describe(e)}; is the server at --base-url up?") from None
        raise AssertionError("unreachable")

    def _find_by_tag(self, tag: str, since: float | None = None) -> Any | None:
        """The provider's batch carrying our tag, if one was created. Listing is newest first, so
        it stops at batches older than our row (less an hour of clock skew): a long history
        of batches is not paged through on every resume."""
        for batch in self._call(self.client.batches.list, limit=100):
            if (batch.metadata or {}).get("rlaif_tag") == tag:
                return batch
            if since is not None and batch.created_at < since - 3600:
                return None
        return None

    # -- submitting -------------------------------------------------------------------------

    def _submit(self, part: list[tuple[str, str]], reqs: dict[str, ChatRequest]) -> _Live:
        tag = "rb-" + secrets.token_hex(8)
        keys = [k for k, _ in part]
        row = {"id": tag, "backend": self.b.name, "model": self.b.model_id, "endpoint": self.b.endpoint(),
               "mode": "batch", "status": "preparing", "n_requests": len(keys), "run_id": self.run_id}
        self.store.record_batch(row, keys)  # type: ignore[union-attr]  # before anything is paid for
        live = _Live(row, set(keys))
        data = "".join(line + "\n" for _, line in part).encode()
        f = self._call(self.client.files.create, file=(f"{tag}.jsonl", data), purpose="batch")
        row["input_file_id"] = f.id
        self.store.update_batch(tag, input_file_id=f.id, status="uploaded")  # type: ignore[union-attr]
        self._create(live)
        return live

    def _create(self, live: _Live) -> None:
        """Create the batch of an uploaded file, or adopt the one a killed run created."""
        tag = live.row["id"]
        for attempt in range(8):
            found = self._find_by_tag(tag, _epoch(live.row.get("created_at")))
            if found is None:
                try:
                    found = self.client.batches.create(
                        input_file_id=live.row["input_file_id"], endpoint="/v1/chat/completions",
                        completion_window=self.opt.completion_window,  # type: ignore[arg-type]
                        metadata={"rlaif_tag": tag})
                except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
                    if attempt == 7:
                        raise BackendError(f"batch mode: creating batch {tag} failed 8 times ({self.b._describe(e)}); "
                                           "rerun the same command: it looks for the batch before creating it") from None
                    time.sleep(min(2.0 ** attempt, 30.0) * min(1.0, self.opt.poll_s))
                    continue  # it may have been created all the same: look for the tag again
            live.row["provider_id"], live.status = found.id, found.status
            self.store.update_batch(tag, provider_id=found.id, status=found.status)  # type: ignore[union-attr]
            return

    # -- collecting -------------------------------------------------------------------------

    def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = self._call(self.client.files.content, file_id).text
        return [json.loads(x) for x in text.splitlines() if x.strip()]

    def _completion(self, line: dict[str, Any]) -> tuple[Completion | None, str | None]:
        """(the line's completion, or None to send it again; the reason it failed)."""
        from .openai_api import RETRY_STATUS

        resp = line.get("response") or {}
        code = resp.get("status_code")
        if code == 200:
            body = openai.types.chat.ChatCompletion.model_validate(resp.get("body") or {})
            return self.b._completion(body, 0.0, "batch"), None
        err = line.get("error") or {}
        body = resp.get("body") if isinstance(resp.get("body"), dict) else {}
        msg = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
        reason = self.b._scrub(f"HTTP {code}: {msg}" if code else f"{err.get('code')}: {err.get('message')}")
        if code is None or code in RETRY_STATUS or err.get("code") in RESEND_CODES:
            return None, reason
        return Completion(finish_reason="error", error=reason, permanent=True), reason

    def _collect(self, live: _Live, want: dict[str, list[int]], deliver: Deliver, claimed: dict[str, str],
                 progress: Progress, group: int = 500) -> list[str]:
        """Store a finished batch's lines as they are read; return the keys to send again."""
        pid = live.row["provider_id"]
        b = self._call(self.client.batches.retrieve, pid)
        seen: set[str] = set()
        resend: list[str] = []
        n_ok = n_failed = 0
        batch: list[tuple[int, Completion]] = []

        def flush() -> None:
            if batch:
                deliver(list(batch))
                progress(len(batch))
                batch.clear()

        for fid in (b.output_file_id, b.error_file_id):
            for line in self._lines(fid):
                key = line.get("custom_id")
                if key not in live.keys or key in seen:
                    continue
                seen.add(key)
                comp, _ = self._completion(line)
                if comp is None:
                    resend.append(key)
                    continue
                n_ok += comp.ok
                n_failed += not comp.ok
                if key in want:  # a paid answer is kept, whichever live batch now claims its key
                    batch.extend((i, comp) for i in want.pop(key))
                    if len(batch) >= group:
                        flush()
            flush()
        resend += sorted(live.keys - seen)  # expired or cancelled before these ran
        if b.status == "failed":
            live.errors = [self.b._scrub(getattr(e, "message", str(e))) for e in (getattr(b.errors, "data", None) or [])]
        mine = [k for k in resend if claimed.get(k) == live.row["id"] and k in want]
        if live.reserved:  # its answers are counted now: the worst case held for it goes back
            self.b.release_spend(live.reserved, "batch")
            live.reserved = []
        live.row.update(n_ok=n_ok, n_failed=n_failed, n_resend=len(mine))
        return mine

    # -- the whole job ----------------------------------------------------------------------

    def run(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver) -> list[Completion]:
        if self.store is None:
            raise BackendError("batch mode records its batches in the corpus; use it through a stage command "
                               "(generate, judge) or CachedBackend")
        b, note = self.b, getattr(progress, "note", lambda text: None)
        keys = [request_key(b.name, b.model_id, r) for r in requests]
        want: dict[str, list[int]] = {}
        reqs: dict[str, ChatRequest] = {}
        for i, (k, r) in enumerate(zip(keys, requests)):
            want.setdefault(k, []).append(i)
            reqs[k] = r
        out: dict[int, Completion] = {}

        def give(results: list[tuple[int, Completion]]) -> None:
            out.update(results)
            deliver(results)

        live: list[_Live] = []
        claimed: dict[str, str] = {}
        for row in self.store.live_batches(b.name, b.model_id):
            if not row.get("input_file_id"):
                # killed before its file was recorded: no batch can exist (one is created only
                # from a recorded file), so nothing was paid; its requests are sent afresh
                self.store.update_batch(row["id"], status="abandoned", collected=True,
                                        error="killed before upload; its requests were sent again")
                continue
            ks = set(self.store.batch_keys(row["id"]))
            if ks & want.keys():
                live.append(_Live(dict(row), ks, row["status"]))
                claimed.update((k, row["id"]) for k in ks)
        for lv in live:
            if not lv.row.get("provider_id"):  # uploaded; perhaps created: adopt it, or create it
                self._create(lv)
        rounds = 0
        fresh = [k for k in want if k not in claimed]
        while True:
            if fresh:
                live += self._send(fresh, reqs, want, claimed, give)
                fresh = []
            open_ = [lv for lv in live if lv.status not in FINAL or not lv.row.get("collected")]
            if not open_:
                break
            for lv in open_:
                if lv.status not in FINAL:
                    lv.status = self._poll(lv)
                if lv.status in FINAL:
                    again = self._collect(lv, want, give, claimed, progress)
                    if again and rounds < self.opt.rounds:
                        fresh += again
                    elif again:
                        why = "; ".join(lv.errors) or f"batch {lv.status}"
                        give([(i, Completion(finish_reason="error", error=f"{why} (gave up after {rounds + 1} batches)"))
                              for k in again for i in want.pop(k)])
                    self.store.update_batch(lv.row["id"], status=lv.status, collected=True, n_ok=lv.row["n_ok"],
                                            n_failed=lv.row["n_failed"], n_resend=lv.row["n_resend"],
                                            error="; ".join(lv.errors)[:500] or None)
                    lv.row["collected"] = True
            if fresh:
                rounds += 1
                continue
            waiting = [lv for lv in live if lv.status not in FINAL]
            done = sum(1 for _ in out)
            note(f"batches: {len(waiting)} running, {done}/{len(requests)} answered")
            if not waiting:
                continue
            if not self.opt.wait:
                break
            time.sleep(self.opt.poll_s)
        for lv in live:  # only with --no-wait: a status line per request still out
            if lv.status not in FINAL:
                give([(i, Completion(finish_reason="error", pending=True,
                                     error=f"pending in batch {lv.row['provider_id']} ({lv.status}); rerun to collect"))
                      for k in lv.keys if claimed.get(k) == lv.row["id"] and k in want for i in want.pop(k)])
        for k in list(want):  # held back (--max-cost) or never claimed
            give([(i, Completion(finish_reason="error", pending=True, error=b.held_reason or "not sent"))
                  for i in want.pop(k)])
        return [out[i] for i in range(len(requests))]

    def _send(self, fresh: list[str], reqs: dict[str, ChatRequest], want: dict[str, list[int]],
              claimed: dict[str, str], give: Deliver) -> list[_Live]:
        b = self.b
        lines, too_big = [], []
        for k in fresh:
            line = batch_line(k, b._kwargs(reqs[k], b.json_mode, b.max_tokens_key))
            if len(line.encode()) + 1 > self.opt.max_bytes:
                too_big.append(k)
            else:
                lines.append((k, line))
        for k in too_big:
            give([(i, Completion(finish_reason="error", permanent=True,
                                 error=f"request over --batch-max-bytes {self.opt.max_bytes:,}")) for i in want.pop(k)])
        out = []
        for part in split_parts(lines, self.opt.max_requests, self.opt.max_bytes):
            if not b.may_spend([reqs[k] for k, _ in part], "batch"):
                break  # --max-cost: the rest stays unsent, reported as pending
            lv = self._submit(part, reqs)
            lv.reserved = [reqs[k] for k, _ in part]
            claimed.update((k, lv.row["id"]) for k, _ in part)
            out.append(lv)
        return out

    def _poll(self, lv: _Live) -> str:
        try:
            got = self._call(self.client.batches.retrieve, lv.row["provider_id"])
        except openai.NotFoundError:
            raise BackendError(
                f"batch {lv.row['provider_id']} (tag {lv.row['id']}) is not visible with the key in ${self.b.api_key_env}: "
                "it was created under another project; rerun with a key of that project, or "
                f"`python -m corpus --db ... batches --forget {lv.row['id']}` to send its requests again") from None
        except openai.APIStatusError:
            return lv.status  # still failing after retries: ask again next poll
        if got.status != lv.status:
            self.store.update_batch(lv.row["id"], status=got.status)  # type: ignore[union-attr]
        return got.status


def export_requests(backend: Any, requests: list[ChatRequest], deliver: Deliver) -> list[Completion]:
    """--export-batch: append the requests to the file as `vllm run-batch` reads it, and record
    their keys and requests in the corpus (`corpus import-batch` stores the answers by key)."""
    if backend.store is None:
        raise BackendError("--export-batch records its requests in the corpus; use it through `generate`")
    first: dict[str, ChatRequest] = {}
    for r in requests:
        first.setdefault(request_key(backend.name, backend.model_id, r), r)
    with open(backend.export_path, "a", encoding="utf-8") as f:
        for k, r in first.items():
            f.write(batch_line(k, backend._kwargs(r, backend.json_mode, backend.max_tokens_key)) + "\n")
    backend.store.record_batch(
        {"id": "rx-" + secrets.token_hex(8), "backend": backend.name, "model": backend.model_id, "endpoint": None,
         "mode": "export", "status": "exported", "n_requests": len(first), "run_id": backend.run_id,
         "input_file_id": str(backend.export_path)},
        list(first), [r.model_dump(mode="json") for r in first.values()])
    why = f"exported to {backend.export_path}; run it with vllm run-batch, then python -m corpus import-batch"
    out = [Completion(finish_reason="error", pending=True, error=why) for _ in requests]
    deliver(list(enumerate(out)))
    return out
