"""Human preference files: read JSONL, JSON, Parquet or a `datasets` folder, recognise the
common shapes, and turn each row into `LabelledPair`s. Nothing here writes to the corpus.

Shapes (detected per row, by the keys it has):
- TRL preference: `prompt` + `chosen` + `rejected`; each a string or a message list. A prompt
  string in HH-RLHF form ("Human: ...\\n\\nAssistant:") becomes the dialogue's messages.
- TRL implicit prompt / HH-RLHF transcripts: `chosen` + `rejected` only, each the whole
  dialogue (messages, or "\\n\\nHuman: ... \\n\\nAssistant: ..."); split at the last assistant
  turn, and the two dialogues must share everything before it.
- UltraFeedback-like: a prompt (`prompt` | `instruction` | `question`) + `completions` (or
  `responses`), each completion with its text (`response` | `text` | `content`) and a score
  (`overall_score` | `score` | `rating`, else the mean of `fine-grained_score`s / annotation
  ratings): pairs are best vs worst (default) or every pair with different scores.
- JudgeBench-style: `question` + `response_A` + `response_B` + `label` ("A>B", "B>A", "A", "B";
  a tie label carries no preference and is skipped).
A row's category (for per-category agreement) comes from `category`, else `source`, else `subset`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError, not_utf8, read_text

ROLES = ("system", "user", "assistant")
SHAPES = ("prompt/chosen/rejected (TRL)", "chosen/rejected dialogues (HH-RLHF)",
          "prompt + completions with scores (UltraFeedback)", "question/response_A/response_B/label (JudgeBench)")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


@dataclass
class LabelledPair:
    """One human preference: `chosen` is better than `rejected` as a reply to `prompt`."""

    where: str                       # file:line of the row it came from
    prompt: list[dict[str, str]]     # chat messages ending with the user's turn
    chosen: str
    rejected: str
    margin: float | None = None      # score difference where the file scores answers
    category: str | None = None
    chosen_model: str | None = None  # who wrote the answer, where the file says
    rejected_model: str | None = None


@dataclass
class ParsedFile:
    pairs: list[LabelledPair]
    rows: int
    skipped: dict[str, int]          # reason -> rows (or completion pairs) left out
    bad: list[str]                   # one line per bad row (only with skip_bad)


# -- reading files ------------------------------------------------------------------------------

def read_rows(path: str | Path, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """("file:line" or "file:row N", record) for every record of a file or saved dataset folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder; give a JSONL, JSON or Parquet file, or a `datasets` folder")
    if p.is_dir():
        yield from ((f"{p}:row {i}", r) for i, r in enumerate(load_saved_dataset(p, split), 1))
        return
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:
            raise UserError(f"{p}: cannot read Parquet ({str(e).splitlines()[0][:160]})") from None
        yield from ((f"{p}:row {i}", r) for i, r in enumerate(rows, 1))
        return
    if suffix == ".json":
        text = read_text(p, "preference file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # anything else is a broken file; "Extra data" is JSONL named .json
                raise UserError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from None
        else:
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 and len(data) == 1 else [data]
            if not isinstance(data, list):
                raise UserError(f"{p}: expected a JSON list of objects (or JSONL, one object a line)")
            yield from ((f"{p}[{i}]", r) for i, r in enumerate(data))
            return
    with p.open("rb") as f:
        offset = 0
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(f"{p}:{n}", e, offset + (3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0)) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from None
            yield f"{p}:{n}", rec


def load_saved_dataset(path: Path, split: str | None) -> Any:
    """The rows of a `datasets` save_to_disk folder (one split of a DatasetDict); mistakes are one line."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a dataset saved with save_to_disk ({str(e).splitlines()[0][:160]})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if len(names) != 1 and "train" not in names:
                raise UserError(f"{path}: the dataset has splits {', '.join(names)}; pick one with --split")
            split = "train" if "train" in names else names[0]
        if split not in ds:
            raise UserError(f"--split {split}: {path} has splits {', '.join(names)}")
        ds = ds[split]
    return ds


# -- shapes -------------------------------------------------------------------------------------

class BadRow(ValueError):
    """What is wrong with one row (the caller adds where it is)."""


def _after_tag(text: str) -> str:
    """A turn's text after its 'Human:' / 'Assistant:' tag: the one space that follows the tag is
    the format's, everything else is the author's and kept byte for byte."""
    return text[1:] if text.startswith(" ") else text


def hh_messages(text: str) -> list[dict[str, str]]:
    """'Human: hi\\n\\nAssistant: hello\\n\\nHuman: more' -> chat messages; text without the tags
    is one user turn, as it is. A trailing empty 'Assistant:' (the slot to answer) is dropped."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        return [{"role": "user", "content": text}]
    if parts[0].strip():
        raise BadRow("text before the first 'Human:' turn; an HH-RLHF dialogue starts with 'Human:'")
    msgs = []
    for tag, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if tag == "Human" else "assistant", "content": _after_tag(content)})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
        msgs.pop()
    return msgs


