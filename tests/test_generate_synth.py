"""Prompt synthesis: parsing, filters, near-copy removal, storage and the CLI.

Replies are scripted with FakeBackend where a test needs specific instructions (a random tiny
model cannot be made to write a near-copy on cue); the tiny hf model runs the real CLI path.
"""

from __future__ import annotations

import json

import pytest

from backends import SamplingParams
from backends.fake import FakeBackend
from corpus import Prompt, run_cli
from generate.cli import main
from generate.synth import NearDuplicateIndex, parse_instructions, run_synth

SEEDS = [
    {"id": "s1", "instruction": "Rewrite the sentence so that it is shorter and clearer."},
    {"id": "s2", "instruction": "Suggest three names for a bakery that sells vegan cakes."},
    {"id": "s3", "instruction": "Explain the difference between weather and climate to a child."},
    {"id": "s4", "instruction": "Write a polite reply declining a meeting invitation."},
]


@pytest.fixture
def seeds_file(tmp_path):
    f = tmp_path / "seeds.jsonl"
    f.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return f


def test_parse_instructions():
    assert parse_instructions("Task 5: Write a haiku about rain.") == ["Write a haiku about rain."]
    assert parse_instructions('"List four uses of vinegar."\n\nSure, here it is!') == ["List four uses of vinegar."]
    assert parse_instructions("1. Name a planet.\n2. Name a river in Asia.\n3) Name a tree.") == [
        "Name a planet.", "Name a river in Asia.", "Name a tree."]
    assert parse_instructions("   ") == [""]


def test_near_duplicate_index_confirms_with_exact_jaccard():
    idx = NearDuplicateIndex(threshold=0.7)
    idx.add("a", "Write a short poem about the sea at night.")
    assert idx.match("Write a short poem about the sea at night!") == "a"
    assert idx.match("write a short poem about the sea at night") == "a"
    assert idx.match("Explain how vaccines train the immune system.") is None


def test_synth_filters_and_stores_with_reasons(corpus, seeds_file):
    corpus.insert([Prompt(messages=[{"role": "user", "content": "Describe the water cycle in simple words for students."}])])
    replies = [
        "Write a limerick about a forgetful robot.",                            # kept
        "Write a limerick about a forgetful robot!",                            # copy of the one above
        "Rewrite the sentence so that it is shorter and clearer.",              # copy of a seed
        "Describe the water cycle in simple words for students.",               # already in the corpus
        "Hi.",                                                                  # too short
        "Explain " + "very " * 50 + "much.",                                    # too long
        "Write a story about " + "a very long road " * 20,                      # cut at max_new_tokens
        "Draw a picture of a cat wearing a hat.",                               # needs an image
        "",                                                                     # empty
        "Sure, here is a new task for you to try out today.",                   # chatter, not a task
        "1. Give two tips for a job interview.\n2. Translate 'good morning' into Spanish and French.",  # two kept
    ]
    fake = FakeBackend(replies=replies, default="Summarize the plot of a famous novel in two sentences.")
    s = run_synth(corpus, seeds_file, backend=fake, n=4, max_words=40, params=SamplingParams(max_new_tokens=60), progress=False)
    assert s["produced"] == 4 and s["asked"] == 4, s
    assert s["dropped"]["near_copy_in_run"] >= 1 and s["dropped"]["near_copy_of_seed"] == 1
    assert s["dropped"]["near_copy_in_corpus"] == 1
    assert s["dropped"]["too_short"] == 1 and s["dropped"]["too_long"] == 1 and s["dropped"]["truncated"] == 1
    assert s["dropped"]["unsuitable"] == 1 and s["dropped"]["empty"] == 1 and s["dropped"]["not_an_instruction"] == 1
    rows = corpus.query("SELECT text, source, meta FROM prompts WHERE source LIKE 'synth:%' ORDER BY created_at, text")
    texts = {r["text"] for r in rows}
    assert texts == {"Write a limerick about a forgetful robot.", "Give two tips for a job interview.",
                     "Translate 'good morning' into Spanish and French.",
                     "Summarize the plot of a famous novel in two sentences."}
    assert {r["source"] for r in rows} == {f"synth:{s['run_id']}"}
    meta = json.loads(rows[0]["meta"])["synth"]
    assert set(meta["examples"]) <= {"s1", "s2", "s3", "s4"} and len(meta["examples"]) == 3
    # each request showed 3 seed instructions and asked for a new one
    assert all(sum(seed["instruction"] in r.messages[0]["content"] for seed in SEEDS) == 3 for r in fake.history)


def test_synth_gives_up_after_max_requests(corpus, seeds_file):
    fake = FakeBackend(default="Rewrite the sentence so that it is shorter and clearer.")
    s = run_synth(corpus, seeds_file, backend=fake, n=5, max_requests=6, progress=False)
    assert s["produced"] == 0 and s["requests"] == 6 and s["dropped"] == {"near_copy_of_seed": 6}
    assert corpus.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 0


