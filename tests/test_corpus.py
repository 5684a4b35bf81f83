"""The corpus on a real DuckDB file: migrations, content ids, bulk idempotent writes, runs,
the call cache, lock retry with a second real process, and the `python -m corpus` CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from corpus import Call, Corpus, Generation, Prompt, UserError, content_id
from corpus.store import scrub_argv

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _prompt(text: str) -> Prompt:
    return Prompt(messages=[{"role": "user", "content": text}], source="test")


def _gens(p: Prompt, n: int, model: str = "m") -> list[Generation]:
    return [
        Generation(prompt_id=p.id, backend="fake", model=model, params={"temperature": 0.7}, sample_idx=i, response=f"r{i}")
        for i in range(n)
    ]


def test_migrations_are_recorded_once(tmp_path):
    path = tmp_path / "c.duckdb"
    Corpus(path).close()
    again = Corpus(path)
    names = [r["name"] for r in again.query("SELECT name FROM schema_migrations ORDER BY name")]
    assert names[0] == "m001_core"
    assert len(names) == len(set(names))
    with again.connect() as con:
        assert Corpus.migrate(con) == []  # nothing left to apply


def test_content_ids_are_stable_and_key_order_free():
    a = content_id("prompt", {"x": 1, "y": [1, 2]})
    b = content_id("prompt", {"y": [1, 2], "x": 1})
    assert a == b and len(a) == 32
    assert content_id("flag", {"x": 1, "y": [1, 2]}) != a
    assert _prompt("hi").id == _prompt("hi").id != _prompt("hi!").id


def test_insert_is_bulk_and_idempotent(corpus):
    p = _prompt("What is DuckDB?")
    assert corpus.insert([p]) == 1
    assert corpus.insert([p, p]) == 0
    gens = _gens(p, 500)
    assert corpus.insert(gens) == 500
    assert corpus.insert(gens + _gens(p, 501)[-1:]) == 1
    rows = corpus.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM generations")[0]
    assert rows == {"n": 501, "d": 501}


def test_transaction_failure_leaves_corpus_unchanged(corpus):
    p = _prompt("kept")
    corpus.insert([p])
    with pytest.raises(RuntimeError):
        with corpus.transaction() as con:
            con.execute("DELETE FROM prompts")
            raise RuntimeError("boom")
    assert corpus.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 1


def test_a_session_closed_by_one_thread_does_not_break_anothers_transaction(corpus):
    """The call cache holds a session open in one thread and an idle timer closes it from another;
    a batch poll in a third thread wrote through that same connection and lost it mid-transaction
    ("Connection already closed"). Each thread now gets its own connection while one is held."""
    import threading

    held, in_tx, closed = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder():
        with corpus.session():
            held.set()
            in_tx.wait(30)
        closed.set()  # the session's connection is closed here, in this thread

    def writer():
        try:
            held.wait(30)
            with corpus.transaction() as con:
                con.execute("INSERT INTO prompts (id, messages, text) VALUES ('a', '[]', 'a')")
                in_tx.set()
                closed.wait(30)
                con.execute("INSERT INTO prompts (id, messages, text) VALUES ('b', '[]', 'b')")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=holder), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [r["id"] for r in corpus.query("SELECT id FROM prompts ORDER BY id")] == ["a", "b"]


def test_run_records_status_and_scrubs_secrets(corpus):
    with corpus.run("generate", {"n": 2}, argv=["--api-key", "sk-secret", "--token=abc", "--n", "2"]) as run:
        run.summary["candidates"] = 2
    with pytest.raises(ValueError):
        with corpus.run("judge", {}, argv=[]):
            raise ValueError("bad")
    rows = {r["command"]: r for r in corpus.query("SELECT command, status, argv, summary FROM runs")}
    assert rows["generate"]["status"] == "ok" and '"candidates":2' in rows["generate"]["summary"]
    assert rows["judge"]["status"] == "failed"
    assert "sk-secret" not in rows["generate"]["argv"] and "abc" not in rows["generate"]["argv"]
    assert scrub_argv(["--api-key=x", "a"]) == ["--api-key=***", "a"]


def test_a_dead_processes_running_run_is_marked_killed_by_the_next_run(corpus):
    from corpus import Run

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a real pid that no longer exists (reaped)
    corpus.insert([
        Run(command="generate", pid=dead.pid),                       # this host, process gone
        Run(command="judge"),                                        # this host, this (live) process
        Run(command="filters", host="another-machine", pid=dead.pid),  # cannot be checked from here
    ])
    corpus.start_run("generate")
    status = {r["command"]: r["status"] for r in corpus.query("SELECT command, status FROM runs WHERE command != 'generate' OR status != 'running'")}
    assert status == {"generate": "killed", "judge": "running", "filters": "running"}


def test_call_cache_replays_ok_and_permanent_but_not_transient(corpus):
    corpus.save_calls([
        {"key": "k1", "backend": "b", "model": "m", "request": {}, "response": {"text": "hi"}, "status": "ok"},
        {"key": "k2", "backend": "b", "model": "m", "request": {}, "response": {"text": "", "error": "400"}, "status": "failed_permanent"},
        {"key": "k3", "backend": "b", "model": "m", "request": {}, "response": {"text": "", "error": "timeout"}, "status": "failed"},
    ])
    found = corpus.lookup_calls(["k1", "k2", "k3", "k4"])
    assert set(found) == {"k1", "k2"}
    # a later success replaces the transient failure
    corpus.insert([Call(key="k3", backend="b", model="m", request={}, response={"text": "ok"}, status="ok")], replace=True)
    assert corpus.lookup_calls(["k3"])["k3"]["text"] == "ok"


def test_cached_backend_never_sends_the_same_request_twice(corpus):
    """FakeBackend stands in for a model here: the point is the cache, not the text."""
    from backends import CachedBackend, ChatRequest
    from backends.fake import FakeBackend

    fake = FakeBackend(default="same answer")
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"q{i % 3}"}]) for i in range(6)]
    first = CachedBackend(fake, corpus).generate(reqs)
    assert len(fake.history) == 3 and all(c.text == "same answer" for c in first)
    second = CachedBackend(fake, corpus).generate(reqs)
    assert len(fake.history) == 3 and all(c.cached for c in second)


def test_writer_waits_for_a_lock_held_by_another_process(tmp_path):
    path = tmp_path / "c.duckdb"
    Corpus(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("held", flush=True)
            time.sleep(1.5)
            con.close()
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    c = Corpus(path, lock_timeout=30)
    assert c.insert([_prompt("written after the other process let go")]) == 1
    holder.wait(10)
    assert c.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 1


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "corpus", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_sql_stats_export_and_plain_duckdb(tmp_path):
    db = tmp_path / "c.duckdb"
    c = Corpus(db)
    p = _prompt("hello")
    c.insert([p, *_gens(p, 3, "modelA"), *_gens(p, 2, "modelB")])
    c.close()

    r = _cli("--db", str(db), "sql", "SELECT model, count(*) AS n FROM generations GROUP BY 1 ORDER BY 1", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["model,n", "modelA,3", "modelB,2"]

    r = _cli("--db", str(db), "stats")
    assert r.returncode == 0 and "generations" in r.stdout

    out = tmp_path / "g.parquet"
    r = _cli("--db", str(db), "export", "generations", "--format", "parquet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{out}'").fetchone()[0] == 5

    con = duckdb.connect(str(db), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert {"prompts", "generations", "calls", "judgments", "flags", "pairs", "reviews", "releases", "models", "runs"} <= names


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sql", "DELETE FROM prompts"], "--write"),
        (["sql", "SELEC 1"], "syntax error"),
        (["export", "nope", "--out", "x.parquet"], "no table or view 'nope'"),
        (["export", "prompts", "--format", "xml", "--out", "x"], "--format"),
        (["export", "prompts", "--format", "jsonl", "--out", "."], "is a folder"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    db = tmp_path / "c.duckdb"
    Corpus(db).insert([_prompt("stay")])
    r = _cli("--db", str(db), *args)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert Corpus(db).query("SELECT count(*) AS n FROM prompts")[0]["n"] == 1


@pytest.mark.parametrize("kind", ["not duckdb", "folder"])
def test_cli_db_that_is_not_a_corpus_is_one_line_exit_2(tmp_path, kind):
    db = tmp_path / "c.yaml"
    if kind == "folder":
        db.mkdir()
    else:
        db.write_text("a: 1\n")
    r = _cli("--db", str(db), "stats")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert ("is a folder" if kind == "folder" else "not a DuckDB corpus") in r.stderr
    if kind != "folder":
        assert db.read_text() == "a: 1\n"  # left as it was


def test_export_path_with_a_quote_is_written_not_parsed_as_sql(tmp_path):
    db = tmp_path / "c.duckdb"
    Corpus(db).insert([_prompt("one"), _prompt("two")])
    out = tmp_path / "it's here.jsonl"
    r = _cli("--db", str(db), "export", "prompts", "--format", "jsonl", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 2
    assert not (tmp_path / "it's here.jsonl.partial").exists()


def test_url_credentials_never_reach_the_runs_table(corpus):
    with corpus.run("generate", {"backend": {"base_url": "http://alice:pw-123@h:8000/v1"}},
                    argv=["--base-url", "https://bob:pw-456@api.example/v1", "--judge-base-url=http://c:pw-789@x/v1"]):
        pass
    row = corpus.query("SELECT argv, config FROM runs")[0]
    dump = str(row)
    assert not any(pw in dump for pw in ("pw-123", "pw-456", "pw-789"))
    assert "https://***@api.example/v1" in row["argv"] and "h:8000" in row["config"]


def test_cli_missing_corpus_is_not_created(tmp_path):
    db = tmp_path / "missing.duckdb"
    r = _cli("--db", str(db), "stats")
    assert r.returncode == 2 and "no such corpus" in r.stderr
    assert not db.exists()
