"""Verifiers on Ray (`python -m judge --executor ray`): CPU-heavy checks over the cluster's CPUs.

Each criterion's items are cut into tasks of a few answers; each task runs in a Ray worker
process of its own and calls the verifier's public function there (`judge.verifiers`), so every
code_exec task starts its own sandboxes on its own node, with no state shared with the driver
or another task. Results come back in order and are stored by the driver as in the local path.
A reward_model verifier stays in the driver: its model is read from the corpus, which never
leaves the driver's node.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from backends.ray_session import RaySession

from .verifiers import Item, VerifierResult, code_exec, run_verifier

PER_TASK_MAX = 32  # answers per task: small enough to spread, big enough that a task outweighs its start


def _verify_part(spec: Any, items: list[Item], unsafe_exec: bool) -> list[VerifierResult]:
    """In a Ray worker: one task's answers; code_exec runs one sandbox at a time (one CPU per task)."""
    if spec.type == "code_exec":
        return code_exec(spec, items, workers=1, unsafe=unsafe_exec)
    return run_verifier(spec, items, None, unsafe_exec)  # type: ignore[arg-type]  # corpus: reward_model only


def ray_verifier(session: RaySession, unsafe_exec: bool) -> Callable[[Any, list[Item], Any], list[VerifierResult]]:
    """A drop-in for `run_verifier(spec, items, corpus)` that spreads the items over the cluster."""

    def verify(spec: Any, items: list[Item], corpus: Any) -> list[VerifierResult]:
        if spec.type == "reward_model" or not items:
            return run_verifier(spec, items, corpus, unsafe_exec)
        import ray

        session.connect()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, min(PER_TASK_MAX, math.ceil(len(items) / (2 * cpus))))  # two tasks per CPU: the slow ones even out
        parts = [items[s : s + size] for s in range(0, len(items), size)]
        out: list[VerifierResult] = []
        for got in session.map(_verify_part, [(spec, p, unsafe_exec) for p in parts], num_cpus=1.0):
            out.extend(got)
        return out

    return verify
