"""The generation job on a real DuckDB file: the hf backend on the tiny random model for real
generation; FakeBackend only where a test needs failures a real model cannot be made to produce."""

from __future__ import annotations

import json

import pytest

from backends import Completion, SamplingParams
from backends.fake import FakeBackend
from corpus import Corpus, Prompt
from generate import candidate_seed, run_generate
from generate.job import plan

PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=4)


def prompts(k: int) -> list[Prompt]:
    return [Prompt(messages=[{"role": "user", "content": f"Question number {i}?"}], meta={"i": i}) for i in range(k)]


@pytest.fixture(scope="module")
def tiny_hf(tiny_model_dir):
    from backends.hf import HFBackend

    return HFBackend(str(tiny_model_dir), batch_size=4, device="cpu")


def test_candidates_written_once_and_rerun_adds_nothing(corpus, tiny_hf):
    s1 = run_generate(corpus, prompts=prompts(3), backend=tiny_hf, n=2, params=PARAMS, progress=False)
    assert (s1["prompts"], s1["prompts_new"], s1["candidates_new"], s1["failures"]) == (3, 3, 6, 0)
    assert s1["tokens"] > 0 and s1["calls_sent"] == 6
    rows = corpus.query("SELECT prompt_id, sample_idx, seed, params, run_id, call_key FROM generations ORDER BY prompt_id, sample_idx")
    assert len(rows) == 6 and all(r["run_id"] == s1["run_id"] for r in rows)
    assert all(r["seed"] == candidate_seed(0, r["prompt_id"], r["sample_idx"]) for r in rows)
    assert json.loads(rows[0]["params"]) == {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 4, "seed": 0}
    assert {r["call_key"] for r in rows} <= {r["key"] for r in corpus.query("SELECT key FROM calls")}

    s2 = run_generate(corpus, prompts=prompts(3), backend=tiny_hf, n=2, params=PARAMS, progress=False)
    assert (s2["candidates_new"], s2["candidates_existing"], s2["calls_sent"], s2["prompts_new"]) == (0, 6, 0, 0)
    # more samples per prompt: only the new sample indices are generated
    s3 = run_generate(corpus, prompts=prompts(3), backend=tiny_hf, n=3, params=PARAMS, progress=False)
    assert (s3["candidates_new"], s3["candidates_existing"]) == (3, 6)
    assert corpus.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM generations")[0] == {"n": 9, "d": 9}
    runs = corpus.query("SELECT status, summary FROM runs WHERE command = 'generate' ORDER BY started_at")
    assert [r["status"] for r in runs] == ["ok"] * 3 and json.loads(runs[0]["summary"])["candidates_new"] == 6


def test_lost_candidates_rebuilt_from_call_cache_without_calling_model(corpus, tiny_hf):
    """A kill after the calls were saved but before candidates flushed: the cache answers."""
    s1 = run_generate(corpus, prompts=prompts(2), backend=tiny_hf, n=2, params=PARAMS, progress=False)
    before = corpus.query("SELECT id, response FROM generations ORDER BY id")
    corpus.execute("DELETE FROM generations")
    s2 = run_generate(corpus, prompts=prompts(2), backend=tiny_hf, n=2, params=PARAMS, progress=False)
    assert (s2["calls_sent"], s2["calls_cached"], s2["candidates_new"]) == (0, 4, 4)
    assert corpus.query("SELECT id, response FROM generations ORDER BY id") == before
    assert s1["run_id"] != s2["run_id"]


def test_same_seed_same_samples_in_a_fresh_corpus(tmp_path, tiny_hf):
    a, b = Corpus(tmp_path / "a.duckdb"), Corpus(tmp_path / "b.duckdb")
    for c in (a, b):
        run_generate(c, prompts=prompts(2), backend=tiny_hf, n=2, params=PARAMS, progress=False)
    q = "SELECT id, seed, response FROM generations ORDER BY id"
    assert a.query(q) == b.query(q)
    run_generate(a, prompts=prompts(2), backend=tiny_hf, n=2, params=PARAMS, seed=7, progress=False)
    assert a.query("SELECT count(*) AS n FROM generations")[0]["n"] == 8  # another job seed: new candidates


def test_system_prompt_and_limit(corpus):
    fake = FakeBackend(default=lambda req: req.messages[0]["content"])
    s = run_generate(corpus, prompts=prompts(5), backend=fake, n=1, params=PARAMS, system="Be terse.", limit=2, progress=False)
    assert s["prompts"] == 2 and s["candidates_new"] == 2
    assert all(r.messages[0] == {"role": "system", "content": "Be terse."} for r in fake.history)
    row = corpus.query("SELECT response, params FROM generations LIMIT 1")[0]
    assert row["response"] == "Be terse." and json.loads(row["params"])["system"] == "Be terse."


def test_failures_recorded_transient_retried_permanent_not(corpus):
    """Scripted failures (FakeBackend): a real model cannot be made to fail on cue."""

    def flaky(req):
        text = req.messages[-1]["content"]
        if "number 0" in text:
            return Completion(finish_reason="error", error="HTTP 503: overloaded")
        if "number 1" in text:
            return Completion(finish_reason="error", error="HTTP 400: prompt too long", permanent=True)
        return "fine"

    fake = FakeBackend(default=flaky)
    s1 = run_generate(corpus, prompts=prompts(3), backend=fake, n=2, params=PARAMS, progress=False)
    assert (s1["candidates_new"], s1["failures"], s1["failures_permanent"]) == (2, 4, 2)
    assert s1["failure_reasons"] == {"HTTP 503": 2, "HTTP 400": 2}
    fails = corpus.query("SELECT error, stage, target_id FROM failures ORDER BY error")
    assert len(fails) == 4 and {f["stage"] for f in fails} == {"generate"}
    assert {r["status"] for r in corpus.query("SELECT status FROM calls")} == {"ok", "failed", "failed_permanent"}

    healthy = FakeBackend(default="recovered")
    s2 = run_generate(corpus, prompts=prompts(3), backend=healthy, n=2, params=PARAMS, progress=False)
    # only the transient failures were sent again; the permanent ones came from the cache
    assert len(healthy.history) == 2 and all("number 0" in r.messages[-1]["content"] for r in healthy.history)
    assert (s2["candidates_new"], s2["failures"], s2["failures_permanent"]) == (2, 2, 2)
    got = {r["sample_idx"]: r["response"] for r in corpus.query(
        "SELECT g.sample_idx, g.response FROM generations g JOIN prompts p ON p.id = g.prompt_id WHERE p.text LIKE '%number 0%'")}
    assert got == {0: "recovered", 1: "recovered"}
    # every failed target is a candidate id the plan expects, so a rerun knows what is missing
    expected = {t.generation_id for t in plan(prompts(3), fake, 2, PARAMS, 0, None)}
    assert {f["target_id"] for f in fails} <= expected


def test_from_sql_generates_for_selected_prompts(corpus):
    corpus.insert(prompts(4))
    s = run_generate(corpus, from_sql="SELECT id FROM prompts WHERE meta->>'i' IN ('1', '3')", backend=FakeBackend(), n=2,
                     params=PARAMS, progress=False)
    assert (s["prompts"], s["candidates_new"]) == (2, 4)
    texts = {r["text"] for r in corpus.query("SELECT DISTINCT p.text FROM generations g JOIN prompts p ON p.id = g.prompt_id")}
    assert texts == {"Question number 1?", "Question number 3?"}
