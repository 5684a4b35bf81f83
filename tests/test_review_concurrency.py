"""Reviewers post verdicts while a real `python -m generate` job writes the same corpus file.

DuckDB lets one process write at a time; the design is short transactions with retry on the
lock (corpus/store.py), and a server that never holds the file between requests. This test
runs both for real and checks that no decision and no generated row is lost. The generate job
uses the scripted `fake` backend: the point is its writes, not its text.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from review import add_reviewer, sample_queue
from test_review_helpers import ROOT_DIR, ReviewServer, add_item, login, page_csrf

N_PROMPTS, N_CANDIDATES, N_ITEMS = 40, 2, 8


def test_no_decision_and_no_row_lost_under_a_concurrent_generate_job(corpus, tmp_path):
    with corpus.session():
        gids = [add_item(corpus, i, {"helpful": 1 + i % 5}) for i in range(N_ITEMS)]
        sample_queue(corpus, size=N_ITEMS, population="judged")
        tokens = {name: add_reviewer(corpus, name) for name in ("ann", "bob")}
    items = [r["id"] for r in corpus.query("SELECT id FROM review_sample ORDER BY priority")]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"concurrency prompt {i}?"}) + "\n" for i in range(N_PROMPTS)))

    server = ReviewServer(corpus.path).wait_ready()
    clients = {name: httpx.Client(base_url=server.url, timeout=180) for name in tokens}
    posted: list[tuple[str, str, str]] = []  # (reviewer, note, verdict)
    during = 0
    job = None
    try:
        for name, c in clients.items():
            login(c, tokens[name])
        csrf = {name: page_csrf(c.get(f"/item/{items[0]}").text) for name, c in clients.items()}
        job = subprocess.Popen(
            [sys.executable, "-m", "generate", "--db", corpus.path, "--prompts", str(prompts), "--backend", "fake",
             "--n", str(N_CANDIDATES), "--chunk-size", "2", "--no-progress"],
            cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        k = 0
        # keep clicking until the job is done; every item gets verdicts, later ones replace earlier
        while job.poll() is None or k < 2 * N_ITEMS:
            name = "ann" if k % 2 == 0 else "bob"
            verdict = "approve" if k % 3 else "reject"
            note = f"decision {k}"
            r = clients[name].post(f"/item/{items[k % N_ITEMS]}/verdict",
                                   data={"verdict": verdict, "note": note, "csrf_token": csrf[name]})
            assert r.status_code == 303 and "error" not in r.headers["location"], r.text
            posted.append((name, note, verdict))
            during += job.poll() is None
            k += 1
        out = job.communicate(timeout=300)[0]
    finally:
        for c in clients.values():
            c.close()
        server.stop()
        if job and job.poll() is None:
            job.kill()
    print(f"verdicts posted {len(posted)}, during the job {during}")
    assert job.returncode == 0, out
    assert during >= 5, f"only {during} verdicts overlapped the job; the test did not test concurrency"

    stored = {(r["reviewer"], r["note"], r["verdict"]) for r in corpus.query("SELECT reviewer, note, verdict FROM reviews")}
    assert stored == set(posted) and len(posted) == len(stored)
    n_gen = corpus.query("SELECT count(*) AS n FROM generations WHERE id NOT IN (SELECT unnest(?))", [gids])[0]["n"]
    assert n_gen == N_PROMPTS * N_CANDIDATES
    run = corpus.query("SELECT status FROM runs WHERE command = 'generate'")
    assert [r["status"] for r in run] == ["ok"]
    # the latest verdict per reviewer and item is the last one posted
    last = {}
    for i, (name, note, verdict) in enumerate(posted):
        last[(name, items[i % N_ITEMS])] = verdict
    sample_target = {r["id"]: r["target_id"] for r in corpus.query("SELECT id, target_id FROM review_sample")}
    current = {(r["reviewer"], r["target_id"]): r["verdict"] for r in corpus.query("SELECT * FROM review_verdicts")}
    assert current == {(n, sample_target[s]): v for (n, s), v in last.items()}
