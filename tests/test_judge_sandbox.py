"""code_exec ground truth: HumanEval's 164 canonical solutions pass and their mutants fail, with
the answers shaped as a model writes them (bare code, fenced code, a body-only completion), through
the verifier function and, for a subset, through the real `python -m judge` command. Also: code
extraction shapes, tests given as a list, and the refusal when bwrap cannot start. Everything
runs real sandboxes; nothing is faked."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_judge_helpers import PROMPTS, ROOT_DIR, add_candidates

from corpus import Corpus
from judge.extract import extract_code, read_tests
from judge.rubric import VerifierSpec
from judge.sandbox import check_answer, sandbox_status
from judge.verifiers import code_exec, code_exec_cases

pytestmark = pytest.mark.skipif(sandbox_status()[0] is None, reason=f"bwrap sandbox unavailable: {sandbox_status()[1]}")

_FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv,
         ast.In: ast.NotIn, ast.NotIn: ast.In, ast.And: ast.Or, ast.Or: ast.And, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SPEC = VerifierSpec(type="code_exec", tests="meta:test", entry_point="meta:entry_point", timeout_s=10)


def _entry(tree: ast.AST, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def flip_operator(src: str, name: str) -> str | None:
    """The first comparison / arithmetic / boolean operator in the function, inverted."""
    tree = ast.parse(src)
    for n in ast.walk(_entry(tree, name)):
        if isinstance(n, ast.Compare):
            for i, op in enumerate(n.ops):
                if type(op) in _FLIP:
                    n.ops[i] = _FLIP[type(op)]()
                    return ast.unparse(tree)
        elif isinstance(n, (ast.BinOp, ast.BoolOp)) and type(n.op) in _FLIP:
            n.op = _FLIP[type(n.op)]()
            return ast.unparse(tree)
    return None


def remove_return(src: str, name: str) -> str | None:
    """The first `return <value>` in the function becomes a bare `return`."""
    tree = ast.parse(src)
    for n in ast.walk(_entry(tree, name)):
        if isinstance(n, ast.Return) and n.value is not None:
            n.value = None
            return ast.unparse(tree)
    return None


def off_by_one(src: str, name: str) -> str | None:
    """The first integer constant in the function, plus one."""
    tree = ast.parse(src)
    for n in ast.walk(_entry(tree, name)):
        if isinstance(n, ast.Constant) and type(n.value) is int:
            n.value += 1
            return ast.unparse(tree)
    return None


MUTATORS = [flip_operator, remove_return, off_by_one]


def as_model_writes(i: int, code: str, body: str | None = None) -> str:
    """Rotate over the shapes answers come in: bare code, a fenced block among prose (after a
    bash block), a ~~~py fence inside a list item, and HumanEval's body-only completion."""
    shape = i % 4
    if shape == 0:
        return code
    if shape == 1:
        return f"Install nothing:\n```bash\npip list\n```\nHere is the solution:\n```python\n{code}\n```\nIt runs in O(n)."
    if shape == 2:
        indented = "\n".join("   " + line if line else line for line in code.splitlines())
        return f"1. The function:\n\n   ~~~py\n{indented}\n   ~~~\n\n2. Done."
    return body if body is not None else code


def mutant(t: dict, i: int) -> tuple[str, str] | None:
    for k in range(3):
        mutator = MUTATORS[(i + k) % 3]
        m = mutator(t["prompt"] + t["canonical_solution"], t["entry_point"])
        if m is not None:
            return mutator.__name__, m
    return None


@pytest.fixture(scope="module")
def humaneval():
    path = ROOT_DIR.parent / "shared" / "data" / "humaneval.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return [json.loads(line) for line in path.open()]


def test_humaneval_canonical_pass_and_mutants_fail(humaneval):
    """All 164 canonical solutions pass in the shape a model writes them. Each task also gets one
    mutant. A mutation can be equivalent (dead code, a constant the tests never reach), so a few
    survive; measured on this data with the old sandbox: 3 of 141 flips, 1 of 164 removed
    returns, 18 of 128 off-by-ones. The asserts allow that and no more."""
    items, kinds = [], []
    for i, t in enumerate(humaneval):
        prompt = {"messages": [{"role": "user", "content": t["prompt"]}], "meta": {"test": t["test"], "entry_point": t["entry_point"]}}
        items.append((prompt, as_model_writes(i, t["prompt"] + t["canonical_solution"], t["canonical_solution"])))
        kinds.append("canonical")
        m = mutant(t, i)
        if m:
            items.append((prompt, as_model_writes(i + 1, m[1])))
            kinds.append(m[0])
    results = code_exec(SPEC, items, workers=2)
    canon = [r for r, k in zip(results, kinds) if k == "canonical"]
    failed = [(humaneval[i]["task_id"], r.detail) for i, r in enumerate(canon) if r.score != 1.0]
    assert not failed, f"canonical solutions failed: {failed[:3]}"
    assert all(r.detail["isolation"] == "bwrap" for r in results)
    for kind in ("flip_operator", "remove_return", "off_by_one"):
        rs = [r for r, k in zip(results, kinds) if k == kind]
        killed = sum(r.score == 0.0 for r in rs)
        assert len(rs) >= 40 and killed / len(rs) >= (0.8 if kind == "off_by_one" else 0.95), (kind, killed, len(rs))


