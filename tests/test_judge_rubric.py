"""Rubric YAML: the shipped rubrics load; mistakes give one line with file:line, exit 2, corpus unchanged."""

from __future__ import annotations

import pytest
from test_judge_helpers import PROMPTS, add_candidates, write_rubric

from corpus import UserError
from judge import load_rubric
from judge.cli import main
from corpus import run_cli


@pytest.mark.parametrize("name", ["code", "helpfulness", "harmlessness", "pairwise", "instructions"])
def test_shipped_rubrics_load(name):
    r = load_rubric(PROMPTS / f"{name}.yaml")
    assert r.name == name and r.criteria
    hashes = {r.criterion_hash(c) for c in r.criteria}
    assert len(hashes) == len(r.criteria)


def test_code_rubric_checks_correctness_by_execution():
    r = load_rubric(PROMPTS / "code.yaml")
    kinds = {c.name: (c.kind, c.verifier.type if c.verifier else None) for c in r.criteria}
    assert kinds["correctness"] == ("verifier", "code_exec")
    assert {"readability", "maintainability", "efficiency"} <= {c.name for c in r.llm_criteria()}


BAD = {
    # (replacement in prompts/code.yaml, expected line, words the message must contain)
    "typo": ({"    weight: 1\n    scale:": "    wieght: 1\n    scale:"}, 22, ["wieght", "spelling"]),
    "duplicate": ({"name: efficiency": "name: readability"}, 38, ["used twice"]),
    "no_tests": ({'      tests: "meta:test"          # HumanEval-style `def check(candidate)`, or plain asserts\n': ""}, 14,
                 ["tests"]),
    "no_scale": ({"""    scale:
      1: Needlessly slow (e.g. exponential where linear is easy).
      2: Noticeably wasteful.
      3: Reasonable but with an easy improvement missed.
      4: Efficient for realistic inputs.
      5: Optimal complexity with no waste.
""": ""}, 38, ["scale"]),
    "bad_yaml": ({"mode: pointwise": "mode: [pointwise"}, 8, ["YAML"]),
    "bad_mode": ({"mode: pointwise": "mode: pointwize"}, 7, ["mode"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rubric_names_file_and_line(tmp_path, case):
    replace, line, words = BAD[case]
    path = write_rubric(tmp_path / "bad.yaml", "code.yaml", replace)
    with pytest.raises(UserError) as e:
        load_rubric(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}:"), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_rubric_path_that_is_missing_or_a_folder_is_a_user_error(tmp_path):
    for path, words in ((tmp_path / "nope.yaml", "no such file"), (tmp_path, "is a folder")):
        with pytest.raises(UserError, match=f"--rubric {path}: {words}; the shipped rubrics are in prompts/"):
            load_rubric(path)


def test_bad_rubric_cli_exit_2_and_corpus_unchanged(tmp_path, corpus, capsys):
    add_candidates(corpus, [("q", ["a"])])
    before = {t: corpus.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ("runs", "judgments", "flags", "calls")}
    path = write_rubric(tmp_path / "bad.yaml", "code.yaml", {"name: efficiency": "name: readability"})
    rc = run_cli("judge", main, ["--rubric", str(path), "--db", corpus.path, "--judge-backend", "fake", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "bad.yaml:38:" in err and "Traceback" not in err
    after = {t: corpus.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in before}
    assert after == before


def test_bad_where_is_a_user_error(corpus, capsys):
    add_candidates(corpus, [("q", ["a"])])
    rc = run_cli("judge", main, ["--rubric", str(PROMPTS / "helpfulness.yaml"), "--db", corpus.path,
                                 "--judge-backend", "fake", "--where", "no_such_column = 1", "--quiet"])
    assert rc == 2
    assert "--where" in capsys.readouterr().err
    assert corpus.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_missing_corpus_is_a_user_error(tmp_path, capsys):
    rc = run_cli("judge", main, ["--rubric", str(PROMPTS / "helpfulness.yaml"), "--db", str(tmp_path / "none.duckdb")])
    assert rc == 2 and "no such corpus" in capsys.readouterr().err


def test_changing_one_criterion_changes_only_its_hash(tmp_path):
    a = load_rubric(PROMPTS / "code.yaml")
    path = write_rubric(tmp_path / "edited.yaml", "code.yaml", {"Names say what things are": "Names say precisely what things are"})
    b = load_rubric(path)
    changed = [c.name for c, d in zip(a.criteria, b.criteria) if a.criterion_hash(c) != b.criterion_hash(d)]
    assert changed == ["readability"]
    assert a.rubric_hash != b.rubric_hash
