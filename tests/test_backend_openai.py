"""The `openai` backend against a real HTTP server on loopback (tests/openai_server.py) that
speaks the chat-completions protocol and injects faults per prompt, so every count is exact.
Timing claims are checked with the server's own arrival timestamps, never with a wall clock."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from pathlib import Path

import pytest
from openai_server import OpenAIServer

from backends import BackendError, CachedBackend, ChatRequest, SamplingParams, load_backend
from backends.openai_api import OpenAIBackend, parse_retry_after

SECRET = "sk-test-Zq8xS3cr3tK3y"


@pytest.fixture
def server():
    """Start servers on free ports; stop them (and any hanging handler) after the test."""
    started: list[OpenAIServer] = []

    def make(**kw) -> OpenAIServer:
        kw.setdefault("hang_s", 5.0)
        srv = OpenAIServer(**kw).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def backend(srv: OpenAIServer, **kw) -> OpenAIBackend:
    # Tiny backoff: the tests count retries, they do not wait for them.
    kw.setdefault("backoff_s", 0.005)
    kw.setdefault("timeout", 5.0)
    return OpenAIBackend("echo-model", base_url=srv.base_url, **kw)


def req(prompt: str, **kw) -> ChatRequest:
    params = kw.pop("params", SamplingParams(max_new_tokens=16, temperature=0.0))
    return ChatRequest(messages=[{"role": "user", "content": prompt}], params=params, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- replies ---------------------------------------------------------------------------------


def test_reply_usage_finish_reason_and_sampling_params_are_mapped(server):
    srv = server()
    params = SamplingParams(temperature=0.3, top_p=0.9, max_new_tokens=3, seed=7, stop=("STOP",))
    long, short = backend(srv).generate([req("one two three four", params=params), req("hi STOP there", params=params)])
    assert (long.text, long.finish_reason, long.completion_tokens, long.prompt_tokens) == ("echo: one two", "length", 3, 4)
    assert (short.text, short.finish_reason) == ("echo: hi ", "stop")
    sent = srv.requests[0].body
    assert {k: sent[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 3, "seed": 7, "stop": ["STOP"]
    }
    assert "logprobs" not in sent and "response_format" not in sent


def test_order_is_preserved_when_early_requests_finish_last(server):
    prompts = [f"p{i}" for i in range(12)]
    srv = server(faults={"p0": ["slow:0.3"], "p1": ["500", "drop"]})
    ticks: list[int] = []
    out = backend(srv).generate([req(p) for p in prompts], progress=ticks.append)
    assert [c.text for c in out] == [f"echo: {p}" for p in prompts]
    assert ticks == [1] * len(prompts)  # one tick per finished request, retries not counted
    # p0 really was answered after the last prompt
    assert srv.seen("p0")[-1].finished > srv.seen("p11")[-1].finished


def test_top_logprobs_become_token_logprobs(server):
    srv = server()
    (c,) = backend(srv).generate([req("a b", top_logprobs=2)])
    assert srv.requests[0].body["logprobs"] is True and srv.requests[0].body["top_logprobs"] == 2
    assert [t.token for t in c.logprobs] == ["echo:", "a", "b"]
    assert c.logprobs[1].logprob == pytest.approx(-0.2)
    assert c.logprobs[1].top == pytest.approx({"a": -0.2, "alt1": -1.2})


def test_json_schema_is_sent_as_response_format(server):
    srv = server()
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    (c,) = backend(srv).generate([req("rate it", json_schema=schema)])
    rf = srv.requests[0].body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema
    assert json.loads(c.text) == {"score": 1}


def test_json_schema_falls_back_to_json_object_when_the_server_rejects_it(server):
    """llama.cpp's server answers json_schema with a 500; we retry once as json_object and
    keep json_object for the rest of the run instead of paying a failed call each time."""
    srv = server(reject_json_schema=True)
    b = backend(srv, concurrency=1)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    out = b.generate([req("first", json_schema=schema), req("second", json_schema=schema)])
    assert [json.loads(c.text) for c in out] == [{"ok": True}, {"ok": True}]
    kinds = [(r.prompt, r.body["response_format"]["type"]) for r in srv.requests]
    assert kinds == [("first", "json_schema"), ("first", "json_object"), ("second", "json_object")]
    assert b.json_mode == "json_object"


def test_max_tokens_becomes_max_completion_tokens_when_the_server_refuses_it(server):
    """OpenAI's reasoning models answer max_tokens with a 400 naming max_completion_tokens; the
    request is sent again with that name, which is then kept for the rest of the run."""
    srv = server(reject_max_tokens=True)
    b = backend(srv, concurrency=1)
    out = b.generate([req("one two three", params=SamplingParams(max_new_tokens=2, temperature=0.0)), req("again")])
    assert [c.ok for c in out] == [True, True] and out[0].finish_reason == "length"
    sent = [(r.prompt, "max_tokens" in r.body, r.body.get("max_completion_tokens")) for r in srv.requests]
    assert sent == [("one two three", True, None), ("one two three", False, 2), ("again", False, 16)]
    assert b.max_tokens_key == "max_completion_tokens"


def test_an_unrelated_400_is_not_retried_under_another_parameter_name(server):
    srv = server(faults={"x": ["400"]})
    (c,) = backend(srv).generate([req("x")])
    assert not c.ok and c.permanent and len(srv.requests) == 1


def test_content_filter_is_reported_as_such_not_as_a_normal_stop(server):
    srv = server(faults={"x y z": ["filtered"]})
    (c,) = backend(srv).generate([req("x y z")])
    assert c.ok and c.finish_reason == "content_filter" and c.text == "echo:"


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429:0", "500", "502", "503", "hang", "drop", "garbage", "empty"])
def test_each_transient_fault_is_retried_into_a_completion(server, fault):
    srv = server(faults={"x": [fault]})
    (c,) = backend(srv, timeout=0.5).generate([req("x")])
    assert c.ok and c.text == "echo: x"
    assert [r.fault for r in srv.seen("x")] == [fault.split(":")[0], None]


@pytest.mark.parametrize("fault", ["500", "hang", "drop", "garbage", "429:0"])
def test_a_request_failing_every_retry_is_a_recorded_failure_with_its_reason(server, fault):
    srv = server(faults={"x": [fault] * 5})
    ok, failed = backend(srv, timeout=0.5, max_retries=2).generate([req("fine"), req("x")])
    assert ok.ok
    assert failed.finish_reason == "error" and not failed.permanent
    assert "gave up after 3 attempts" in failed.error
    expected = {"500": "HTTP 500", "hang": "timeout", "drop": "connection failed", "garbage": "not JSON", "429:0": "HTTP 429"}
    assert expected[fault] in failed.error
    assert srv.count("x") == 3


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_other_4xx_are_not_retried_and_are_permanent(server, status):
    srv = server(faults={"bad": [status] * 3})
    (c,) = backend(srv).generate([req("bad")])
    assert srv.count("bad") == 1
    assert c.permanent and c.finish_reason == "error" and c.error.startswith(f"HTTP {status}:")


@pytest.mark.parametrize("retry_after", ["429:0.6", "503:0.6", "429:date:1"])
def test_retry_after_is_honoured(server, retry_after):
    """The gap is measured by the server: from the moment it started writing its 429/503 to
    the retry's arrival (the client cannot have read the header any earlier)."""
    srv = server(faults={"x": [retry_after]})
    (c,) = backend(srv, backoff_s=0.001).generate([req("x")])
    assert c.ok
    first, second = srv.seen("x")
    # The date form is computed from wall-clock time a few microseconds before `replied`.
    least = 0.9 if ":date:" in retry_after else 0.6
    assert second.arrived - first.replied >= least


