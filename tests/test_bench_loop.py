"""bench/loop.py --from-corpus: the DPO-vs-GRPO comparison reuses a corpus that holds round 0's replies
alone; a corpus with a later round's replies, a missing file or a file that is not a corpus is refused
with exit 2 and one line, before any model loads. A real DuckDB corpus; the replies are written through
the corpus API (no model runs here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corpus import Corpus, Generation, Prompt

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "loop.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _corpus(path: Path, models: list[str]) -> Path:
    c = Corpus(path)
    p = Prompt(messages=[{"role": "user", "content": "Answer in lowercase: what is a corpus?"}], source="test")
    c.insert([p, *(Generation(prompt_id=p.id, backend="hf", model=m, params={}, sample_idx=i, response=f"reply {i}")
                   for i, m in enumerate(models))])
    c.close()
    return path


def test_from_corpus_refuses_a_corpus_with_a_later_rounds_replies(tmp_path):
    db = _corpus(tmp_path / "two.duckdb", ["base", "round-0/policy"])
    r = _bench("--preset", "cpu", "--from-corpus", str(db), "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert "holds replies of 2 models" in err and "--rounds 1" in err
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists(), "nothing is written before the corpus is accepted"


def test_from_corpus_refuses_missing_and_non_corpus_files(tmp_path):
    r = _bench("--from-corpus", str(tmp_path / "nope.duckdb"))
    assert r.returncode == 2 and "no such file" in r.stderr.splitlines()[-1]
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n")
    r = _bench("--from-corpus", str(junk))
    assert r.returncode == 2 and "not a corpus" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr

