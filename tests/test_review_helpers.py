"""Builders for review tests: a corpus with prompts, candidates, judgments, jury scores and
flags written directly, so every stratum and dispute is known exactly.

The filters stage owns accepted_sft / preference_pairs; these tests replace them with minimal
stand-in views that have the contract's columns (every model generation is "accepted"), so the
review tests do not depend on a filters run.
"""

from __future__ import annotations

from corpus import Corpus, Flag, Generation, Judgment, Pair, Prompt

JUDGES = ("fake:judge-a", "fake:judge-b")
CRITERIA = ("helpful", "correct")


def standin_filter_views(corpus: Corpus) -> None:
    corpus.execute(
        "CREATE OR REPLACE VIEW accepted_sft AS "
        "SELECT g.id, g.prompt_id, "
        "  to_json(list_concat(CAST(p.messages AS JSON[]), [json_object('role', 'assistant', 'content', g.response)])) AS messages, "
        "  gs.score_norm "
        "FROM generations g JOIN prompts p ON p.id = g.prompt_id "
        "LEFT JOIN generation_scores gs ON gs.generation_id = g.id WHERE g.provenance = 'model'"
    )
    corpus.execute(
        "CREATE OR REPLACE VIEW preference_pairs AS "
        "SELECT pr.id, pr.prompt_id, p.messages AS prompt, "
        "  to_json([json_object('role', 'assistant', 'content', c.response)]) AS chosen, "
        "  to_json([json_object('role', 'assistant', 'content', r.response)]) AS rejected, pr.margin, pr.method "
        "FROM pairs pr JOIN prompts p ON p.id = pr.prompt_id "
        "JOIN generations c ON c.id = pr.chosen_id JOIN generations r ON r.id = pr.rejected_id"
    )


def add_item(
    corpus: Corpus, i: int, scores: dict[str, int], response: str | None = None,
    judge_scores: dict[str, dict[str, int]] | None = None, rubric: str = "general", prompt: str | None = None,
) -> str:
    """One prompt + candidate; `scores` per criterion on a 1-5 scale become the jury score
    (score_norm = (s - 1) / 4); `judge_scores[judge][criterion]` are per-judge raw scores
    (default: every judge gives the jury score). Returns the generation id."""
    p = Prompt(messages=[{"role": "user", "content": prompt or f"question {i}?"}], source="test")
    g = Generation(prompt_id=p.id, backend="fake", model="fake-model", params={"t": 0}, sample_idx=i,
                   response=response if response is not None else f"answer {i}")
    judgments = []
    for judge in JUDGES:
        for crit, s in scores.items():
            raw = (judge_scores or {}).get(judge, {}).get(crit, s)
            judgments.append(Judgment(target_id=g.id, judge=judge, rubric=rubric, rubric_version="v1",
                                      criterion=crit, score=raw, rationale=f"{judge} says {raw}"))
    with corpus.session():  # one open of the file for the whole item: tests stay fast
        corpus.insert([p, g, *judgments])
        for crit, s in scores.items():
            corpus.execute(
                "INSERT INTO criterion_scores (id, generation_id, prompt_id, rubric, rubric_version, criterion, score, "
                "score_norm, weight, n_judgments) VALUES (?, ?, ?, ?, 'v1', ?, ?, ?, 1, ?)",
                [f"{g.id}:{crit}", g.id, p.id, rubric, crit, s, (s - 1) / 4, len(JUDGES)],
            )
    return g.id


def flag(corpus: Corpus, gid: str, kind: str) -> None:
    corpus.insert([Flag(target_id=gid, kind=kind, stage="judge", reason="test")])


def pair(corpus: Corpus, chosen: str, rejected: str) -> str:
    pid = corpus.query("SELECT prompt_id FROM generations WHERE id = ?", [chosen])[0]["prompt_id"]
    pr = Pair(prompt_id=pid, chosen_id=chosen, rejected_id=rejected, margin=0.5, method="test")
    corpus.insert([pr])
    return pr.id


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReviewServer:
    """`python -m review serve` as a real subprocess on a free loopback port."""

    def __init__(self, db: str, *args: str):
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "review", "--db", db, "serve", "--port", str(self.port), *args],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> "ReviewServer":
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"review server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)  # polling for readiness, not timing anything
        raise RuntimeError("review server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def login(client, token: str) -> None:
    """Log an httpx client in through the real login form (CSRF nonce included)."""
    import re

    page = client.get("/login")
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"token": token, "csrf_token": nonce})
    assert r.status_code == 303, r.text


def page_csrf(html: str) -> str:
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


ROOT_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent
