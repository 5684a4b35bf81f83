"""Batch mode of the openai backend against a loopback server that implements the Files and
Batches endpoints (tests/openai_batch_server.py), with its faults: nothing lost, nothing paid twice."""

from __future__ import annotations

import pytest

from backends import CachedBackend, ChatRequest, SamplingParams
from backends.batch import BatchOptions
from backends.openai_api import OpenAIBackend
from corpus import Corpus, Prompt
from generate import run_generate

batch_server = pytest.importorskip("openai_batch_server")

FAST = dict(poll_s=0.02)


def req(text: str, max_new_tokens: int = 8) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(temperature=0, max_new_tokens=max_new_tokens))


def backend(srv, **opts) -> OpenAIBackend:
    b = BatchOptions(**{**FAST, **{k: v for k, v in opts.items() if k in BatchOptions.__dataclass_fields__}})
    rest = {k: v for k, v in opts.items() if k not in BatchOptions.__dataclass_fields__}
    return OpenAIBackend("m", base_url=srv.base_url, timeout=5, backoff_s=0.01, batch=b, **rest)


def send(corpus: Corpus, srv, texts: list[str], **opts):
    cached = CachedBackend(backend(srv, **opts), corpus, "run-test")
    return cached, cached.generate([req(t) for t in texts])


def test_answers_land_in_calls_and_the_batch_is_recorded(corpus):
    with batch_server.BatchServer(polls_to_finish=3) as srv:
        _, comps = send(corpus, srv, ["a", "b", "c"])
        assert [c.text for c in comps] == ["echo: a", "echo: b", "echo: c"]
        assert srv.created() == 1 and sorted(srv.paid) == sorted(set(srv.paid))
        # a rerun asks nothing: every answer is a cache hit
        cached, again = send(corpus, srv, ["a", "b", "c"])
        assert cached.hits == 3 and srv.created() == 1
    rows = corpus.query("SELECT status, collected, n_requests, n_ok, provider_id FROM batches")
    assert rows == [{"status": "completed", "collected": True, "n_requests": 3, "n_ok": 3, "provider_id": "batch-00002"}]
    assert corpus.query("SELECT count(*) AS n FROM batch_requests")[0]["n"] == 3
    assert corpus.query("SELECT count(*) AS n FROM calls WHERE status = 'ok'")[0]["n"] == 3


def test_failed_lines_alone_are_resubmitted_and_4xx_are_permanent(corpus):
    with batch_server.BatchServer(polls_to_finish=2, line_status={"flaky": 500, "bad": 400}) as srv:
        # the 500 line fails in every batch: it is resent `rounds` times, alone, then given up
        _, comps = send(corpus, srv, ["ok1", "flaky", "bad", "ok2"], rounds=2)
        by = dict(zip(["ok1", "flaky", "bad", "ok2"], comps))
        assert by["ok1"].ok and by["ok2"].ok
        assert by["bad"].permanent and "400" in by["bad"].error
        assert not by["flaky"].ok and not by["flaky"].permanent and "gave up" in by["flaky"].error
        sizes = [len(srv.files[b["input_file_id"]]["data"].splitlines()) for b in srv.batches.values()]
        assert sizes == [4, 1, 1]  # only the failed line went into the later batches
        assert len(srv.paid) == 2 and srv.paid_twice() == []  # ok1 and ok2, once each
    status = {r["status"] for r in corpus.query("SELECT status FROM calls")}
    assert status == {"ok", "failed", "failed_permanent"}


def test_expired_half_done_keeps_the_done_half_and_resends_the_rest(corpus):
    texts = [f"q{i}" for i in range(6)]
    with batch_server.BatchServer(polls_to_finish=2, expire_after=3) as srv:
        _, comps = send(corpus, srv, texts, rounds=0)
        assert [c.ok for c in comps].count(True) == 3
        srv.expire_after = None
        _, comps = send(corpus, srv, texts)
        assert all(c.ok for c in comps)
        batches = list(srv.batches.values())
        assert [len(srv.files[b["input_file_id"]]["data"].splitlines()) for b in batches] == [6, 3]
        assert srv.paid_twice() == []


def test_retrieve_500s_and_an_upload_timeout_are_retried_without_a_second_batch(corpus):
    with batch_server.BatchServer(polls_to_finish=2, retrieve_faults=["500", "500", "503"], upload_faults=["hang"],
                                  content_faults=["500"], hang_s=30) as srv:
        b = OpenAIBackend("m", base_url=srv.base_url, timeout=0.5, batch=BatchOptions(poll_s=0.02))
        comps = CachedBackend(b, corpus, "r").generate([req("x"), req("y")])
        assert [c.text for c in comps] == ["echo: x", "echo: y"]
        assert srv.created() == 1 and len(srv.files) >= 3  # the timed-out upload left an orphan file, never a batch
        assert srv.paid_twice() == []


def test_split_over_the_request_and_byte_limits(corpus):
    texts = [f"prompt number {i}" for i in range(7)]
    with batch_server.BatchServer(polls_to_finish=1) as srv:
        _, comps = send(corpus, srv, texts, max_requests=3)
        assert all(c.ok for c in comps) and srv.created() == 3
    with batch_server.BatchServer(polls_to_finish=1) as srv:
        _, comps = send(corpus, srv, [t + "!" for t in texts], max_bytes=600)
        sizes = [len(srv.files[b["input_file_id"]]["data"]) for b in srv.batches.values()]
        assert all(c.ok for c in comps) and len(sizes) > 1 and max(sizes) <= 600


