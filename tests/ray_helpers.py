"""Helpers for the Ray tests (no tests here): one private local cluster per test module."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Iterator

from backends.ray_cluster import LocalCluster
from backends.ray_executor import _use_token
from corpus import Corpus

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


@contextlib.contextmanager
def module_cluster(num_cpus: int = 3, **env_extra: str) -> Iterator[str]:
    """A token-protected local cluster (its address); this process presents the token meanwhile."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(ROOT), **env_extra}
    cluster = LocalCluster(num_cpus=num_cpus, env=env)
    address = cluster.start()
    before = _use_token({k: env[k] for k in AUTH})
    try:
        yield address
    finally:
        cluster.stop()
        _use_token(before)


def table(db: Path, sql: str) -> list[tuple]:
    c = Corpus(db, create=False)
    try:
        with c.connect() as con:
            return con.execute(sql).fetchall()
    finally:
        c.close()
