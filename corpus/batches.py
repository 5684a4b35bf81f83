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


# -- python -m corpus batches | import-batch ---------------------------------------------------

def add_parsers(sub: Any) -> None:
    b = sub.add_parser("batches", help="batches of the openai backend's --batch mode and their state; cancel or forget one")
    b.add_argument("--live", action="store_true", help="only batches whose answers are not all stored")
    b.add_argument("--format", choices=["table", "jsonl"], default="table")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--cancel", metavar="ID", help="cancel this batch at the provider (our id, the provider's, or 'all' "
                   "live ones); a rerun of its command sends its unanswered requests again")
    g.add_argument("--forget", metavar="ID", help="stop waiting for a batch the provider no longer shows (e.g. made "
                   "with another project's key): the next run sends its requests again")
    b.add_argument("--base-url", default=None, help="with --cancel: the endpoint, where the recorded one had credentials")
    b.add_argument("--api-key-env", default="OPENAI_API_KEY", help="with --cancel: the variable holding the API key")
    i = sub.add_parser("import-batch", help="store the output file of `vllm run-batch` (requests written by "
                       "generate --export-batch) in the call cache by key")
    i.add_argument("file", type=Path, help="the file vllm run-batch wrote (-o)")


def _cancel(corpus: Any, which: str, base_url: str | None, key_env: str) -> list[tuple[str, str]]:
    import os

    import openai

    rows = corpus.list_batches(None if which == "all" else which, live_only=which == "all")
    rows = [r for r in rows if r["mode"] == "batch"]
    if not rows:
        raise UserError(f"batches --cancel {which}: no such batch; list them with `python -m corpus --db {corpus.path} batches`")
    out = []
    for r in rows:
        if not r["provider_id"]:
            corpus.update_batch(r["id"], status="cancelled", collected=True, error="cancelled before it was created")
            out.append((r["id"], "cancelled (never created)"))
            continue
        url = base_url or r["endpoint"]
        if "***" in (url or ""):
            raise UserError("batches --cancel: the recorded endpoint had credentials; give it again with --base-url URL")
        client = openai.OpenAI(base_url=url, api_key=os.environ.get(key_env) or "EMPTY", max_retries=3)
        try:
            got = client.batches.cancel(r["provider_id"])
        except openai.APIError as e:
            raise UserError(f"batches --cancel {r['provider_id']}: {type(e).__name__} "
                            f"{getattr(e, 'status_code', '')}; check --base-url and ${key_env}") from None
        corpus.update_batch(r["id"], status=got.status)
        out.append((r["provider_id"], got.status))
    return out


def main(corpus: Any, args: Any) -> int:
    """`batches` and `import-batch`; prints a table or one line per action."""
    from .cli import _print_rows

    if args.cmd == "import-batch":
        with corpus.run("import-batch", {"file": str(args.file)}) as run:
            counts = import_batch_output(corpus, args.file, run.id)
            run.summary = counts
        print(f"import-batch: {counts['stored']} answers stored, {counts['failed']} failed lines, "
              f"{counts['unknown']} lines whose key no export recorded (not stored)")
        return 0
    if args.cancel:
        for pid, status in _cancel(corpus, args.cancel, args.base_url, args.api_key_env):
            print(f"{pid}: {status}")
        return 0
    if args.forget:
        rows = corpus.list_batches(args.forget)
        if not rows:
            raise UserError(f"batches --forget {args.forget}: no such batch")
        for r in rows:
            corpus.update_batch(r["id"], collected=True, error="forgotten: its requests are sent again")
            print(f"{r['id']}: forgotten; the next run sends its {r['n_requests']} requests again")
        return 0
    rows = corpus.list_batches(live_only=args.live)
    cols = ["id", "provider_id", "mode", "model", "status", "collected", "n_requests", "n_ok", "n_failed", "n_resend",
            "updated_at"]
    _print_rows(cols, [tuple(r[c] for c in cols) for r in rows], args.format, 1000, title="batches")
    return 0


def cost_rows(corpus: Any, prices: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    """Tokens and cost per run, model and mode, from the calls each run paid for (calls.run_id);
    a call whose key went into a provider batch was paid at the batch price."""
    rows = corpus.query(
        "SELECT c.run_id, r.command, c.model, "
        "CASE WHEN EXISTS (SELECT 1 FROM batch_requests q JOIN batches b ON b.id = q.batch_id "
        "  WHERE q.key = c.key AND b.mode = 'batch') THEN 'batch' "
        "  WHEN EXISTS (SELECT 1 FROM batch_requests q JOIN batches b ON b.id = q.batch_id "
        "  WHERE q.key = c.key AND b.mode = 'export') THEN 'export' ELSE 'online' END AS mode, "
        "count(*) AS calls, sum(coalesce(json_extract(c.response, '$.prompt_tokens')::BIGINT, 0)) AS tokens_in, "
        "sum(coalesce(json_extract(c.response, '$.completion_tokens')::BIGINT, 0)) AS tokens_out "
        "FROM calls c LEFT JOIN runs r ON r.id = c.run_id WHERE c.status = 'ok' "
        "GROUP BY 1, 2, 3, 4 ORDER BY min(c.created_at), 3, 4")
    out = []
    for r in rows:
        p = (prices or {}).get(r["model"])
        usd = "-"
        if p is not None and r["mode"] != "export":  # an exported file ran on the user's own GPUs
            cost = (r["tokens_in"] * p["input"] + r["tokens_out"] * p["output"]) / 1e6
            usd = f"{cost * (p['batch_discount'] if r['mode'] == 'batch' else 1.0):.4f}"
        out.append((r["run_id"], r["command"], r["model"], r["mode"], r["calls"], r["tokens_in"], r["tokens_out"], usd))
    return out


def load_price_file(path: str) -> dict[str, dict[str, float]]:
    """The price file of `--prices` (backends/pricing.py documents it). Read here again because
    the corpus imports nothing of ours; only the three numbers per model are needed."""
    from .yamlfile import load_yaml

    data, _ = load_yaml(Path(path), "write `model: {input: 0.15, output: 0.6, batch_discount: 0.5}`")
    if not isinstance(data, dict):
        raise UserError(f"--prices {path}: expected a mapping model -> {{input, output, batch_discount}}")
    try:
        return {str(m): {"input": float(v["input"]), "output": float(v["output"]),
                         "batch_discount": float(v.get("batch_discount", 0.5))} for m, v in data.items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise UserError(f"--prices {path}: every model needs input and output in USD per million tokens, "
                        "e.g. `gpt-4o-mini: {input: 0.15, output: 0.6}`") from None