def test_no_wait_submits_then_a_later_call_collects_without_resubmitting(corpus):
    with batch_server.BatchServer(polls_to_finish=2) as srv:  # the first run's poll is the first
        _, comps = send(corpus, srv, ["a", "b"], wait=False)
        assert all(c.pending for c in comps) and "rerun to collect" in comps[0].error
        assert corpus.query("SELECT count(*) AS n FROM calls")[0]["n"] == 0  # nothing pending is cached
        _, comps = send(corpus, srv, ["a", "b"], wait=False)
        assert all(c.ok for c in comps)  # second poll: finished, collected
        assert srv.created() == 1 and srv.paid_twice() == []


def test_a_batch_created_but_never_recorded_is_adopted_by_its_tag(corpus):
    """The window between `batches.create` and recording its id: the client dies there."""
    import openai

    class Killed(BaseException):
        pass

    with batch_server.BatchServer(polls_to_finish=2) as srv:
        cached = CachedBackend(backend(srv), corpus, "r1")
        # the create call dies after the server created the batch (tests/test_batch_kills.py
        # does it with a real SIGKILL)

        real_create = openai.resources.batches.Batches.create

        def create_then_die(self, **kw):
            real_create(self, **kw)
            raise Killed()

        openai.resources.batches.Batches.create = create_then_die
        try:
            with pytest.raises(Killed):
                cached.generate([req("a"), req("b")])
        finally:
            openai.resources.batches.Batches.create = real_create
        assert srv.created() == 1
        row = corpus.query("SELECT provider_id, status FROM batches")[0]
        assert row == {"provider_id": None, "status": "uploaded"}
        _, comps = send(corpus, srv, ["a", "b"])
        assert [c.text for c in comps] == ["echo: a", "echo: b"]
        assert srv.created() == 1 and srv.paid_twice() == []


def test_another_key_of_the_project_reattaches_and_no_key_is_stored(corpus, monkeypatch):
    monkeypatch.setenv("KEY_ONE", "sk-one-SECRET")
    monkeypatch.setenv("KEY_TWO", "sk-two-SECRET")
    monkeypatch.setenv("KEY_OTHER", "sk-other-SECRET")
    projects = {"sk-one-SECRET": "p1", "sk-two-SECRET": "p1", "sk-other-SECRET": "p2"}
    with batch_server.BatchServer(polls_to_finish=3, projects=projects) as srv:
        _, comps = send(corpus, srv, ["a"], wait=False, api_key_env="KEY_ONE")
        assert comps[0].pending
        with pytest.raises(Exception, match="not visible with the key in \\$KEY_OTHER"):
            send(corpus, srv, ["a"], wait=False, api_key_env="KEY_OTHER")
        _, comps = send(corpus, srv, ["a"], api_key_env="KEY_TWO")
        assert comps[0].text == "echo: a" and srv.created() == 1
    raw = open(corpus.path, "rb").read()
    assert b"SECRET" not in raw


def test_generate_in_batch_mode_stores_candidates(corpus):
    prompts = [Prompt(messages=[{"role": "user", "content": f"t{i}"}]) for i in range(4)]
    with batch_server.BatchServer(polls_to_finish=2) as srv:
        s = run_generate(corpus, prompts=prompts, backend=backend(srv), n=2,
                         params=SamplingParams(temperature=0, max_new_tokens=8), progress=False, chunk_size=10**9)
        assert s["candidates_new"] == 8 and srv.created() == 1


def test_max_cost_submits_only_the_batches_that_fit_and_prices_them_at_the_discount(corpus):
    from backends.pricing import Price
    from corpus.batches import cost_rows

    price = Price(input=1e6, output=1e6, batch_discount=0.5)  # a dollar a token, half in batches
    with batch_server.BatchServer(polls_to_finish=1) as srv:
        # worst case per request: 1 prompt token + 8 at the cap = $4.50 at the batch price
        b = backend(srv, max_requests=2, price=price, max_cost=10)
        comps = CachedBackend(b, corpus, "r").generate([req(f"m{i}") for i in range(4)])
        assert [c.ok for c in comps] == [True, True, False, False] and all(c.pending for c in comps[2:])
        assert "--max-cost $10 reached" in comps[2].error and b.budget.stopped and srv.created() == 1
        assert b.budget.reserved == 0  # the collected batch's worst case was given back
    [row] = cost_rows(corpus, {"m": {"input": 1e6, "output": 1e6, "batch_discount": 0.5}})
    # 2 calls, 1 token in and 2 out each, at half price
    assert row[2:] == ("m", "batch", 2, 2, 4, "3.0000")


def test_killed_before_the_upload_was_recorded_sends_afresh_once(corpus, monkeypatch):
    import openai

    class Killed(BaseException):
        pass

    real_upload = openai.resources.files.Files.create

    def upload_then_die(self, **kw):
        real_upload(self, **kw)
        raise Killed()  # the file is on the server; its id never reached the corpus

    with batch_server.BatchServer(polls_to_finish=1) as srv:
        monkeypatch.setattr(openai.resources.files.Files, "create", upload_then_die)
        with pytest.raises(Killed):
            send(corpus, srv, ["a", "b"])
        monkeypatch.setattr(openai.resources.files.Files, "create", real_upload)
        _, comps = send(corpus, srv, ["a", "b"])
        assert all(c.ok for c in comps) and srv.created() == 1 and srv.paid_twice() == []
    rows = corpus.query("SELECT status, collected FROM batches ORDER BY created_at")
    assert [(r["status"], r["collected"]) for r in rows] == [("abandoned", True), ("completed", True)]
