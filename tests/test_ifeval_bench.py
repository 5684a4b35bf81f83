"""bench/ifeval_agreement.py: the engine's checks against the official IFEval checker (lm-eval's
ifeval modules, installed by `scripts/setup.sh --dev`), run as a user runs it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm-eval is not installed: scripts/setup.sh --dev installs it")


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "ifeval_agreement.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)


def test_the_tricky_replies_mostly_agree_with_the_official_checker():
    r = bench("--test-cases", "--show", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    n, agree = map(int, re.search(r"^all\s+(\d+)\s+(\d+)", r.stdout, re.M).groups())
    assert n >= 60 and agree / n >= 0.85


def test_models_are_compared_on_the_same_prompts_by_the_official_checker(tiny_model_dir, tmp_path):
    """The same model twice: the same greedy replies, so the paired difference is exactly 0;
    --save keeps every reply with its model and checks."""
    out = tmp_path / "replies.jsonl"
    r = bench("--models", f"{tiny_model_dir},{tiny_model_dir}", "--n", "4", "--max-new-tokens", "6", "--save", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith(("/", "..."))]
    assert len(rows) == 2 and rows[0].split()[1] == rows[1].split()[1] == "4"
    assert "+0.000 [+0.000, +0.000]" in rows[1]
    saved = out.read_text().splitlines()
    assert len(saved) == 8 and '"checks"' in saved[0] and '"model"' in saved[0]


def test_a_missing_model_folder_is_one_line_exit_2(tmp_path):
    r = bench("--models", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"ifeval_agreement: --models {tmp_path / 'nope'}: no such model folder"]
