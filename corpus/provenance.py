"""What a run records about where it came from, with no secret in it: the engine's code
version, and the command line and config with API keys and URL credentials removed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Sequence

_SECRET_FLAGS = ("--api-key", "--token", "--password", "--secret")
# the user:password@ part of any URL (http://alice:pw@host/v1)
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact_urls(text: str) -> str:
    """Text with the credentials of every URL in it replaced by ***."""
    return _URL_USERINFO.sub(r"\1***@", text)


def scrub_secrets(obj: Any) -> Any:
    """A JSON-like value with URL credentials removed from every string in it."""
    if isinstance(obj, str):
        return redact_urls(obj)
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v) for v in obj]
    return obj


def code_version() -> str:
    """The git commit of the engine (with +dirty), or 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def scrub_argv(argv: Sequence[str]) -> list[str]:
    """Drop the values of secret-bearing flags, and URL credentials, before a command line is stored."""
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("***")
            hide = False
        elif a in _SECRET_FLAGS:
            out.append(a)
            hide = True
        elif any(a.startswith(f + "=") for f in _SECRET_FLAGS):
            out.append(a.split("=", 1)[0] + "=***")
        else:
            out.append(redact_urls(a))
    return out
