"""A stopped judge keeps what it judged: judgments are stored as each answer is final, not per
chunk of 256, so a real `python -m judge` stopped with SIGINT or killed with SIGKILL half way keeps
every judgment whose answer it had saved, and the rerun asks only for the rest.

The judge runs against the loopback OpenAI-protocol server (tests/openai_server.py) with one
request in flight, so the server's ledger says how many answers the judge had been sent: at the
stop at most one of them (the one in transit) may lack its judgment. The logprob path (hf scorer,
no call cache) is stopped in-process after its second forward batch, on a tiny real model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_judge_helpers import PROMPTS, add_candidates, verdict, write_rubric

from backends.hf import HFBackend
from corpus import Corpus, run_cli
from judge import run_judge
from judge.cli import main

ROOT = Path(__file__).resolve().parent.parent
N = 40  # candidates: one judgment each under helpfulness.yaml


def _judgments(db: Path) -> int:
    c = Corpus(db, read_only=True)
    try:
        return c.query("SELECT count(*) AS n FROM judgments")[0]["n"]
    finally:
        c.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_stopped_judge_keeps_every_finished_judgment_and_the_rerun_asks_only_the_rest(tmp_path, sig):
    from openai_server import OpenAIServer

    db = tmp_path / "c.duckdb"
    c = Corpus(db)
    add_candidates(c, [(f"Question {i}?", [f"Answer number {i}."]) for i in range(N)])
    c.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with OpenAIServer(latency_s=0.05, reply=lambda body: verdict(4)) as srv:
        argv = ["--rubric", str(PROMPTS / "helpfulness.yaml"), "--db", str(db), "--judge-backend", "openai",
                "--judge-model", "m", "--judge-base-url", srv.base_url, "--judge-concurrency", "1", "--quiet"]
        # a shell without job control starts background jobs with SIGINT ignored, and an ignored
        # SIGINT is inherited and kept by Python (no KeyboardInterrupt): give the judge the default,
        # as a terminal's Ctrl-C would find it, whatever started this test run
        child = subprocess.Popen([sys.executable, "-m", "judge", *argv], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while srv.answers_sent() < 10 and child.poll() is None:
                assert time.monotonic() < deadline, "the judge got fewer than 10 answers in 120 s"
                time.sleep(0.01)
            assert child.poll() is None, "the judge finished before it could be stopped: give it more candidates"
            child.send_signal(sig)
            code = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        err = child.stderr.read().decode() if child.stderr else ""
        assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), err[-800:]
        sent = srv.answers_sent()
        kept = _judgments(db)
        # before: 0 kept (judgments were written per 256); now all but the one in transit
        assert sent - 1 <= kept <= sent and kept >= 9, (kept, sent)
        assert kept < N
        assert run_cli("judge", main, argv) == 0
        rerun_sent = srv.answers_sent() - sent
    # the rerun asked only for what had no saved answer; every candidate has its one judgment
    assert rerun_sent <= N - kept, (rerun_sent, N, kept)
    assert _judgments(db) == N
    c = Corpus(db, read_only=True)
    statuses = [r["status"] for r in c.query("SELECT status FROM runs WHERE command = 'judge' ORDER BY started_at")]
    c.close()
    assert statuses[-1] == "ok" and "running" not in statuses


def test_a_stopped_logprob_judge_keeps_each_finished_batch(corpus, tmp_path, tiny_model_dir, monkeypatch):
    add_candidates(corpus, [(f"Question {i}?", ["Short.", f"A longer answer to question {i}."]) for i in range(6)])
    rubric = write_rubric(tmp_path / "p.yaml", "pairwise_logprob.yaml", {"model: null": f"model: {tiny_model_dir}"})
    hf = HFBackend(str(tiny_model_dir), batch_size=2, device="cpu")
    real, batches = hf.label_logprobs, []

    def stopped_at_the_third_batch(requests, labels):  # as Ctrl-C stops the real scorer
        batches.append(len(requests))
        if len(batches) > 2:
            raise KeyboardInterrupt
        return real(requests, labels)

    monkeypatch.setattr(hf, "label_logprobs", stopped_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_judge(corpus, str(rubric), backend=hf, progress=False, prefix_reuse=False)
    # 6 pairs x 2 orders = 12 judgments in forward batches of 2: the two finished batches are stored
    assert batches[:2] == [2, 2]
    assert corpus.query("SELECT count(*) AS n FROM judgments")[0]["n"] == 4
    monkeypatch.setattr(hf, "label_logprobs", real)
    again = run_judge(corpus, str(rubric), backend=hf, progress=False, prefix_reuse=False)
    assert again["cached"] == 4 and again["judged"] == 8
    assert corpus.query("SELECT count(*) AS n FROM judgments")[0]["n"] == 12
