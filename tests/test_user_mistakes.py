"""Issue 11's user mistakes end in one line and exit 2 with the corpus untouched; an unfinished
job exits 3; two tasks that share a text stay two prompts.

Real parts throughout: DuckDB files, a second process holding the lock, a second uid (setpriv,
root in CI), the loopback OpenAI server with fault injection (tests/openai_server.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import openai_server
from corpus import Corpus, Prompt, UserError, run_cli
from corpus.cli import main as corpus_main
from filters.cli import main as filters_main
from generate.cli import main as generate_main
from generate.sources import load_prompts
from judge.cli import main as judge_main

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = ROOT / "prompts" / "helpfulness.yaml"


def cli(prog, main, argv, capsys):
    try:
        rc = run_cli(prog, main, argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err.strip(), out.out


def one_line(err: str) -> bool:
    return err.count("\n") == 0 and "Traceback" not in err and err != ""


# -- files that are not UTF-8 --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.jsonl", "p.json"])
def test_latin1_prompt_file_names_the_byte_offset_and_writes_nothing(tmp_path, capsys, name):
    f = tmp_path / name
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    db = tmp_path / "c.duckdb"
    rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and one_line(err)
    assert f"{f}: not UTF-8 text (byte offset 32: 0xe9)" in err
    assert not db.exists()


def test_binary_prompt_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "image.jsonl"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", str(tmp_path / "c.duckdb"),
                                                 "--backend", "fake"], capsys)
    assert rc == 2 and one_line(err) and "byte offset 0: 0x89" in err


def test_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"prompt": "hello"}\n')
    prompts, _ = load_prompts(f)
    assert prompts[0].text == "hello"


def test_non_utf8_rubric_and_filter_yaml(tmp_path, capsys, corpus):
    corpus.insert([Prompt(messages=[{"role": "user", "content": "q"}])])
    bad = tmp_path / "rubric.yaml"
    bad.write_bytes(RUBRIC.read_bytes().replace(b"name:", b"n\xe4me:", 1))
    at = RUBRIC.read_bytes().index(b"name:") + 1
    rc, err, _ = cli("judge", judge_main, ["--rubric", str(bad), "--db", corpus.path, "--judge-backend", "fake"], capsys)
    assert rc == 2 and one_line(err) and f"byte offset {at}" in err
    cfg = tmp_path / "filters.yaml"
    cfg.write_bytes(b"# r\xe9glages\n")
    rc, err, _ = cli("filters", filters_main, ["--db", corpus.path, "--config", str(cfg), "--quiet"], capsys)
    assert rc == 2 and one_line(err) and f"{cfg}: not UTF-8 text (byte offset 3: 0xe9)" in err
    assert corpus.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_non_utf8_train_eval_pairs_file_is_one_line(tmp_path):
    from train.data import pairs_from_jsonl

    bad = tmp_path / "held.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(UserError) as e:
        pairs_from_jsonl(str(bad))
    assert one_line(str(e.value)) and f"{bad}: not UTF-8 text (byte offset 15: 0xe9)" in str(e.value)


# -- corpora the user cannot use -----------------------------------------------------------------

def test_locked_corpus_says_who_holds_it_and_how_long_it_waits_then_gives_up_in_one_line(tmp_path, capsys, monkeypatch):
    """Issue 20: `corpus sql` waited over 60 s on a locked file with no word. Now a wait that a
    person would notice is announced once (holder and limit), and the give-up is one line."""
    db = tmp_path / "c.duckdb"
    Corpus(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(120)",
         str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        monkeypatch.setenv("RLAIF_LOCK_TIMEOUT", "2")  # the notice comes after a quarter of it
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "hi"}\n')
        for prog, main, argv in (("generate", generate_main, ["--prompts", str(prompts), "--db", str(db), "--backend", "fake"]),
                                 ("corpus", corpus_main, ["--db", str(db), "sql", "SELECT 1"])):
            rc, err, _ = cli(prog, main, argv, capsys)
            notice, gave_up = err.splitlines()
            assert rc == 2 and "Traceback" not in err
            assert notice.startswith(f"{db}: locked by ") and f"(PID {holder.pid}); waiting up to 2 s" in notice
            assert gave_up.startswith(f"{prog}: error: --db {db}: locked by") and f"(PID {holder.pid})" in gave_up
            assert "for more than 2 s; gave up" in gave_up
    finally:
        holder.kill()
        holder.wait()


def test_bad_lock_timeout_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RLAIF_LOCK_TIMEOUT", "soon")
    rc, err, _ = cli("corpus", corpus_main, ["--db", str(tmp_path / "c.duckdb"), "stats"], capsys)
    assert rc == 2 and "RLAIF_LOCK_TIMEOUT" in err


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to act as another uid")
def test_corpus_of_another_uid_is_one_line_and_still_readable():
    d = Path(tempfile.mkdtemp(prefix="rlaif-uid-"))
    try:
        d.chmod(0o755)  # others may read the folder, not write it
        db = d / "c.duckdb"
        Corpus(db).insert([Prompt(messages=[{"role": "user", "content": "kept"}])])
        (d / "p.jsonl").write_text('{"prompt": "new"}\n')
        (d / "p.jsonl").chmod(0o644)
        before = db.read_bytes()
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
        env = {**os.environ, "HOME": str(d)}
        r = subprocess.run([*nobody, "-m", "generate", "--prompts", str(d / "p.jsonl"), "--db", str(db),
                            "--backend", "fake", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "may not write it (permission denied)" in r.stderr
        r = subprocess.run([*nobody, "-m", "corpus", "--db", str(db), "sql", "SELECT text FROM prompts", "--format", "jsonl"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and json.loads(r.stdout) == {"text": "kept"}, r.stderr
        assert db.read_bytes() == before
    finally:
        shutil.rmtree(d)


def test_stats_after_a_table_is_dropped_names_the_migration(corpus, capsys):
    corpus.execute("DROP TABLE generations")
    rc, err, _ = cli("corpus", corpus_main, ["--db", corpus.path, "stats"], capsys)
    assert rc == 2 and one_line(err) and "'generations'" in err and "m001_core" in err


def test_a_job_on_a_corpus_missing_a_table_is_one_line(corpus, capsys, tmp_path):
    corpus.execute("DROP TABLE generations")
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", corpus.path, "--backend", "fake",
                                                 "--no-progress"], capsys)
    assert rc == 2 and one_line(err) and "m001_core" in err


# -- exit status 3: the job ran but is not complete ------------------------------------------------

def test_generate_exits_3_while_transient_failures_remain_then_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("ok", "flaky", "bad")))
    db = tmp_path / "c.duckdb"
    # flaky: 7 quick 503s exhaust the client's 6 retries once; bad: a 400 is a permanent failure
    with openai_server.OpenAIServer(faults={"flaky": ["503:0"] * 7, "bad": ["400"] * 50}) as srv:
        argv = ["--prompts", str(f), "--db", str(db), "--backend", "openai", "--model", "m", "--base-url", srv.base_url,
                "--n", "1", "--no-progress"]
        rc, err, _ = cli("generate", generate_main, argv, capsys)
        assert rc == 3, err
        assert "incomplete: 1 of 3 planned candidates" in err and "rerun the same command" in err
        rc, err, _ = cli("generate", generate_main, argv, capsys)
        assert rc == 0, err  # the 503s are used up; "bad" failed for good, which is complete
    assert Corpus(db).query("SELECT count(*) AS n FROM generations")[0]["n"] == 2


def test_judge_exits_3_while_backend_errors_remain(corpus, capsys, monkeypatch):
    from corpus import Generation

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    p = Prompt(messages=[{"role": "user", "content": "q"}])
    corpus.insert([p, Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=0, response="a")])
    with openai_server.OpenAIServer(faults={"*": ["503:0"] * 200}) as srv:
        rc, err, _ = cli("judge", judge_main, ["--rubric", str(RUBRIC), "--db", corpus.path, "--judge-backend", "openai",
                                               "--judge-model", "m", "--judge-base-url", srv.base_url, "--quiet"], capsys)
    assert rc == 3, err
    assert "judge: incomplete:" in err and "rerun the same command" in err


# -- prompt identity: one text, two tasks -----------------------------------------------------------

MBPP_71 = {"prompt": "Write a function to sort a list of elements.", "task_id": 71,
           "test_list": ["assert comb_sort([5, 15, 37, 25, 79]) == [5, 15, 25, 37, 79]"]}
MBPP_141 = {"prompt": "Write a function to sort a list of elements.", "task_id": 141,
            "test_list": ["assert pancake_sort([15, 79, 25, 38, 69]) == [15, 25, 38, 69, 79]"]}


def test_two_tasks_with_one_text_stay_two_prompts(tmp_path, capsys):
    f = tmp_path / "mbpp.jsonl"
    f.write_text(json.dumps(MBPP_71) + "\n" + json.dumps(MBPP_141) + "\n" + json.dumps(MBPP_71) + "\n")
    prompts, repeated = load_prompts(f)
    assert len(prompts) == 2 and repeated == 1
    # one of them keeps the plain id (of the text alone), as corpora built before have it
    assert sorted(p.id == Prompt(messages=p.messages).id for p in prompts) == [False, True]
    assert {p.meta["task_id"] for p in prompts} == {71, 141}
    db = tmp_path / "c.duckdb"
    argv = ["--prompts", str(f), "--db", str(db), "--backend", "fake", "--n", "1", "--no-progress"]
    rc, err, out = cli("generate", generate_main, argv, capsys)
    assert rc == 0, err
    c = Corpus(db)
    rows = c.query("SELECT meta FROM prompts ORDER BY meta")
    assert sorted(json.loads(r["meta"])["task_id"] for r in rows) == [71, 141]
    assert c.query("SELECT count(*) AS n FROM generations")[0]["n"] == 2
    c.close()
    rc, err, _ = cli("generate", generate_main, argv, capsys)  # a rerun adds nothing
    assert rc == 0 and Corpus(db).query("SELECT count(*) AS n FROM prompts")[0]["n"] == 2


def test_a_later_file_with_the_same_text_for_another_task_is_kept_apart(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(MBPP_71) + "\n")
    b.write_text(json.dumps(MBPP_141) + "\n")
    db = tmp_path / "c.duckdb"
    for f in (a, b, b):
        rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", str(db), "--backend", "fake",
                                                     "--n", "1", "--no-progress"], capsys)
        assert rc == 0, err
    c = Corpus(db)
    metas = sorted(json.loads(r["meta"])["task_id"] for r in c.query("SELECT meta FROM prompts"))
    assert metas == [71, 141]
    assert c.query("SELECT count(DISTINCT prompt_id) AS n FROM generations")[0]["n"] == 2


def _prompt_ids(db):
    c = Corpus(db)
    try:
        rows = c.query("SELECT id, meta FROM prompts")
        gens = c.query("SELECT count(*) AS n FROM generations")[0]["n"]
    finally:
        c.close()
    return {json.loads(r["meta"])["task_id"]: r["id"] for r in rows}, gens


def test_a_prompts_id_does_not_depend_on_its_place_in_the_file(tmp_path, capsys):
    """Issue 20: the same MBPP file reversed added a third prompt and a third candidate."""
    fwd, rev = tmp_path / "fwd.jsonl", tmp_path / "rev.jsonl"
    fwd.write_text(json.dumps(MBPP_71) + "\n" + json.dumps(MBPP_141) + "\n")
    rev.write_text(json.dumps(MBPP_141) + "\n" + json.dumps(MBPP_71) + "\n")
    # without a corpus, both orders give the same ids
    ids = lambda f: {p.meta["task_id"]: p.id for p in load_prompts(f)[0]}  # noqa: E731
    assert ids(fwd) == ids(rev) and len(set(ids(fwd).values())) == 2
    # into a corpus: the same file forward then reversed (and reversed first into another corpus)
    first = None
    for name, order in (("a.duckdb", (fwd, rev, fwd)), ("b.duckdb", (rev, fwd))):
        db = tmp_path / name
        for f in order:
            rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", str(db), "--backend", "fake",
                                                         "--n", "1", "--no-progress"], capsys)
            assert rc == 0, err
            got, gens = _prompt_ids(db)
            assert len(got) == 2 and gens == 2, (name, f.name, got, gens)
        first = first or got
        assert got == first  # the same ids in both corpora, whichever order came first


def test_the_corpus_decides_who_keeps_the_plain_id(tmp_path, capsys):
    """141 alone came first into this corpus, so it owns the plain id; a later file holding both
    (in either order) keeps it there instead of moving it and adding a row."""
    alone, both = tmp_path / "141.jsonl", tmp_path / "both.jsonl"
    alone.write_text(json.dumps(MBPP_141) + "\n")
    both.write_text(json.dumps(MBPP_71) + "\n" + json.dumps(MBPP_141) + "\n")
    db = tmp_path / "c.duckdb"
    for f in (alone, both):
        rc, err, _ = cli("generate", generate_main, ["--prompts", str(f), "--db", str(db), "--backend", "fake",
                                                     "--n", "1", "--no-progress"], capsys)
        assert rc == 0, err
    got, gens = _prompt_ids(db)
    assert gens == 2 and got[141] == Prompt(messages=[{"role": "user", "content": MBPP_141["prompt"]}]).id
    assert got[71] != got[141]
