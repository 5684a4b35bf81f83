"""Read-only means read-only: every example from issues 11 and 20 leaves the corpus (and every other file) as it was.

All run against a real DuckDB file through the CLIs' own entry points (`run_cli`, the code path
of `python -m ...`); two run as real subprocesses to see the exit status a shell sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from corpus import Corpus, Generation, Judgment, Prompt, UserError, run_cli
from corpus.cli import main as corpus_main
from corpus.sqlcheck import one_statement, where_expression
from filters.cli import main as filters_main
from generate.cli import main as generate_main
from generate.sources import prompts_from_sql
from judge.cli import main as judge_main
from judge.run import load_candidates

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = str(ROOT / "prompts" / "helpfulness.yaml")
TABLES = ("prompts", "generations", "judgments")


@pytest.fixture
def filled(corpus):
    """Two prompts, two candidates each, one judgment: every table the attacks aim at has rows."""
    recs = []
    for q in ("What is 2+2?", "Name a colour."):
        p = Prompt(messages=[{"role": "user", "content": q}])
        recs.append(p)
        recs += [Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=i, response=f"r{i}")
                 for i in range(2)]
    g = recs[1]
    recs.append(Judgment(target_id=g.id, target_kind="generation", judge="fake:j", rubric="r", criterion="c",
                         score=3.0, parse_status="ok"))
    corpus.insert(recs)
    return corpus


def snapshot(corpus: Corpus) -> dict[str, list]:
    """Every row of the attacked tables (a dropped table raises here: the test fails)."""
    return {t: corpus.query(f"SELECT * FROM {t} ORDER BY id") for t in TABLES}


def cli(prog, main, argv, capsys):
    try:
        rc = run_cli(prog, main, argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err.strip()


@pytest.mark.parametrize("sql", [
    "SELECT 1; DROP TABLE generations",
    "WITH x AS (SELECT 1) DELETE FROM generations",
    "/* x */ UPDATE generations SET response = 'pwned'",
    "FROM prompts LIMIT 1; DELETE FROM judgments",
    "DROP TABLE generations",
    "INSERT INTO prompts (id, messages, text) VALUES ('x', '[]', 'x')",
    "CHECKPOINT; DROP TABLE judgments",
])
def test_corpus_sql_without_write_changes_nothing(filled, capsys, sql):
    before = snapshot(filled)
    rc, err = cli("corpus", corpus_main, ["--db", filled.path, "sql", sql], capsys)
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert "--write" in err
    assert snapshot(filled) == before


def test_corpus_sql_read_still_works_and_uses_a_read_only_connection(filled, capsys):
    rc, _ = cli("corpus", corpus_main, ["--db", filled.path, "sql", "SELECT count(*) AS n FROM generations",
                                        "--format", "jsonl"], capsys)
    assert rc == 0
    with filled.reader() as con:
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM generations")
    assert len(snapshot(filled)["generations"]) == 4


def test_corpus_sql_write_runs_what_the_user_wrote_in_one_transaction(filled, capsys):
    n_before = len(snapshot(filled)["generations"])
    rc, err = cli("corpus", corpus_main, ["--db", filled.path, "sql", "--write",
                                          "DELETE FROM generations WHERE sample_idx = 0; SELECT * FROM no_such_table"], capsys)
    assert rc == 2 and "no_such_table" in err
    assert len(snapshot(filled)["generations"]) == n_before  # the first statement was rolled back too
    rc, _ = cli("corpus", corpus_main, ["--db", filled.path, "sql", "--write",
                                        "DELETE FROM generations WHERE sample_idx = 0; DELETE FROM judgments"], capsys)
    assert rc == 0
    after = snapshot(filled)
    assert len(after["generations"]) == n_before - 2 and after["judgments"] == []
    rc, err = cli("corpus", corpus_main, ["--db", filled.path, "sql", "--write", "BEGIN; DROP TABLE prompts; COMMIT"], capsys)
    assert rc == 2 and "one transaction" in err and snapshot(filled)["prompts"]


def test_judge_where_injection_is_refused_and_nothing_changes(filled, capsys):
    before = snapshot(filled)
    rc, err = cli("judge", judge_main, ["--rubric", RUBRIC, "--db", filled.path, "--judge-backend", "fake",
                                        "--where", "1=1) ; DROP TABLE generations; --", "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 0 and "--where" in err
    assert snapshot(filled) == before
    assert filled.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_filters_where_injection_is_refused_and_nothing_is_written(filled, capsys):
    before = snapshot(filled)
    rc, err = cli("filters", filters_main, ["--db", filled.path, "--where", "1=1) ; DROP TABLE generations; --",
                                            "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 0 and "--where" in err
    assert snapshot(filled) == before
    assert filled.query("SELECT count(*) AS n FROM pairs")[0]["n"] == 0
    assert filled.query("SELECT count(*) AS n FROM filter_selections")[0]["n"] == 0


def test_generate_from_sql_with_more_statements_is_refused(filled, capsys):
    before = snapshot(filled)
    sql = "SELECT id FROM prompts; COMMIT; DROP TABLE judgments; SELECT id FROM prompts"
    rc, err = cli("generate", generate_main, ["--from-sql", sql, "--db", filled.path, "--backend", "fake",
                                              "--no-progress"], capsys)
    assert rc == 2 and err.count("\n") == 0 and "exactly one SQL statement, found 4" in err
    assert snapshot(filled) == before


def test_where_that_is_one_expression_still_selects(filled):
    everything = load_candidates(filled, None)
    assert len(everything) == 4
    assert len(load_candidates(filled, "g.sample_idx = 0 -- a comment must not eat the closing parenthesis")) == 2
    sub = "g.prompt_id IN (SELECT id FROM prompts WHERE text LIKE 'What%')"
    assert len(load_candidates(filled, sub)) == 2
    for bad in ("1=1) OR (1=1", "a = 1, b = 2", "1) UNION SELECT id, prompt_id FROM generations WHERE (1", "", "*"):
        with pytest.raises(UserError, match="--where"):
            load_candidates(filled, bad)


def test_where_inside_a_held_session_runs_rolled_back(filled):
    """Where this process already holds the writer (a script inside `session()`), DuckDB will not
    open the file read-only beside it: the read runs in a transaction that is always rolled back."""
    with filled.session():
        assert len(load_candidates(filled, "g.sample_idx = 1")) == 2
        with filled.reader() as con:
            con.execute("DELETE FROM judgments")
    assert len(snapshot(filled)["judgments"]) == 1


def test_from_sql_is_one_select_on_a_read_only_connection(filled):
    assert len(prompts_from_sql(filled, "SELECT id FROM prompts")) == 2
    for sql, words in (("SELECT id FROM prompts; DROP TABLE prompts", "found 2"),
                       ("DELETE FROM prompts RETURNING id", "got a DELETE"),
                       ("WITH x AS (SELECT 1) DELETE FROM prompts", "got a DELETE")):
        with pytest.raises(UserError, match=words):
            prompts_from_sql(filled, sql)
    assert len(snapshot(filled)["prompts"]) == 2


def test_parser_checks_are_duckdbs_not_keywords():
    assert one_statement("/* DROP TABLE x */ SELECT 1", "sql").type == duckdb.StatementType.SELECT
    assert where_expression("name = 'DROP TABLE x; --'") == "name = 'DROP TABLE x; --'"
    with pytest.raises(UserError, match="found 2"):
        one_statement("SELECT ';'; SELECT 2", "sql")


def test_duckdb_progress_bar_is_off_on_every_connection(filled):
    with filled.connect() as con:
        assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
    with filled.reader() as con:
        assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False


def test_subprocess_sql_drop_exits_2_and_table_stays(filled):
    path = filled.path
    filled.close()
    r = subprocess.run([sys.executable, "-m", "corpus", "--db", path, "sql", "SELECT 1; DROP TABLE generations"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert Corpus(path).query("SELECT count(*) AS n FROM generations")[0]["n"] == 4


def test_read_session_refuses_writes_and_review_pages_still_load(filled):
    from corpus import Review  # noqa: F401  (the review tables come with the corpus's migrations)

    with filled.read_session():
        assert filled.query("SELECT count(*) AS n FROM generations")[0]["n"] == 4
        with pytest.raises(duckdb.Error, match="read-only"):
            filled.execute("DELETE FROM generations")
    assert len(snapshot(filled)["generations"]) == 4


# -- issue 20: a read path writes no file anywhere; an export never lands on a database ---------------

@pytest.mark.parametrize("sql", [
    "COPY (SELECT 'x' AS a) TO '{other}' (FORMAT csv)",
    "COPY generations TO '{dir}/leak.csv'",
    "EXPORT DATABASE '{dir}/dump'",
    "ATTACH '{other}' AS o",
])
def test_corpus_sql_without_write_touches_no_other_file(filled, capsys, tmp_path, sql):
    other = tmp_path / "other.duckdb"
    Corpus(other).insert([Prompt(messages=[{"role": "user", "content": "another team's corpus"}])])
    other_bytes, before = other.read_bytes(), snapshot(filled)
    listing = sorted(p.name for p in tmp_path.iterdir())
    rc, err = cli("corpus", corpus_main, ["--db", filled.path, "sql", sql.format(other=other, dir=tmp_path)], capsys)
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert "may not touch files outside the corpus" in err
    assert other.read_bytes() == other_bytes and snapshot(filled) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no leak.csv, no dump/


def test_the_sealed_reader_cannot_switch_file_access_back_on(filled):
    with filled.reader() as con:
        for stmt in ("SET enable_external_access = true", "SET lock_configuration = false",
                     "SET allowed_directories = ['/tmp']"):
            with pytest.raises(duckdb.Error, match="locked"):
                con.execute(stmt)
        assert con.execute("SELECT count(*) FROM generations").fetchone()[0] == 4  # reading still works


def _export(filled, capsys, out, *more):
    return cli("corpus", corpus_main, ["--db", filled.path, "export", "generations", "--format", "csv",
                                       "--out", str(out), *more], capsys)


def test_export_refuses_the_corpus_itself_even_with_force(filled, capsys):
    before = Path(filled.path).read_bytes()
    for more in ((), ("--force",)):
        rc, err = _export(filled, capsys, filled.path, *more)
        assert rc == 2 and err.count("\n") == 0 and "is the corpus itself" in err
        rc, err = _export(filled, capsys, filled.path + ".wal", *more)
        assert rc == 2 and "is the corpus itself" in err
    assert Path(filled.path).read_bytes() == before
    assert not Path(filled.path + ".wal").exists()


def test_export_refuses_another_duckdb_file_whatever_its_name(filled, capsys, tmp_path):
    other = tmp_path / "results.csv"  # a database behind a harmless-looking name
    Corpus(other).close()
    before = other.read_bytes()
    for more in ((), ("--force",)):
        rc, err = _export(filled, capsys, other, *more)
        assert rc == 2 and err.count("\n") == 0 and "is a DuckDB database" in err
    assert other.read_bytes() == before


def test_export_replaces_an_existing_file_only_with_force(filled, capsys, tmp_path):
    out = tmp_path / "g.csv"
    out.write_text("keep me\n")
    rc, err = _export(filled, capsys, out)
    assert rc == 2 and err.count("\n") == 0 and "exists" in err and "--force" in err
    assert out.read_text() == "keep me\n"
    rc, err = _export(filled, capsys, out, "--force")
    assert rc == 0, err
    assert out.read_text().splitlines()[0].startswith("id,") and len(out.read_text().splitlines()) == 5
    new = tmp_path / "new.csv"
    assert _export(filled, capsys, new)[0] == 0 and new.exists()