def _message_list(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"'{what}' must be a string or a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadRow(f"'{what}'[{i}] must be {{\"role\": {'|'.join(ROLES)}, \"content\": string}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value: Any, what: str = "prompt") -> list[dict[str, str]]:
    msgs = hh_messages(value) if isinstance(value, str) else _message_list(value, what)
    if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
        raise BadRow(f"'{what}' must end with the user's turn (the one the answers reply to)")
    return msgs


def _reply(value: Any, what: str) -> str:
    """A reply: a string, or messages whose last one is the assistant's. Kept byte for byte: the
    judges and the trainer see what the people who labelled it saw, whitespace included."""
    if isinstance(value, str):
        return value
    msgs = _message_list(value, what)
    if msgs[-1]["role"] != "assistant":
        raise BadRow(f"'{what}' must end with the assistant's reply, not a {msgs[-1]['role']} message")
    return msgs[-1]["content"]  # an empty reply is a real answer too (people prefer almost anything to it)


def _split_dialogue(value: Any, what: str) -> tuple[list[dict[str, str]], str]:
    """A whole dialogue -> (the prompt before the last assistant turn, that turn's text)."""
    if isinstance(value, str):
        cut = value.rfind("\n\nAssistant:")
        if cut < 0:
            raise BadRow(f"'{what}' has no '\\n\\nAssistant:' turn; without a 'prompt' field each side must be the whole dialogue")
        prompt, reply = hh_messages(value[:cut]), _after_tag(value[cut + len("\n\nAssistant:"):])
    else:
        msgs = _message_list(value, what)
        if msgs[-1]["role"] != "assistant":
            raise BadRow(f"'{what}' must end with the assistant's reply")
        prompt, reply = msgs[:-1], msgs[-1]["content"]
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRow(f"'{what}': the turn before the last assistant reply must be the user's")
    return prompt, reply


def _category(row: dict[str, Any]) -> str | None:
    for k in ("category", "source", "subset"):
        v = row.get(k)
        if isinstance(v, str) and v:
            return v
    return None


def _score(c: dict[str, Any]) -> float | None:
    for k in ("overall_score", "score", "rating"):
        v = c.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    fine = c.get("fine-grained_score")
    if isinstance(fine, (int, float)) and not isinstance(fine, bool):
        return float(fine)
    ann = c.get("annotations")
    if isinstance(ann, dict):  # UltraFeedback: {aspect: {"Rating": "4", ...}}
        vals = []
        for a in ann.values():
            r = a.get("Rating") if isinstance(a, dict) else None
            try:
                vals.append(float(r))
            except (TypeError, ValueError):
                continue
        if vals:
            return sum(vals) / len(vals)
    return None


def _completions(row: dict[str, Any], key: str, multi: str) -> tuple[list[tuple], int]:
    """((chosen, rejected, margin, chosen_model, rejected_model), ...), and score ties left out."""
    comps = row[key]
    if not isinstance(comps, list) or len(comps) < 2:
        raise BadRow(f"'{key}' must be a list of at least two scored completions")
    scored = []
    for i, c in enumerate(comps):
        if not isinstance(c, dict):
            raise BadRow(f"'{key}'[{i}] must be an object with a response and a score")
        text = next((c[k] for k in ("response", "text", "content", "completion") if isinstance(c.get(k), str)), None)
        score = _score(c)
        if score is not None and not math.isfinite(score):
            raise BadRow(f"'{key}'[{i}] has the score {score}; give a finite number")
        if text is None or not text.strip() or score is None:
            raise BadRow(f"'{key}'[{i}] needs a response text (response|text|content) and a score (overall_score|score|rating)")
        scored.append((score, text, c.get("model") if isinstance(c.get("model"), str) else None))
    order = sorted(range(len(scored)), key=lambda i: (-scored[i][0], i))
    if multi == "best_worst":
        cands = [(order[0], order[-1])]
    else:
        cands = [(a, b) for n, a in enumerate(order) for b in order[n + 1:]]
    out, ties = [], 0
    for a, b in cands:
        (sa, ta, ma), (sb, tb, mb) = scored[a], scored[b]
        if sa == sb or ta == tb:
            ties += 1
            continue
        out.append((ta, tb, sa - sb, ma, mb))
    return out, ties


def row_pairs(row: Any, where: str, multi: str = "best_worst") -> tuple[list[LabelledPair], str | None]:
    """The pairs one row holds, or (no pairs, why it holds none); BadRow for a malformed row."""
    if not isinstance(row, dict):
        raise BadRow(f"expected a JSON object, got {type(row).__name__}")
    cat = _category(row)
    keys = {k.lower(): k for k in row}
    if "response_a" in keys and "response_b" in keys:
        label = str(row.get("label", "")).replace(" ", "").upper()
        prompt = _prompt(row.get("question", row.get("prompt")), "question")
        a, b = _reply(row[keys["response_a"]], "response_A"), _reply(row[keys["response_b"]], "response_B")
        model = row.get("response_model") if isinstance(row.get("response_model"), str) else None
        if label in ("A>B", "A", "A>>B"):
            return [LabelledPair(where, prompt, a, b, None, cat, model, model)], None
        if label in ("B>A", "B", "B>>A"):
            return [LabelledPair(where, prompt, b, a, None, cat, model, model)], None
        if label in ("A=B", "TIE", "B=A"):
            return [], "tie label"
        raise BadRow(f"'label' must be A>B, B>A (or A, B, A=B), got {row.get('label')!r}")
    comp_key = next((k for k in ("completions", "responses") if k in row), None)
    if comp_key:
        text = next((row[k] for k in ("prompt", "instruction", "question") if k in row), None)
        if text is None:
            raise BadRow(f"'{comp_key}' without a prompt: add 'prompt' (or 'instruction')")
        prompt = _prompt(text)
        made, ties = _completions(row, comp_key, multi)
        pairs = [LabelledPair(where, prompt, c, r, m, cat, mc, mr) for c, r, m, mc, mr in made]
        return pairs, (None if pairs else "equal scores")
    if "chosen" not in row or "rejected" not in row:
        found = ", ".join(sorted(map(str, row))[:8]) or "no keys"
        raise BadRow(f"not a preference row (found: {found}); expected one of: {'; '.join(SHAPES)}")
    if "prompt" in row and row["prompt"] not in (None, "", []):
        prompt = _prompt(row["prompt"])
        chosen, rejected = _reply(row["chosen"], "chosen"), _reply(row["rejected"], "rejected")
    else:
        prompt, chosen = _split_dialogue(row["chosen"], "chosen")
        other, rejected = _split_dialogue(row["rejected"], "rejected")
        if other != prompt:
            raise BadRow("'chosen' and 'rejected' differ before their last assistant turn; they must answer the same dialogue")
    margin = None
    if isinstance(row.get("score_chosen"), (int, float)) and isinstance(row.get("score_rejected"), (int, float)):
        for k in ("score_chosen", "score_rejected"):
            if not math.isfinite(row[k]):
                raise BadRow(f"'{k}' is {row[k]}; give a finite number or leave it out")
        margin = float(row["score_chosen"]) - float(row["score_rejected"])
    if chosen == rejected:
        return [], "chosen = rejected"
    return [LabelledPair(where, prompt, chosen, rejected, margin, cat)], None


def parse_file(path: str | Path, split: str | None = None, multi: str = "best_worst", skip_bad: bool = False,
               limit: int | None = None) -> ParsedFile:
    """Every pair in the file, all rows checked first; a bad row is a UserError naming file:line
    (with skip_bad: listed in `bad` and left out)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give a number of pairs of 1 or more (or leave --limit out for all)")
    pairs: list[LabelledPair] = []
    skipped: dict[str, int] = {}
    bad: list[str] = []
    rows = 0
    for where, row in read_rows(path, split):
        rows += 1
        try:
            got, why = row_pairs(row, where, multi)
        except BadRow as e:
            if not skip_bad:
                raise UserError(f"{where}: {e} (or pass --skip-bad to leave such rows out)") from None
            bad.append(f"{where}: {e}")
            continue
        if why:
            skipped[why] = skipped.get(why, 0) + 1
        pairs.extend(got)
        if limit is not None and len(pairs) >= limit:
            pairs = pairs[:limit]
            break
    if rows == 0:
        raise UserError(f"{path}: no rows in it")
    return ParsedFile(pairs, rows, skipped, bad)
