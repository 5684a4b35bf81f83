"""Resume after SIGKILL: a real `python -m generate` subprocess on the tiny hf model is killed at
several points, the same command is run again, and the corpus must hold exactly the planned
candidates, each once.

The kill point is chosen by watching the corpus file (runs, calls rows) from this process; the
assertions do not depend on where exactly the kill lands, only that it landed before the end.
The model is the loopback OpenAI-protocol server (tests/openai_server.py, a real HTTP server in
its own process) answering each request after 0.25 s, one request at a time: a tiny local model
finishes 16 replies faster than this process can poll on a fast machine, which made the kill
point a race. With a fixed latency the job takes about 4 s and every kill point is reached in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from backends import SamplingParams
from corpus import Corpus, UserError, run_cli
from generate.cli import main
from generate.job import plan
from generate.sources import load_prompts

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS, N = 8, 2
TOTAL = N_PROMPTS * N


def counts(db: Path) -> dict[str, int] | None:
    try:
        c = Corpus(db, create=False, lock_timeout=30)
    except UserError:
        return None  # not created yet
    try:
        return c.query(
            "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM calls) AS calls, "
            "(SELECT count(*) FROM generations) AS generations"
        )[0]
    finally:
        c.close()


LATENCY_S = 0.25


@pytest.mark.parametrize(
    "point, reached",
    [
        ("before_any_flush", lambda c: c["runs"] >= 1),
        ("midway", lambda c: c["calls"] >= TOTAL * 0.4),
        ("near_end", lambda c: c["calls"] >= TOTAL * 0.75),
    ],
)
def test_sigkill_then_rerun_completes_exactly(tmp_path, point, reached, capsys):
    from openai_server import serve_in_subprocess

    with serve_in_subprocess(latency_s=LATENCY_S) as base_url:
        _kill_and_rerun(tmp_path, base_url, point, reached, capsys)


def _kill_and_rerun(tmp_path, base_url, point, reached, capsys):
    prompts_file = tmp_path / "p.jsonl"
    prompts_file.write_text("".join(f'{{"prompt": "Write a line about the number {i}.", "i": {i}}}\n' for i in range(N_PROMPTS)))
    db = tmp_path / "c.duckdb"
    argv = ["--prompts", str(prompts_file), "--db", str(db), "--n", str(N), "--backend", "openai", "--model", "served-model",
            "--base-url", base_url, "--concurrency", "1", "--max-new-tokens", "4", "--chunk-size", "1", "--no-progress"]
    # one thread: on a shared, loaded CPU more threads only add contention
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert child.poll() is None, f"the job ended before the kill point: {child.stderr.read().decode()[-500:]}"
            assert time.monotonic() < deadline, "kill point never reached"
            c = counts(db) if db.exists() else None
            if c is not None and reached(c):
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    after_kill = counts(db)
    assert after_kill["generations"] < TOTAL
    if point == "before_any_flush":
        assert after_kill["generations"] == 0

    assert run_cli("generate", main, argv) == 0
    capsys.readouterr()

    records, _ = load_prompts(prompts_file)
    backend = SimpleNamespace(name="openai", model_id="served-model")
    expected = {t.generation_id for t in plan(records, backend, N, SamplingParams(temperature=0.7, max_new_tokens=4), 0, None)}
    c = Corpus(db)
    rows = c.query("SELECT id, prompt_id, sample_idx FROM generations")
    assert {r["id"] for r in rows} == expected
    assert len(rows) == TOTAL == len({(r["prompt_id"], r["sample_idx"]) for r in rows})
    assert c.query("SELECT count(*) AS n FROM prompts")[0]["n"] == N_PROMPTS
    assert c.query("SELECT count(*) AS n FROM failures")[0]["n"] == 0
    # the rerun called the model only for what the killed job had not saved in `calls`
    last = c.query("SELECT summary FROM runs WHERE status = 'ok'")[0]["summary"]
    last = __import__("json").loads(last)
    assert last["candidates_existing"] == after_kill["generations"]
    assert last["calls_sent"] == TOTAL - after_kill["calls"]
    assert last["calls_cached"] == after_kill["calls"] - after_kill["generations"]
    # the killed job could not record its end; the rerun, on the same host, marked it for it
    assert [r["status"] for r in c.query("SELECT status FROM runs ORDER BY started_at")] == ["killed", "ok"]


def test_sigterm_ends_the_job_as_interrupted_and_a_rerun_finishes(tmp_path, capsys):
    """`kill PID` is Ctrl-C for a job: exit 130, the run recorded 'interrupted', nothing half-written."""
    from openai_server import serve_in_subprocess

    prompts_file = tmp_path / "p.jsonl"
    prompts_file.write_text("".join(f'{{"prompt": "Say {i}."}}\n' for i in range(N_PROMPTS)))
    db = tmp_path / "c.duckdb"
    with serve_in_subprocess(latency_s=LATENCY_S) as base_url:
        argv = ["--prompts", str(prompts_file), "--db", str(db), "--n", str(N), "--backend", "openai", "--model", "m",
                "--base-url", base_url, "--concurrency", "1", "--max-new-tokens", "4", "--chunk-size", "1", "--no-progress"]
        child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        try:
            while not (db.exists() and (c := counts(db)) is not None and c["calls"] >= 3):
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) == 130
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        err = child.stderr.read()
        assert "interrupted; rerun the same command" in err and "Traceback" not in err
        c = Corpus(db)
        assert [r["status"] for r in c.query("SELECT status FROM runs")] == ["interrupted"]
        n_gen = c.query("SELECT count(*) AS n FROM generations")[0]["n"]
        assert 0 < n_gen < TOTAL
        c.close()
        assert run_cli("generate", main, argv) == 0
    capsys.readouterr()
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM generations")[0]["n"] == TOTAL
    assert sorted(r["status"] for r in c.query("SELECT status FROM runs")) == ["interrupted", "ok"]
