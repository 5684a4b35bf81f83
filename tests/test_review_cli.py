"""`python -m review ...` as a user runs it: subprocesses on a real corpus file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from review.auth import check_token
from test_review_helpers import ROOT_DIR, add_item


def review(db, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "review", "--db", str(db), *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT_DIR, timeout=180)


@pytest.fixture
def queued(corpus):
    with corpus.session():
        gids = [add_item(corpus, i, {"helpful": 1 + i}) for i in range(4)]
    out = review(corpus.path, "sample", "--size", "4", "--population", "judged", "--buckets", "2")
    assert out.returncode == 0, out.stderr
    assert "added" in out.stdout and "general/helpful/0" in out.stdout
    return gids


def test_add_reviewer_prints_a_token_once_and_stores_only_a_hash(corpus):
    out = review(corpus.path, "add-reviewer", "ann")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert check_token(corpus, token) == "ann"
    secret = token.split(".", 1)[1]
    dump = str(corpus.query("SELECT * FROM reviewers"))
    assert secret not in dump
    again = review(corpus.path, "add-reviewer", "ann")
    assert again.returncode == 2 and "--rotate" in again.stderr and again.stderr.count("\n") == 1
    rotated = review(corpus.path, "add-reviewer", "ann", "--rotate")
    assert rotated.returncode == 0 and check_token(corpus, token) is None
    assert check_token(corpus, rotated.stdout.strip().splitlines()[-1]) == "ann"
    new_token = rotated.stdout.strip().splitlines()[-1]
    assert review(corpus.path, "disable-reviewer", "ann").returncode == 0
    assert check_token(corpus, new_token) is None
    bad = review(corpus.path, "add-reviewer", "a b<script>")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_next_in_the_terminal_approve_reject_edit(corpus, queued):
    review(corpus.path, "add-reviewer", "ann")
    answers = "a\nr\nwrong number\nx\ne\nfirst line\nsecond line\n.\ntightened\nq\n"
    out = review(corpus.path, "next", "--reviewer", "ann", stdin=answers)
    assert out.returncode == 0, out.stderr
    assert "unknown answer 'x'" in out.stdout and "item 1/4" in out.stdout
    order = [r["target_id"] for r in corpus.query("SELECT target_id FROM review_sample ORDER BY priority")]
    rows = corpus.query("SELECT target_id, verdict, note, edited_generation_id FROM reviews ORDER BY created_at")
    assert [(r["target_id"], r["verdict"]) for r in rows] == list(zip(order[:3], ["approve", "reject", "edit"]))
    assert rows[1]["note"] == "wrong number" and rows[2]["note"] == "tightened"
    gen = corpus.query("SELECT response, provenance, parent_id FROM generations WHERE id = ?", [rows[2]["edited_generation_id"]])[0]
    assert gen == {"response": "first line\nsecond line", "provenance": "human", "parent_id": order[2]}
    # the next session starts at the first item left; EOF ends it cleanly
    out = review(corpus.path, "next", "--reviewer", "ann", stdin="a\n")
    assert out.returncode == 0 and "item 4/4" in out.stdout


def test_next_refuses_an_unknown_reviewer(corpus, queued):
    out = review(corpus.path, "next", "--reviewer", "nobody", stdin="a\n")
    assert out.returncode == 2 and "add-reviewer nobody" in out.stderr


def test_report_prints_tables_and_draws_a_png(corpus, queued, tmp_path):
    review(corpus.path, "add-reviewer", "ann")
    review(corpus.path, "next", "--reviewer", "ann", stdin="a\nr\nno\na\na\n")
    png = tmp_path / "report.png"
    # --db after the subcommand works too (the form the issue shows)
    out = subprocess.run([sys.executable, "-m", "review", "report", "--db", str(corpus.path), "--plot", str(png),
                          "--score-threshold", "0.6"], capture_output=True, text=True, cwd=ROOT_DIR, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "fake:judge-a" in out.stdout and "kappa" in out.stdout and "Wilson" in out.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = review(corpus.path, "report", "--score-threshold", "7")
    assert bad.returncode == 2 and "--score-threshold" in bad.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--port", "99999"], "--port 99999: must be between 1 and 65535"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot resolve"),
    (["--port", "{busy}"], "cannot listen on 127.0.0.1:"),
])
def test_serve_with_a_bad_address_is_one_line_exit_2(corpus, flags, needle):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = review(corpus.path, "serve", *[f.replace("{busy}", port) for f in flags])
    assert out.returncode == 2 and needle in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_missing_corpus_is_one_line(tmp_path):
    out = review(tmp_path / "nope.duckdb", "report")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and not (tmp_path / "nope.duckdb").exists()


def test_terminal_shows_control_characters_inert(corpus):
    """Model text with ANSI escapes must not clear or recolour the reviewer's terminal."""
    import io

    from review import add_reviewer, sample_queue
    from review.terminal import review_in_terminal

    add_item(corpus, 0, {"helpful": 3}, response="fine\x1b[2J\x1b[31mhidden\rover")
    sample_queue(corpus, size=1, population="judged")
    add_reviewer(corpus, "ann")
    out = io.StringIO()
    answers = iter(["a"])
    counts = review_in_terminal(corpus, "ann", ask=lambda _: next(answers), out=out)
    text = out.getvalue()
    assert counts["approve"] == 1
    assert "\x1b" not in text and "\r" not in text and "fine\\x1b[2J\\x1b[31mhidden\\x0dover" in text
