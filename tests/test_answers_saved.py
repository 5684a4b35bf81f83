"""Answers saved as they arrive, the limits a user can set, and progress without a terminal.

Real parts: the loopback OpenAI-protocol server (tests/openai_server.py), a DuckDB corpus file,
the tiny random hf model. A store that counts its saves wraps the real corpus: it records, at
each save, how many requests the server had seen, which is what the bound is about.
"""

from __future__ import annotations

import io
import json

import pytest
from test_judge_helpers import PROMPTS, add_candidates, verdict

from backends import CachedBackend, ChatRequest, SamplingParams, backend_limits, load_backend
from backends.fake import FakeBackend
from corpus import Corpus, run_cli
from corpus.progress import progress
from generate.cli import main as generate_main
from judge import run_judge
from judge.cli import main as judge_main

openai_server = pytest.importorskip("openai_server")


def req(text: str, **params) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(max_new_tokens=4, **params))


class CountingStore:
    """The corpus, plus a log of (rows in the save, requests the server had seen at that moment)."""

    def __init__(self, corpus: Corpus, srv=None):
        self.corpus, self.srv, self.saves = corpus, srv, []

    def lookup_calls(self, keys):
        return self.corpus.lookup_calls(keys)

    def save_calls(self, rows):
        self.corpus.save_calls(rows)
        self.saves.append((len(rows), self.srv.count() if self.srv else None))

    def session(self):
        return self.corpus.session()


def test_openai_saves_each_answer_before_sending_the_next(corpus):
    """Concurrency 1: the k-th answer is in `calls` before request k+1 reaches the server."""
    from backends.openai_api import OpenAIBackend

    with openai_server.OpenAIServer() as srv:
        store = CountingStore(corpus, srv)
        cached = CachedBackend(OpenAIBackend("m", base_url=srv.base_url, concurrency=1), store)
        out = cached.generate([req(f"q{i}") for i in range(6)])
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(6)]
    assert store.saves == [(1, k) for k in range(1, 7)]
    assert corpus.query("SELECT count(*) AS n FROM calls")[0]["n"] == 6


def test_openai_never_has_more_unsaved_answers_than_its_concurrency(corpus):
    from backends.openai_api import OpenAIBackend

    with openai_server.OpenAIServer(latency_s=0.01) as srv:
        store = CountingStore(corpus, srv)
        seen = []
        cached = CachedBackend(OpenAIBackend("m", base_url=srv.base_url, concurrency=3), store)
        out = cached.generate([req(f"q{i}") for i in range(20)], on_results=lambda rs: seen.extend(i for i, _ in rs))
    assert all(c.ok for c in out) and sorted(seen) == list(range(20))  # each delivered once to the caller too
    saved = 0
    for rows, requests_seen in store.saves:
        assert rows <= 3
        assert requests_seen <= saved + 3  # seen but not yet saved: at most the requests in flight
        saved += rows
    assert saved == 20 and len(store.saves) > 1


def test_a_failed_save_fails_the_batch(corpus):
    """Nothing may look saved when it is not: the error reaches the caller."""
    from backends.openai_api import OpenAIBackend

    class Broken(CountingStore):
        def save_calls(self, rows):
            raise OSError("disk full")

    with openai_server.OpenAIServer() as srv:
        cached = CachedBackend(OpenAIBackend("m", base_url=srv.base_url, concurrency=2), Broken(corpus, srv))
        with pytest.raises(OSError, match="disk full"):
            cached.generate([req(f"q{i}") for i in range(5)])


def test_hf_saves_each_sub_batch(tiny_model_dir, corpus):
    store = CountingStore(corpus)
    hf = load_backend("hf", str(tiny_model_dir), batch_size=2, device="cpu")
    CachedBackend(hf, store).generate([req(f"question number {i}", temperature=0.0) for i in range(5)])
    assert [rows for rows, _ in store.saves] == [2, 2, 1]


def test_cache_hits_are_delivered_and_not_saved_again(corpus):
    store = CountingStore(corpus)
    fake = FakeBackend("f")
    CachedBackend(fake, store).generate([req("a"), req("b")])
    got = []
    out = CachedBackend(fake, store).generate([req("a"), req("c"), req("a")], on_results=got.extend)
    assert sorted(i for i, _ in got) == [0, 1, 2] and out[0].cached and out[2].cached
    assert [rows for rows, _ in store.saves] == [2, 1] and len(fake.history) == 3


def test_prompt_over_the_limit_is_a_permanent_failure_never_sent(corpus):
    from backends.openai_api import OpenAIBackend

    with openai_server.OpenAIServer() as srv:
        b = OpenAIBackend("m", base_url=srv.base_url)
        b.max_prompt_bytes = 100
        big, ok = CachedBackend(b, corpus).generate([req("é" * 60), req("fine")])
        assert srv.count() == 1 and ok.ok
    assert big.permanent and "prompt too large: 120 bytes, over the limit of 100" in big.error
    assert corpus.query("SELECT count(*) AS n FROM calls")[0]["n"] == 1  # the huge request is not stored


