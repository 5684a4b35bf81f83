"""Training data: the rows a release names (release_items), in TRL's conversational formats.

Rows are read from the base tables by item id rather than from the `accepted_sft` /
`preference_pairs` views, because those views follow the latest filters run while a release is
a frozen snapshot: a later filters run must not change what an old release trains on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corpus import Corpus, UserError, snapshot_hash
from corpus.errors import read_text

RELEASED = ("released", "auto_released")


@dataclass
class TrainingSet:
    release_id: str
    kind: str                      # 'sft' | 'pair'
    ids: list[str]                 # generation ids (sft) or pair ids (pair)
    rows: list[dict[str, Any]]     # TRL conversational rows
    snapshot_hash: str
    prompt_ids: list[str] | None = None  # pair sets: each row's prompt, so a prompt's pairs are held out together


def resolve_release(corpus: Corpus, release: str | None) -> dict[str, Any]:
    tables = corpus.tables()
    if "release_items" not in tables:
        raise UserError("no releases in this corpus yet: review and release data first (`python -m review release --db ...`)")
    if release:
        rows = corpus.query("SELECT * FROM releases WHERE id = ?", [release])
        if not rows:
            raise UserError(f"--release {release}: no such release; list them with `python -m corpus sql \"SELECT id, decision, created_at FROM releases\"`")
        if rows[0]["decision"] not in RELEASED:
            raise UserError(f"--release {release}: its decision is {rows[0]['decision']!r}, not released; only released data trains")
        return rows[0]
    rows = corpus.query(
        "SELECT * FROM releases WHERE decision IN ('released', 'auto_released') ORDER BY created_at DESC, id LIMIT 1"
    )
    if not rows:
        raise UserError("no release with decision 'released' or 'auto_released': run `python -m review release --db ...` first, or pass --release ID")
    return rows[0]


def _messages(value: Any) -> list[dict[str, str]]:
    msgs = json.loads(value) if isinstance(value, str) else value
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def sft_rows(corpus: Corpus, release_id: str, generated_by: str | None = None,
             check_types: list[str] | None = None) -> TrainingSet:
    recs = corpus.query(
        """
        SELECT g.id, p.messages, p.meta, g.response
        FROM release_items ri
        JOIN generations g ON g.id = ri.item_id
        JOIN prompts p ON p.id = g.prompt_id
        WHERE ri.release_id = ? AND ri.kind = 'sft' AND (? IS NULL OR g.model = ?)
        ORDER BY g.id
        """,
        [release_id, generated_by, generated_by],
    )
    if check_types is not None:  # only replies to prompts that carry one of these checks
        recs = [r for r in recs if set(check_types) & _check_types(r["meta"])]
    rows = [
        {"prompt": _messages(r["messages"]), "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in recs
    ]
    ids = [r["id"] for r in recs]
    return TrainingSet(release_id, "sft", ids, rows, snapshot_hash("train:sft", ids))


def _check_types(meta: Any) -> set[str]:
    m = json.loads(meta) if isinstance(meta, str) else (meta or {})
    return {c["type"] for c in m.get("checks") or []}


def pair_rows(corpus: Corpus, release_id: str, generated_by: str | None = None) -> TrainingSet:
    recs = corpus.query(
        """
        SELECT pr.id, pr.prompt_id, p.messages, c.response AS chosen, r.response AS rejected
        FROM release_items ri
        JOIN pairs pr ON pr.id = ri.item_id
        JOIN prompts p ON p.id = pr.prompt_id
        JOIN generations c ON c.id = pr.chosen_id
        JOIN generations r ON r.id = pr.rejected_id
        WHERE ri.release_id = ? AND ri.kind = 'pair' AND (? IS NULL OR c.model = ? OR r.model = ?)
        ORDER BY pr.id
        """,
        [release_id, generated_by, generated_by, generated_by],
    )
    rows = [
        {
            "prompt": _messages(r["messages"]),
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in recs
    ]
    ids = [r["id"] for r in recs]
    return TrainingSet(release_id, "pair", ids, rows, snapshot_hash("train:pair", ids), [r["prompt_id"] for r in recs])


def training_set(corpus: Corpus, kind: str, release: str | None, generated_by: str | None = None,
                 check_types: list[str] | None = None) -> TrainingSet:
    """The release's rows for a trainer kind; UserError when the release has none of that kind.

    `generated_by` keeps only rows with a reply that model generated (the loop's on-policy DPO:
    M_t learns from pairs that hold its own samples, with itself as the reference); `check_types`
    (SFT only) keeps replies to prompts carrying one of those checks (the loop's narrow warm start)."""
    rel = resolve_release(corpus, release)
    if check_types is not None and kind != "sft":
        raise ValueError("check_types narrows SFT rows only")
    ts = sft_rows(corpus, rel["id"], generated_by, check_types) if kind == "sft" else pair_rows(corpus, rel["id"], generated_by)
    if not ts.rows:
        what = "accepted SFT rows (kind 'sft')" if kind == "sft" else "preference pairs (kind 'pair')"
        if generated_by:
            what += f" generated by {generated_by}"
        if check_types is not None:
            what += f" on prompts checking {', '.join(check_types) or '(no type)'}"
        raise UserError(f"release {rel['id']} holds no {what}; release data that has some (check `python -m filters` found pairs), or pass --release ID")
    return ts


def pairs_from_jsonl(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Held-out preference pairs from a file of {prompt, chosen, rejected} (HH-RLHF style:
    prompt is the dialogue text or a message list, chosen/rejected the final assistant turns)."""
    out = []
    for i, line in enumerate(read_text(path, "pairs file").splitlines(), 1):  # not UTF-8: one line, exit 2
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            prompt = d["prompt"]
            msgs = _messages(prompt) if isinstance(prompt, list) else hh_dialogue(prompt)
            out.append({"prompt": msgs, "chosen": [{"role": "assistant", "content": _text(d["chosen"])}],
                        "rejected": [{"role": "assistant", "content": _text(d["rejected"])}]})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{i}: expected a JSON object with prompt, chosen, rejected ({e})") from e
        if limit and len(out) >= limit:
            break
    return out


def _text(v: Any) -> str:
    if isinstance(v, list):  # [assistant msg]
        return v[-1]["content"]
    return str(v).strip()


def hh_dialogue(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: ...\\n\\nAssistant:' -> chat messages."""
    msgs: list[dict[str, str]] = []
    for chunk in text.split("\n\n"):
        for tag, role in (("Human:", "user"), ("Assistant:", "assistant")):
            if chunk.startswith(tag):
                content = chunk[len(tag):].strip()
                if content:
                    msgs.append({"role": role, "content": content})
                break
        else:
            if msgs and chunk.strip():
                msgs[-1]["content"] += "\n\n" + chunk.strip()
    if not msgs or msgs[-1]["role"] != "user":
        msgs = msgs or [{"role": "user", "content": text.strip()}]
    return msgs


def release_prompts(corpus: Corpus, release: str | None, generated_by: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(release id, [{id, messages, meta}]): the prompts of a release's preference pairs, which are
    the prompts whose candidates the judge told apart. GRPO learns only where a group of replies
    differs in reward, so these are the prompts worth its rollouts. `generated_by` keeps prompts
    with a pair holding that model's replies (the round's own policy)."""
    rel = resolve_release(corpus, release)
    recs = corpus.query(
        """
        SELECT DISTINCT p.id, p.messages, p.meta FROM release_items ri
        JOIN pairs pr ON pr.id = ri.item_id JOIN prompts p ON p.id = pr.prompt_id
        JOIN generations c ON c.id = pr.chosen_id JOIN generations r ON r.id = pr.rejected_id
        WHERE ri.release_id = ? AND ri.kind = 'pair' AND (? IS NULL OR c.model = ? OR r.model = ?)
        ORDER BY p.id
        """,
        [rel["id"], generated_by, generated_by, generated_by],
    )
    return rel["id"], [{"id": r["id"], "messages": _messages(r["messages"]),
                        "meta": json.loads(r["meta"]) if isinstance(r["meta"], str) else (r["meta"] or {})} for r in recs]
