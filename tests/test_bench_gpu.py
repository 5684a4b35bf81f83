"""bench/gpu.py, the one prepared GPU command, run on the CPU at tiny sizes (--smoke) so it cannot rot
while no GPU is lent: every part writes its figures and the two tables; a part stopped at its budget
keeps the figures it had written and leaves no process behind; the device recipe's staging checks
what arrives and assembles the model. Figures are not asserted (a 2-layer random model's speed means
nothing); that they exist, are numbers and agree where the maths says they must, is."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# loaded from its file, not by putting bench/ on sys.path: bench/filters.py would shadow the filters package
_spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu)


def _bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env)


def test_smoke_runs_every_part_and_writes_both_tables(tmp_path, tiny_model_dir):
    out = tmp_path / "g"
    r = _bench("--smoke", "--parts", "model,hf,judge,loop,rm", "--model", str(tiny_model_dir), "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert {k: v["status"] for k, v in res["parts"].items()} == dict.fromkeys(["model", "hf", "judge", "loop", "rm"], "done")
    figs = {(f["what"], f["setting"]): f["value"] for p in res["parts"].values() for f in p["figures"] if "value" in f}
    for b in (1, 4):
        for what in ("eager model.generate", "engine hf backend", "engine hf, static KV cache"):
            assert figs[(what, f"batch {b}")] > 0
    # one prompt at a time nothing is padded: the static cache computes the same greedy tokens as eager
    assert figs[("same text as eager: engine hf, static KV cache", "batch 1")] == "2/2"
    assert figs[("same text as eager: engine hf backend", "batch 1")] == "2/2"
    assert figs[("judge decoded (JSON schema)", "batch 4")] > 0 and figs[("judge logprob (one forward pass)", "batch 4")] > 0
    assert any(w.startswith("M1 pass") for w, _ in figs) and any(w.startswith("M0 pass") for w, _ in figs)
    assert 0.0 <= figs[("rm held-out accuracy", next(s for w, s in figs if w == "rm held-out accuracy"))] <= 1.0
    md = (out / "results.md").read_text()
    for part in ("model", "hf", "judge", "loop", "rm"):
        assert f"| {part} | done" in md


def test_a_part_stopped_at_its_budget_keeps_its_figures_and_leaves_no_process(tmp_path):
    # the child writes one figure, starts a grandchild (as the loop part starts bench/loop.py) and waits;
    # the test stops it the way its budget would, once the figure is there, so nothing here races a clock
    pids = tmp_path / "pids"
    child = (
        "import json, os, subprocess, sys, time\n"
        f"open({str(tmp_path / 'slow.jsonl')!r}, 'a').write(json.dumps({{'what': 'first', 'value': 1}}) + '\\n')\n"
        "p = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{p.pid}}')\n"
        "time.sleep(600)\n"
    )
    stop = threading.Event()

    def stop_when_ready() -> None:
        while not pids.exists() or len(pids.read_text().split()) < 2:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=stop_when_ready, daemon=True).start()
    res = gpu.run_part("slow", [sys.executable, "-c", child], tmp_path, budget_s=3600, stop=stop)
    assert res["status"] in ("stopped at budget", "killed at budget")
    assert gpu.read_figures(tmp_path, "slow") == [{"what": "first", "value": 1}]
    for pid in map(int, pids.read_text().split()):
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    for _ in range(200):  # a killed process can linger as a zombie a moment until its parent reaps it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} is still running")


def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    for args, words in ((["--budget", "hf"], "--budget hf"), (["--budget", "gpu=5"], "PART is one of"),
                        (["--parts", "hf,tpu"], "unknown tpu")):
        r = _bench(*args, "--out", str(tmp_path))
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def _carry(root: Path, files: dict[str, bytes], gguf: bytes, parts: list[str]) -> None:
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    groups = [{k: v for k, v in files.items() if k in parts[:1]}, {k: v for k, v in files.items() if k not in parts[:1]}]
    manifest = {"gguf_name": "m.gguf", "gguf_sha256": sha(gguf), "model_parts": parts,
                "carries": [{"folder": f".gpu/c{i}", "bytes": 0, "files": {k: sha(v) for k, v in g.items()}}
                            for i, g in enumerate(groups, 1)]}
    for i, g in enumerate(groups, 1):
        for k, v in g.items():
            (root / f"c{i}" / k).parent.mkdir(parents=True, exist_ok=True)
            (root / f"c{i}" / k).write_bytes(v)
        (root / f"c{i}" / "manifest.json").write_text(json.dumps(manifest))


def test_device_steps_stage_check_and_assemble_then_run(tmp_path, tiny_model_dir):
    gguf = os.urandom(3000)
    files = {"model.part00": gguf[:1000], "model.part01": gguf[1000:], "data/mtbench_questions.jsonl": b'{"turns": ["hi"]}\n'}
    carry, stage = tmp_path / "carry", tmp_path / "stage"
    _carry(carry, files, gguf, ["model.part00", "model.part01"])
    env = {**os.environ, "RLAIF_GPU_CARRY": str(carry), "RLAIF_GPU_STAGE": str(stage)}
    r1 = _bench("--device-step", "1", "--out", str(tmp_path / "o"), env=env)
    assert r1.returncode == 0 and "device step 1 of 2" in r1.stdout
    assert not (stage / "m.gguf").exists(), "the model is assembled only when every piece is there"
    r2 = _bench("--device-step", "2", "--out", str(tmp_path / "o"), "--smoke", "--parts", "model",
                "--model", str(tiny_model_dir), env=env)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    assert (stage / "m.gguf").read_bytes() == gguf
    assert json.loads((tmp_path / "o" / "results.json").read_text())["parts"]["model"]["status"] == "done"
    # a piece damaged on the way is refused with one line, before anything runs
    (carry / "c1" / "model.part00").write_bytes(b"x" + gguf[1:1000])
    bad = _bench("--device-step", "1", "--out", str(tmp_path / "o"), env=env)
    assert bad.returncode == 3 and "arrived damaged" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_smoke_vllm_part_measures_bare_and_engine(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "g"
    r = _bench("--smoke", "--parts", "vllm", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:]
    part = json.loads((out / "results.json").read_text())["parts"]["vllm"]
    figs = {f["what"]: f["value"] for f in part["figures"] if "value" in f}
    assert part["status"] == "done" and figs["vllm bare"] > 0 and figs["vllm engine"] > 0, part
