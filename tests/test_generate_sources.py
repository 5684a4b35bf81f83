"""Prompt sources: every format becomes the same Prompt records, with extra fields kept in meta."""

from __future__ import annotations

import json

import pytest

from corpus import Prompt, UserError
from generate.sources import load_prompts, prompts_from_sql


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_mtbench_turns_first_turn_is_prompt_rest_in_meta(shared_data):
    prompts, repeated = load_prompts(shared_data / "mtbench_questions.jsonl")
    assert len(prompts) == 80 and repeated == 0
    p = prompts[0]
    assert p.messages == [{"role": "user", "content": p.meta["turns"][0]}]
    assert len(p.meta["turns"]) == 2 and p.meta["category"] == "writing" and p.meta["question_id"] == 81
    assert p.source.endswith("mtbench_questions.jsonl:1")


def test_humaneval_prompt_keeps_test_and_entry_point(shared_data):
    prompts, _ = load_prompts(shared_data / "humaneval.jsonl", limit=3)
    assert len(prompts) == 3
    p = prompts[0]
    assert p.text.startswith("\nfrom typing import List") or "def " in p.text
    assert {"task_id", "entry_point", "test", "canonical_solution"} <= set(p.meta)
    assert "prompt" not in p.meta


def test_arena_hard_turns_of_content_objects(shared_data):
    prompts, _ = load_prompts(shared_data / "arena_hard_prompts.jsonl", limit=2)
    assert prompts[0].text == "Use ABC notation to write a melody in the style of a folk tune."
    assert prompts[0].meta["cluster"] == "ABC Sequence Puzzles & Groups"


def test_messages_with_system_and_repeats_kept_once(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    f = write_jsonl(tmp_path / "p.jsonl", [{"messages": msgs, "tag": 1}, {"messages": msgs, "tag": 1}, {"prompt": "Other"}])
    prompts, repeated = load_prompts(f)
    assert [p.text for p in prompts] == ["Hi?", "Other"] and repeated == 1
    assert prompts[0].messages == msgs and prompts[0].meta == {"tag": 1}


def test_field_flag_names_a_custom_prompt_field(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 2+2?", "answer": "4"}])
    with pytest.raises(UserError, match=r"p.jsonl:1: no prompt field.*--field"):
        load_prompts(f)
    prompts, _ = load_prompts(f, fields=["question"])
    assert prompts[0].text == "What is 2+2?" and prompts[0].meta == {"answer": "4", "prompt_field": "question"}


def test_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "one", "reference": "1"}, {"prompt": "two", "reference": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    from_parquet, _ = load_prompts(tmp_path / "p.parquet")
    assert [p.text for p in from_parquet] == ["one", "two"] and from_parquet[1].meta == {"reference": "2"}

    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "ds"))
    from_ds, _ = load_prompts(tmp_path / "ds")
    assert [p.id for p in from_ds] == [p.id for p in from_parquet]
    only_test, _ = load_prompts(tmp_path / "ds", split="test")
    assert [p.text for p in only_test] == ["one"]
    with pytest.raises(UserError, match="--split nope"):
        load_prompts(tmp_path / "ds", split="nope")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "ok"', r"p.jsonl:2: not valid JSON"),
        ('{"promt": "typo"}', r"p.jsonl:2: no prompt field: expected one of prompt, turns, messages \(found: promt\)"),
        ('{"prompt": "   "}', r"p.jsonl:2: empty prompt"),
        ('{"turns": []}', r"p.jsonl:2: 'turns' must be a non-empty list"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', r"p.jsonl:2: the last message must be the user's"),
        ('{"messages": [{"role": "robot", "content": "q"}]}', r"p.jsonl:2: messages\[0\] must be"),
        ('["a list"]', r"p.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(UserError, match=message):
        load_prompts(f)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")


def test_from_sql_by_ids_and_by_messages(corpus):
    a = Prompt(messages=[{"role": "user", "content": "alpha"}], meta={"k": 1})
    b = Prompt(messages=[{"role": "user", "content": "beta"}])
    corpus.insert([a, b])
    got = prompts_from_sql(corpus, "SELECT id FROM prompts WHERE text = 'beta'")
    assert [p.id for p in got] == [b.id]
    got = prompts_from_sql(corpus, "SELECT id AS prompt_id FROM prompts ORDER BY text")
    assert [p.id for p in got] == [a.id, b.id] and got[0].meta == {"k": 1}
    got = prompts_from_sql(corpus, "SELECT messages FROM prompts WHERE text = 'alpha'")
    assert [p.id for p in got] == [a.id]
    with pytest.raises(UserError, match="must return prompt ids"):
        prompts_from_sql(corpus, "SELECT text FROM prompts")
    with pytest.raises(UserError, match="not in the prompts table"):
        prompts_from_sql(corpus, "SELECT 'nope' AS id")
    with pytest.raises(UserError, match="give a SELECT query"):
        prompts_from_sql(corpus, "DELETE FROM prompts")
    assert corpus.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 2
    with pytest.raises(UserError, match="the query failed"):
        prompts_from_sql(corpus, "SELECT * FROM no_such_table")
