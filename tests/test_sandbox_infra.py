"""Who failed, the sandbox or the answer, and how each is recorded (issue 20, Must have 1 and
"Recorded wrong"). Real sandboxes and a real corpus throughout. Two stand-ins, each said where it
is used: a bwrap command whose interpreter path does not exist (a real sandbox that really fails
to start), and bwrap marked unavailable in the probe cache so that the unsafe mode runs (the only
mode here, as root, where the answer shares the runner's uid and can kill it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_judge_helpers import ROOT_DIR, add_candidates

from corpus import Corpus
from judge import sandbox
from judge.rubric import VerifierSpec
from judge.run import run_judge
from judge.sandbox import check_answer, sandbox_status
from judge.verifiers import code_exec, run_verifier

pytestmark = pytest.mark.skipif(sandbox_status()[0] is None, reason=f"bwrap sandbox unavailable: {sandbox_status()[1]}")

TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
RIGHT = "def add(a, b):\n    return a + b\n"
# issue 20's hack: a wrong answer that dresses its failure as the sandbox's
DISGUISED = ("def add(a, b):\n    return a - b\nimport os, sys\nsys.stderr.write('Traceback (most recent call last):\\n')\n"
             "sys.stderr.write('bwrap: execvp python: No such file or directory\\n')\nsys.stderr.flush()\n"
             "os.kill(os.getppid(), 9)\n")
SPEC = VerifierSpec(type="code_exec", tests="meta:test", entry_point="meta:entry_point")
PROMPT = {"messages": [{"role": "user", "content": "Write add(a, b)."}], "meta": {"test": TESTS, "entry_point": "add"}}


@pytest.fixture
def runner_reachable(monkeypatch):
    """bwrap marked unavailable (a stand-in), so code runs in the unsafe mode, where the answer
    runs under the runner's uid: the one place here it can really kill its runner."""
    assert sandbox_status("unsafe")[0] == "unsafe"
    monkeypatch.setitem(sandbox._STATUS, "bwrap", (None, "marked unavailable by the test"))


@pytest.fixture
def broken_sandbox(monkeypatch):
    """A real bwrap that fails to start: the interpreter path it is given does not exist."""
    real = sandbox.bwrap_command
    monkeypatch.setattr(sandbox, "bwrap_command", lambda python, fd=None: real("/nonexistent/python3", fd))


def test_a_killed_runner_after_the_answer_started_scores_zero(runner_reachable):
    v = check_answer(DISGUISED, TESTS, "add", unsafe=True)
    assert v.reason == "hack_suspected" and not v.infra and not v.passed, v
    assert "Traceback" in v.stderr  # it did print its disguise; the verdict ignored it
    [r] = code_exec(SPEC, [(PROMPT, f"```python\n{DISGUISED}```")], unsafe=True)
    assert r.score == 0.0 and not r.transient and r.detail["reason"] == "hack_suspected"


def test_the_grpo_reward_of_a_disguised_failure_is_zero_not_none(runner_reachable, tmp_path):
    corpus = Corpus(tmp_path / "c.duckdb")
    rewards = [r.score for r in run_verifier(SPEC, [(PROMPT, DISGUISED), (PROMPT, RIGHT)], corpus, unsafe_exec=True)]
    assert rewards == [0.0, 1.0]


def test_a_sandbox_that_cannot_start_is_retried_then_reported(broken_sandbox):
    v = check_answer(RIGHT, TESTS, "add")
    assert v.infra and not v.passed
    assert "failed 3 times" in v.detail and "nonexistent" in v.detail


def test_a_failing_sandbox_is_stored_as_failed_once_not_retried_forever(broken_sandbox, tmp_path):
    """The judge stores the failure with its reason (a verifier_failed flag) and a rerun has
    nothing left to do, instead of exiting 3 on every run."""
    db = tmp_path / "c.duckdb"
    corpus = Corpus(db)
    add_candidates(corpus, [("Write add(a, b).", [RIGHT])], meta={"test": TESTS, "entry_point": "add"})
    rubric = tmp_path / "code.yaml"
    rubric.write_text(yaml.safe_dump({"name": "code", "version": 1, "task": "t", "judges": [], "criteria": [
        {"name": "tests_pass", "description": "passes", "kind": "verifier", "verifier": {"type": "code_exec", "tests": "meta:test"}}]}))
    first = run_judge(corpus, str(rubric), progress=False)
    assert first["transient"] == 0 and first["failed"] == 1
    row = corpus.query("SELECT score, parse_status, meta FROM judgments")[0]
    assert row["score"] is None and row["parse_status"] == "failed"
    assert "the sandbox failed 3 times" in json.loads(row["meta"])["error"]
    flag = corpus.query("SELECT kind, reason FROM flags WHERE kind = 'verifier_failed'")[0]
    assert "nonexistent" in flag["reason"]
    again = run_judge(corpus, str(rubric), progress=False)
    assert again["cached"] == 1 and again["judged"] == 0 and again["transient"] == 0


