"""`--executor ray` with a work dir on S3 (a real local S3-compatible server, moto's, in its own
process) and verifiers spread over a real local Ray cluster. One cluster serves the module.

The cluster starts without any credential in its environment: the replicas can only reach the
bucket (and the LLM server's API key) through the runtime_env the driver sends.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from backends.ray_executor import SHARD_SCHEMA  # noqa: E402
from corpus import Corpus, run_cli  # noqa: E402
from corpus.call_shards import merge_call_shards  # noqa: E402
from generate.cli import main as generate_main  # noqa: E402
from judge.cli import main as judge_main  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402
from ray_helpers import module_cluster, table  # noqa: E402
from test_judge_helpers import add_candidates  # noqa: E402



@pytest.fixture(scope="module")
def ray_address():
    """Started with every AWS_ variable blanked: no credential reaches the cluster from here."""
    with module_cluster(num_cpus=3, **{k: "" for k in os.environ if k.startswith("AWS_")}) as address:
        yield address


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, in a process of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket; the credentials live only in this process's environment."""
    secret = secrets.token_hex(16)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": s3_server, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    name = f"b{secrets.token_hex(6)}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=name)
    return name, secret, s3


def objects(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_generate_with_the_work_dir_on_s3_matches_local_and_leaves_no_secret(tmp_path, ray_address, bucket):
    """The same rows as the local path; the bucket is empty afterwards (every part pruned once
    the corpus held it); neither the S3 secret nor the API key is in the corpus or the bucket."""
    name, secret, s3 = bucket
    api_key = secrets.token_hex(12)
    os.environ["STORAGE_TEST_API_KEY"] = api_key
    try:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"s{i}"}) + "\n" for i in range(10)))
        common = ["--prompts", str(prompts), "--n", "2", "--backend", "openai", "--model", "echo-model",
                  "--max-new-tokens", "8", "--no-progress", "--api-key-env", "STORAGE_TEST_API_KEY"]
        with OpenAIServer(latency_s=0.05) as srv:
            assert run_cli("generate", generate_main, [*common, "--base-url", srv.base_url,
                                                       "--db", str(tmp_path / "local.duckdb")]) == 0
            seen = len(srv.requests)
            assert run_cli("generate", generate_main, [
                *common, "--base-url", srv.base_url, "--db", str(tmp_path / "s3.duckdb"), "--executor", "ray",
                "--ray-address", ray_address, "--work-dir", f"s3://{name}/run1", "--ray-batch-size", "3"]) == 0
            auth = {v for r in srv.requests[seen:] for k, v in r.headers.items() if k.lower() == "authorization"}
    finally:
        del os.environ["STORAGE_TEST_API_KEY"]
    q = "SELECT prompt_id, sample_idx, response, call_key FROM generations ORDER BY ALL"
    assert table(tmp_path / "local.duckdb", q) == table(tmp_path / "s3.duckdb", q) and len(table(tmp_path / "s3.duckdb", q)) == 20
    assert auth == {f"Bearer {api_key}"}  # the replicas had the key: runtime_env, not their own environment
    left = objects(s3, name)
    assert any(k.startswith("run1/results") for k in left)  # the run wrote here (its folder markers stay)
    assert [k for k in left if k.endswith(".parquet")] == []
    data = (tmp_path / "s3.duckdb").read_bytes()
    assert secret.encode() not in data and api_key.encode() not in data


def test_merge_from_s3_shards_then_prune(tmp_path, bucket):
    """A killed run's shard on S3 is merged into `calls` (pyarrow reads, one DuckDB statement)
    and then deleted with its request part; a second merge finds nothing."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    name, _, s3 = bucket
    fs = pafs.FileSystem.from_uri(f"s3://{name}")[0]  # as the executor opens it: AWS_ENDPOINT_URL applies
    t = pa.table({"key": ["k1", "k2"], "backend": ["openai"] * 2, "model": ["m"] * 2, "request": ['{"q":1}'] * 2,
                  "response": [json.dumps({"text": "a"}), json.dumps({"text": "b"})], "status": ["ok", "failed"],
                  "error": [None, "timeout"], "latency_ms": [1.0, 2.0]}, schema=SHARD_SCHEMA)
    pq.write_table(t, f"{name}/w/results/p-1.parquet", filesystem=fs)
    pq.write_table(t.select(["key", "request"]), f"{name}/w/requests/p-1.parquet", filesystem=fs)
    corpus = Corpus(tmp_path / "c.duckdb")
    assert merge_call_shards(corpus, f"s3://{name}/w", prune=True) == 2
    assert {r["key"]: r["status"] for r in corpus.query("SELECT key, status FROM calls")} == {"k1": "ok", "k2": "failed"}
    assert [k for k in objects(s3, name) if k.endswith(".parquet")] == []  # folder markers may stay
    assert merge_call_shards(corpus, f"s3://{name}/w", prune=True) == 0
    corpus.close()


CODE = """name: code
version: "1"
task: Write the function.
criteria:
  - name: correctness
    kind: verifier
    verifier: {type: code_exec, tests: "assert add(1, 2) == 3", entry_point: add}
  - name: short
    kind: verifier
    verifier: {type: length, max_words: 12}
judges: []
"""


def test_verifier_only_rubric_on_ray_needs_no_judge_backend_and_runs_off_the_driver(tmp_path, ray_address,
                                                                                   monkeypatch):
    """code_exec and length judgments on Ray equal the local ones. The driver's own sandbox is
    broken for the Ray run: only the cluster's workers, each with its own sandboxes, can have
    scored the answers."""
    from judge import sandbox

    (tmp_path / "code.yaml").write_text(CODE)
    answers = [f"def add(a, b):\n    return a + b + {i % 3 - 1 if i % 2 else 0}\n" for i in range(16)]
    dbs = []
    for tag in ("local", "ray"):
        c = Corpus(tmp_path / f"{tag}.duckdb")
        add_candidates(c, [(f"Write add(a, b) #{i}.", [a]) for i, a in enumerate(answers)])
        c.close()
        dbs.append(tmp_path / f"{tag}.duckdb")
    base = ["--rubric", str(tmp_path / "code.yaml"), "--quiet"]
    assert run_cli("judge", judge_main, [*base, "--db", str(dbs[0])]) == 0

    def no_sandbox_here(*a, **k):
        raise AssertionError("a verifier ran in the driver")

    monkeypatch.setattr(sandbox, "run_many", no_sandbox_here)
    monkeypatch.setattr("judge.verifiers.run_many", no_sandbox_here)
    assert run_cli("judge", judge_main, [*base, "--db", str(dbs[1]), "--executor", "ray", "--ray-address", ray_address,
                                         "--work-dir", str(tmp_path / "work")]) == 0
    q = "SELECT target_id, criterion, score, parse_status FROM judgments ORDER BY ALL"
    local, on_ray = table(dbs[0], q), table(dbs[1], q)
    assert local == on_ray and len(on_ray) == 32
    assert {s for _, c, s, _ in on_ray if c == "correctness"} == {0.0, 1.0}
