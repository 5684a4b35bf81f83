"""SIGKILL of the reward server in the middle of a batch: the corpus opens and is consistent, and
the trainer's retried batch gets the same rewards from a restarted server."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from test_judge_serve import JudgeServer, expected_llm, llm_rubric, served

WORDS = ["great", "bad", "fine", "great work", "bad idea", "so so", "great!", "bad.", "meh", "ok", "great job", "bad job"]


def _items(words: list[str]) -> list[dict[str, str]]:
    return [{"prompt": "Say something.", "response": f"a {w} answer"} for w in words]


def test_sigkill_mid_batch_keeps_the_corpus_and_the_retry_gets_the_same_rewards(tmp_path):
    from corpus import Corpus

    first, second = _items(WORDS[:4]), _items(WORDS[4:])

    class SlowJudge(JudgeServer):
        def completion(self, body):  # noqa: ANN001, ANN201
            time.sleep(0.3)  # so that the kill lands while the batch is being judged
            return super().completion(body)

    with SlowJudge() as judge:
        rubric = llm_rubric(judge.base_url)
        with served(tmp_path, rubric, "--workers", "2") as s:
            done = s.post("/v1/rewards", {"items": first, "run": "ppo", "step": 1}).json()["items"]
            assert [d["reward"] for d in done] == [expected_llm(i["response"]) for i in first]
            s.drained()
            failed: list[BaseException] = []

            def send() -> None:
                try:
                    s.post("/v1/rewards", {"items": second, "run": "ppo", "step": 2})
                except httpx.HTTPError as e:
                    failed.append(e)

            t = threading.Thread(target=send)
            t.start()
            while judge.count() < len(first) + 4:  # some of the second batch judged, most not
                time.sleep(0.02)
            os.kill(s.proc.pid, signal.SIGKILL)
            t.join(timeout=30)
            assert failed and s.proc.wait(timeout=30) == -signal.SIGKILL

        corpus = Corpus(s.db)  # opens: DuckDB's WAL rolled back whatever transaction was cut
        orphans = corpus.query("SELECT count(*) AS n FROM served_rewards s LEFT JOIN generations g "
                               "ON g.id = s.generation_id WHERE g.id IS NULL")
        assert orphans[0]["n"] == 0
        steps = corpus.query("SELECT step, count(*) AS n FROM served_rewards GROUP BY step ORDER BY step")
        assert steps[0] == {"step": 1, "n": 4} and all(r["step"] in (1, 2) for r in steps)
        paid = corpus.query("SELECT count(*) AS n FROM calls")[0]["n"]
        assert len(first) <= paid < len(first) + len(second)
        del corpus
        asked = judge.count()

        with served(tmp_path, rubric, "--workers", "2", db=s.db) as again:
            retried = again.post("/v1/rewards", {"items": second, "run": "ppo", "step": 2}).json()["items"]
            replay = again.post("/v1/rewards", {"items": first, "run": "ppo", "step": 1}).json()["items"]
            again.drained()
        assert judge.count() - asked == len(first) + len(second) - paid  # answers saved before the kill: not asked again
    assert [r["reward"] for r in retried] == [expected_llm(i["response"]) for i in second]
    assert [r["cached"] for r in replay] == [True] * 4  # the first batch's rewards survived the kill
    assert [r["reward"] for r in replay] == [d["reward"] for d in done]
    corpus = Corpus(s.db)
    rows = corpus.query("SELECT step, count(*) AS n, count(reward) AS scored FROM served_rewards GROUP BY step ORDER BY step")
    assert rows == [{"step": 1, "n": 4, "scored": 4}, {"step": 2, "n": 8, "scored": 8}]  # one row per slot, no duplicates
    runs = corpus.query("SELECT status FROM runs WHERE command = 'judge serve' ORDER BY started_at")
    assert [r["status"] for r in runs] == ["killed", "ok"]
