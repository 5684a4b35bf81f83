"""`corpus import-pairs`: every supported shape and file format into a real DuckDB corpus,
bad rows as one line with file:line and exit 2 (nothing written), re-imports that add nothing,
and `--release` rows that the trainer's data reader takes as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import Corpus, UserError
from corpus.import_pairs import import_pairs

ROOT = Path(__file__).resolve().parent.parent
HH = ("\n\nHuman: What is a good name for a cat?\n\nAssistant: Do you like short names?\n\nHuman: Yes."
      "\n\nAssistant: ")


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(corpus: Corpus) -> list[dict]:
    return corpus.query(
        "SELECT p.messages, p.source, p.meta, c.response AS chosen, r.response AS rejected, pr.method, pr.margin, "
        "c.provenance, c.model AS chosen_model FROM pairs pr JOIN prompts p ON p.id = pr.prompt_id "
        "JOIN generations c ON c.id = pr.chosen_id JOIN generations r ON r.id = pr.rejected_id ORDER BY c.response")


def test_trl_strings_and_messages(tmp_path, corpus):
    f = _write(tmp_path / "trl.jsonl", [
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
         "chosen": [{"role": "assistant", "content": "Apple."}], "rejected": [{"role": "assistant", "content": "Rock."}]},
        # implicit prompt: whole conversations that share everything before the last reply
        {"chosen": [{"role": "user", "content": "Name a dog."}, {"role": "assistant", "content": "Rex."}],
         "rejected": [{"role": "user", "content": "Name a dog."}, {"role": "assistant", "content": "Tuesday."}]},
    ])
    out = import_pairs(corpus, f)
    assert out["pairs"] == 3 and out["new"] == {"prompts": 3, "generations": 6, "pairs": 3}
    rows = _pairs(corpus)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("Apple.", "Rock."), ("Blue.", "No."), ("Rex.", "Tuesday.")]
    assert json.loads(rows[0]["messages"])[0] == {"role": "system", "content": "Be brief."}
    assert json.loads(rows[2]["messages"]) == [{"role": "user", "content": "Name a dog."}]
    assert all(r["method"] == "human" and r["provenance"] == "human" and r["source"] == "trl" for r in rows)


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path, corpus):
    f = _write(tmp_path / "hh.jsonl", [{"chosen": HH + "Whiskers.", "rejected": HH + "I hate cats."},
                                       {"prompt": "Human: Hi\n\nAssistant:", "chosen": "Hello!", "rejected": ""}])
    import_pairs(corpus, f)
    rows = _pairs(corpus)
    assert [r["chosen"] for r in rows] == ["Hello!", "Whiskers."]
    assert json.loads(rows[1]["messages"]) == [
        {"role": "user", "content": "What is a good name for a cat?"},
        {"role": "assistant", "content": "Do you like short names?"}, {"role": "user", "content": "Yes."}]
    assert rows[0]["rejected"] == ""  # an empty answer is still an answer people ranked


def test_ultrafeedback_best_worst_and_all(tmp_path, tmp_path_factory):
    row = {"instruction": "Explain rain.", "source": "evol_instruct", "completions": [
        {"model": "m1", "response": "Water falls.", "overall_score": 6.5},
        {"model": "m2", "response": "Clouds condense vapour into drops that fall.", "overall_score": 8.0},
        {"model": "m3", "response": "Rain is rain.", "overall_score": 2.0},
        {"model": "m4", "response": "Sky water.", "overall_score": 2.0}]}
    f = _write(tmp_path / "uf.jsonl", [row])
    c1 = Corpus(tmp_path / "a.duckdb")
    import_pairs(c1, f)
    (r,) = _pairs(c1)
    assert (r["chosen"], r["rejected"], r["margin"], r["chosen_model"]) == (
        "Clouds condense vapour into drops that fall.", "Sky water.", 6.0, "m2")
    assert json.loads(r["meta"])["category"] == "evol_instruct"
    c2 = Corpus(tmp_path / "b.duckdb")
    out = import_pairs(c2, f, multi="all")
    assert out["pairs"] == 5  # 6 pairs of 4 answers, less the one with equal scores
    assert out["new"]["generations"] == 4  # each answer stored once


def test_judgebench_labels(tmp_path, corpus):
    f = _write(tmp_path / "jb.jsonl", [
        {"question": "2+2?", "response_A": "4", "response_B": "5", "label": "A>B", "source": "math"},
        {"question": "3+3?", "response_A": "7", "response_B": "6", "label": "B>A", "source": "math"},
        {"question": "1+1?", "response_A": "2", "response_B": "two", "label": "A=B", "source": "math"}])
    out = import_pairs(corpus, f)
    assert out["pairs"] == 2 and out["skipped"] == {"tie label": 1}
    assert [(r["chosen"], r["rejected"]) for r in _pairs(corpus)] == [("4", "5"), ("6", "7")]


@pytest.mark.parametrize("fmt", ["json", "parquet", "datasets"])
def test_file_formats(tmp_path, corpus, fmt):
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    if fmt == "json":
        path = tmp_path / "p.json"
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "p.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        from datasets import Dataset, DatasetDict

        path = tmp_path / "ds"
        DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(str(path))
    assert import_pairs(corpus, path)["pairs"] == 3
    if fmt == "datasets":
        assert import_pairs(corpus, path, split="test")["new"]["pairs"] == 0


def test_reimport_adds_nothing_and_release_feeds_the_trainer(tmp_path, corpus):
    from train.data import training_set

    f = _write(tmp_path / "p.jsonl", [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)])
    first = import_pairs(corpus, f, release=True)
    again = import_pairs(corpus, f, release=True)
    assert first["new"] == {"prompts": 4, "generations": 8, "pairs": 4, "releases": 1}
    assert again["new"] == {"prompts": 0, "generations": 0, "pairs": 0, "releases": 0}
    assert again["release_id"] == first["release_id"]
    renamed = tmp_path / "renamed.jsonl"  # the same pairs under another file name (the default source)
    renamed.write_bytes(f.read_bytes())
    moved = import_pairs(corpus, renamed, release=True)
    assert moved["source"] == "renamed" and moved["release_id"] == first["release_id"]
    assert moved["new"] == {"prompts": 0, "generations": 0, "pairs": 0, "releases": 0}
    assert import_pairs(corpus, f, source="other-name")["new"] == {"prompts": 0, "generations": 0, "pairs": 0}
    ts = training_set(corpus, "pair", None)
    assert ts.release_id == first["release_id"] and len(ts.rows) == 4
    assert ts.rows[0]["chosen"][0]["content"].startswith("good")


def test_bad_row_names_file_and_line_and_writes_nothing(tmp_path, corpus):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n\n" + json.dumps({"prompt": "Q?", "chosen": "a"}) + "\n")
    with pytest.raises(UserError, match=rf"{f}:3: not a preference row"):
        import_pairs(corpus, f, release=True)
    assert corpus.query("SELECT (SELECT count(*) FROM pairs) + (SELECT count(*) FROM prompts) + "
                        "(SELECT count(*) FROM releases) + (SELECT count(*) FROM runs) AS n")[0]["n"] == 0
    out = import_pairs(corpus, f, skip_bad=True)
    assert out["pairs"] == 1 and out["bad"] == 1 and out["bad_rows"][0].startswith(f"{f}:3:")


@pytest.mark.parametrize("row, message", [
    ({"chosen": HH + "a", "rejected": "\n\nHuman: other\n\nAssistant: b"}, "differ before their last assistant turn"),
    ({"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "must end with the assistant's reply"),
    ({"question": "Q", "response_A": "a", "response_B": "b", "label": "maybe"}, "'label' must be"),
    ({"prompt": "Q", "completions": [{"response": "a"}, {"response": "b", "score": 1}]}, "needs a response text"),
])
def test_malformed_shapes(tmp_path, corpus, row, message):
    f = _write(tmp_path / "x.jsonl", [row])
    with pytest.raises(UserError, match=message):
        import_pairs(corpus, f)


def test_cli(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "a", "rejected": "b"}])
    db = tmp_path / "c.duckdb"
    run = lambda *a: subprocess.run([sys.executable, "-m", "corpus", "--db", str(db), "import-pairs", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = run(str(f), "--release")
    assert r.returncode == 0 and "new 1 prompts, 2 generations, 1 pairs" in r.stdout and "python -m train rm" in r.stdout
    r = run(str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["p.jsonl", "p.json"])
def test_not_utf8_file_is_one_line_exit_2(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}).encode() + b"\n"
                  + b'{"prompt": "caf\xe9?", "chosen": "a", "rejected": "b"}\n')
    db = tmp_path / "c.duckdb"
    r = subprocess.run([sys.executable, "-m", "corpus", "--db", str(db), "import-pairs", str(f)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not UTF-8" in r.stderr and "byte offset 64" in r.stderr, r.stderr
    assert not db.exists()  # the file is read whole before the corpus is opened: no empty corpus left behind


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "score_chosen": float("nan"), "score_rejected": 1}, "'score_chosen' is nan"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": float("inf")}, "'score_rejected' is inf"),
    ({"prompt": "Q", "completions": [{"response": "a", "score": float("nan")}, {"response": "b", "score": 1}]},
     r"'completions'\[0\] has the score nan"),
])
def test_scores_must_be_finite(tmp_path, corpus, row, message):
    f = _write(tmp_path / "x.jsonl", [row])  # json.dumps writes NaN / Infinity, which json.loads reads back
    with pytest.raises(UserError, match=rf"{f}:1: {message}"):
        import_pairs(corpus, f)
    assert corpus.query("SELECT count(*) AS n FROM pairs")[0]["n"] == 0


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_rejected(tmp_path, limit):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "a", "rejected": "b"}])
    r = subprocess.run([sys.executable, "-m", "corpus", "--db", str(tmp_path / "c.duckdb"), "import-pairs", str(f),
                        "--limit", limit], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and f"--limit {limit}" in r.stderr, r.stderr


def test_imported_texts_are_stored_byte_for_byte(tmp_path, corpus):
    """Whitespace is part of what people labelled (code indentation, a trailing newline, a
    leading space): JudgeBench answers used to lose it (24 of 350 differed from the source)."""
    jb_a, jb_b = "  def f(x):\n      return x\n\n", "\tplain answer with a tab and a trailing space "
    question = "\n  Which function is right?  \n"
    trl_chosen, hh_reply = "Blue.\n", "  indented reply\n"
    uf = [" best answer ", "worst\n"]
    f = _write(tmp_path / "mixed.jsonl", [
        {"question": question, "response_A": jb_a, "response_B": jb_b, "label": "A>B"},
        {"prompt": "Name a colour. ", "chosen": trl_chosen, "rejected": "No."},
        {"chosen": HH + hh_reply, "rejected": HH + "Rex"},
        {"prompt": "Explain rain.", "completions": [{"response": uf[0], "score": 9}, {"response": uf[1], "score": 1}]},
    ])
    import_pairs(corpus, f)
    stored = {r["chosen"]: r for r in _pairs(corpus)}
    assert stored[jb_a]["rejected"] == jb_b
    assert json.loads(stored[jb_a]["messages"]) == [{"role": "user", "content": question}]
    assert json.loads(stored[trl_chosen]["messages"]) == [{"role": "user", "content": "Name a colour. "}]
    # HH-RLHF's own separator (the one space after 'Assistant:') is format, the rest is the reply
    assert stored[hh_reply]["rejected"] == "Rex"
    assert stored[uf[0]]["rejected"] == uf[1]
    responses = {r["response"] for r in corpus.query("SELECT response FROM generations")}
    assert {jb_a, jb_b, trl_chosen, hh_reply, *uf} <= responses