def test_an_absurd_retry_after_is_capped(server):
    srv = server(faults={"x": ["429:3600"]})
    (c,) = backend(srv, max_retry_after_s=0.2).generate([req("x")])
    first, second = srv.seen("x")
    assert c.ok and second.arrived - first.replied >= 0.2


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_concurrency_limit_is_respected_server_side(server):
    srv = server(latency_s=0.1)
    out = backend(srv, concurrency=3).generate([req(f"q{i}") for i in range(12)])
    assert all(c.ok for c in out)
    assert srv.max_in_flight <= 3
    wide = server(latency_s=0.5)
    backend(wide, concurrency=16).generate([req(f"q{i}") for i in range(12)])
    assert wide.max_in_flight > 3  # the limit, not the server, is what held the first run to 3


# -- the endpoint as a whole -----------------------------------------------------------------


def test_unreachable_endpoint_is_one_backend_error_naming_url_and_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError) as e:
        OpenAIBackend("m", base_url=url).generate([req(f"q{i}") for i in range(5)])
    msg = str(e.value)
    assert url in msg and "start the server or fix --base-url" in msg and "\n" not in msg


def test_endpoint_that_never_accepts_is_a_backend_error_after_the_connect_timeout():
    """A listener whose accept queue is full (a firewalled or wedged host): connects time out."""
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        filler.connect(lst.getsockname())  # takes the only slot; nobody ever accepts
        url = f"http://127.0.0.1:{lst.getsockname()[1]}/v1"
        with pytest.raises(BackendError, match=r"\(no connection within 0.3 s\): start the server or fix --base-url"):
            OpenAIBackend("m", base_url=url, timeout=0.3).generate([req("q")])


