"""One registry of checkable instructions, asked by every entry point: tricky replies per check
type get the same verdict from the registry, the judge's `checkable` verifier, the GRPO reward
function the loop builds from prompts/instructions.yaml, and the eval (`reply_metrics`,
`per_prompt`). The expected verdicts follow IFEval except where docs/howto/checks.md says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMPTY, BLANK, EMOJI = "", "  \n\t ", "🎉🎉🎉"

BULLETS = {"type": "bullet_count", "n": 3}
WORD = {"type": "include_word", "word": "because"}
JSON = {"type": "valid_json"}
MAX3 = {"type": "max_words", "n": 3}
MIN3 = {"type": "min_words", "n": 3}
LOWER = {"type": "lowercase"}
COMMAS = {"type": "no_commas"}
END = {"type": "ends_with", "text": "That is all."}
PARAS = {"type": "num_paragraphs", "n": 3}

# (check, reply, verdict): every type meets an empty, a blank and an emoji-only reply
CASES = [(c, r, False) for c in (BULLETS, WORD, JSON, MAX3, MIN3, LOWER, COMMAS, END, PARAS) for r in (EMPTY, BLANK)] + [
    (BULLETS, "- a\n- b\n- c", True),
    (BULLETS, "* a\n* b\n* c", True),
    (BULLETS, "- a\n* b\n- c   \n", True),
    (BULLETS, "  - a\n  - b\n  - c", True),
    (BULLETS, "**Fruits**\n- apple\n- pear\n- fig", True),  # a bold heading is not a bullet
    (BULLETS, "+ a\n+ b\n+ c", False),  # IFEval counts "*" and "-" only
    (BULLETS, "1. a\n2. b\n3. c", False),
    (BULLETS, "---\n- a\n- b", False),  # a rule is not a bullet
    (BULLETS, EMOJI, False),
    (WORD, "Because it rains.", True),
    (WORD, "It rains, BECAUSE.", True),
    (WORD, "It rains becauses.", False),
    (WORD, EMOJI, False),
    (JSON, '{"a": 1}', True),
    (JSON, '```json\n{"a": 1}\n```', True),
    (JSON, '```JSON\n{"a": [1, 2]}\n```  \n', True),
    (JSON, '```\n[]\n```', True),
    (JSON, 'Here it is:\n```json\n{"a": 1}\n```', False),  # prose + fenced JSON
    (JSON, '{"a": 1}\nHope this helps.', False),
    (JSON, "{'a': 1}", False),
    (JSON, EMOJI, False),
    (MAX3, "one two three", True),
    (MAX3, "one two three  \n", True),
    (MAX3, "well-known fact", True),  # IFEval's \w+ words: well, known, fact
    (MAX3, "one two three four", False),
    (MAX3, "don't stop now", False),  # don, t, stop, now
    (MAX3, EMOJI, False),  # no word: no answer
    (MAX3, "... !!!", False),
    (MIN3, "one two three", True),
    (MIN3, "one-two three", True),
    (MIN3, "one two", False),
    (MIN3, "🎉 🎉 🎉", False),
    (LOWER, "all small here", True),
    (LOWER, "all small 🎉\n\n", True),
    (LOWER, "Not small", False),
    (LOWER, "iPhone", False),
    (LOWER, EMOJI, False),  # no cased letter at all
    (LOWER, "123 456", False),
    (COMMAS, "no commas here", True),
    (COMMAS, "fullwidth，is not ASCII", True),
    (COMMAS, "a, b", False),
    (COMMAS, EMOJI, False),
    (END, "Done. That is all.", True),
    (END, "Done. that is ALL.", True),  # IFEval ignores case
    (END, "Done. That is all.  \n", True),
    (END, 'Done. "That is all."', True),  # IFEval strips quotes around the reply
    (END, "That is all. Done.", False),
    (END, "Done. That is all", False),
    (END, EMOJI, False),
    (PARAS, "a\n\nb\n\nc", True),
    (PARAS, "a\n***\nb\n***\nc", True),  # IFEval's markdown divider
    (PARAS, "a\n \nb\n\t\nc\n\n", True),
    (PARAS, "a\n\n  \n\nb\n\nc", True),
    (PARAS, "a\nb\nc", False),
    (PARAS, "a *** b *** c", False),  # inline asterisks divide nothing
    (PARAS, "a\n\nb", False),
    (PARAS, EMOJI, False),
]
IDS = [f"{c['type']}-{r[:18]!r}" for c, r, _ in CASES]


@pytest.fixture(scope="module")
def expected() -> list[bool]:
    return [v for _, _, v in CASES]


def test_registry_verdicts(expected):
    from checks import CHECKS, check_passes

    assert [check_passes(r, c) for c, r, _ in CASES] == expected
    # the type -> fn(text, check) map the loop and older callers use: the key decides the type
    assert [CHECKS[c["type"]](r, {k: v for k, v in c.items() if k != "type"}) for c, r, _ in CASES] == expected


def test_judge_verifier_agrees(corpus, expected):
    from judge.rubric import VerifierSpec
    from judge.verifiers import check_instruction, run_verifier

    items = [({"messages": [{"role": "user", "content": "q"}], "meta": {"checks": [c]}}, r) for c, r, _ in CASES]
    results = run_verifier(VerifierSpec(type="checkable"), items, corpus)
    assert [r.error for r in results] == [None] * len(CASES)
    assert [r.score for r in results] == [float(v) for v in expected]
    assert [check_instruction(r, c) for c, r, _ in CASES] == expected


def test_grpo_reward_function_agrees(corpus, expected):
    from train.loop import rubric_rewards

    funcs, weights, definition, close = rubric_rewards(corpus, str(ROOT / "prompts" / "instructions.yaml"))
    try:
        assert weights == [1.0] and definition["criteria"][0]["type"] == "checkable"
        prompts = [[{"role": "user", "content": "q"}] for _ in CASES]
        completions = [[{"role": "assistant", "content": r}] for _, r, _ in CASES]
        meta = [json.dumps({"checks": [c]}) for c, _, _ in CASES]
        assert funcs[0](prompts=prompts, completions=completions, meta=meta) == [float(v) for v in expected]
    finally:
        close()


def test_eval_agrees(expected):
    from train.evaluate import reply_metrics
    from train.heldout import per_prompt

    prompts = [{"messages": [{"role": "user", "content": "q"}], "checks": [c]} for c, _, _ in CASES]
    replies = [r for _, r, _ in CASES]
    assert [row["pass"] for row in per_prompt(prompts, replies, None)] == [float(v) for v in expected]
    by_case = [reply_metrics([p], [r])["pass_rate_by_check"][p["checks"][0]["type"]] for p, r in zip(prompts, replies)]
    assert by_case == [float(v) for v in expected]


def test_every_type_has_tricky_cases():
    from checks import CHECK_TYPES

    for name in CHECK_TYPES:
        verdicts = [v for c, _, v in CASES if c["type"] == name]
        assert True in verdicts and verdicts.count(False) >= 3, name


def test_a_reply_is_graded_on_all_its_checks_in_order():
    from checks import pass_fraction, run_checks, verdicts

    reply = "- one\n- two\n- three\n\nThat is all."
    checks = [BULLETS, END, LOWER, {"type": "max_words", "n": 3}, {"type": "max_words", "n": 10}]
    assert verdicts(reply, checks) == [True, True, False, False, True]
    assert pass_fraction(reply, checks) == 3 / 5  # both max_words checks count
    assert run_checks(reply, checks)["ends_with:That is all."] is True
    assert pass_fraction(reply, []) is None


@pytest.mark.parametrize("check, needle", [
    ({"type": "nope"}, "unknown check"),
    ("max_words", "unknown check"),
    ({"type": "max_words"}, "needs n"),
    ({"type": "max_words", "n": "40"}, "whole number"),
    ({"type": "bullet_count", "n": -1}, "whole number"),
    ({"type": "bullet_count", "n": True}, "whole number"),
    ({"type": "include_word", "word": " "}, "non-empty string"),
    ({"type": "ends_with", "text": 3}, "non-empty string"),
])
def test_malformed_checks_are_named_in_one_line(check, needle, corpus):
    from checks import check_passes, validate_check
    from judge.rubric import VerifierSpec
    from judge.verifiers import run_verifier

    err = validate_check(check)
    assert err is not None and needle in err and "\n" not in err
    with pytest.raises(ValueError, match=needle):
        check_passes("some reply", check)
    (res,) = run_verifier(VerifierSpec(type="checkable"), [({"meta": {"checks": [LOWER, check]}}, "x")], corpus)
    assert res.score is None and needle in res.error


def test_checks_package_imports_nothing_of_ours():
    import ast

    ours = {"corpus", "backends", "generate", "judge", "filters", "review", "train", "bench"}
    for f in (ROOT / "checks").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in ours, f
            elif isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & ours, f
