"""The tutorial (docs/tutorial.md) runs as written and prints what it shows; the README's tour is
a digest of that same tested run.

The slow test runs every command of the page in order, through bash (so `yes a | python ...`
is the pipe a reader types), with the real embedded model, from a folder laid out like a
checkout, and compares each ```text block with what the command before it printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA

TUTORIAL = ROOT / "docs" / "tutorial.md"
README = ROOT / "README.md"
# ids are content hashes: a model's hashes its folder's absolute path, so a run elsewhere differs
_HEX_ID = re.compile(r"\b[0-9a-f]{12,}\b")
_FENCE = re.compile(r"^```(bash|text)\n(.*?)^```", re.M | re.S)


def tutorial_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines the page shows for it) in page order: a ```text block belongs
    to the last command of the ```bash block before it. Continuation lines are joined; comments,
    blank lines and `...` rows are dropped."""
    steps: list[tuple[str, list[str]]] = []
    for kind, body in _FENCE.findall(text):
        if kind == "bash":
            joined = re.sub(r"\s*\\\n\s*", " ", body)
            steps += [(line.strip(), []) for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
        elif steps:
            steps[-1][1].extend(line.rstrip() for line in body.splitlines()
                                if line.strip() and not re.fullmatch(r"[│\s]*\.\.\.[│\s]*", line))
    return steps


def _norm(line: str) -> str:
    return _HEX_ID.sub("<id>", line.rstrip())


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines not found, in order, each within one line of `output`."""
    lines = [_norm(x) for x in output.splitlines()]
    at, missing = 0, []
    for want in map(_norm, expected):
        hit = next((i for i in range(at, len(lines)) if want.strip() in lines[i]), None)
        if hit is None:
            missing.append(want)
        else:
            at = hit + 1
    return missing


def test_steps_parser_joins_skips_and_attaches_output():
    text = ("x\n```bash\n# note\npython -m a \\\n    --b c\n\npython -m d\n```\n"
            "```text\n│ n │ 3 │\n│ ... │\nbase-0123456789ab done\n```\n")
    assert tutorial_steps(text) == [("python -m a --b c", []), ("python -m d", ["│ n │ 3 │", "base-0123456789ab done"])]


def test_output_check_is_in_order_and_ids_are_any_id():
    out = "title\n│ sft-aaaaaaaaaaaa  │ sft  │\n│ rows │ 24 │\n"
    assert missing_lines(["│ sft-0123456789ab  │ sft  │", "│ rows │ 24 │"], out) == []
    assert missing_lines(["│ rows │ 23 │"], out) == ["│ rows │ 23 │"]  # a number is compared exactly
    assert missing_lines(["│ rows │ 24 │", "title"], out) == ["title"]  # order matters


def test_the_tutorial_releases_before_it_trains():
    """Issue 20: the tour went sample -> serve -> train sft with no release, so train exited 2."""
    cmds = [c for c, _ in tutorial_steps(TUTORIAL.read_text())]
    at = {name: next(i for i, c in enumerate(cmds) if name in c)
          for name in (" sample ", " next ", " release", "train sft")}
    assert at[" sample "] < at[" next "] < at[" release"] < at["train sft"]
    assert "--auto" not in cmds[at[" release"]]  # a person's verdict, not a skipped gate


def readme_tour() -> list[tuple[str, list[str]]]:
    """The README tour's `$ command` lines with the output lines under each (comments cut)."""
    section = README.read_text().split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```text\n(.*?)^```", section, re.M | re.S)
    assert block, "the tour has one ```text block"
    tour: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        text = re.sub(r"\s+#.*$", "", line).rstrip()
        if line.startswith("$ "):
            tour.append((text[2:].strip(), []))
        elif text and tour:
            tour[-1][1].append(text)
    return tour


def test_the_readme_tour_is_a_digest_of_the_tested_tutorial():
    steps = tutorial_steps(TUTORIAL.read_text())
    shown = {cmd: out for cmd, out in steps}
    tour = readme_tour()
    assert len(tour) >= 8
    order = [c for c, _ in steps]
    positions = []
    for cmd, out in tour:
        assert cmd in shown, f"README tour command not in the tutorial: {cmd}"
        positions.append(order.index(cmd))
        assert missing_lines(out, "\n".join(shown[cmd])) == [], f"README shows output the tutorial does not: {cmd}"
    assert positions == sorted(positions)


@pytest.mark.slow
def test_tutorial_runs_as_written_and_prints_what_it_shows(tmp_path):
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside this checkout")
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "prompts").symlink_to(ROOT / "prompts")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    bin_dir = tmp_path / "bin"  # `python` is this interpreter; a script, since a symlinked venv python loses its venv
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="120",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    steps = tutorial_steps(TUTORIAL.read_text())
    assert len(steps) >= 12
    for cmd, expected in steps:
        assert re.search(r"(^|\| )python -m \w+", cmd), f"tutorial commands run python -m: {cmd}"
        res = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"{cmd}\n{out[-3000:]}"
        assert missing_lines(expected, out) == [], f"{cmd}: the page shows lines it did not print\n{out[-3000:]}"
    assert (work / "models" / "sft-1" / "config.json").exists()
