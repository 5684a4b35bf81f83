"""`--executor ray`: replicas behind Ray Serve write shards; the server merges them into the corpus."""

from __future__ import annotations

import pytest

from test_judge_serve import VERIFIERS, served

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install '.[serve]'")


def test_ray_serve_replicas_answer_and_the_driver_merges_their_rewards(tmp_path):
    from corpus import Corpus

    items = [{"prompt": "p", "response": w} for w in ("hello", "hello you there my dear friend", "bye")]
    with served(tmp_path, VERIFIERS, "--executor", "ray", "--replicas", "2") as s:
        for step in range(4):  # Ray Serve spreads requests over both replicas
            r = s.post("/v1/rewards", {"items": items, "run": "ray-run", "step": step})
            assert r.status_code == 200 and r.json()["rewards"] == [1.0, 0.75, 0.25]
        assert s.post("/v1/rewards", {"items": []}).status_code == 400  # the replica's own checks apply
    corpus = Corpus(s.db)
    rows = corpus.query("SELECT step, count(*) AS n FROM served_rewards WHERE caller_run = 'ray-run' GROUP BY step ORDER BY step")
    assert rows == [{"step": k, "n": 3} for k in range(4)]
    assert corpus.query("SELECT count(*) AS n FROM generations WHERE backend = 'served'")[0]["n"] == 3
    run = corpus.query("SELECT status, config FROM runs WHERE command = 'judge serve'")[0]
    assert run["status"] == "ok" and '"replicas":2' in run["config"]
    assert not list((tmp_path / "c.duckdb.serve").glob("*/*.parquet"))  # every shard merged
