"""Turn a judge's reply into a validated verdict, or a one-line reason why it cannot be used.

Parsing never raises and never guesses a silent None: the result is either a verdict or an
error message that the judge is shown on retry and that is stored with `parse_status=failed`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from backends import TokenLogprob


class PointwiseVerdict(BaseModel):
    score: int
    rationale: str = ""


class PairwiseVerdict(BaseModel):
    winner: Literal["A", "B", "tie"]
    rationale: str = ""


class Parsed(BaseModel):
    ok: bool
    verdict: dict[str, Any] | None = None
    error: str | None = None
    extra_prose: bool = False
    score_offset: int | None = Field(None, description="char offset of the score value in the reply")


def _objects(text: str) -> list[tuple[int, str]]:
    """Every balanced {...} span in `text` (outermost first), with its start offset."""
    out, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append((start, text[start : i + 1]))
    return out


def _load_json(text: str) -> tuple[dict[str, Any] | None, int, bool]:
    """The first JSON object in the reply, its offset, and whether prose surrounded it."""
    stripped = text.strip()
    try:
        obj = json.loads(stripped)
        if isinstance(obj, dict):
            return obj, text.find(stripped[:1]), False
    except (json.JSONDecodeError, ValueError):
        pass
    for start, span in _objects(text):
        try:
            obj = json.loads(span)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            return obj, start, True
    return None, -1, True


def parse_pointwise(text: str, lo: int, hi: int) -> Parsed:
    if not text or not text.strip():
        return Parsed(ok=False, error="the reply was empty")
    obj, start, prose = _load_json(text)
    if obj is None:
        return Parsed(ok=False, error='no JSON object found; expected {"rationale": "...", "score": <integer>}')
    lowered = {str(k).lower(): v for k, v in obj.items()}
    if "score" not in lowered:
        return Parsed(ok=False, error='the JSON object has no "score" key')
    raw = lowered["score"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return Parsed(ok=False, error=f"score must be an integer, got {json.dumps(raw)[:40]}")
    if isinstance(raw, str):
        if not re.fullmatch(r"\s*-?\d+(\.0+)?\s*", raw):
            return Parsed(ok=False, error=f"score must be an integer, got {raw[:40]!r}")
        raw = float(raw)
    if isinstance(raw, float) and (not math.isfinite(raw) or raw != int(raw)):
        return Parsed(ok=False, error=f"score must be an integer from {lo} to {hi}, got {raw}")
    score = int(raw)
    if not lo <= score <= hi:
        return Parsed(ok=False, error=f"score {score} is outside the scale {lo}-{hi}")
    rationale = lowered.get("rationale", "")
    try:
        v = PointwiseVerdict(score=score, rationale=rationale if isinstance(rationale, str) else json.dumps(rationale))
    except ValidationError as e:  # pragma: no cover - the checks above cover the fields
        return Parsed(ok=False, error=str(e.errors()[0]["msg"]))
    m = re.search(r'"score"\s*:\s*"?(-?\d)', text[start:]) if start >= 0 else None
    return Parsed(ok=True, verdict=v.model_dump(), extra_prose=prose, score_offset=start + m.start(1) if m else None)


def parse_pairwise(text: str) -> Parsed:
    if not text or not text.strip():
        return Parsed(ok=False, error="the reply was empty")
    obj, _, prose = _load_json(text)
    if obj is None:
        return Parsed(ok=False, error='no JSON object found; expected {"rationale": "...", "winner": "A" | "B" | "tie"}')
    lowered = {str(k).lower(): v for k, v in obj.items()}
    winner = lowered.get("winner")
    if not isinstance(winner, str):
        return Parsed(ok=False, error='the JSON object needs "winner": "A", "B" or "tie"')
    w = winner.strip().strip(".").lower()
    w = {"a": "A", "response a": "A", "b": "B", "response b": "B", "tie": "tie", "draw": "tie"}.get(w)
    if w is None:
        return Parsed(ok=False, error=f'winner must be "A", "B" or "tie", got {winner[:40]!r}')
    rationale = lowered.get("rationale", "")
    v = PairwiseVerdict(winner=w, rationale=rationale if isinstance(rationale, str) else json.dumps(rationale))
    return Parsed(ok=True, verdict=v.model_dump(), extra_prose=prose)


def expected_score(logprobs: list[TokenLogprob] | None, score_offset: int | None, lo: int, hi: int) -> float | None:
    """The probability-weighted score: sum(p(level) * level) over the scale's levels, read from
    the alternatives the judge had at the token where it wrote the score. None when the reply
    has no logprobs or the score token cannot be located."""
    if not logprobs or score_offset is None:
        return None
    pos = 0
    for tok in logprobs:
        end = pos + len(tok.token)
        if pos <= score_offset < end or (end > score_offset and tok.token.strip()):
            if not tok.token.strip():
                pos = end
                continue
            probs: dict[int, float] = {}
            for alt, lp in {**tok.top, tok.token: tok.logprob}.items():
                s = alt.strip()
                if re.fullmatch(r"-?\d+", s) and lo <= int(s) <= hi:
                    probs[int(s)] = max(probs.get(int(s), 0.0), math.exp(lp))
            total = sum(probs.values())
            if total <= 0:
                return None
            return sum(level * p for level, p in probs.items()) / total
        pos = end
    return None
