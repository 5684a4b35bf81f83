"""Checkable instructions: each check type is a pure function of the response text.

These mirror the judge's `checkable` verifier contract (a prompt's meta["checks"]); train
needs them for its own eval and cannot import the judge package (stage packages stay
independent), so they live here too. The type names and fields are the shared contract.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

Check = dict[str, Any]

_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+\S")


def _words(text: str) -> list[str]:
    return re.findall(r"\b[\w'’-]+\b", text)


def bullet_count(text: str, n: int) -> bool:
    return sum(1 for line in text.splitlines() if _BULLET.match(line)) == int(n)


def include_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def valid_json(text: str) -> bool:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:  # a model that wraps JSON in a code fence still answered in JSON
        body = fenced.group(1)
    try:
        json.loads(body)
    except ValueError:
        return False
    return bool(body)


def max_words(text: str, n: int) -> bool:
    return 0 < len(_words(text)) <= int(n)


def min_words(text: str, n: int) -> bool:
    return len(_words(text)) >= int(n)


def lowercase(text: str) -> bool:
    return bool(text.strip()) and text == text.lower()


def no_commas(text: str) -> bool:
    return bool(text.strip()) and "," not in text


def ends_with(text: str, text_: str) -> bool:
    return text.strip().endswith(text_.strip())


def num_paragraphs(text: str, n: int) -> bool:
    paras = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return len(paras) == int(n)


CHECKS: dict[str, Callable[..., bool]] = {
    "bullet_count": lambda t, c: bullet_count(t, c["n"]),
    "include_word": lambda t, c: include_word(t, c["word"]),
    "valid_json": lambda t, c: valid_json(t),
    "max_words": lambda t, c: max_words(t, c["n"]),
    "min_words": lambda t, c: min_words(t, c["n"]),
    "lowercase": lambda t, c: lowercase(t),
    "no_commas": lambda t, c: no_commas(t),
    "ends_with": lambda t, c: ends_with(t, c["text"]),
    "num_paragraphs": lambda t, c: num_paragraphs(t, c["n"]),
}
REQUIRED = {"bullet_count": ("n",), "include_word": ("word",), "max_words": ("n",), "min_words": ("n",),
            "ends_with": ("text",), "num_paragraphs": ("n",)}


def validate_check(check: Any) -> str | None:
    """None if the check is well-formed, else what is wrong with it."""
    if not isinstance(check, dict) or check.get("type") not in CHECKS:
        return f"unknown check {check!r}: types are {', '.join(CHECKS)}"
    missing = [k for k in REQUIRED.get(check["type"], ()) if k not in check]
    return f"check {check['type']} needs {', '.join(missing)}" if missing else None


def run_checks(text: str, checks: list[Check]) -> dict[str, bool]:
    """check label -> passed. The label names the check and its argument, e.g. 'max_words:50'."""
    out = {}
    for c in checks:
        arg = next((str(c[k]) for k in ("n", "word", "text") if k in c), "")
        out[c["type"] + (f":{arg}" if arg else "")] = bool(CHECKS[c["type"]](text, c))
    return out


def pass_fraction(text: str, checks: list[Check]) -> float | None:
    """The `checkable` verifier's score: the fraction of checks passed (None: no checks)."""
    if not checks:
        return None
    res = run_checks(text, checks)
    return sum(res.values()) / len(res)
