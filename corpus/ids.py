"""Content-addressed ids: the same content is the same row, so a rerun adds nothing it has."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(kind: str, obj: Any) -> str:
    """A 128-bit hex id of `obj`, namespaced by `kind` so a prompt and a flag never collide."""
    return hashlib.sha256(f"{kind}\x00{canonical_json(obj)}".encode()).hexdigest()[:32]
