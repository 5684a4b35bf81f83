"""`--executor ray`: generate and judge through replicas on a real local Ray cluster, against the
real loopback OpenAI server (tests/openai_server.py), with faults, killed drivers and workers.

One cluster serves the module (starting one costs 10-40 s here); two tests start the private
cluster a command starts for itself, to check that none of its processes outlive the command.
Processes of a command are found by a marker in their environment, which every descendant
inherits: nothing here depends on process names or on what other jobs run on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from backends import ChatRequest, SamplingParams  # noqa: E402
from backends.ray_cluster import LocalCluster  # noqa: E402
from backends.ray_executor import RayExecutor  # noqa: E402
from corpus import Corpus, run_cli  # noqa: E402
from corpus.call_shards import merge_call_shards  # noqa: E402
from generate.cli import main as generate_main  # noqa: E402
from generate.job import run_generate  # noqa: E402
from judge.cli import main as judge_main  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402
from ray_helpers import module_cluster, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


@pytest.fixture(scope="module")
def ray_address():
    """A local cluster for the module: 3 logical CPUs (2 replicas + the driver's own tasks)."""
    with module_cluster(num_cpus=3) as address:
        yield address


def prompts_file(tmp_path: Path, n: int, tag: str = "p") -> Path:
    f = tmp_path / f"{tag}.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{tag}{i}"}) + "\n" for i in range(n)))
    return f


def gen_argv(prompts: Path, db: Path, base_url: str, *extra: str) -> list[str]:
    return ["--prompts", str(prompts), "--db", str(db), "--n", "2", "--backend", "openai", "--model", "echo-model",
            "--base-url", base_url, "--concurrency", "4", "--max-new-tokens", "8", "--no-progress", *extra]


def marked(mark: str) -> list[int]:
    """Live processes (not this one) whose environment carries RLAIF_TEST_MARK=mark."""
    needle = f"RLAIF_TEST_MARK={mark}".encode()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if int(pid) != os.getpid() and state != "Z" and needle in env.split(b"\0"):
            out.append(int(pid))
    return out


def wait_none_marked(mark: str, timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


CALLS = "SELECT key, backend, model, request, json_remove(response, '$.latency_ms'), status, error FROM calls ORDER BY key"
GENS = ("SELECT id, prompt_id, backend, model, params, sample_idx, seed, response, finish_reason, prompt_tokens, "
        "completion_tokens, call_key FROM generations ORDER BY id")
JUDGMENTS = "SELECT id, target_id, judge, criterion, score, rationale, raw, parse_status FROM judgments ORDER BY id"


def test_ray_path_gives_the_same_calls_generations_and_judgments(tmp_path, ray_address, capsys, monkeypatch):
    """generate on a private cluster the command starts (none of its processes is left when it
    returns), judge on the module's cluster; both give what the single-process path gives."""
    prompts = prompts_file(tmp_path, 12)
    local, on_ray = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    ray_flags = ["--executor", "ray", "--work-dir", str(tmp_path / "work"), "--ray-batch-size", "5"]
    mark = secrets.token_hex(8)
    with OpenAIServer() as srv:
        assert run_cli("generate", generate_main, gen_argv(prompts, local, srv.base_url)) == 0
        with monkeypatch.context() as m:
            m.setenv("RLAIF_TEST_MARK", mark)  # inherited by the cluster's supervisor and every Ray process
            m.delenv("RAY_ADDRESS", raising=False)
            # chunks of 8: the job announces the rest ahead (look_ahead), checked against the call cache
            assert run_cli("generate", generate_main, gen_argv(prompts, on_ray, srv.base_url, *ray_flags,
                                                               "--chunk-size", "8")) == 0
        assert marked(mark) == [], "Ray processes outlived the command"
        judge = ["--rubric", str(ROOT / "prompts/helpfulness.yaml"), "--judge-backend", "openai", "--judge-model",
                 "echo-model", "--judge-base-url", srv.base_url, "--quiet"]
        assert run_cli("judge", judge_main, [*judge, "--db", str(local)]) == 0
        assert run_cli("judge", judge_main, [*judge, "--db", str(on_ray), *ray_flags, "--ray-address", ray_address]) == 0
    capsys.readouterr()
    for sql in (CALLS, GENS, JUDGMENTS):
        a, b = table(local, sql), table(on_ray, sql)
        assert a == b and len(a) >= 24, sql
    assert len(table(on_ray, JUDGMENTS)) >= 24
    # every shard and request part was pruned once the corpus held its answers
    assert sorted(p.name for p in (tmp_path / "work").rglob("*.parquet")) == []


def test_fault_rate_0_3_completes_and_accounts_for_every_request(tmp_path, ray_address, monkeypatch):
    """3 prompts in 10 get a fault on their first request (429, 500, a stall past the client's
    timeout, a 200 with a non-JSON body); every request ends stored in `calls` or as a failure.
    The work dir is relative: replicas, which run elsewhere, must still write into it."""
    monkeypatch.chdir(tmp_path)
    kinds = ["429:0.1", "500", "hang", "garbage", "503", "garbage"]
    faults = {f"f{i}": [kinds[i % len(kinds)]] for i in range(0, 40) if i % 10 < 3}
    prompts = [f"f{i}" for i in range(40)]
    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    corpus = Corpus(tmp_path / "c.duckdb")
    with OpenAIServer(faults=faults, hang_s=30) as srv:
        ex = RayExecutor("openai", "echo-model", {"base_url": srv.base_url, "concurrency": 4, "timeout": 2.0,
                                                  "backoff_s": 0.05, "max_retries": 3},
                         work_dir="work", address=ray_address, workers=2, batch_size=8)
        try:
            s = run_generate(corpus, f, backend=ex, n=1, params=SamplingParams(max_new_tokens=4), progress=False,
                             chunk_size=4096)
        finally:
            ex.close()
        assert {r.fault for r in srv.requests} >= {"429", "500", "hang", "garbage", "503"}
    stored = {r["id"] for r in corpus.query("SELECT id FROM generations")}
    failed = {r["target_id"] for r in corpus.query("SELECT target_id FROM failures")}
    assert s["candidates_planned"] == 40 and len(stored) + len(failed) == 40 and not stored & failed
    assert s["candidates_new"] == len(stored) and len(stored) >= 36  # retries absorb one fault per prompt
    assert corpus.query("SELECT count(*) AS n FROM calls")[0]["n"] == 40
    assert len(list((tmp_path / "work" / "results").glob("*.parquet"))) == 40 // 8
    corpus.close()


def test_worker_killed_mid_run_loses_nothing(tmp_path, ray_address):
    """SIGKILL one replica's process while it sends: Ray restarts the actor and resends its
    part; every request comes back answered."""
    import ray

    with OpenAIServer(latency_s=0.1) as srv:
        ex = RayExecutor("openai", "echo-model", {"base_url": srv.base_url, "concurrency": 2},
                         work_dir=str(tmp_path / "work"), address=ray_address, workers=2, batch_size=6)
        try:
            ex._connect()
            pids = ray.get([a.pid.remote() for a in ex._replicas()])
            reqs = [ChatRequest(messages=[{"role": "user", "content": f"w{i}"}], params=SamplingParams(max_new_tokens=4))
                    for i in range(48)]

            def killer() -> None:
                while srv.count() < 10:
                    time.sleep(0.02)
                os.kill(pids[0], signal.SIGKILL)

            t = threading.Thread(target=killer)
            t.start()
            out = ex.generate(reqs)
            t.join()
            after = ray.get([a.pid.remote() for a in ex._replicas()])
        finally:
            ex.close()
    assert [c.text for c in out] == [f"echo: w{i}" for i in range(48)] and all(c.ok for c in out)
    assert after[0] != pids[0] and after[1] == pids[1]  # the killed replica was restarted, the other kept
    assert srv.count() <= 48 + 6  # at most the killed replica's part was sent again


def test_sigkill_driver_then_rerun_each_key_once_and_no_ray_process_left(tmp_path, ray_address):
    """The first run starts its own local cluster and is SIGKILLed mid-run: none of its Ray
    processes survive. The rerun resumes from the work dir's shards: each planned key is
    stored once, and only the parts in flight at the kill (one per replica) were sent twice."""
    prompts = prompts_file(tmp_path, 60, "k")
    db, work, mark = tmp_path / "c.duckdb", tmp_path / "work", secrets.token_hex(8)
    env = {**os.environ, "RLAIF_TEST_MARK": mark, "OMP_NUM_THREADS": "1"}
    for k in AUTH:  # the first run's cluster is its own, with its own token
        env.pop(k, None)
    with OpenAIServer(latency_s=0.1) as srv:
        argv = gen_argv(prompts, db, srv.base_url, "--executor", "ray", "--work-dir", str(work), "--ray-workers", "2",
                        "--ray-batch-size", "6", "--concurrency", "2", "--chunk-size", "24")
        child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        try:
            while len(list(work.glob("results/*.parquet"))) < 3:
                assert child.poll() is None, child.stderr.read()[-800:]
                assert time.monotonic() < deadline, "no shard written in time"
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert wait_none_marked(mark) == [], "Ray processes of the killed command are still running"
        first = srv.count()
        assert first < 120
        assert run_cli("generate", generate_main, [*argv, "--ray-address", ray_address]) == 0
    keys = [r[0] for r in table(db, "SELECT call_key FROM generations")]
    assert len(keys) == 120 == len(set(keys))
    assert table(db, "SELECT count(*), count(DISTINCT key) FROM calls") == [(120, 120)]
    per_request: dict[tuple, int] = {}
    for r in srv.requests:
        per_request[(r.prompt, r.body.get("seed"))] = per_request.get((r.prompt, r.body.get("seed")), 0) + 1
    assert len(per_request) == 120
    assert sum(n - 1 for n in per_request.values()) <= 2 * 6  # one part per replica at most


@pytest.mark.parametrize("flags, message", [
    (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: cannot connect"),
    (["--ray-address", "nohostport"], "--ray-address nohostport: give host:port"),
    (["--work-dir", "{file}/sub"], "cannot write there"),
    (["--ray-workers", "0"], "--ray-workers 0: must be at least 1"),
])
def test_bad_ray_input_is_one_line_exit_2_and_no_corpus(tmp_path, capsys, flags, message):
    (tmp_path / "file").write_text("x")
    flags = [f.replace("{file}", str(tmp_path / "file")) for f in flags]
    db = tmp_path / "c.duckdb"
    with OpenAIServer() as srv:
        argv = gen_argv(prompts_file(tmp_path, 2), db, srv.base_url, "--executor", "ray", *flags)
        if "--work-dir" not in flags:
            argv += ["--work-dir", str(tmp_path / "work")]
        rc = run_cli("generate", generate_main, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not db.exists()


def test_merge_keeps_one_row_per_key_a_success_first(tmp_path):
    """Shards from a resent part hold a key twice; a stored transient failure gives way to a
    success; a stored success stays as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backends.ray_executor import SHARD_SCHEMA

    def shard(name: str, rows: list[tuple[str, str]]) -> None:
        (tmp_path / "work" / "results").mkdir(parents=True, exist_ok=True)
        t = pa.table({"key": [k for k, _ in rows], "backend": ["openai"] * len(rows), "model": ["m"] * len(rows),
                      "request": ['{"q":1}'] * len(rows), "response": [json.dumps({"text": s}) for _, s in rows],
                      "status": [s for _, s in rows], "error": [None if s == "ok" else "e" for _, s in rows],
                      "latency_ms": [1.0] * len(rows)}, schema=SHARD_SCHEMA)
        pq.write_table(t, tmp_path / "work" / "results" / name)

    shard("a.parquet", [("k1", "failed"), ("k2", "ok"), ("k4", "ok")])
    shard("b.parquet", [("k1", "ok"), ("k3", "ok"), ("k4", "failed")])
    (tmp_path / "work" / "results" / "c.parquet.tmp-1").write_text("a writer killed mid-write")
    corpus = Corpus(tmp_path / "c.duckdb")
    corpus.save_calls([{"key": "k3", "backend": "openai", "model": "m", "request": {"q": 1}, "response": None,
                        "status": "failed", "error": "timeout"},
                       {"key": "k4", "backend": "openai", "model": "m", "request": {"q": 1}, "response": {"text": "kept"},
                        "status": "ok"}])
    assert merge_call_shards(corpus, str(tmp_path / "work"), run_id="r1") == 3
    rows = {r["key"]: (r["status"], r["run_id"]) for r in corpus.query("SELECT key, status, run_id FROM calls")}
    assert rows == {"k1": ("ok", "r1"), "k2": ("ok", "r1"), "k3": ("ok", "r1"), "k4": ("ok", None)}
    assert merge_call_shards(corpus, str(tmp_path / "work")) == 0
    corpus.close()


def test_judge_on_ray_needs_a_judge_backend(tmp_path, capsys):
    Corpus(tmp_path / "c.duckdb").close()
    rc = run_cli("judge", judge_main, ["--rubric", str(ROOT / "prompts/helpfulness.yaml"), "--db", str(tmp_path / "c.duckdb"),
                                       "--executor", "ray", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--executor ray runs the judge given by --judge-backend" in err and len(err.splitlines()) == 1


def test_a_part_that_kills_its_replica_every_time_is_recorded_failed_and_exit_3(tmp_path, ray_address, capsys,
                                                                              monkeypatch):
    """Every time the request "poison" reaches the server, its replica's process is SIGKILLed.
    The part holding it is tried 3 times, then its requests are stored as failures naming the
    part and the cause; every other request is answered; the command exits 3. The replicas are
    found by the API key, which reaches them through runtime_env only."""
    mark = secrets.token_hex(8)
    monkeypatch.setenv("POISON_TEST_KEY", mark)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a0", "a1", "poison", "a3", "a4", "a5"]))
    db, stop = tmp_path / "c.duckdb", threading.Event()
    kills: list[int] = []
    with OpenAIServer(latency_s=0.3) as srv:
        def killer() -> None:
            seen = 0
            while not stop.is_set():
                poison = [r for r in srv.requests if r.prompt == "poison"]
                if len(poison) > seen:
                    seen = len(poison)
                    needle = f"POISON_TEST_KEY={mark}".encode()
                    for pid in filter(str.isdigit, os.listdir("/proc")):
                        try:
                            with open(f"/proc/{pid}/environ", "rb") as fh:
                                hit = needle in fh.read().split(b"\0") and int(pid) != os.getpid()
                        except OSError:
                            continue
                        if hit:
                            os.kill(int(pid), signal.SIGKILL)
                            kills.append(int(pid))
                time.sleep(0.02)

        t = threading.Thread(target=killer)
        t.start()
        try:
            argv = ["--prompts", str(f), "--db", str(db), "--n", "1", "--backend", "openai", "--model", "echo-model",
                    "--base-url", srv.base_url, "--api-key-env", "POISON_TEST_KEY", "--max-new-tokens", "4",
                    "--no-progress", "--executor", "ray", "--ray-address", ray_address, "--ray-workers", "1",
                    "--ray-batch-size", "2", "--work-dir", str(tmp_path / "work")]
            rc = run_cli("generate", generate_main, argv)
        finally:
            stop.set()
            t.join()
        auth = {v for r in srv.requests for k, v in r.headers.items() if k.lower() == "authorization"}
    err = capsys.readouterr().err
    assert rc == 3, err
    assert sum(r.prompt == "poison" for r in srv.requests) == 3 and len(kills) >= 3
    assert auth == {f"Bearer {mark}"}  # the key reached the replicas (runtime_env)
    gave_up = [x for x in err.splitlines() if "failed on its replica 3 times" in x]
    assert len(gave_up) == 1 and "part p-" in gave_up[0] and "died" in gave_up[0], err
    failures = table(db, "SELECT error FROM failures")
    assert len(failures) == 2 and all("failed on its replica 3 times" in e for (e,) in failures)
    assert len(table(db, "SELECT id FROM generations")) == 4  # the part's other request failed with it
    for path in [*(tmp_path / "work").rglob("*"), db]:  # the key is in no file the run wrote
        assert path.is_dir() or mark.encode() not in path.read_bytes()


def test_an_http_server_at_the_address_is_refused_quickly(tmp_path, capsys):
    """Something that is not a Ray head (an HTTP server) listens at --ray-address: one line,
    exit 2, no corpus (Ray itself would retry "Failed to connect to GCS")."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:  # its access log would share the test's stderr
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, *a: object) -> None:  # the probe hangs up mid-request: not a test failure
            pass

    httpd = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{httpd.server_address[1]}"
        with OpenAIServer() as srv:
            argv = gen_argv(prompts_file(tmp_path, 2), tmp_path / "c.duckdb", srv.base_url, "--executor", "ray",
                            "--ray-address", address, "--work-dir", str(tmp_path / "work"))
            rc = run_cli("generate", generate_main, argv)
    finally:
        httpd.shutdown()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"--ray-address {address}: something listens there but it is not a Ray head" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "c.duckdb").exists()


def test_cluster_dying_mid_job_ends_with_one_line_exit_3_and_the_run_failed(tmp_path):
    """A cluster of its own, stopped under a running generate: the command ends by itself with
    exit 3 and a last line naming the cluster, and the run is recorded failed, not running."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(ROOT)}
    cluster = LocalCluster(num_cpus=2, env=env)
    address = cluster.start()
    db, work = tmp_path / "c.duckdb", tmp_path / "work"
    try:
        with OpenAIServer(latency_s=0.5) as srv:
            argv = gen_argv(prompts_file(tmp_path, 80, "d"), db, srv.base_url, "--executor", "ray", "--ray-address",
                            address, "--work-dir", str(work), "--ray-batch-size", "4", "--concurrency", "2")
            child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                while srv.count() < 4:
                    assert child.poll() is None, child.stderr.read()[-800:]
                    time.sleep(0.05)
                cluster.stop()
                rc = child.wait(timeout=120)  # the test's bound; the command's own is DEAD_AFTER_S
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            err = child.stderr.read().strip().splitlines()
    finally:
        cluster.stop()
    assert rc == 3, err[-5:]
    assert "the cluster at" in err[-1] and "stopped answering" in err[-1], err[-5:]
    assert len(err) == 1, err  # not Ray's pages of C++ log
    assert table(db, "SELECT status FROM runs WHERE command = 'generate'") == [("failed",)]


def test_driver_killed_while_its_cluster_starts_stops_the_start(tmp_path):
    """SIGKILL the command while `ray start` is still starting its private cluster: the start is
    abandoned (its address file never appears) and none of its processes is left."""
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay short
    mark = secrets.token_hex(8)
    env = {**os.environ, "RLAIF_TEST_MARK": mark, "TMPDIR": str(short)}
    for k in (*AUTH, "RAY_ADDRESS"):
        env.pop(k, None)
    argv = gen_argv(prompts_file(tmp_path, 2), tmp_path / "c.duckdb", "http://127.0.0.1:9/v1", "--executor", "ray",
                    "--work-dir", str(tmp_path / "work"))
    try:
        with OpenAIServer() as srv:
            argv[argv.index("--base-url") + 1] = srv.base_url
            child = subprocess.Popen([sys.executable, "-m", "generate", *argv], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 120
                while not list(short.glob("rlaif-ray-*/ray-start.log")):  # `ray start` is running
                    assert child.poll() is None and time.monotonic() < deadline
                    time.sleep(0.02)
                assert not list(short.glob("rlaif-ray-*/ray_current_cluster")), "the cluster came up first"
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            came_up = False
            deadline = time.monotonic() + 60
            while marked(mark) and time.monotonic() < deadline:
                came_up = came_up or bool(list(short.glob("rlaif-ray-*/ray_current_cluster")))
                time.sleep(0.02)
        assert marked(mark) == [], "Ray processes of the killed command are still running"
        assert not came_up, "the cluster finished starting after its driver died"
        assert srv.count() == 0
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_look_ahead_replicas_start_the_next_chunk_before_it_is_asked(tmp_path, ray_address):
    """No barrier per chunk: once the first chunk's parts are out, replicas with room take parts
    of the announced next chunk, which reach the server while the driver has not asked for
    them yet; asking then sends nothing twice."""
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"c{i}"}], params=SamplingParams(max_new_tokens=4))
            for i in range(16)]
    with OpenAIServer(latency_s=0.3) as srv:
        ex = RayExecutor("openai", "echo-model", {"base_url": srv.base_url, "concurrency": 2},
                         work_dir=str(tmp_path / "work"), address=ray_address, workers=2, batch_size=2)
        try:
            ex.look_ahead(reqs[4:])
            first = ex.generate(reqs[:4])
            deadline = time.monotonic() + 60
            while not any(r.prompt in {f"c{i}" for i in range(4, 16)} for r in srv.requests):
                assert time.monotonic() < deadline, "nothing of the next chunk was sent before it was asked"
                time.sleep(0.05)
            rest = ex.generate(reqs[4:])
        finally:
            ex.close()
        prompts = [r.prompt for r in srv.requests]
    assert [c.text for c in first + rest] == [f"echo: c{i}" for i in range(16)]
    assert sorted(prompts) == sorted(f"c{i}" for i in range(16))  # each sent once
