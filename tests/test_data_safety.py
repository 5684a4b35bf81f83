"""Issue 20's last ways to lose data or see a traceback: each ends in one line and exit 2, and
the files the user had are as they were.

Real parts: DuckDB files cut short with `truncate`, a real full disk (a small tmpfs mounted for
the test, or a loop-mounted ext4 image where tmpfs cannot be mounted), a real read-only mount,
every argparse parser the CLIs build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from corpus import Corpus, Prompt
from corpus.cli import main as corpus_main
from filters.cli import main as filters_main
from generate.cli import main as generate_main
from judge.cli import main as judge_main
from review.cli import main as review_main
from train.cli import main as train_main
from test_user_mistakes import cli, one_line  # the same CLI runner and one-line check

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = str(ROOT / "prompts" / "helpfulness.yaml")


def small_corpus(path: Path, n: int = 3) -> Path:
    Corpus(path).insert([Prompt(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(n)])
    return path


# -- a damaged corpus --------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.03, 0.2, 0.6])  # where the header, catalog and rows are
def test_a_truncated_corpus_is_named_and_called_damaged(tmp_path, capsys, keep):
    db = small_corpus(tmp_path / "c.duckdb")
    size = db.stat().st_size
    os.truncate(db, int(size * keep))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    for prog, main, argv in (("corpus", corpus_main, ["--db", str(db), "stats"]),
                             ("generate", generate_main, ["--prompts", str(prompts), "--db", str(db), "--backend", "fake",
                                                          "--no-progress"])):
        rc, err, _ = cli(prog, main, argv, capsys)
        assert rc == 2 and one_line(err), err
        assert str(db) in err and "the corpus file is damaged" in err and "restore it from a copy" in err
    assert db.stat().st_size == int(size * keep)  # nothing wrote to it


# -- a full disk --------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB file system of its own: tmpfs, else a loop-mounted ext4 image; skipped only where
    neither can be mounted (not root, no mount permission)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    tries = [["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]]
    image = tmp_path / "disk.img"
    if shutil.which("mkfs.ext4"):
        tries.append(["sh", "-c", f"truncate -s 6M {image} && mkfs.ext4 -q {image} && mount -o loop {image} {mnt}"])
    why = []
    for cmd in tries:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            break
        why.append(f"{cmd[0]} {cmd[2] if cmd[0] == 'mount' else 'loop'}: {r.stderr.strip()[:80]}")
    else:
        pytest.skip("cannot mount a small file system here (" + "; ".join(why) + ")")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_says_so_and_keeps_the_stored_rows(small_disk, tmp_path, capsys):
    db = small_corpus(small_disk / "c.duckdb", 3)
    big = tmp_path / "big.jsonl"  # about 6 MB of prompts: more than the disk has left
    big.write_text("".join(json.dumps({"prompt": f"question {i} " + "x" * 2000}) + "\n" for i in range(3000)))
    rc, err, _ = cli("generate", generate_main, ["--prompts", str(big), "--db", str(db), "--backend", "fake",
                                                 "--n", "1", "--no-progress"], capsys)
    assert rc == 2 and one_line(err), err
    assert "the disk is full (No space left on device)" in err and str(db) in err and "rerun" in err
    with duckdb.connect(str(db), read_only=True) as con:
        texts = sorted(r[0] for r in con.execute("SELECT text FROM prompts").fetchall())
        assert texts == ["question 0", "question 1", "question 2"]
        assert con.execute("SELECT count(*) FROM generations").fetchone()[0] == 0


def test_review_report_reads_a_corpus_on_a_read_only_mount(small_disk, capsys):
    db = small_corpus(small_disk / "c.duckdb")
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()[:80]}")
    rc, err, out = cli("review", review_main, ["--db", str(db), "report"], capsys)
    assert rc == 0, err
    assert "approval rate of the reviewed sample" in out
    rc, err, _ = cli("review", review_main, ["--db", str(db), "report", "--score-threshold", "0.5"], capsys)
    assert rc == 2 and one_line(err) and "may not write it" in err  # storing a threshold is a write


# -- a DuckDB file that is not a corpus ---------------------------------------------------------------

def test_judge_refuses_a_duckdb_file_that_is_not_a_corpus(tmp_path, capsys):
    other = tmp_path / "sales.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE orders (id INTEGER, total DOUBLE)")
        con.execute("INSERT INTO orders VALUES (1, 9.5)")
    before = other.read_bytes()
    for prog, main, argv in (("judge", judge_main, ["--rubric", RUBRIC, "--db", str(other), "--judge-backend", "fake"]),
                             ("corpus", corpus_main, ["--db", str(other), "stats"])):
        rc, err, _ = cli(prog, main, argv, capsys)
        assert rc == 2 and one_line(err), err
        assert "is a DuckDB database but not a corpus" in err and "orders" in err
    assert other.read_bytes() == before
    with duckdb.connect(str(other), read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == ["orders"]


def test_an_empty_duckdb_file_still_becomes_a_corpus(tmp_path):
    empty = tmp_path / "new.duckdb"
    duckdb.connect(str(empty)).close()
    assert "prompts" in Corpus(empty).tables()


# -- figures --------------------------------------------------------------------------------------------

def test_plot_to_a_duckdb_name_or_file_is_refused_before_any_work(tmp_path, capsys):
    db = small_corpus(tmp_path / "c.duckdb")
    for prog, main, argv in (("filters", filters_main, ["--db", str(db), "--quiet", "--plot"]),
                             ("review", review_main, ["--db", str(db), "report", "--plot"])):
        rc, err, _ = cli(prog, main, [*argv, str(tmp_path / "x.duckdb")], capsys)
        assert rc == 2 and one_line(err) and "--plot" in err and "x.png" in err, err
        copy = tmp_path / "copy.png"
        shutil.copy(db, copy)  # never over a database, whatever it is called
        before = copy.read_bytes()
        rc, err, _ = cli(prog, main, [*argv, str(copy)], capsys)
        assert rc == 2 and one_line(err) and "is a DuckDB database" in err
        assert copy.read_bytes() == before
        png = tmp_path / f"{prog}.png"
        rc, err, _ = cli(prog, main, [*argv, str(png)], capsys)
        assert rc == 0, err
        assert png.read_bytes()[:4] == b"\x89PNG"
    # the refused filters runs recorded nothing; only the one that drew its figure ran
    assert Corpus(db).query("SELECT count(*) AS n FROM runs WHERE command LIKE 'filters%'")[0]["n"] == 1


# -- train ----------------------------------------------------------------------------------------------

def test_every_help_page_renders():
    """`python -m train --help` died on "95% CIs" (argparse reads % as a format)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from docs_reference import all_parsers

    parsers = all_parsers()
    assert "python -m train eval" in parsers and len(parsers) > 20
    for cmd, p in parsers.items():
        assert p.format_help(), cmd
    r = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "95% CIs" in r.stdout, r.stderr