def test_humaneval_through_the_judge_command(humaneval, tmp_path):
    """`python -m judge --rubric prompts/code.yaml` as a user runs it: canonical answers (bare
    and fenced) score 1, a mutant and an os._exit trick score 0; judgments record the sandbox."""
    db = tmp_path / "c.duckdb"
    corpus = Corpus(db)
    expect = {}
    for i, t in enumerate(humaneval[:: 41]):  # 4 tasks spread over the set
        full = t["prompt"] + t["canonical_solution"]
        name, bad = mutant(t, i)
        answers = [full, f"```python\n{full}\n```", f"```python\n{bad}\n```", f"{bad}\nimport os\nos._exit(0)\n"]
        gens = add_candidates(corpus, [(t["prompt"], answers)], meta={"test": t["test"], "entry_point": t["entry_point"]})
        expect.update({g.id: s for g, s in zip(gens, [1.0, 1.0, 0.0, 0.0])})
    corpus.close()
    r = subprocess.run([sys.executable, "-m", "judge", "--rubric", str(PROMPTS / "code.yaml"), "--db", str(db),
                        "--judge-backend", "fake", "--quiet"], cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    c = Corpus(db)
    rows = c.query("SELECT target_id, score, sandbox, meta FROM judgments WHERE judge = 'verifier:code_exec'")
    assert {row["target_id"]: row["score"] for row in rows} == expect
    assert {row["sandbox"] for row in rows} == {"bwrap"}
    reasons = {json.loads(row["meta"])["detail"]["reason"] for row in rows}
    assert "hack_suspected" in reasons and "passed" in reasons
    config = json.loads(c.query("SELECT config FROM runs")[0]["config"])
    assert config["code_exec_isolation"] == "bwrap" and config["unsafe_exec"] is False


def test_without_bwrap_the_judge_refuses_unless_unsafe(tmp_path, humaneval):
    """No bwrap on PATH: one line, exit 2, nothing written; with --unsafe-exec it runs and says so."""
    db = tmp_path / "c.duckdb"
    corpus = Corpus(db)
    t = humaneval[0]
    add_candidates(corpus, [(t["prompt"], [t["prompt"] + t["canonical_solution"]])], meta={"test": t["test"], "entry_point": t["entry_point"]})
    corpus.close()
    nobwrap = tmp_path / "bin"
    nobwrap.mkdir()
    env = {**os.environ, "PATH": str(nobwrap)}
    argv = [sys.executable, "-m", "judge", "--rubric", str(PROMPTS / "code.yaml"), "--db", str(db), "--judge-backend", "fake", "--quiet"]
    r = subprocess.run(argv, cwd=ROOT_DIR, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "bwrap is not installed" in r.stderr and "apt-get install bubblewrap" in r.stderr and "--unsafe-exec" in r.stderr
    assert Corpus(db).query("SELECT count(*) AS n FROM runs")[0]["n"] == 0
    r = subprocess.run(argv + ["--unsafe-exec"], cwd=ROOT_DIR, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    c = Corpus(db)
    row = c.query("SELECT score, sandbox FROM judgments WHERE judge = 'verifier:code_exec'")[0]
    assert row == {"score": 1.0, "sandbox": "unsafe"}
    assert json.loads(c.query("SELECT config FROM runs")[0]["config"])["unsafe_exec"] is True


# -- code extraction: one test per shape --------------------------------------------------------

ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("answer", [
    ADD,                                                                   # plain code, no fences
    f"```python\n{ADD}```",                                                # ``` python
    f"~~~python\n{ADD}~~~",                                                # ~~~ fence
    f"```python3\n{ADD}```", f"```py\n{ADD}```",                           # other info strings
    f"Run it:\n```bash\npython add.py\n```\nThe code:\n```python\n{ADD}```\n",  # a bash block first
    "Steps:\n\n1. Write it:\n\n    ```python\n" + "".join("    " + ln + "\n" for ln in ADD.splitlines()) + "    ```\n",  # in a list item
    f"```python\n{ADD}```\nUsage:\n```python\nprint(add(1, 2))\n```\n",   # the block that defines the entry point
    f"```\n{ADD}```",                                                      # an untagged fence
])
def test_extract_code_shapes(answer):
    assert extract_code(answer, "add").strip() == ADD.strip()


def test_extract_code_assembles_the_defining_blocks_in_order():
    text = "```python\nx = 1\n```\ntext\n```python\ny = 2\n```\n```text\nnot code\n```"
    assert extract_code(text) == "x = 1\n\ny = 2\n"
    assert extract_code("```bash\nls\n```") == ""


HELPER = "def _sq(x):\n    return x * x\n"
USES_HELPER = "def sum_sq(a, b):\n    return _sq(a) + _sq(b)\n"


@pytest.mark.parametrize("answer,want", [
    (f"Helper:\n```python\n{HELPER}```\nSolution:\n```python\n{USES_HELPER}```", HELPER + "\n" + USES_HELPER),
    (f"```python\n{USES_HELPER}```\nExample:\n```python\nprint(sum_sq(1, 2))\n```", USES_HELPER),   # usage block dropped
    ("```python\ndef sum_sq(a, b):\n    return 0\n```\nFixed:\n```python\n" + HELPER + USES_HELPER + "```",
     "def sum_sq(a, b):\n    return 0\n\n" + HELPER + USES_HELPER),                                   # the later def wins
    (f"```python\n{USES_HELPER}```\n```pycon\n>>> sum_sq(1, 2)\n5\n```", USES_HELPER),             # a session is not code
    ("```python\ntry:\n    import numpy as np\nexcept ImportError:\n    np = None\n```\n" + f"```python\n{USES_HELPER}```",
     "try:\n    import numpy as np\nexcept ImportError:\n    np = None\n\n" + USES_HELPER),                # a guarded import
])
def test_extract_code_helpers_and_usage(answer, want):
    assert extract_code(answer, None) == want
    assert extract_code(answer, "sum_sq") == want


def test_extract_code_keeps_a_broken_solution_block():
    """The block that defines the entry point does not parse: the answer fails as written,
    rather than being judged on its other blocks."""
    text = "```python\nimport math\n```\n```python\ndef f(x):\n    return (x\n```"
    assert "def f(x)" in extract_code(text, "f")


def test_read_tests_from_string_or_list():
    assert read_tests("assert f(1) == 2") == "assert f(1) == 2"
    assert read_tests(["assert f(1) == 2", "assert f(2) == 3"]) == "assert f(1) == 2\nassert f(2) == 3\n"
    assert read_tests([]) is None and read_tests(None) is None and read_tests([1]) is None


def test_mbpp_style_test_list_through_the_verifier():
    spec = VerifierSpec(type="code_exec", tests="meta:test_list", entry_point="meta:entry_point")
    prompt = {"messages": [{"role": "user", "content": "Write add."}],
              "meta": {"test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}}
    good, bad = code_exec(spec, [(prompt, f"```python\n{ADD}```"), (prompt, "def add(a, b):\n    return a * b\n")])
    assert good.score == 1.0 and bad.score == 0.0 and bad.detail["reason"] == "failed_assertion"
    missing = code_exec(spec, [({"meta": {}}, ADD)])[0]
    assert missing.score is None and "no tests" in missing.error


AREA = "def area(r):\n    return math.pi * r * r\n"
AREA_TESTS = ["assert math.isclose(area(2), 12.566, rel_tol=0.001)", "assert math.isclose(area(1), 3.1416, rel_tol=0.001)"]


@pytest.mark.parametrize("imports_key,meta_imports", [(None, ["import math"]), ("meta:imports", "import math\n")])
def test_mbpp_test_imports_reach_the_tests_not_the_answer(imports_key, meta_imports):
    """MBPP's `test_imports` (read by default, or from the key the rubric names) run in the tests'
    namespace: the right answer that imports math passes, one that forgot to import it fails as
    written, and a fake `math` in the answer does not serve the tests."""
    spec = VerifierSpec(type="code_exec", tests="meta:test_list", imports=imports_key)
    meta = {"test_list": AREA_TESTS, (imports_key or "meta:test_imports")[5:]: meta_imports}
    prompt = {"messages": [{"role": "user", "content": "Write area(r)."}], "meta": meta}
    answers = ["import math\n" + AREA, AREA, "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n"
               "def area(r):\n    return 0\n", f"```python\nimport math\n```\nThen:\n```python\n{AREA}```"]
    scores = [r.score for r in code_exec(spec, [(prompt, a) for a in answers])]
    assert scores == [1.0, 0.0, 0.0, 1.0]


def test_broken_test_imports_are_named():
    spec = VerifierSpec(type="code_exec", tests="meta:test_list")
    prompt = {"meta": {"test_list": AREA_TESTS, "test_imports": ["import math as"]}}
    [r] = code_exec(spec, [(prompt, AREA)])
    assert r.score is None and "meta:test_imports" in r.error


def test_body_only_completion_uses_the_prompt_stub():
    prompt = {"messages": [{"role": "user", "content": 'def add(a, b):\n    """Sum."""\n'}],
              "meta": {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}}
    cases, _, _ = code_exec_cases(SPEC, [(prompt, "    return a + b\n")])
    assert cases[0]["code"].startswith("def add(a, b):") and cases[0]["prefix"]
    assert code_exec(SPEC, [(prompt, "    return a + b\n")])[0].score == 1.0


def test_prompt_helpers_serve_the_tests_not_the_answers_copies():
    """HumanEval/38-style: the tests call encode(), defined by the prompt. An answer that redefines
    encode() to make any decode() look right does not pass."""
    stub = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    '''Undo encode.'''\n"
    tests = "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n"
    hack = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    v = check_answer(hack, tests, "decode", prefix=stub)
    assert v.reason == "failed_assertion"
    assert check_answer(stub + "    return s[::-1]\n", tests, "decode", prefix=stub).passed


VALUES = '''
import collections, decimal, fractions, math

class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b

def chain(pairs):
    return sum(p.b - p.a for p in pairs)

def values(kind):
    return {"tuple": (1, "a"), "set": {1, 2}, "dict": {(1, 2): [3.5, None]}, "big": 3 ** 5000, "nan": math.nan,
            "bytes": b"\\x00\\xff", "complex": 1 + 2j, "range": range(3), "deque": collections.deque([1]),
            "counter": collections.Counter("aab"), "decimal": decimal.Decimal("1.10"), "fraction": fractions.Fraction(3, 4),
            "bool": True, "none": None, "negzero": -0.0}[kind]

def count(n, step=1):
    yield from range(0, n, step)

def strict(x):
    if x < 0:
        raise ValueError("negative")
    return x
'''

VALUE_TESTS = '''
import collections, decimal, fractions, math
assert values("tuple") == (1, "a") and type(values("tuple")) is tuple
assert values("set") == {1, 2} and values("dict") == {(1, 2): [3.5, None]}
assert values("big") == 3 ** 5000 and math.isnan(values("nan")) and values("bytes") == b"\\x00\\xff"
assert values("complex") == 1 + 2j and values("range") == range(3) and values("deque") == collections.deque([1])
assert values("counter").most_common(1) == [("a", 2)] and values("decimal") == decimal.Decimal("1.10")
assert values("fraction") == fractions.Fraction(3, 4) and values("bool") is True and values("none") is None
assert math.copysign(1, values("negzero")) == -1
assert chain([Pair(1, 5), Pair(2, 3)]) == 5
assert list(count(5, step=2)) == [0, 2, 4] and next(count(3)) == 0 and 4 in count(5)
try:
    strict(-1)
    raise RuntimeError("no exception")
except ValueError as e:
    assert "negative" in str(e)
'''


def test_values_cross_faithfully():
    """What a correct answer returns reaches the tests as the same value and type: containers,
    big ints, NaN, bytes, ranges, stdlib value types; objects of its own classes go back to it as
    arguments; generators iterate; its exceptions are caught as their built-in type."""
    v = check_answer(VALUES, VALUE_TESTS)
    assert v.passed, (v.reason, v.detail, v.stderr[-500:])


def test_a_python_installed_under_tmp_is_bound_over_the_private_tmp(monkeypatch):
    """CI clones into a temporary folder: a venv under /tmp must be mounted after the sandbox's own
    /tmp tmpfs, or the tmpfs hides the interpreter (bwrap: execvp ... No such file or directory)."""
    from judge import sandbox

    monkeypatch.setattr(sandbox, "_bind_roots", lambda: ["/tmp/ci-clone/.venv"])
    cmd = sandbox.bwrap_command("/tmp/ci-clone/.venv/bin/python")
    tmpfs = cmd.index("--tmpfs", 0) if cmd[cmd.index("--tmpfs") + 1] == "/tmp" else None
    assert tmpfs is not None
    bind = [i for i in range(len(cmd) - 2) if cmd[i] == "--ro-bind" and cmd[i + 1] == "/tmp/ci-clone/.venv"]
    assert bind and bind[0] > tmpfs
    assert ["--dir", "/tmp"] not in [cmd[i:i + 2] for i in range(len(cmd) - 1)]  # the tmpfs keeps its 1777