def test_password_in_base_url_is_not_shown():
    url = f"http://user:hunter2pw@127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError) as e:
        OpenAIBackend("m", base_url=url).generate([req("q")])
    assert "hunter2pw" not in str(e.value) and "127.0.0.1" in str(e.value)


def test_server_going_away_after_answering_is_per_request_failure_not_backend_error(server):
    srv = server()
    b = backend(srv, max_retries=1)
    assert b.generate([req("before")])[0].ok
    srv.stop()
    (c,) = b.generate([req("after")])
    assert c.finish_reason == "error" and "connection failed" in c.error and not c.permanent


def test_generate_works_from_a_thread_and_inside_a_running_event_loop(server):
    srv = server()
    b = backend(srv)
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(b.generate([req("from thread")])[0].text))
    t.start()
    t.join()

    async def caller() -> str:
        return b.generate([req("from loop")])[0].text

    assert got == ["echo: from thread"]
    assert asyncio.run(caller()) == "echo: from loop"


def test_bad_options_are_backend_errors():
    for kw in ({"concurrency": 0}, {"timeout": 0}, {"max_retries": -1}):
        with pytest.raises(BackendError):
            OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", **kw)
    with pytest.raises(BackendError, match="--model is required"):
        load_backend("openai", None)


# -- the API key -----------------------------------------------------------------------------


def test_api_key_is_sent_but_never_leaks(server, corpus, monkeypatch, caplog):
    """The server echoes the Authorization header into its error bodies: a careless proxy."""
    monkeypatch.setenv("MY_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    srv = server(echo_auth=True, faults={"bad": ["400"], "flaky": ["500"] * 9, "ok": ["429:0"]})
    b = backend(srv, api_key_env="MY_KEY", max_retries=1)
    cached = CachedBackend(b, corpus)
    out = cached.generate([req("bad"), req("flaky"), req("ok")])
    assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was really used
    assert "credentials: Bearer ***" in out[0].error
    assert SECRET not in repr(b) and SECRET not in caplog.text
    assert all(SECRET not in c.model_dump_json() for c in out)
    rows = corpus.query("SELECT * FROM calls")
    assert len(rows) == 3 and SECRET not in json.dumps(rows, default=str)
    path = corpus.path
    corpus.close()
    assert SECRET.encode() not in Path(path).read_bytes()


def test_openai_proper_without_a_key_says_which_variable_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(BackendError, match="set the environment variable MY_KEY"):
        OpenAIBackend("gpt-4o-mini", api_key_env="MY_KEY")


def test_api_key_never_in_unreachable_error(monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    with pytest.raises(BackendError) as e:
        OpenAIBackend("m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env="MY_KEY").generate([req("q")])
    assert SECRET not in str(e.value)


# -- with the call cache over a real corpus --------------------------------------------------


def test_cache_never_sends_an_identical_request_twice(server, corpus):
    srv = server()
    cached = CachedBackend(backend(srv), corpus)
    first = cached.generate([req("a"), req("b"), req("a")])
    assert srv.count("a") == 1 and srv.count("b") == 1
    again = CachedBackend(backend(srv), corpus).generate([req("a"), req("b")])
    assert srv.count() == 2
    assert [c.text for c in again] == [first[0].text, first[1].text] and all(c.cached for c in again)
    # a different sampling seed is a different request
    CachedBackend(backend(srv), corpus).generate([req("a", params=SamplingParams(seed=1))])
    assert srv.count("a") == 2


def test_cache_resends_transient_failures_but_not_permanent_ones(server, corpus):
    srv = server(faults={"flaky": ["503"] * 2, "bad": ["400"] * 9})
    out = CachedBackend(backend(srv, max_retries=1), corpus).generate([req("flaky"), req("bad")])
    assert not out[0].ok and not out[0].permanent and out[1].permanent
    assert (srv.count("flaky"), srv.count("bad")) == (2, 1)
    again = CachedBackend(backend(srv, max_retries=1), corpus).generate([req("flaky"), req("bad")])
    assert again[0].ok and again[0].text == "echo: flaky"
    assert again[1].cached and again[1].permanent
    assert (srv.count("flaky"), srv.count("bad")) == (3, 1)
    assert sorted(r["status"] for r in corpus.query("SELECT status FROM calls")) == ["failed_permanent", "ok"]


def test_server_in_its_own_process_for_benchmarks():
    from openai_server import serve_in_subprocess

    with serve_in_subprocess(faults={"x": ["500"]}) as url:
        (c,) = OpenAIBackend("echo-model", base_url=url, backoff_s=0.005).generate([req("x")])
        assert c.text == "echo: x"
    with pytest.raises(BackendError):  # stopped with the block
        OpenAIBackend("echo-model", base_url=url).generate([req("x")])
