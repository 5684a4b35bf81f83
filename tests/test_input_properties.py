"""Property-based tests (hypothesis) for everything a user hands the engine as input: prompt
files (JSONL, JSON, Parquet), rubric and filter YAML, `--where`. Whatever the bytes or the
structure, the reader returns a result or raises UserError with one line: never another
exception (which would be a traceback at the CLI).

Deterministic and bounded: the `rlaif` profile derandomizes hypothesis (the same examples on
every run) and keeps max_examples modest; a few CLI subprocess cases check the exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import Corpus, Generation, Prompt, UserError
from filters.config import load_config
from generate.sources import load_prompts
from judge.rubric import load_rubric
from judge.run import load_candidates

# RLAIF_HYPOTHESIS_EXAMPLES=1000 for a deeper (slower) search than CI's
settings.register_profile("rlaif", derandomize=True, max_examples=int(os.environ.get("RLAIF_HYPOTHESIS_EXAMPLES", "60")), deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rlaif")

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = ROOT / "prompts" / "helpfulness.yaml"
FILTERS = ROOT / "filters" / "default.yaml"
SCRATCH = Path(tempfile.mkdtemp(prefix="rlaif-props-"))  # one folder: hypothesis calls a test many times

# JSON values: scalars, lists and objects nested a few levels
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# records that look like prompt records, with any value in the prompt fields
records = st.dictionaries(
    st.sampled_from(["prompt", "turns", "messages", "role", "content", "tests", "id"]) | st.text(max_size=6),
    json_values | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                                  "content": st.text(max_size=10) | st.integers()}), max_size=3),
    max_size=4,
)


def one_line_user_error(call: Any) -> Any:
    """The call's result, or None after a UserError whose message is one line."""
    try:
        return call()
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return None


def write(name: str, data: bytes) -> Path:
    p = SCRATCH / name
    p.write_bytes(data)
    return p


def check_prompts(path: Path) -> None:
    got = one_line_user_error(lambda: load_prompts(path))
    if got is not None:
        prompts, _ = got
        assert prompts and all(isinstance(p, Prompt) and p.messages[-1]["role"] == "user" for p in prompts)


# -- prompt files --------------------------------------------------------------------------------

@given(st.binary(max_size=300), st.sampled_from(["p.jsonl", "p.json", "p.parquet", "p.txt"]))
def test_prompt_file_of_any_bytes(data, name):
    check_prompts(write(name, data))


@given(st.lists(records | json_values, max_size=5))
def test_jsonl_of_any_records(recs):
    check_prompts(write("r.jsonl", "".join(json.dumps(r) + "\n" for r in recs).encode()))


@given(json_values | st.lists(records, max_size=5))
def test_json_file_of_any_structure(data):
    check_prompts(write("r.json", json.dumps(data).encode()))


@given(st.lists(st.fixed_dictionaries({}, optional={
    "prompt": st.none() | st.text(max_size=10),
    "turns": st.none() | st.lists(st.text(max_size=5), max_size=3),
    "n": st.none() | st.integers(-5, 5),
}), min_size=1, max_size=5))
def test_parquet_of_any_rows(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = sorted({k for r in rows for k in r}) or ["empty"]
    table = pa.table({c: pa.array([r.get(c) for r in rows], type={"prompt": pa.string(), "turns": pa.list_(pa.string()),
                                                                  "n": pa.int64()}.get(c, pa.string())) for c in cols})
    path = SCRATCH / "r.parquet"
    pq.write_table(table, path)
    check_prompts(path)


# -- rubric and filter YAML ----------------------------------------------------------------------

def _mutated(base: Any, path: list[int], value: Any) -> Any:
    """`base` with the node chosen by `path` (indices into keys/items) replaced by `value`."""
    if not path or not isinstance(base, (dict, list)) or not base:
        return value
    keys = list(base) if isinstance(base, dict) else list(range(len(base)))
    k = keys[path[0] % len(keys)]
    out = dict(base) if isinstance(base, dict) else list(base)
    out[k] = _mutated(base[k], path[1:], value)
    return out


RUBRIC_DATA = yaml.safe_load(RUBRIC.read_text())
FILTER_DATA = yaml.safe_load(FILTERS.read_text())


@given(st.binary(max_size=300))
def test_rubric_of_any_bytes(data):
    one_line_user_error(lambda: load_rubric(write("r.yaml", data)))


@given(st.lists(st.integers(0, 20), max_size=4), json_values)
def test_rubric_with_any_node_replaced(path, value):
    text = yaml.safe_dump(_mutated(RUBRIC_DATA, path, value), allow_unicode=True)
    one_line_user_error(lambda: load_rubric(write("r.yaml", text.encode())))


@given(st.binary(max_size=300))
def test_filter_config_of_any_bytes(data):
    one_line_user_error(lambda: load_config(write("f.yaml", data)))


@given(st.lists(st.integers(0, 20), max_size=4), json_values)
def test_filter_config_with_any_node_replaced(path, value):
    text = yaml.safe_dump(_mutated(FILTER_DATA, path, value), allow_unicode=True)
    one_line_user_error(lambda: load_config(write("f.yaml", text.encode())))


# -- --where -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def where_corpus(tmp_path_factory):
    c = Corpus(tmp_path_factory.mktemp("where") / "c.duckdb")
    p = Prompt(messages=[{"role": "user", "content": "q"}])
    c.insert([p, *(Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=i, response="r")
                   for i in range(3))])
    yield c
    c.close()


SQL_BITS = st.sampled_from(["g.sample_idx", "p.text", "=", "1", "'x'", ")", "(", ";", "--", "/*", "*/", "DROP TABLE generations",
                            "DELETE FROM prompts", "OR", "AND", "SELECT", "UNION", ",", " ", "\n", "COMMIT", "'", '"'])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.text(max_size=40) | st.lists(SQL_BITS, max_size=8).map(" ".join))
def test_where_of_any_text_reads_or_is_one_line(where_corpus, expr):
    got = one_line_user_error(lambda: load_candidates(where_corpus, expr))
    assert got is None or len(got) <= 3
    assert where_corpus.query("SELECT count(*) AS n FROM generations")[0]["n"] == 3
    assert where_corpus.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 1


# -- a few as the shell sees them ------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"\xff\xfe\x00\x01", b'{"prompt": [1, {"a": null}]}\n', b"[" * 5000, b'{"turns": []}\n'])
def test_cli_exit_2_one_line_for_bad_prompt_files(tmp_path, data):
    f = tmp_path / "p.jsonl"
    f.write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "generate", "--prompts", str(f), "--db", str(tmp_path / "c.duckdb"),
                        "--backend", "fake"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "c.duckdb").exists()


def test_found_by_hypothesis_a_superscript_digit_key(tmp_path):
    """'¹'.isdigit() is True but int('¹') fails: the YAML line map took it for a scale point."""
    f = tmp_path / "r.yaml"
    f.write_text("¹: null\n", encoding="utf-8")
    with pytest.raises(UserError, match="r.yaml:1"):
        load_rubric(f)
    with pytest.raises(UserError, match="f.yaml:1|r.yaml:1"):
        load_config(f)