def test_generate_records_an_oversized_prompt_as_a_failure_and_stores_no_copy(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    huge = "word " * 300_000  # 1.5 MB, over the default 1 MB
    f.write_text(json.dumps({"prompt": huge}) + "\n" + json.dumps({"prompt": "small one"}) + "\n")
    db = tmp_path / "c.duckdb"
    with openai_server.OpenAIServer() as srv:
        argv = ["--prompts", str(f), "--db", str(db), "--n", "1", "--backend", "openai", "--model", "m",
                "--base-url", srv.base_url, "--max-new-tokens", "4", "--no-progress"]
        assert run_cli("generate", generate_main, argv) == 0
        assert srv.count() == 1
    assert "prompts too large" in capsys.readouterr().out
    c = Corpus(db)
    assert [r["text"] for r in c.query("SELECT text FROM prompts")] == ["small one"]
    (fail,) = c.query("SELECT stage, error FROM failures")
    assert fail["stage"] == "generate" and "1,500,000 bytes, over the limit of 1,000,000 (--max-prompt-bytes)" in fail["error"]
    assert len(json.dumps(c.query("SELECT * FROM failures"), default=str)) < 2000
    summary = json.loads(c.query("SELECT summary FROM runs")[0]["summary"])
    assert summary["prompts_too_large"] == 1 and summary["failures_permanent"] == 1
    c.close()


@pytest.mark.parametrize("flag, value, message", [
    ("--timeout", "0", "--timeout 0: must be more than 0 seconds"),
    ("--max-prompt-bytes", "-5", "--max-prompt-bytes -5: must be 0 (no limit) or more"),
])
def test_bad_limits_are_one_line_errors(tmp_path, capsys, flag, value, message):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    db = tmp_path / "c.duckdb"
    argv = ["--prompts", str(f), "--db", str(db), "--backend", "fake", flag, value]
    assert run_cli("generate", generate_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


def test_judge_limit_flags_are_checked(tmp_path, capsys, corpus):
    rc = run_cli("judge", judge_main, ["--rubric", str(PROMPTS / "helpfulness.yaml"), "--db", corpus.path,
                                       "--judge-timeout", "-1"])
    assert rc == 2 and "--judge-timeout -1: must be more than 0 seconds" in capsys.readouterr().err


def test_timeout_flag_reaches_the_openai_backend():
    import argparse

    from backends import add_backend_args, backend_from_args

    p = argparse.ArgumentParser()
    add_backend_args(p)
    args = p.parse_args(["--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                         "--timeout", "2.5", "--max-prompt-bytes", "0"])
    b = backend_from_args(args)
    assert b.timeout == 2.5 and b.max_prompt_bytes is None
    assert backend_limits(p.parse_args([])) == {"timeout": 60.0, "max_prompt_bytes": 1_000_000}


def test_timeout_flag_abandons_a_hung_request(tmp_path, capsys):
    """The first request hangs; with --timeout 0.5 the job retries it and finishes."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "stuck"}\n')
    db = tmp_path / "c.duckdb"
    with openai_server.OpenAIServer(faults={"stuck": ["hang"]}) as srv:
        argv = ["--prompts", str(f), "--db", str(db), "--n", "1", "--backend", "openai", "--model", "m",
                "--base-url", srv.base_url, "--timeout", "0.5", "--max-new-tokens", "4", "--no-progress"]
        assert run_cli("generate", generate_main, argv) == 0
        assert [r.fault for r in srv.seen("stuck")] == ["hang", None]
    capsys.readouterr()
    assert Corpus(db).query("SELECT response FROM generations")[0]["response"] == "echo: stuck"


def test_plain_progress_lines_without_a_terminal():
    out = io.StringIO()
    with progress("generate", 4, True, stream=out, every=0) as bar:
        bar.note("3.0 tok/s")
        for _ in range(4):
            bar.advance(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("generate: 1/4 (25%) ") and "/s, ETA " in lines[0] and lines[0].endswith(", 3.0 tok/s")
    assert lines[-1].startswith("generate: 4/4 (100%) in ")
    quiet = io.StringIO()
    with progress("generate", 4, False, stream=quiet, every=0) as bar:
        bar.advance(4)
    assert quiet.getvalue() == ""


def test_generate_and_judge_print_progress_lines_to_a_log(tmp_path, capsys, monkeypatch, corpus):
    monkeypatch.setenv("RLAIF_PROGRESS_SECONDS", "0")
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    db = tmp_path / "c.duckdb"
    assert run_cli("generate", generate_main, ["--prompts", str(f), "--db", str(db), "--n", "2", "--backend", "fake"]) == 0
    err = capsys.readouterr().err
    assert "generate: 1/4 (25%)" in err and "generate: 4/4 (100%) in " in err

    add_candidates(corpus, [("q", ["a", "b", "c"])])
    run_judge(corpus, str(PROMPTS / "helpfulness.yaml"), backend=FakeBackend("j", default=lambda r: verdict(3)))
    err = capsys.readouterr().err
    assert "judging helpfulness" in err and "3/3 (100%) in " in err


def test_judge_saves_each_call_as_it_arrives(corpus):
    """The judge's calls go through the same cache: with concurrency 1 each is saved before the next."""
    from backends.openai_api import OpenAIBackend

    add_candidates(corpus, [("q", ["a", "b", "c"])])
    with openai_server.OpenAIServer(reply=lambda body: verdict(4)) as srv:
        saves = []
        real = corpus.save_calls
        corpus.save_calls = lambda rows: (real(rows), saves.append((len(rows), srv.count())))  # type: ignore[method-assign]
        s = run_judge(corpus, str(PROMPTS / "helpfulness.yaml"), backend=OpenAIBackend("j", base_url=srv.base_url, concurrency=1),
                      progress=False)
    assert s["judged"] == 3 and saves == [(1, 1), (1, 2), (1, 3)]
