"""The batch ledger: which request keys went into which provider batch (tables of m110).

`Corpus` inherits `BatchLedger`, so the corpus is the store the openai backend's batch mode
writes to (backends/batch.py names the methods it needs in `BatchStore`; backends import
nothing of ours). Every write is one short transaction: a batch row and its keys go in together,
before anything is uploaded, so a kill at any point leaves a row a rerun can act on.

`import_batch_output` stores the output file of `vllm run-batch` (the OpenAI batch output format)
into `calls` by key, using the requests that `generate --export-batch` recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from .errors import UserError
from .records import Call, now

LIVE = "collected = false AND mode = 'batch'"


class BatchLedger:
    """Mixin of `Corpus`: reads and writes `batches` and `batch_requests`."""

    def record_batch(self, row: dict[str, Any], keys: list[str], requests: list[dict[str, Any]] | None = None) -> None:
        cols = list(row) + ["updated_at"]
        with self.transaction() as con:  # type: ignore[attr-defined]
            con.execute(
                f"INSERT INTO batches ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [*row.values(), now()],
            )
            reqs = [json.dumps(r, sort_keys=True) for r in requests] if requests is not None else [None] * len(keys)
            part = pa.table({"batch_id": [row["id"]] * len(keys), "key": keys, "request": reqs})  # noqa: F841
            con.execute("INSERT INTO batch_requests SELECT batch_id, key, request::JSON FROM part")

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as con:  # type: ignore[attr-defined]
            con.execute(f"UPDATE batches SET {sets}, updated_at = ? WHERE id = ?", [*fields.values(), now(), batch_id])

    def live_batches(self, backend: str, model: str) -> list[dict[str, Any]]:
        """Batches of this backend and model whose answers are not all stored yet, oldest first."""
        return self.query(  # type: ignore[attr-defined]
            f"SELECT * FROM batches WHERE {LIVE} AND backend = ? AND model = ? ORDER BY created_at, id", [backend, model]
        )

    def batch_keys(self, batch_id: str) -> list[str]:
        rows = self.query("SELECT key FROM batch_requests WHERE batch_id = ? ORDER BY key", [batch_id])  # type: ignore[attr-defined]
        return [r["key"] for r in rows]

    def list_batches(self, batch_id: str | None = None, live_only: bool = False) -> list[dict[str, Any]]:
        where, params = [], []
        if batch_id:
            where.append("(id = ? OR provider_id = ?)")
            params += [batch_id, batch_id]
        if live_only:
            where.append(LIVE)
        sql = ("SELECT id, provider_id, mode, model, status, collected, n_requests, n_ok, n_failed, n_resend, "
               "created_at, updated_at, endpoint, error FROM batches")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.query(sql + " ORDER BY created_at, id", params)  # type: ignore[attr-defined]


# -- vllm run-batch output -> calls ------------------------------------------------------------

def completion_json(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-completion body as the `calls.response` JSON the backends write (backends.Completion)."""
    choice = (body.get("choices") or [{}])[0]
    usage = body.get("usage") or {}
    finish = choice.get("finish_reason")
    return {
        "text": ((choice.get("message") or {}).get("content")) or "",
        "finish_reason": finish if finish in ("length", "content_filter") else "stop",
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "latency_ms": 0.0, "logprobs": None, "error": None, "permanent": False,
    }


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{n}: not JSON; give the output file that vllm run-batch wrote (-o)") from None
            if not isinstance(obj, dict) or "custom_id" not in obj:
                raise UserError(f"{path}:{n}: no custom_id; give the output file that vllm run-batch wrote (-o)")
            yield n, obj


def import_batch_output(corpus: Any, path: Path, run_id: str | None = None, every: int = 1000) -> dict[str, int]:
    """Store each answered line of a run-batch output file in `calls`, by its custom_id (the key
    that `generate --export-batch` recorded with its request). Lines whose key no export
    recorded are counted, not stored: nothing says what request they answer."""
    if not path.is_file():
        raise UserError(f"import-batch {path}: no such file; give the file vllm run-batch wrote with -o")
    counts = {"stored": 0, "failed": 0, "unknown": 0}
    rows: list[Call] = []

    def flush() -> None:
        if rows:
            corpus.insert(rows, replace=True)
            rows.clear()

    pending: list[tuple[str, dict[str, Any]]] = []

    def resolve() -> None:
        keys = [k for k, _ in pending]
        with corpus.connect() as con:
            wanted = pa.table({"k": keys})  # noqa: F841
            found = con.execute(
                "SELECT r.key, r.request, b.backend, b.model FROM batch_requests r JOIN batches b ON b.id = r.batch_id "
                "WHERE b.mode = 'export' AND r.key IN (SELECT k FROM wanted)").fetchall()
        known = {k: (json.loads(req), be, m) for k, req, be, m in found}
        for key, obj in pending:
            if key not in known:
                counts["unknown"] += 1
                continue
            req, backend, model = known[key]
            resp = obj.get("response") or {}
            code = resp.get("status_code")
            if code == 200 and isinstance(resp.get("body"), dict):
                comp, status = completion_json(resp["body"]), "ok"
                counts["stored"] += 1
            else:
                err = (obj.get("error") or {}).get("message") or f"HTTP {code}"
                # a 4xx will fail again; anything else is worth another try, so not cached as final
                permanent = isinstance(code, int) and 400 <= code < 500 and code not in (408, 429)
                comp = {"text": "", "finish_reason": "error", "error": str(err)[:500], "permanent": permanent}
                status = "failed_permanent" if permanent else "failed"
                counts["failed"] += 1
            rows.append(Call(key=key, backend=backend, model=model, request=req, response=comp, status=status,
                             error=comp.get("error"), latency_ms=0.0, run_id=run_id))
        pending.clear()
        flush()

    for _, obj in _lines(path):
        pending.append((str(obj["custom_id"]), obj))
        if len(pending) >= every:
            resolve()
    resolve()
    return counts
