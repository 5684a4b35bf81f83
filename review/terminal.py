"""`python -m review next`: the same review flow as the web page, in a terminal."""

from __future__ import annotations

import re
from typing import Callable, TextIO

from corpus import Corpus, UserError

from .auth import reviewer_exists
from .verdicts import item_details, next_item, progress, record_verdict

HELP = "[a]pprove  [r]eject  [e]dit  [s]kip  [q]uit"
# control characters other than newline and tab: model text could otherwise move the cursor,
# clear the screen or hide words in the reviewer's terminal (ANSI escapes)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str | None) -> str:
    """Untrusted text made inert for a terminal: control characters shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text or "")


def _read_block(ask: Callable[[str], str], out: TextIO) -> str:
    print("Type the corrected response; end with a line holding only '.'", file=out)
    lines = []
    while True:
        line = ask("")
        if line == ".":
            return "\n".join(lines)
        lines.append(line)


def review_in_terminal(
    corpus: Corpus, reviewer: str, ask: Callable[[str], str] = input, out: TextIO | None = None,
    limit: int | None = None,
) -> dict[str, int]:
    """Show queued items one by one and record what the reviewer answers; stops at EOF or q."""
    import sys

    out = out or sys.stdout
    if not reviewer_exists(corpus, reviewer):
        raise UserError(f"--reviewer {reviewer}: no such reviewer; add one with `python -m review add-reviewer {reviewer}`")
    counts = {"approve": 0, "reject": 0, "edit": 0, "skip": 0}
    after = None
    while limit is None or sum(counts.values()) < limit:
        item = next_item(corpus, reviewer, after)
        if item is None:
            print("queue done: nothing left for you to review", file=out)
            break
        d = item_details(corpus, item["id"], reviewer)
        p = progress(corpus, reviewer)
        print(f"\n=== item {p['done'] + 1}/{p['total']}  [{item['stratum']}]"
              + (f"  disputed: {item['reason']}" if item["disputed"] else ""), file=out)
        for m in d["messages"]:
            print(f"--- {safe(m.get('role'))}:\n{safe(m.get('content'))}", file=out)
        print(f"--- candidate ({safe(d['generation']['model'])}):\n{safe(d['generation']['response'])}", file=out)
        for j in d["judgments"]:
            score = "failed" if j["score"] is None else f"{j['score']:g}"
            print(f"  judge {safe(j['judge'])} / {safe(j['criterion'])}: {score}  {safe((j['rationale'] or '')[:200])}", file=out)
        for f in d["flags"]:
            print(f"  flag {safe(f['kind'])} ({f['stage']}): {safe(f['reason'])}", file=out)
        try:
            choice = ask(HELP + "? ").strip().lower()[:1]
            if choice == "q":
                break
            if choice == "s" or choice == "":
                counts["skip"] += 1
                after = item["priority"]
                continue
            if choice == "a":
                record_verdict(corpus, item["target_id"], reviewer, "approve")
                counts["approve"] += 1
            elif choice == "r":
                reason = ask("reason? ").strip()
                record_verdict(corpus, item["target_id"], reviewer, "reject", note=reason)
                counts["reject"] += 1
            elif choice == "e":
                text = _read_block(ask, out)
                note = ask("note (optional)? ").strip()
                record_verdict(corpus, item["target_id"], reviewer, "edit", note=note, edited_response=text)
                counts["edit"] += 1
            else:
                print(f"unknown answer {choice!r}; {HELP}", file=out)
        except EOFError:
            break
        except UserError as e:  # a refused verdict: say why and show the item again
            print(f"not recorded: {e}", file=out)
    return counts
