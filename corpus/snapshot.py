"""A snapshot hash names exactly which rows went out (to an export, a release, a training run)."""

from __future__ import annotations

from typing import Iterable

from .ids import content_id


def snapshot_hash(kind: str, ids: Iterable[str]) -> str:
    """Order-free: the same set of row ids gives the same hash."""
    return content_id("snapshot:" + kind, sorted(set(ids)))
