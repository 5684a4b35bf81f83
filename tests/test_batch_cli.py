"""The paid-API flags from the command line: `generate --batch --no-wait`, `corpus batches`
(list, cancel, forget), `--export-batch` + `corpus import-batch`, `--max-cost`, `--rpm`, the
cost table of `corpus stats`, and one-line errors for bad flags."""

from __future__ import annotations

import json

import pytest

from corpus import Corpus, run_cli
from corpus.cli import main as corpus_main
from generate.cli import main as gen_main

batch_server = pytest.importorskip("openai_batch_server")


def write_prompts(tmp_path, texts):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return f


def gen(tmp_path, prompts, db, *extra):
    return run_cli("generate", gen_main, ["--prompts", str(prompts), "--db", str(db), "--n", "1", "--backend", "openai",
                                          "--model", "m", "--no-progress", "--temperature", "0", "--max-new-tokens", "4",
                                          *extra])


def test_no_wait_then_batches_lists_then_a_rerun_collects(tmp_path, capsys):
    prompts, db = write_prompts(tmp_path, ["a", "b", "c"]), tmp_path / "c.duckdb"
    with batch_server.BatchServer(polls_to_finish=2) as srv:
        args = ["--base-url", srv.base_url, "--batch", "--batch-poll", "0.02"]
        assert gen(tmp_path, prompts, db, *args, "--no-wait") == 0
        err = capsys.readouterr().err
        assert "3 requests in batches still running" in err and "mode batch" in err
        assert run_cli("corpus", corpus_main, ["--db", str(db), "batches", "--format", "jsonl"]) == 0
        [row] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert (row["status"], row["provider_id"], row["n_requests"], row["collected"]) == ("in_progress", "batch-00002", 3, False)
        assert gen(tmp_path, prompts, db, *args) == 0
        assert srv.created() == 1 and srv.paid_twice() == []
    assert Corpus(db).query("SELECT count(*) AS n FROM generations")[0]["n"] == 3


def test_cancel_then_rerun_sends_the_cancelled_requests_again(tmp_path, capsys):
    prompts, db = write_prompts(tmp_path, ["a", "b"]), tmp_path / "c.duckdb"
    with batch_server.BatchServer(polls_to_finish=5) as srv:
        args = ["--base-url", srv.base_url, "--batch", "--batch-poll", "0.02"]
        assert gen(tmp_path, prompts, db, *args, "--no-wait") == 0
        assert run_cli("corpus", corpus_main, ["--db", str(db), "batches", "--cancel", "all"]) == 0
        assert "cancelling" in capsys.readouterr().out
        assert gen(tmp_path, prompts, db, *args) == 0  # collects the cancelled batch, resends both
        assert srv.created() == 2 and len(srv.paid) == 2 and srv.paid_twice() == []
    rows = Corpus(db).query("SELECT status, n_resend FROM batches ORDER BY created_at")
    assert [r["status"] for r in rows] == ["cancelled", "completed"] and rows[0]["n_resend"] == 2


def test_export_then_import_fills_the_cache_by_key(tmp_path, capsys):
    prompts, db, out = write_prompts(tmp_path, ["x", "y"]), tmp_path / "c.duckdb", tmp_path / "requests.jsonl"
    assert gen(tmp_path, prompts, db, "--export-batch", str(out)) == 0
    assert "wrote 2 requests" in capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"} and all(x["body"]["model"] == "m" for x in lines)
    # what `vllm run-batch -i requests.jsonl -o results.jsonl` writes, made by the loopback server's replies
    fake = batch_server.BatchServer()
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"id": f"r{i}", "custom_id": x["custom_id"], "error": None, "response": {
        "status_code": 200, "request_id": f"q{i}", "body": fake.completion(x["body"])}}) + "\n" for i, x in enumerate(lines)))
    assert run_cli("corpus", corpus_main, ["--db", str(db), "import-batch", str(results)]) == 0
    assert "2 answers stored" in capsys.readouterr().out
    with batch_server.BatchServer() as srv:  # the same command, now online: every answer is a cache hit
        assert gen(tmp_path, prompts, db, "--base-url", srv.base_url) == 0
        assert srv.count() == 0
    texts = {r["response"] for r in Corpus(db).query("SELECT response FROM generations")}
    assert texts == {"echo: x", "echo: y"}


def test_max_cost_stops_with_exit_3_and_the_same_command_goes_on(tmp_path, capsys):
    prompts, db = write_prompts(tmp_path, [f"p{i}" for i in range(5)]), tmp_path / "c.duckdb"
    prices = tmp_path / "prices.yaml"
    prices.write_text("m: {input: 1000000, output: 1000000}\n")  # a dollar a token: easy sums
    with batch_server.BatchServer() as srv:
        args = ["--base-url", srv.base_url, "--prices", str(prices), "--max-cost", "12", "--concurrency", "1"]
        assert gen(tmp_path, prompts, db, *args) == 3
        err = capsys.readouterr().err
        assert "stopped at --max-cost $12" in err and "$9.0000" in err  # 3 calls of 1 token in + 2 out
        assert srv.count() == 3
        assert gen(tmp_path, prompts, db, *args) == 0
        assert srv.count() == 5
    assert run_cli("corpus", corpus_main, ["--db", str(db), "stats", "--prices", str(prices)]) == 0
    out = capsys.readouterr().out
    assert "online" in out and "9.0000" in out and "6.0000" in out