def test_synth_rerun_replays_cache_then_adds_new(corpus, seeds_file):
    counter = iter(range(10_000))
    distinct = [
        "Write a limerick about a forgetful robot.", "List three safety tips for hiking in winter.",
        "Explain how a bill becomes a law in two paragraphs.", "Compose a toast for a friend's retirement party.",
        "Convert this recipe for four people into one for ten.", "Give feedback on a beginner's chess opening.",
        "Describe what makes bridges stay up, without equations.", "Suggest a weekly budget for a college student.",
        "Translate 'thank you very much' into Japanese and Italian.", "Outline a lesson plan on owls for third graders.",
        "Argue for and against a four-day work week.", "Name five uncommon fruits and where they grow.",
    ]

    def fresh(req):
        return distinct[next(counter) % len(distinct)]

    s1 = run_synth(corpus, seeds_file, backend=FakeBackend(default=fresh), n=2, progress=False)
    sent1 = s1["requests"] - s1["calls_cached"]
    s2 = run_synth(corpus, seeds_file, backend=FakeBackend(default=fresh), n=2, progress=False)
    assert s1["produced"] == s2["produced"] == 2
    assert s2["calls_cached"] == sent1  # the first round's identical requests came from the call cache
    assert s2["dropped"].get("near_copy_in_corpus", 0) >= 2
    assert corpus.query("SELECT count(DISTINCT source) AS n, count(*) AS p FROM prompts")[0] == {"n": 2, "p": 4}


def test_synth_cli_with_tiny_model(tmp_path, seeds_file, tiny_model_dir, capsys):
    db = tmp_path / "c.duckdb"
    rc = run_cli("generate", main, ["prompts", "--seeds", str(seeds_file), "--n", "2", "--max-requests", "4",
                                    "--max-new-tokens", "12", "--db", str(db), "--backend", "hf",
                                    "--model", str(tiny_model_dir), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "produced" in out and "asked" in out
    from corpus import Corpus

    run = Corpus(db).query("SELECT command, status, summary FROM runs")[0]
    summary = json.loads(run["summary"])
    assert run["command"] == "generate.prompts" and run["status"] == "ok"
    assert summary["requests"] <= 4 and summary["produced"] <= 2
    # every parsed instruction is either stored or dropped with a reason
    stored = Corpus(db).query("SELECT count(*) AS n FROM prompts")[0]["n"]
    assert stored == summary["produced"] and sum(summary["dropped"].values()) + stored >= summary["requests"] - summary["failures"]


def test_synth_cli_bad_seed_file(tmp_path, capsys):
    f = tmp_path / "seeds.jsonl"
    f.write_text('{"instruction": "ok one here"}\n{"motivation_app": "x"}\n')
    db = tmp_path / "c.duckdb"
    rc = run_cli("generate", main, ["prompts", "--seeds", str(f), "--db", str(db), "--backend", "fake"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "seeds.jsonl:2: no prompt field: expected one of instruction, prompt" in err and not db.exists()
    try:
        rc = run_cli("generate", main, ["prompts", "--seeds", str(f), "--n", "0", "--db", str(db), "--backend", "fake"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and "--n 0" in capsys.readouterr().err and not db.exists()


@pytest.mark.slow
def test_real_model_generates_and_synthesizes(tmp_path, shared_data, capsys):
    """The embedded SmolLM2-135M-Instruct end to end: candidates for MT-Bench, then prompts."""
    db = tmp_path / "c.duckdb"
    assert run_cli("generate", main, ["--prompts", str(shared_data / "mtbench_questions.jsonl"), "--limit", "2", "--n", "2",
                                      "--max-new-tokens", "24", "--db", str(db), "--no-progress"]) == 0
    from corpus import Corpus

    c = Corpus(db)
    rows = c.query("SELECT model, response, completion_tokens FROM generations")
    assert len(rows) == 4 and {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}
    assert all(r["response"].strip() and 0 < r["completion_tokens"] <= 24 for r in rows)
    assert run_cli("generate", main, ["prompts", "--seeds", str(shared_data / "selfinstruct_seed_tasks.jsonl"), "--n", "3",
                                      "--max-requests", "12", "--db", str(db), "--no-progress"]) == 0
    s = json.loads(c.query("SELECT summary FROM runs WHERE command = 'generate.prompts'")[0]["summary"])
    assert s["produced"] >= 1
    capsys.readouterr()


def test_reply_cut_at_max_tokens_keeps_the_whole_instruction_before_the_cut(corpus, seeds_file):
    from backends import Completion

    replies = [
        Completion(text="Name three rivers in Africa.\n\nThe Nile, the Con", finish_reason="length", completion_tokens=16),
        Completion(text="Write a sonnet about the autumn harv", finish_reason="length", completion_tokens=16),
    ]
    s = run_synth(corpus, seeds_file, backend=FakeBackend(replies=replies, default=""), n=1, max_requests=2, progress=False)
    assert s["produced"] == 1 and s["dropped"] == {"truncated": 1}
    assert [r["text"] for r in corpus.query("SELECT text FROM prompts")] == ["Name three rivers in Africa."]
