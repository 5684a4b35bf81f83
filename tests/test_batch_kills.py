"""SIGKILL a `generate --batch` process 20 times at every step of batch mode (upload, create,
list, poll, download), the server having done the work each time but the client never hearing
of it; then let it finish. The server's ledger: every request answered once, none paid twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import Corpus

batch_server = pytest.importorskip("openai_batch_server")
ROOT = Path(__file__).resolve().parent.parent


def test_twenty_kills_pay_nothing_twice(tmp_path):
    prompts, db = tmp_path / "p.jsonl", tmp_path / "c.duckdb"
    child: dict[str, subprocess.Popen] = {}
    plan = {"k": 0, "seen": 0, "kills": 0}

    def maybe_kill(route: str) -> None:
        plan["seen"] += 1
        proc = child.get("p")
        if proc is not None and plan["k"] and plan["seen"] == plan["k"]:
            os.kill(proc.pid, signal.SIGKILL)
            plan["kills"] += 1

    def run(k: int) -> int:
        plan.update(k=k, seen=0)
        cmd = [sys.executable, "-m", "generate", "--prompts", str(prompts), "--db", str(db), "--n", "1",
               "--backend", "openai", "--model", "m", "--base-url", srv.base_url, "--batch", "--batch-poll", "0.05",
               "--batch-max-requests", "4", "--no-progress", "--temperature", "0", "--max-new-tokens", "4"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-kill-test"}
        child["p"] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = child["p"].communicate(timeout=120)
        rc = child.pop("p").returncode
        assert rc in (0, -signal.SIGKILL), err.decode()[-2000:]
        return rc

    with batch_server.BatchServer(polls_to_finish=2, on_answer=maybe_kill) as srv:
        texts: list[str] = []
        i = 0
        while plan["kills"] < 20:
            texts += [f"prompt {i}-a", f"prompt {i}-b", f"prompt {i}-c"]  # new work each round, over the 4-line limit
            prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
            run(k=1 + i % 5)  # the 1st to 5th request: upload, list, create, retrieve, content, ...
            i += 1
            assert i < 60, "the kills stopped happening"
        assert run(k=0) == 0  # and now let it finish
        assert srv.paid_twice() == []
        assert sorted(set(srv.paid)) == sorted(srv.paid) and len(set(srv.paid)) == len(texts)
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM generations")[0]["n"] == len(texts)
    assert c.query("SELECT count(*) AS n FROM batches WHERE NOT collected")[0]["n"] == 0
