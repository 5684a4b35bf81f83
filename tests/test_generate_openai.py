"""`generate` through the openai backend against a real HTTP server on loopback
(tests/openai_server.py) that injects faults: every request ends as a candidate or a recorded
failure, a rerun retries only the transient ones, and the API key never reaches the corpus."""

from __future__ import annotations

import pytest

from backends import SamplingParams
from corpus import Corpus, Prompt, run_cli
from generate import run_generate
from generate.cli import main

openai_server = pytest.importorskip("openai_server")


def prompt(text: str) -> Prompt:
    return Prompt(messages=[{"role": "user", "content": text}])


def test_faults_become_failures_and_rerun_retries_only_transient(corpus):
    from backends.openai_api import OpenAIBackend

    prompts = [prompt("p-ok"), prompt("p-flaky"), prompt("p-bad")]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    with openai_server.OpenAIServer(faults={"p-flaky": ["500", "503"], "p-bad": ["400"]}) as srv:
        backend = OpenAIBackend("served-model", base_url=srv.base_url, max_retries=1, backoff_s=0.01, timeout=10)
        s1 = run_generate(corpus, prompts=prompts, backend=backend, n=1, params=params, progress=False)
        assert (s1["candidates_new"], s1["failures"], s1["failures_permanent"]) == (1, 2, 1)
        assert srv.count("p-flaky") == 2 and srv.count("p-bad") == 1
        errors = {r["error"] for r in corpus.query("SELECT error FROM failures")}
        assert len(errors) == 2 and any("400" in e for e in errors) and any("503" in e for e in errors)

        s2 = run_generate(corpus, prompts=prompts, backend=backend, n=1, params=params, progress=False)
        assert (s2["candidates_new"], s2["candidates_existing"], s2["failures"], s2["failures_permanent"]) == (1, 1, 1, 1)
        assert srv.count("p-flaky") == 3 and srv.count("p-bad") == 1  # the 400 was not sent again
    rows = corpus.query("SELECT p.text, g.response, g.model, g.backend FROM generations g JOIN prompts p ON p.id = g.prompt_id ORDER BY p.text")
    assert [(r["text"], r["response"]) for r in rows] == [("p-flaky", "echo: p-flaky"), ("p-ok", "echo: p-ok")]
    assert {(r["backend"], r["model"]) for r in rows} == {("openai", "served-model")}


def test_cli_against_loopback_server_never_stores_the_key(tmp_path, monkeypatch, capsys):
    secret = "sk-test-DO-NOT-STORE-123"
    monkeypatch.setenv("GEN_TEST_KEY", secret)
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello there"}\n{"prompt": "second one"}\n')
    db = tmp_path / "c.duckdb"
    with openai_server.OpenAIServer() as srv:
        rc = run_cli("generate", main, ["--prompts", str(f), "--db", str(db), "--n", "3", "--backend", "openai",
                                        "--model", "m", "--base-url", srv.base_url, "--api-key-env", "GEN_TEST_KEY",
                                        "--max-new-tokens", "5", "--no-progress"])
        assert rc == 0
        assert srv.count("hello there") == 3  # three samples, three distinct seeds, three requests
        assert all(r.headers.get("authorization", r.headers.get("Authorization")) == f"Bearer {secret}" for r in srv.requests)
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM generations")[0]["n"] == 6
    for table in ("runs", "calls", "generations", "prompts", "failures"):
        dump = str(c.query(f"SELECT * FROM {table}"))
        assert secret not in dump, table
    capsys.readouterr()
