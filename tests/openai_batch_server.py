"""The loopback OpenAI server (openai_server.py) plus the Files and Batches endpoints, with faults.

    from openai_batch_server import BatchServer
    with BatchServer(polls_to_finish=3) as srv:     # a batch finishes on its 3rd retrieve
        ...
        srv.paid              # custom_id of every batch line the server answered with 200: what
                              # a provider bills; `srv.paid_twice()` lists any paid more than once
        srv.answered          # (method, route, status) of every HTTP request it answered
        srv.batches           # id -> the batch object (a dict, as the API returns it)

Endpoints: POST /v1/files (multipart, as the SDK sends it), GET /v1/files/{id}/content,
POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches?after=&limit= (newest first, with
metadata), POST /v1/batches/{id}/cancel. Timings are fake: a batch is `validating` when created,
`in_progress` on its first retrieve and finishes on retrieve number `polls_to_finish`, when its
lines are answered with the chat server's deterministic replies.

Batches belong to a project, not to a key: `projects={"key-a": "p1", "key-b": "p1", "key-c":
"p2"}` maps API keys to projects (a key not listed is in project "default"); a key sees only its
project's batches and files, as with OpenAI.

Faults:
    line_status={"bad prompt": 400}   that prompt's line fails with this status (error file)
    expire_after=K                    a batch answers its first K lines, then expires; the rest
                                      go to the error file as `batch_expired`
    retrieve_faults=["500", "500"]    the next retrieves answer these statuses, in order
    content_faults=["500"]            the same for file downloads
    upload_faults=["hang"]            the next uploads: the file is stored, the answer never comes
                                      (the client's timeout fires; an orphan file is left)
    on_create=fn(batch)               called after a batch is created, before it is answered (a
                                      test kills its client there: created, never recorded)
    on_answer=fn(route)               the same for every Files/Batches request, by route
    rpm=R                             /v1/chat/completions refuses with 429 (Retry-After and
                                      x-ratelimit-* headers) beyond R per minute, counted as a
                                      token bucket with `burst` requests of slack
"""

from __future__ import annotations

import email.parser
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from openai_server import OpenAIServer, _Handler, _last_user

FINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchServer(OpenAIServer):
    polls_to_finish: int = 3
    projects: dict[str, str] = field(default_factory=dict)
    line_status: dict[str, int] = field(default_factory=dict)
    expire_after: int | None = None
    retrieve_faults: list[str] = field(default_factory=list)
    content_faults: list[str] = field(default_factory=list)
    upload_faults: list[str] = field(default_factory=list)
    on_create: "Callable[[dict[str, Any]], None] | None" = None
    # called with the route ("files", "batches", "retrieve", "list", "content", "cancel") after
    # the server did the work and before it answers: a test kills its client there
    on_answer: "Callable[[str], None] | None" = None
    rpm: float | None = None
    burst: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.paid: list[str] = []
        self.answered: list[tuple[str, str, int]] = []
        self.n_429 = 0
        self._seq = 0
        self._bucket = (self.burst, time.monotonic())
        self._block = threading.Lock()

    def handler_base(self) -> type:
        return _BatchHandler

    def paid_twice(self) -> list[str]:
        with self._block:
            seen: dict[str, int] = {}
            for c in self.paid:
                seen[c] = seen.get(c, 0) + 1
        return [c for c, n in seen.items() if n > 1]

    def created(self) -> int:
        return sum(1 for m, r, st in self.answered if m == "POST" and r == "batches" and st == 200)

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:05d}"

    def project(self, headers: Any) -> str:
        key = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        return self.projects.get(key, "default")

    def take_rate(self) -> float | None:
        """None when a request may pass now, else the seconds until it may (token bucket)."""
        if self.rpm is None:
            return None
        with self._block:
            tokens, t = self._bucket
            now = time.monotonic()
            tokens = min(self.burst, tokens + (now - t) * self.rpm / 60)
            if tokens >= 1:
                self._bucket = (tokens - 1, now)
                return None
            self._bucket = (tokens, now)
            return (1 - tokens) * 60 / self.rpm

    # -- running a batch -------------------------------------------------------------------

    def _advance(self, b: dict[str, Any]) -> None:
        if b["status"] in FINAL:
            return
        if b["status"] == "cancelling":
            b["status"], b["cancelled_at"] = "cancelled", int(time.time())
            return
        n = self.polls[b["id"]] = self.polls.get(b["id"], 0) + 1
        if n < self.polls_to_finish:
            b["status"] = "in_progress"
            return
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["data"].decode().splitlines() if x.strip()]
        out, err = [], []
        for i, line in enumerate(lines):
            cid, body = line["custom_id"], line["body"]
            if self.expire_after is not None and i >= self.expire_after:
                err.append({"id": f"req-{i}", "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
                continue
            status = self.line_status.get(_last_user(body) or "", 200)
            if status == 200:
                self.paid.append(cid)
                out.append({"id": f"req-{i}", "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": f"r{i}", "body": self.completion(body)}})
            else:
                err.append({"id": f"req-{i}", "custom_id": cid, "error": None, "response": {
                    "status_code": status, "request_id": f"r{i}",
                    "body": {"error": {"message": f"injected {status}", "type": "injected"}}}})
        proj = b["_project"]
        for kind, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = self._id("file")
                self.files[fid] = {"data": "".join(json.dumps(r) + "\n" for r in rows).encode(), "project": proj,
                                   "purpose": "batch_output", "filename": f"{b['id']}_{kind}.jsonl"}
                b[kind] = fid
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        b["status"] = "expired" if self.expire_after is not None and len(lines) > self.expire_after else "completed"
        b["completed_at"] = int(time.time())

    def public(self, b: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in b.items() if not k.startswith("_")}


class _BatchHandler(_Handler):
    srv: BatchServer

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        srv = self.srv
        if srv.rpm is not None and self.path.rstrip("/").endswith("/chat/completions"):
            tokens = srv._bucket[0]  # what a provider reports on every answer
            headers = {"x-ratelimit-limit-requests": f"{srv.rpm:g}", "x-ratelimit-remaining-requests": str(int(tokens)),
                       "x-ratelimit-reset-requests": f"{max(0.0, 1 - tokens) * 60 / srv.rpm:.3f}s", **(headers or {})}
        super()._send(status, payload, headers, raw)

    def _reply(self, status: int, payload: Any, route: str, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> None:
        if self.srv.on_answer is not None and route != "chat":
            self.srv.on_answer(route)
        with self.srv._block:
            self.srv.answered.append((self.command, route, status))
        if raw is not None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        self._send(status, payload, headers)

    def _fault(self, faults: list[str], route: str) -> bool:
        with self.srv._block:
            spec = faults.pop(0) if faults else None
        if spec is None:
            return False
        if spec == "hang":
            self.srv._stopping.wait(self.srv.hang_s)
            self.close_connection = True
            return True
        self._reply(int(spec), {"error": {"message": f"injected {spec}", "type": "injected"}}, route)
        return True

    def _not_found(self, what: str, route: str) -> None:
        self._reply(404, {"error": {"message": f"No such {what}", "type": "invalid_request_error"}}, route)

    def do_GET(self) -> None:
        srv, url = self.srv, urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        proj = srv.project(self.headers)
        if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            if self._fault(srv.content_faults, "content"):
                return
            f = srv.files.get(parts[2])
            if f is None or f["project"] != proj:
                return self._not_found("file", "content")
            return self._reply(200, None, "content", raw=f["data"])
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            if self._fault(srv.retrieve_faults, "retrieve"):
                return
            with srv._block:
                b = srv.batches.get(parts[2])
                if b is None or b["_project"] != proj:
                    b = None
                else:
                    srv._advance(b)
                    b = srv.public(b)
            return self._reply(200, b, "retrieve") if b else self._not_found("batch", "retrieve")
        if parts == ["v1", "_ledger"]:  # for a client in another process (bench/batch.py)
            return self._reply(200, {"n_429": srv.n_429, "paid": len(srv.paid), "paid_twice": len(srv.paid_twice()),
                                     "created": srv.created(), "chat": srv.count()}, "ledger")
        if parts == ["v1", "batches"]:
            q = parse_qs(url.query)
            limit, after = int(q.get("limit", ["20"])[0]), q.get("after", [None])[0]
            with srv._block:
                mine = [srv.public(b) for b in reversed(list(srv.batches.values())) if b["_project"] == proj]
            if after:
                ids = [b["id"] for b in mine]
                mine = mine[ids.index(after) + 1:] if after in ids else []
            page = mine[:limit]
            return self._reply(200, {"object": "list", "data": page, "has_more": len(mine) > limit,
                                     "first_id": page[0]["id"] if page else None,
                                     "last_id": page[-1]["id"] if page else None}, "list")
        super().do_GET()

    def do_POST(self) -> None:
        srv, path = self.srv, urlsplit(self.path).path.rstrip("/")
        if path == "/v1/chat/completions" and srv.rpm is not None:
            wait = srv.take_rate()
            if wait is not None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with srv._block:
                    srv.n_429 += 1
                return self._reply(429, {"error": {"message": "rate limited", "type": "requests"}}, "chat",
                                   headers={"Retry-After": f"{wait:.3f}"})
        if not path.startswith(("/v1/files", "/v1/batches")):
            return super().do_POST()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proj = srv.project(self.headers)
        parts = path.strip("/").split("/")
        if parts == ["v1", "files"]:
            return self._upload(raw, proj)
        if parts == ["v1", "batches"]:
            body = json.loads(raw or b"{}")
            with srv._block:
                f = srv.files.get(body.get("input_file_id", ""))
                if f is None or f["project"] != proj:
                    f = None
                else:
                    b = {"id": srv._id("batch"), "object": "batch", "endpoint": body["endpoint"],
                         "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                         "status": "validating", "created_at": int(time.time()), "metadata": body.get("metadata"),
                         "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_project": proj}
                    srv.batches[b["id"]] = b
            if f is None:
                return self._not_found("file", "batches")
            if srv.on_create is not None:
                srv.on_create(srv.public(b))
            return self._reply(200, srv.public(b), "batches")
        if len(parts) == 4 and parts[1] == "batches" and parts[3] == "cancel":
            with srv._block:
                b = srv.batches.get(parts[2])
                if b is not None and b["_project"] == proj:
                    if b["status"] not in FINAL:
                        b["status"] = "cancelling"
                    b = srv.public(b)
                else:
                    b = None
            return self._reply(200, b, "cancel") if b else self._not_found("batch", "cancel")
        self._not_found("route", path)

    def _upload(self, raw: bytes, proj: str) -> None:
        msg = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        fields = {p.get_param("name", header="content-disposition"): p for p in msg.get_payload()}
        filepart = fields["file"]
        data = filepart.get_payload(decode=True)
        with self.srv._block:
            fid = self.srv._id("file")
            self.srv.files[fid] = {"data": data, "project": proj, "purpose": fields["purpose"].get_payload(),
                                   "filename": filepart.get_filename()}
        if self._fault(self.srv.upload_faults, "files"):
            return
        self._reply(200, {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                          "filename": filepart.get_filename(), "purpose": "batch", "status": "processed"}, "files")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="the loopback server with Files and Batches (GET /v1/_ledger for counts)")
    ap.add_argument("--port", type=int, default=8031)
    ap.add_argument("--polls", type=int, default=3, help="retrieves until a batch finishes")
    ap.add_argument("--rpm", type=float, default=None, help="enforce this many chat requests per minute (429 beyond)")
    ap.add_argument("--burst", type=float, default=2.0)
    a = ap.parse_args()
    with BatchServer(port=a.port, polls_to_finish=a.polls, rpm=a.rpm, burst=a.burst) as srv:
        print(f"serving {srv.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
