"""Each check type as a pure function of the reply text, with the fields its dict must carry.

Where IFEval (Zhou et al. 2023, google-research instruction_following_eval) defines the
instruction, the function follows its `check_following`; the few places that differ on purpose
carry a comment saying why, and docs/howto/checks.md has the full table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

Check = dict[str, Any]

# IFEval counts words with nltk's RegexpTokenizer(r"\w+"): runs of word characters, so "don't"
# is two words and an emoji is none. Python's `re` gives the same runs without nltk.
_WORD = re.compile(r"\w+")
# IFEval counts lines starting with "*" (not "**") or "-". We also ask for a space and some text
# after the marker, so a "---" rule, a "-5 °C" line or an "*emphasis*" line is not a bullet.
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.MULTILINE)
# Our prompts ask for paragraphs "separated by a blank line"; IFEval's own paragraph instruction
# separates them with a markdown divider "***". Both break a paragraph here.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n|^[ \t]*\*\*\*[ \t]*$", re.MULTILINE)
_FENCE_OPENERS = ("```json", "```Json", "```JSON", "```")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def bullet_count(text: str, n: int) -> bool:
    return len(_BULLET.findall(text)) == n


def include_word(text: str, word: str) -> bool:
    # IFEval searches the keyword as an unescaped regex anywhere ("first" inside "firstly"); the
    # instruction says "use the word", so we look for the word itself, escaped.
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def valid_json(text: str) -> bool:
    # IFEval: the whole reply, optionally inside one code fence, parses as JSON; prose around it fails
    body = text.strip()
    for opener in _FENCE_OPENERS:
        if body.startswith(opener):
            body = body[len(opener):]
            break
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # nested past Python's limit: not parseable here, so not passed
        return False
    return True


def max_words(text: str, n: int) -> bool:
    # "No more than n words" is IFEval's "less than n+1". A reply with no word at all (emoji,
    # punctuation) passes IFEval's but answers nothing: a policy would learn to send it.
    return 0 < count_words(text) <= n


def min_words(text: str, n: int) -> bool:
    return count_words(text) >= n


def lowercase(text: str) -> bool:
    # str.islower needs at least one cased letter, as in IFEval. IFEval also asks langdetect that
    # the reply is English; we check case only (langdetect is random unless seeded, and heavy).
    return text.islower()


def no_commas(text: str) -> bool:
    # as max_words: a reply without words has no commas but is no answer
    return "," not in text and count_words(text) > 0


def ends_with(text: str, phrase: str) -> bool:
    # IFEval: trailing space and quotes ignored, case-insensitive
    return text.strip().strip('"').lower().endswith(phrase.strip().lower())


def num_paragraphs(text: str, n: int) -> bool:
    return sum(1 for p in _PARAGRAPH_BREAK.split(text) if p.strip()) == n


@dataclass(frozen=True)
class CheckType:
    name: str
    fields: dict[str, type]  # field -> the type its value must have
    test: Callable[..., bool]  # test(text, **fields)
    ifeval: str | None  # the IFEval instruction id whose semantics it follows, if any


CHECK_TYPES: dict[str, CheckType] = {t.name: t for t in [
    CheckType("bullet_count", {"n": int}, bullet_count, "detectable_format:number_bullet_lists"),
    CheckType("include_word", {"word": str}, include_word, "keywords:existence"),
    CheckType("valid_json", {}, valid_json, "detectable_format:json_format"),
    CheckType("max_words", {"n": int}, max_words, "length_constraints:number_words"),
    CheckType("min_words", {"n": int}, min_words, "length_constraints:number_words"),
    CheckType("lowercase", {}, lowercase, "change_case:english_lowercase"),
    CheckType("no_commas", {}, no_commas, "punctuation:no_comma"),
    CheckType("ends_with", {"text": str}, ends_with, "startend:end_checker"),
    CheckType("num_paragraphs", {"n": int}, num_paragraphs, "length_constraints:number_paragraphs"),
]}
# the names the check dicts use for the functions' arguments ("text" would clash with the reply)
_ARG = {"ends_with": {"text": "phrase"}}


def validate_check(check: Any) -> str | None:
    """None if the check is well-formed, else what is wrong with it (one line)."""
    if not isinstance(check, dict) or check.get("type") not in CHECK_TYPES:
        return f"unknown check {check!r}: types are {', '.join(CHECK_TYPES)}"
    ct = CHECK_TYPES[check["type"]]
    missing = [k for k in ct.fields if k not in check]
    if missing:
        return f"check {ct.name} needs {', '.join(missing)}"
    for k, typ in ct.fields.items():
        v = check[k]
        if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            return f"check {ct.name}: {k} must be a whole number >= 0, not {v!r}"
        if typ is str and (not isinstance(v, str) or not v.strip()):
            return f"check {ct.name}: {k} must be a non-empty string, not {v!r}"
    return None


def check_passes(text: str, check: Check) -> bool:
    """One check's verdict. An empty or blank reply fails every check, as in IFEval's harness.
    Raises ValueError (the validate_check message) on a malformed check."""
    if err := validate_check(check):
        raise ValueError(err)
    if not text.strip():
        return False
    ct = CHECK_TYPES[check["type"]]
    names = _ARG.get(ct.name, {})
    return bool(ct.test(text, **{names.get(k, k): check[k] for k in ct.fields}))


def _by_type(name: str) -> Callable[[str, Check], bool]:
    return lambda text, check: check_passes(text, {**check, "type": name})


# type -> fn(text, check): the shape the callers had before the registry
CHECKS: dict[str, Callable[[str, Check], bool]] = {name: _by_type(name) for name in CHECK_TYPES}


def check_label(check: Check) -> str:
    """The check and its argument, e.g. 'max_words:50'."""
    arg = next((str(check[k]) for k in ("n", "word", "text") if k in check), "")
    return check["type"] + (f":{arg}" if arg else "")


def verdicts(text: str, checks: list[Check]) -> list[bool]:
    """One verdict per check, in order (two checks with the same label both count)."""
    return [check_passes(text, c) for c in checks]


def run_checks(text: str, checks: list[Check]) -> dict[str, bool]:
    """check label -> passed."""
    return {check_label(c): ok for c, ok in zip(checks, verdicts(text, checks))}


def pass_fraction(text: str, checks: list[Check]) -> float | None:
    """The `checkable` verifier's score: the fraction of checks passed (None: no checks)."""
    if not checks:
        return None
    res = verdicts(text, checks)
    return sum(res) / len(res)