def _models(db: Path) -> int:
    c = Corpus(db)
    try:
        return c.query("SELECT count(*) AS n FROM models")[0]["n"]
    finally:
        c.close()


@pytest.mark.parametrize("argv, needle", [
    (["--out", "{existing}"], "exists and is not a folder"),
    (["--out", "{new}", "--max-steps", "-5"], "--max-steps -5"),
    (["--out", "{new}", "--max-steps", "0"], "--max-steps 0"),
    (["--out", "{new}", "--save-steps", "0"], "--save-steps 0"),
])
def test_train_rm_refuses_bad_flags_and_writes_nothing(tmp_path, capsys, argv, needle):
    db = small_corpus(tmp_path / "c.duckdb")
    existing = tmp_path / "model.bin"
    existing.write_text("keep")
    argv = [a.format(existing=existing, new=tmp_path / "new") for a in argv]
    rc, err, _ = cli("train", train_main, ["rm", "--db", str(db), *argv], capsys)
    assert rc == 2 and one_line(err) and needle in err, err
    assert _models(db) == 0 and existing.read_text() == "keep" and not (tmp_path / "new").exists()


def test_filters_export_never_lands_on_a_database(tmp_path, capsys):
    db = small_corpus(tmp_path / "c.duckdb")
    other = small_corpus(tmp_path / "sft.jsonl", 1)  # a corpus behind an export's name
    for out in (db, other):
        before = out.read_bytes()
        rc, err, _ = cli("filters", filters_main, ["--db", str(db), "export", "sft", "--format", "jsonl", "--out", str(out)],
                         capsys)
        assert rc == 2 and one_line(err) and "is a DuckDB database" in err, err
        assert out.read_bytes() == before