def test_rpm_holds_a_server_limit_without_a_429(tmp_path, capsys):
    prompts, db = write_prompts(tmp_path, [f"q{i}" for i in range(20)]), tmp_path / "c.duckdb"
    # the server lets one second's worth through at once, as providers enforce per-minute limits
    with batch_server.BatchServer(rpm=1200, burst=20) as srv:
        assert gen(tmp_path, prompts, db, "--base-url", srv.base_url, "--rpm", "1200") == 0
        assert srv.n_429 == 0 and srv.count() == 20


def test_the_server_limit_header_lowers_the_client_budget():
    from backends import ChatRequest
    from backends.openai_api import OpenAIBackend

    with batch_server.BatchServer(rpm=600, burst=20) as srv:  # slack for a loaded machine's jitter
        b = OpenAIBackend("m", base_url=srv.base_url, rpm=60000, backoff_s=0.01, timeout=5)
        assert b.generate([ChatRequest(messages=[{"role": "user", "content": "first"}])])[0].ok
        assert b.limiter.rpm == 600  # learnt from x-ratelimit-limit-requests on the first answer
        comps = b.generate([ChatRequest(messages=[{"role": "user", "content": f"r{i}"}]) for i in range(12)])
        assert all(c.ok for c in comps)
        assert srv.n_429 == 0 and b.limiter.waited_s > 0
        assert b.limiter.note().startswith("rate-limit waits")  # what the progress line shows


@pytest.mark.parametrize("extra, message", [
    (["--batch", "--backend", "hf"], "--batch works with --backend openai only"),
    (["--no-wait"], "--no-wait only applies to batches: add --batch"),
    (["--max-cost", "5"], "--max-cost needs prices: add --prices FILE"),
    (["--rpm", "0"], "--rpm 0: must be more than 0"),
    (["--batch", "--export-batch", "x.jsonl"], "choose one"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, extra, message):
    prompts = write_prompts(tmp_path, ["a"])
    rc = run_cli("generate", gen_main, ["--prompts", str(prompts), "--db", str(tmp_path / "c.duckdb"), "--model", "m",
                                        "--backend", "openai", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_judge_in_batch_mode_makes_one_batch_and_the_rerun_asks_nothing(tmp_path, capsys):
    from pathlib import Path

    from judge.cli import main as judge_main

    root = Path(__file__).resolve().parent.parent
    prompts, db = write_prompts(tmp_path, ["a", "b", "c"]), tmp_path / "c.duckdb"
    with batch_server.BatchServer(polls_to_finish=2) as srv:
        assert gen(tmp_path, prompts, db, "--base-url", srv.base_url) == 0
        judge = ["--rubric", str(root / "prompts/helpfulness.yaml"), "--db", str(db), "--judge-backend", "openai",
                 "--judge-model", "echo-model", "--judge-base-url", srv.base_url, "--quiet", "--judge-batch",
                 "--judge-batch-poll", "0.02"]
        assert run_cli("judge", judge_main, judge) == 0
        assert srv.created() == 1 and srv.paid_twice() == []
        n = len(srv.paid)
        assert run_cli("judge", judge_main, judge) == 0
        assert srv.created() == 1 and len(srv.paid) == n
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM judgments")[0]["n"] >= 3
    assert c.query("SELECT count(*) AS n FROM batch_requests")[0]["n"] == n
    assert "mode batch" in capsys.readouterr().err


def test_train_loop_refuses_a_judge_that_would_not_wait(tmp_path, capsys):
    from train.cli import main as train_main

    prompts = write_prompts(tmp_path, ["a"])
    rc = run_cli("train", train_main, ["loop", "--db", str(tmp_path / "c.duckdb"), "--prompts", str(prompts),
                                       "--rubric", "prompts/instructions.yaml", "--judge-backend", "openai",
                                       "--judge-model", "m", "--judge-batch", "--judge-no-wait"])
    err = capsys.readouterr().err
    assert rc == 2 and "--judge-no-wait: the loop needs its judgments" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.duckdb").exists()


def test_tpm_learns_the_completion_size_from_usage():
    from backends import ChatRequest, SamplingParams
    from backends.openai_api import OpenAIBackend

    cap = SamplingParams(temperature=0, max_new_tokens=50)
    with batch_server.BatchServer() as srv:
        b = OpenAIBackend("m", base_url=srv.base_url, tpm=3000, timeout=5, concurrency=2)
        probe = ChatRequest(messages=[{"role": "user", "content": "probe"}], params=cap)
        assert b.limiter.estimate(probe)[1] == 50  # nothing known yet: the token cap
        comps = b.generate([ChatRequest(messages=[{"role": "user", "content": f"t{i}"}], params=cap) for i in range(6)])
        assert all(c.ok for c in comps) and {c.completion_tokens for c in comps} == {2}
        # the echo server answers 2 tokens: the estimate came down from the cap to about that
        assert b.limiter.estimate(probe)[1] <= 4 and b.limiter.waited_s > 0


def test_judge_batch_without_a_named_judge_is_a_one_line_error(tmp_path, capsys):
    from judge.cli import main as judge_main

    rc = run_cli("judge", judge_main, ["--rubric", "prompts/helpfulness.yaml", "--db", str(tmp_path / "c.duckdb"),
                                       "--judge-batch"])
    err = capsys.readouterr().err
    assert rc == 2 and "--judge-batch applies to the judge named by --judge-backend openai" in err
    assert len(err.strip().splitlines()) == 1
