"""A real OpenAI-compatible HTTP server on loopback, with fault injection, for tests and benchmarks.

Usage (in a test, or in bench/generate.py):

    from openai_server import OpenAIServer, Fault          # tests/ on sys.path (pytest does this)
    # or: from tests.openai_server import OpenAIServer     # from the repository root

    with OpenAIServer(latency_s=0.05) as srv:              # binds a free port on 127.0.0.1
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")   # srv.base_url ends in /v1
        ...
        srv.requests          # every request seen, in arrival order (SeenRequest: prompt, body,
                              # headers, fault, and monotonic times arrived/replied/finished)
        srv.count("hello")    # how many requests carried the prompt "hello"
        srv.max_in_flight     # the most requests the server handled at the same time
        srv.answers_sent()    # the ledger: responses written whole (status 200 by default), e.g.
                              # to count answers a killed client was sent and never saved

Replies are deterministic: "echo: <last user message>", cut to `max_tokens` words (one word =
one token, so usage counts are exact); `stop` strings cut the text; `reply=` (a dict prompt ->
text, or a callable of the request body) scripts other replies. A `response_format` of type
json_object or json_schema gets a JSON object (filled from the schema's properties);
`logprobs`/`top_logprobs` get deterministic per-token logprobs; `first_logprobs=` (a callable of the
request body -> {token: logprob}) scripts a one-token reply's distribution instead.

Faults, per prompt (the last user message), exact: `faults={"p1": ["429:2", "500"]}` means the
first request for "p1" gets a 429 with `Retry-After: 2`, the second a 500, the third and later a
normal reply. `faults={"*": [...]}` applies to every prompt that has no entry of its own (each
prompt counts its own requests). Fault specs (strings, or `Fault` objects):

    "429" / "429:S"      rate limited, with `Retry-After: S` seconds (default 1)
    "429:date:S"         the same with Retry-After as an HTTP date S seconds ahead
    "500", "503"         server errors ("503:S" adds Retry-After)
    "400", "401", "404"  client errors (never worth retrying)
    "hang"               hold the connection without answering (until the server stops, or
                         `hang_s`), so the client's timeout fires
    "drop"               send half a response, then close the socket
    "garbage"            200 with a non-JSON body under Content-Type application/json
    "slow:S"             a normal reply, S seconds late (to make one request finish last)
    "empty"              200 with a JSON body that has no `choices`
    "filtered"           200 with the reply cut after its first word and finish_reason
                         "content_filter", as a provider's moderation does

`reject_json_schema=True` answers any `response_format` of type json_schema with a 500, as
llama.cpp's server does; `echo_auth=True` puts the Authorization header into error bodies (a
careless server that the client must not let leak the key). `reject_max_tokens=True` answers a
request carrying `max_tokens` with the 400 that OpenAI's reasoning models give ("use
'max_completion_tokens' instead"). `latency_s` delays every answer.

Standalone, for manual checks: `python tests/openai_server.py --port 8030 --latency 0.05`;
`--ledger FILE` appends one line per response written whole ("<status>\t<prompt>"), flushed as
it goes, so a client in another process can be checked against what it was sent.

For timings, run it in its own process: in-process, the server's threads and the client share
one GIL and the client's figures come out skewed (here: +16% "overhead" in-process that was
noise out of process). `with serve_in_subprocess(latency_s=0.05) as base_url: ...`
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

MODEL = "echo-model"


@dataclass(frozen=True)
class Fault:
    kind: str  # "429", "500", "503", "400", ..., "hang", "drop", "garbage", "empty"
    retry_after: float | None = None
    retry_after_date: bool = False

    @classmethod
    def parse(cls, spec: "str | Fault") -> "Fault":
        if isinstance(spec, Fault):
            return spec
        parts = str(spec).split(":")
        kind = parts[0]
        if kind not in ("hang", "drop", "garbage", "empty", "slow", "filtered") and not (kind.isdigit() and len(kind) == 3):
            raise ValueError(f"unknown fault {spec!r}")
        if len(parts) == 3 and parts[1] == "date":
            return cls(kind, float(parts[2]), True)
        if len(parts) == 2:
            return cls(kind, float(parts[1]))
        return cls(kind, 1.0 if kind == "429" else None)


@dataclass
class SeenRequest:
    """One request as the server saw it; times are `time.monotonic()` of this process."""

    prompt: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    fault: str | None
    arrived: float
    replied: float | None = None  # just before the first byte of the answer was written
    finished: float | None = None  # after the handler was done (answered, dropped or hung)


def _last_user(body: dict[str, Any]) -> str | None:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return None


def _from_schema(schema: dict[str, Any], text: str) -> Any:
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        return {k: _from_schema(v, text) for k, v in (schema.get("properties") or {}).items()}
    return {"string": text, "integer": 1, "number": 1.0, "boolean": True, "array": [], "null": None}.get(t, text)


@dataclass
class OpenAIServer:
    faults: dict[str, list["str | Fault"]] = field(default_factory=dict)
    latency_s: float = 0.0
    reply: "dict[str, str] | Callable[[dict[str, Any]], str] | None" = None
    reject_json_schema: bool = False
    reject_max_tokens: bool = False
    # scripted first-token distribution {token: logprob} of a request (a callable of its body):
    # the reply is the likeliest token, and logprobs/top_logprobs report these alternatives
    first_logprobs: "Callable[[dict[str, Any]], dict[str, float]] | None" = None
    echo_auth: bool = False
    hang_s: float = 300.0
    port: int = 0
    ledger_path: str | None = None

    def __post_init__(self) -> None:
        self.requests: list[SeenRequest] = []
        self.ledger: list[tuple[int, str | None]] = []  # (status, prompt) of each response written whole
        self._ledger_file = open(self.ledger_path, "a", encoding="utf-8") if self.ledger_path else None  # noqa: SIM115
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._per_prompt: dict[str, int] = {}
        self._stopping = threading.Event()
        self._plan = {k: [Fault.parse(f) for f in v] for k, v in self.faults.items()}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        server = self

        class Handler(self.handler_base()):  # type: ignore[misc]
            srv = server

        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        with self._lock:
            if self._ledger_file:
                self._ledger_file.close()
                self._ledger_file = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handler_base(self) -> type:
        """The request handler class; a subclass serving more endpoints returns its own."""
        return _Handler

    # -- what tests read ---------------------------------------------------------------------

    def count(self, prompt: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if prompt is None or r.prompt == prompt)

    def answers_sent(self, status: int | None = 200) -> int:
        """Responses written whole with this status (None: any status)."""
        with self._lock:
            return sum(1 for st, _ in self.ledger if status is None or st == status)

    def _sent(self, status: int, prompt: str | None) -> None:
        with self._lock:
            self.ledger.append((status, prompt))
            if self._ledger_file:
                self._ledger_file.write(f"{status}\t{json.dumps(prompt)}\n")
                self._ledger_file.flush()

    def seen(self, prompt: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.prompt == prompt]

    def set_faults(self, faults: dict[str, list["str | Fault"]]) -> None:
        """Replace the plan and restart the per-prompt counts (requests already seen are kept)."""
        with self._lock:
            self._plan = {k: [Fault.parse(f) for f in v] for k, v in faults.items()}
            self._per_prompt.clear()

    # -- what the handler calls --------------------------------------------------------------

    def _admit(self, body: dict[str, Any], headers: dict[str, str]) -> SeenRequest:
        prompt = _last_user(body)
        with self._lock:
            p = prompt or ""
            i = self._per_prompt.get(p, 0)
            self._per_prompt[p] = i + 1
            plan = self._plan.get(p, self._plan.get("*", []))
            fault = plan[i] if i < len(plan) else None
            seen = SeenRequest(prompt, body, headers, fault.kind if fault else None, time.monotonic())
            self.requests.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        seen._fault = fault  # type: ignore[attr-defined]
        return seen

    def _done(self, seen: SeenRequest) -> None:
        with self._lock:
            self.in_flight -= 1
            seen.finished = time.monotonic()

    def _reply_text(self, body: dict[str, Any], prompt: str) -> str:
        if callable(self.reply):
            return self.reply(body)
        if isinstance(self.reply, dict) and prompt in self.reply:
            return self.reply[prompt]
        return f"echo: {prompt}"

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _last_user(body) or ""
        rf = body.get("response_format") or {}
        text = self._reply_text(body, prompt)
        if rf.get("type") == "json_schema":
            text = json.dumps(_from_schema((rf.get("json_schema") or {}).get("schema") or {}, prompt))
        elif rf.get("type") == "json_object":
            text = json.dumps(_from_schema(rf["schema"], prompt) if "schema" in rf else {"echo": prompt})
        stops = body.get("stop") or []
        for s in [stops] if isinstance(stops, str) else stops:
            if s and s in text:
                text = text[: text.index(s)]
        words = text.split(" ")
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 10**9
        finish = "stop"
        if len(words) > limit:
            words, finish = words[:limit], "length"
        text = " ".join(words)
        alts = self.first_logprobs(body) if self.first_logprobs is not None else None
        if alts:
            text = max(alts, key=lambda t: alts[t])
            words = [text]
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if body.get("logprobs") and alts:
            ranked = sorted(alts.items(), key=lambda kv: -kv[1])[: int(body.get("top_logprobs") or 0)]
            choice["logprobs"] = {"content": [{
                "token": text, "logprob": alts[text], "bytes": list(text.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked],
            }]}
        elif body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": w, "logprob": -0.1 * (j + 1), "bytes": list(w.encode()),
                        "top_logprobs": [
                            {"token": w if a == 0 else f"alt{a}", "logprob": -0.1 * (j + 1) - a, "bytes": None}
                            for a in range(k)
                        ],
                    }
                    for j, w in enumerate(words)
                ]
            }
        n_prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        return {
            "id": f"chatcmpl-{abs(hash((prompt, time.monotonic()))):x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL),
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(words), "total_tokens": n_prompt + len(words)},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog of 5 drops SYNs when 16 clients connect at once, and each
    # dropped SYN costs the client a 1 s retransmit: fatal for a benchmark.
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    srv: OpenAIServer

    def log_message(self, *args: Any) -> None:  # quiet: tests read srv.requests instead
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        if getattr(self, "_seen", None) is not None:
            self._seen.replied = time.monotonic()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        seen = getattr(self, "_seen", None)
        if seen is not None:
            self.wfile.flush()
            self.srv._sent(status, seen.prompt)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        srv = self.srv
        seen = srv._admit(body, {k.lower(): v for k, v in self.headers.items()})
        self._seen = seen
        try:
            if srv.latency_s:
                srv._stopping.wait(srv.latency_s)
            self._answer(body, seen._fault)  # type: ignore[attr-defined]
        finally:
            srv._done(seen)
            self._seen = None

    def _answer(self, body: dict[str, Any], fault: Fault | None) -> None:
        srv = self.srv
        self._seen.replied = time.monotonic() if fault and fault.kind == "drop" else None
        rf = (body.get("response_format") or {}).get("type")
        if fault is None and srv.reject_json_schema and rf == "json_schema":
            fault = Fault("500")
        if fault is None and srv.reject_max_tokens and "max_tokens" in body:
            self._send(400, {"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                           "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
            return
        if fault is None:
            self._send(200, srv.completion(body))
            return
        kind = fault.kind
        if kind == "slow":
            srv._stopping.wait(fault.retry_after or 0)
            self._send(200, srv.completion(body))
            return
        if kind == "hang":
            srv._stopping.wait(srv.hang_s)
            self.close_connection = True
            return
        if kind == "drop":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"id\": \"chat")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if kind == "garbage":
            self._send(200, None, raw=b"<html>502 Bad Gateway</html> {not json")
            return
        if kind == "empty":
            self._send(200, {"id": "x", "object": "chat.completion"})
            return
        if kind == "filtered":
            reply = srv.completion(body)
            choice = reply["choices"][0]
            choice["message"]["content"] = choice["message"]["content"].split(" ")[0]
            choice["finish_reason"] = "content_filter"
            self._send(200, reply)
            return
        status = int(kind)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = (
                # rounded up: the date's whole seconds must not make the wait shorter than asked
                email.utils.formatdate(math.ceil(time.time() + fault.retry_after), usegmt=True)
                if fault.retry_after_date else f"{fault.retry_after:g}"
            )
        msg = f"injected {status}"
        if srv.echo_auth:
            msg += f" (credentials: {self.headers.get('Authorization')})"
        self._send(status, {"error": {"message": msg, "type": "injected", "code": status}}, headers)


@contextlib.contextmanager
def serve_in_subprocess(latency_s: float = 0.0, faults: dict[str, list[str]] | None = None,
                        ledger: str | None = None) -> Iterator[str]:
    """This server in a child process on a free port; yields its base URL, stops it after.
    `ledger`: a file that gets one line per response written (see the module docstring)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--ledger", str(ledger)] if ledger else []
    proc = subprocess.Popen(
        [sys.executable, __file__, "--port", str(port), "--latency", str(latency_s), "--faults", json.dumps(faults or {}), *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # "serving URL ..." once it listens
        if not line.startswith("serving"):
            raise RuntimeError(f"openai_server did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible echo server with fault injection")
    ap.add_argument("--port", type=int, default=8030)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument("--faults", default="{}", help='JSON, e.g. \'{"*": ["429:1", "500"]}\'')
    ap.add_argument("--ledger", default=None, help="append '<status>\\t<prompt>' per response written to this file")
    a = ap.parse_args()
    with OpenAIServer(faults=json.loads(a.faults), latency_s=a.latency, port=a.port, ledger_path=a.ledger) as srv:
        print(f"serving {srv.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
