"""`python -m generate` as a user runs it: bad input ends in one line, exit 2, and no corpus.

Most cases call `run_cli` in-process (same code path as `python -m`); two run the real
subprocess to check the exit status and stderr a shell sees.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import Corpus, run_cli
from generate.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(argv, capsys):
    """(exit status, stderr) of the CLI; argparse's own errors exit through SystemExit."""
    try:
        rc = run_cli("generate", main, argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip()


@pytest.fixture
def good(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "Say hi."}\n{"turns": ["Name a color.", "Another?"], "category": "x"}\n')
    return f


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n{"prompt": "b"\n', r"p.jsonl:2: not valid JSON .*fix or remove the line"),
        ('{"prompt": "a"}\n{"text": "b"}\n', r"p.jsonl:2: no prompt field.*--field NAME"),
        ('{"prompt": "a"}\n{"prompt": ""}\n', r"p.jsonl:2: empty prompt"),
        ('{"prompt": "a"}\n{"prompt": 5}\n', r"p.jsonl:2: field 'prompt' must be a string, got int"),
    ],
)
def test_bad_prompt_file_one_line_exit_2_no_corpus(tmp_path, capsys, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    db = tmp_path / "c.duckdb"
    rc, err = cli(["--prompts", str(f), "--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not db.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n", "0"], "--n 0: give at least 1"),
        (["--temperature", "-1"], "--temperature -1.0: must be between 0"),
        (["--top-p", "2"], "--top-p 2.0: must be above 0 and at most 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["--limit", "0"], "--limit 0"),
        (["--temprature", "1"], "unrecognized arguments: --temprature 1"),
        (["--n", "four"], "argument --n: invalid int value: 'four'"),
    ],
)
def test_bad_flag_values_name_the_flag(tmp_path, capsys, good, flags, message):
    db = tmp_path / "c.duckdb"
    rc, err = cli(["--prompts", str(good), "--db", str(db), "--backend", "fake", *flags], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not db.exists()


def test_missing_file_and_no_source(tmp_path, capsys):
    db = tmp_path / "c.duckdb"
    rc, err = cli(["--prompts", str(tmp_path / "nope.jsonl"), "--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and "nope.jsonl: no such file" in err and not db.exists()
    rc, err = cli(["--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and "exactly one of --prompts" in err and not db.exists()


def test_from_sql_needs_an_existing_corpus(tmp_path, capsys):
    db = tmp_path / "c.duckdb"
    rc, err = cli(["--from-sql", "SELECT id FROM prompts", "--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and "no such corpus" in err and not db.exists()


def test_unreachable_endpoint_names_the_url(tmp_path, capsys, good):
    db = tmp_path / "c.duckdb"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    rc, err = cli(["--prompts", str(good), "--db", str(db), "--backend", "openai", "--model", "m", "--base-url", url], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and f"--base-url {url}: cannot connect" in err, err
    assert not db.exists()


def test_unreachable_endpoint_error_hides_url_credentials(tmp_path, capsys, good):
    db = tmp_path / "c.duckdb"
    url = f"http://alice:s3cret-pw@127.0.0.1:{closed_port()}/v1"
    rc, err = cli(["--prompts", str(good), "--db", str(db), "--backend", "openai", "--model", "m", "--base-url", url], capsys)
    assert rc == 2 and "s3cret-pw" not in err and "http://***@127.0.0.1" in err, err


def test_missing_model_folder_is_a_user_error(tmp_path, capsys, good):
    db = tmp_path / "c.duckdb"
    rc, err = cli(["--prompts", str(good), "--db", str(db), "--backend", "hf", "--model", str(tmp_path / "no-model")], capsys)
    assert rc == 2 and "does not exist" in err and not db.exists()


def test_bad_line_leaves_existing_corpus_unchanged(tmp_path, capsys, good):
    db = tmp_path / "c.duckdb"
    assert cli(["--prompts", str(good), "--db", str(db), "--backend", "fake", "--n", "1", "--no-progress"], capsys)[0] == 0
    before = Corpus(db).query("SELECT (SELECT count(*) FROM prompts) p, (SELECT count(*) FROM generations) g, (SELECT count(*) FROM runs) r")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "new one"}\n{"prompt": "x"\n')
    rc, err = cli(["--prompts", str(bad), "--db", str(db), "--backend", "fake"], capsys)
    assert rc == 2 and "bad.jsonl:2" in err
    after = Corpus(db).query("SELECT (SELECT count(*) FROM prompts) p, (SELECT count(*) FROM generations) g, (SELECT count(*) FROM runs) r")
    assert before == after == [{"p": 2, "g": 2, "r": 1}]


def test_real_subprocess_runs_and_fails_cleanly(tmp_path, good, tiny_model_dir):
    db = tmp_path / "c.duckdb"
    ok = subprocess.run(
        [sys.executable, "-m", "generate", "--prompts", str(good), "--db", str(db), "--n", "2", "--backend", "hf",
         "--model", str(tiny_model_dir), "--max-new-tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "candidates new" in ok.stdout and "tokens/s" in ok.stdout
    summary = json.loads(Corpus(db).query("SELECT summary FROM runs")[0]["summary"])
    assert summary["candidates_new"] == 4 and summary["prompts"] == 2

    bad = subprocess.run(
        [sys.executable, "-m", "generate", "--prompts", str(good), "--db", str(db), "--top-p", "2", "--backend", "fake"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("generate: error: --top-p 2.0")