def test_rubric_unsafe_true_is_recorded(tmp_path):
    """`unsafe: true` in the rubric is what the run allowed: config.unsafe_exec says true."""
    db = tmp_path / "c.duckdb"
    corpus = Corpus(db)
    add_candidates(corpus, [("Write add(a, b).", [RIGHT])], meta={"test": TESTS, "entry_point": "add"})
    rubric = tmp_path / "code.yaml"
    rubric.write_text(yaml.safe_dump({"name": "code", "version": 1, "task": "t", "judges": [], "criteria": [
        {"name": "tests_pass", "description": "passes", "kind": "verifier", "verifier": {"type": "code_exec", "tests": "meta:test", "unsafe": True}}]}))
    run_judge(corpus, str(rubric), progress=False)
    config = json.loads(corpus.query("SELECT config FROM runs")[0]["config"])
    assert config["unsafe_exec"] is True and config["code_exec_isolation"] == "bwrap"


def test_a_venv_reached_through_a_symlink_runs_in_the_sandbox(tmp_path):
    """The interpreter is started by a linked path: the sandbox binds real paths and starts it by
    one, instead of failing with `bwrap: execvp ...: No such file`."""
    link = tmp_path / "linked-venv"
    link.symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)
    python = link / "bin" / Path(sys.executable).name
    probe = ("from judge.sandbox import check_answer, sandbox_status\n"
             f"print(sandbox_status())\nprint(check_answer({RIGHT!r}, {TESTS!r}, 'add').reason)\n")
    r = subprocess.run([str(python), "-c", probe], cwd=ROOT_DIR, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["('bwrap', '')", "passed"], r.stdout


def test_an_installed_bwrap_that_fails_is_not_said_to_be_missing(monkeypatch):
    monkeypatch.setitem(sandbox._STATUS, "bwrap", (None, "bwrap: execvp /x/python: No such file or directory"))
    with pytest.raises(sandbox.SandboxUnavailable) as e:
        sandbox.require_sandbox(False)
    msg = str(e.value)
    assert "apt-get install" not in msg and "is installed" in msg and "--unsafe-exec" in msg


NONROOT_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from judge.sandbox import check_answer, sandbox_status
assert sandbox_status()[0] == "bwrap", sandbox_status()
v = check_answer(sys.argv[2], sys.argv[3], "add")
print(v.reason, v.infra)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists() or not Path("/usr/bin/python3").exists(),
                    reason="needs root to start an unprivileged judge (setpriv) with the system Python")
def test_without_root_a_killed_runner_is_still_the_answers_zero():
    """Not root: bwrap runs in a user namespace and the answer shares its runner's uid, so it can
    kill the runner. The judge (here uid 65534, the system Python, the sandbox's own files copied
    to a world-readable folder) still scores it 0, hack_suspected, never a sandbox failure."""
    import shutil
    import tempfile

    pkg = Path(tempfile.mkdtemp(prefix="i20-nonroot-"))
    try:
        (pkg / "judge").mkdir()
        (pkg / "judge" / "__init__.py").write_text("")
        for f in ("sandbox.py", "sandbox_harness.py", "sandbox_wire.py", "sandbox_seccomp.py"):
            shutil.copy(ROOT_DIR / "judge" / f, pkg / "judge" / f)
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        r = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            "-c", NONROOT_PROBE, str(pkg), DISGUISED, TESTS], cwd="/", capture_output=True, text=True)
        if "AssertionError" in r.stderr and "bwrap" in r.stderr:
            pytest.skip(f"bwrap cannot start without root here: {r.stderr.strip().splitlines()[-1]}")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["hack_suspected", "False"], r.stdout
    finally:
        shutil.rmtree(pkg, ignore_errors=True)
