"""Nothing paid twice: a real `python -m generate` job against the loopback OpenAI-protocol server
(tests/openai_server.py) is killed with SIGKILL 20 times at seeded random moments and rerun each
time. Answers are saved to `calls` as they arrive, so the server's ledger of answers written may
exceed the planned requests by at most kills x concurrency (what was in flight at each kill),
and the corpus ends with every planned candidate exactly once.

The kill moments vary with the machine's speed (each is a seeded random delay after the job's
first request of that run reaches the server); the assertions are bounds that hold wherever the
kill lands.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from backends import SamplingParams
from corpus import Corpus, run_cli
from generate.cli import main
from generate.job import plan
from generate.sources import load_prompts

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS, N, CONCURRENCY, KILLS = 150, 2, 4, 20


def test_twenty_sigkills_pay_at_most_the_requests_in_flight(tmp_path, capsys):
    from openai_server import OpenAIServer

    prompts_file = tmp_path / "p.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"Count to {i}."}) + "\n" for i in range(N_PROMPTS)))
    db = tmp_path / "c.duckdb"
    planned = N_PROMPTS * N
    rng = random.Random(11)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with OpenAIServer(latency_s=0.03) as srv:
        argv = ["--prompts", str(prompts_file), "--db", str(db), "--n", str(N), "--backend", "openai", "--model", "m",
                "--base-url", srv.base_url, "--concurrency", str(CONCURRENCY), "--max-new-tokens", "4", "--no-progress"]
        kills = 0
        for _ in range(KILLS):
            before = srv.count()
            child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 120
                while srv.count() == before and child.poll() is None:  # wait for this run's first request
                    assert time.monotonic() < deadline, "the job sent nothing in 120 s"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.4))
                if child.poll() is None:
                    child.send_signal(signal.SIGKILL)
                    kills += child.wait(timeout=30) == -signal.SIGKILL
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            assert child.returncode in (0, -signal.SIGKILL), child.stderr.read().decode()[-800:]
            if child.returncode == 0:
                break
        assert run_cli("generate", main, argv) == 0
        capsys.readouterr()
        sent = srv.answers_sent()
    print(f"{kills} kills, {sent} answers sent for {planned} planned (bound {planned + kills * CONCURRENCY})")
    assert kills >= KILLS // 2, f"only {kills} kills landed before the job finished: make the job longer"
    assert planned <= sent <= planned + kills * CONCURRENCY, (sent, planned, kills)

    records, _ = load_prompts(prompts_file)
    backend = SimpleNamespace(name="openai", model_id="m")
    expected = {t.generation_id for t in plan(records, backend, N, SamplingParams(temperature=0.7, max_new_tokens=4), 0, None)}
    c = Corpus(db)
    rows = c.query("SELECT id FROM generations")
    assert len(rows) == planned and {r["id"] for r in rows} == expected
    assert c.query("SELECT count(*) AS n FROM calls WHERE status = 'ok'")[0]["n"] == planned
    assert c.query("SELECT count(*) AS n FROM failures")[0]["n"] == 0
    statuses = [r["status"] for r in c.query("SELECT status FROM runs ORDER BY started_at")]
    assert statuses[-1] == "ok" and "running" not in statuses  # the reruns marked the killed runs
    c.close()
