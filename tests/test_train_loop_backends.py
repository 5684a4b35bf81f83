"""The loop's rollouts and eval through a served endpoint, held-out groups, and rounds without a
learning signal.

The policy is served by the real OpenAI-compatible server on loopback (tests/openai_server.py)
with scripted replies: it answers for whichever model name it is asked, so the test checks that
each round asks for that round's model. Training runs for real on the tiny model folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus import UserError

RUBRIC = """\
name: starts_early
version: "1"
task: Reply to the user.
mode: pointwise
criteria:
  - name: starts_early
    kind: verifier
    description: the reply starts with a letter from a to m
    verifier: {type: regex, pattern: "PATTERN"}
judges: []
"""

FILTERS = """\
prompts: {exact_dedup: true, near_dedup: null, decontaminate: null}
responses: {empty: true, truncated: null, refusal: null, repetition: null, language: null,
            length: {min_words: 1}, exact_dedup: true, near_dedup: null, decontaminate: null}
sft: {min_score: 1.0}
pairs: {method: best_worst, min_margin: 0.1}
"""

WORDS = ["river", "stone", "cloud", "maple", "ember", "quartz", "harbor", "violet"]


def _files(tmp: Path, pattern: str) -> Path:
    (tmp / "rubric.yaml").write_text(RUBRIC.replace("PATTERN", pattern))
    (tmp / "filters.yaml").write_text(FILTERS)
    rows = []
    for i, w in enumerate(WORDS):
        rows.append({"prompt": f"Say something about a {w}.", "base": f"b{i + 5}", "checks": [{"type": "lowercase"}]})
        rows.append({"prompt": f"Describe a {w} briefly.", "base": f"c{i}", "checks": [{"type": "no_commas"}]})
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp


def _reply(body):  # sampled replies differ by seed; greedy (eval) replies are lowercase, no commas
    seed = body.get("seed")
    if seed is None:
        return "a calm lowercase answer"
    return "apple, Tree" if seed % 2 else "Zebra says hi"


def _run(tmp: Path, srv, tiny: Path, algo: str = "dpo", rounds: int = 2, **kw):
    from corpus import Corpus
    from train.loop import run_loop
    from train.policy import PolicyBackend

    corpus = Corpus(tmp / "c.duckdb")
    opts = dict(base=str(tiny), filters_config=str(tmp / "filters.yaml"), auto_release=True, n=4,
                max_new_tokens=8, max_steps=1, batch_size=2, max_length=64, algo=algo, heldout_types=["no_commas"],
                eval_every_round=True,
                policy=PolicyBackend("openai", base_url=srv.base_url, served_model="m0-served", api_key_env="NO_KEY"))
    out = run_loop(corpus, str(tmp / "prompts.jsonl"), str(tmp / "rubric.yaml"), rounds, progress=False, **{**opts, **kw})
    return corpus, out


def test_openai_policy_each_round_asks_for_its_model_and_holds_out_types(tmp_path, tiny_model_dir):
    from openai_server import OpenAIServer

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    with OpenAIServer(reply=_reply) as srv:
        corpus, out = _run(tmp, srv, tiny_model_dir)
    assert out["status"] == "done"
    stages = {(r["round"], r["stage"]): json.loads(r["result"]) for r in corpus.query("SELECT * FROM loop_stages")}
    m1 = corpus.query("SELECT * FROM models WHERE id = ?", [stages[(0, "train")]["model_id"]])[0]
    m2 = corpus.query("SELECT * FROM models WHERE id = ?", [stages[(1, "train")]["model_id"]])[0]
    asked = {r.body["model"] for r in srv.requests}
    # M0 under the name the user served it as; M1, M2 under their folders, as `vllm serve FOLDER` names them
    assert asked == {"m0-served", m1["path"], m2["path"]} and m2["parent_id"] == m1["id"]
    assert stages[(1, "generate")]["model"] == m1["path"] and stages[(0, "generate")]["model"] == "m0-served"
    assert m1["algorithm"] == "dpo" and json.loads(m1["reward"])["rubric_name"] == "starts_early"
    assert json.loads(m1["config"])["trained_types"] == ["lowercase"]
    # the no_commas prompts never trained: every one of them is in the held-out-types group
    ev = stages[(0, "eval")]
    assert ev["heldout_n"] == len(WORDS) and ev["trained_n"] == 1  # base b8 is the held-out fifth here
    assert ev["heldout_pass"] == [1.0, 1.0, 1.0]  # the scripted greedy reply has no comma
    assert ev["trained_pass_delta"] == [0.0, 0.0, 0.0]  # same replies as M0: no change, no interval
    trained_prompts = {json.loads(p["messages"])[0]["content"] for p in corpus.query(
        "SELECT p.messages FROM generations g JOIN prompts p ON p.id = g.prompt_id")}
    assert not any("Describe" in t for t in trained_prompts)  # held-out types never sampled for training


@pytest.mark.parametrize("algo", ["dpo", "grpo"])
def test_a_round_without_signal_says_so_and_does_not_train(tmp_path, tiny_model_dir, algo):
    from openai_server import OpenAIServer

    from train.report import loop_rounds, report_table

    tmp = _files(tmp_path, ".")  # every reply passes: no pair, no reward spread
    with OpenAIServer(reply=_reply) as srv:
        corpus, out = _run(tmp, srv, tiny_model_dir, algo=algo, rounds=1)
    train = json.loads(corpus.query("SELECT result FROM loop_stages WHERE stage = 'train'")[0]["result"])
    assert train["trained"] is False and "not trained" in train["reason"]
    assert corpus.query("SELECT count(*) AS n FROM models WHERE kind IN ('dpo', 'grpo')")[0]["n"] == 0
    assert out["model_id"] == train["parent_id"]  # M1 is M0
    _, rows = loop_rounds(corpus)
    assert rows[1]["skipped"] and "not trained" in rows[1]["skipped"]
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(report_table("x", rows))
    assert "not trained" in console.export_text()


def test_openai_backend_without_base_url_is_refused():
    from train.policy import PolicyBackend

    with pytest.raises(UserError, match="--backend openai needs --base-url"):
        PolicyBackend("openai")


def test_unknown_heldout_type_is_refused(tmp_path):
    from train.loop import LoopConfig

    _files(tmp_path, ".")
    with pytest.raises(UserError, match="--heldout-types nope: unknown check type"):
        LoopConfig(prompts=str(tmp_path / "prompts.jsonl"), rubric=str(tmp_path / "rubric.yaml"), heldout_types=["nope"])


@pytest.mark.parametrize("args, needle", [
    (["--prompts", "nope.jsonl"], "--prompts nope.jsonl: no such file"),
    (["--rounds", "0"], "--rounds 0: run at least one round"),
    (["--heldout-types", "nope"], "--heldout-types nope: unknown check type"),
    (["--ld-alpha", "1.5"], "--ld-alpha 1.5: a weight in [0, 1]"),
    (["--algo", "sft", "--ld-alpha", "0.5"], "use it with --algo dpo"),
    (["--warm-start-types", "sparse"], "--warm-start-types sparse: narrows a warm start; add --warm-start sft"),
    (["--algo", "sft+dpo", "--warm-start-types", "json"], "--warm-start-types json: give 'sparse' or check types"),
    (["--algo", "sft+dpo", "--warm-start-epochs", "0"], "--warm-start-epochs 0.0: passes over the warm start's rows"),
    (["--warm-start-epochs", "3"], "--warm-start-epochs 3.0: passes over the warm start's rows"),
])
def test_refused_loop_leaves_no_corpus_file(tmp_path, args, needle):
    """A refused setting is one line, exit 2, before the corpus file is created (it was left empty)."""
    import subprocess
    import sys

    _files(tmp_path, ".")
    db = tmp_path / "new.duckdb"
    base = {"--prompts": str(tmp_path / "prompts.jsonl"), "--rounds": "1"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = subprocess.run([sys.executable, "-m", "train", "loop", "--db", str(db), "--rubric", str(tmp_path / "rubric.yaml"),
                        *[x for kv in base.items() for x in kv]], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not db.exists() and not Path(str(db) + ".wal").exists()


def _stages(corpus) -> dict:
    return {(r["round"], r["stage"]): json.loads(r["result"]) for r in corpus.query("SELECT * FROM loop_stages")}


def _replies_with_write(greedy: str, write: str):
    """Sampled replies to 'Say' prompts differ (a pair); to 'Write' prompts they are all `write`
    (no pair); greedy (eval) replies are `greedy`."""
    def reply(body):
        if body.get("seed") is None:
            return greedy
        if "Write" in body["messages"][-1]["content"]:
            return write
        return "apple, Tree" if body["seed"] % 2 else "Zebra says hi"
    return reply


# 'Write' prompts: every sample the same failing reply, so no pair and no SFT row (a barren type)
_barren_reply = _replies_with_write("a calm lowercase answer that goes on", "Zebra zebra")
# 'Write' prompts: every sample the same passing reply, so SFT rows and no pair (a sparse type)
_sparse_reply = _replies_with_write("a calm lowercase answer", "a zebra walks by")


def test_eval_cap_budget_pooling_and_barren_types(tmp_path, tiny_model_dir):
    """The eval samples with its own cap and only M0 and the last model by default; a type that gave
    no pair at M0 is left out of round 1's rollouts and named in the budget, which splits the tokens
    between prompts with and without a pair; round 1 trains on both rounds' pairs, by round."""
    from openai_server import OpenAIServer

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    extra = [{"prompt": f"Write about a {w}.", "base": f"w{i}", "checks": [{"type": "max_words", "n": 50}]}
             for i, w in enumerate(WORDS)]
    with open(tmp / "prompts.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    with OpenAIServer(reply=_barren_reply) as srv:
        corpus, out = _run(tmp, srv, tiny_model_dir, eval_every_round=False, max_new_tokens=6, eval_max_new_tokens=11)
    caps = {(r.body.get("seed") is None, r.body["max_tokens"]) for r in srv.requests}
    assert caps == {(True, 11), (False, 6)}  # greedy eval: its own cap; seeded rollouts: theirs
    st = _stages(corpus)
    assert st[(0, "eval")]["not_evaluated"] and st[(1, "eval")]["trained_n"] >= 1
    assert st[(0, "generate")]["left_out_types"] == [] and st[(1, "generate")]["left_out_types"] == ["max_words"]
    r1 = [json.loads(p["messages"])[0]["content"] for p in corpus.query(
        "SELECT p.messages FROM generations g JOIN prompts p ON p.id = g.prompt_id WHERE g.model = ?",
        [st[(1, "generate")]["model"]])]
    assert r1 and not any(t.startswith("Write") for t in r1)
    b0 = out["budget"][0]
    assert b0["per_type"]["max_words"]["prompts_with_pair"] == 0 and b0["per_type"]["lowercase"]["prompts_with_pair"] > 0
    assert b0["per_type"]["max_words"]["share_without_pair"] == 1.0
    assert b0["tokens"] == b0["tokens_on_prompts_with_pair"] + b0["tokens_on_prompts_without_pair"] > 0
    assert b0["next_left_out"] == ["max_words"]
    # "Zebra says hi" and "a calm..." fit 6 tokens, "Zebra zebra" too: nothing cut, and the share says so
    assert b0["truncated_share"] == 0.0
    # pooled: round 1 trains on pairs over both rounds' candidates, each pair's rounds recorded
    tr1 = st[(1, "train")]
    assert sum(tr1["rows_by_round"].values()) == tr1["rows"] > 0
    assert set(tr1["rows_by_round"]) <= {"0/0", "0/1", "1/0", "1/1"}
    m2 = corpus.query("SELECT config FROM models WHERE id = ?", [tr1["model_id"]])[0]
    assert json.loads(m2["config"]).get("generated_by") is None  # not M1's samples alone


def test_sft_warm_start_comes_before_round_zeros_dpo(tmp_path, tiny_model_dir):
    from openai_server import OpenAIServer

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    with OpenAIServer(reply=_reply) as srv:
        corpus, out = _run(tmp, srv, tiny_model_dir, algo="sft+dpo", rounds=1)
    tr = _stages(corpus)[(0, "train")]
    warm = corpus.query("SELECT * FROM models WHERE id = ?", [tr["warm_start"]["model_id"]])[0]
    dpo = corpus.query("SELECT * FROM models WHERE id = ?", [tr["model_id"]])[0]
    assert warm["kind"] == "sft" and warm["algorithm"] == "sft-rs" and tr["warm_start"]["rows"] > 0
    assert dpo["parent_id"] == warm["id"] and dpo["algorithm"] == "sft+dpo"
    assert warm["parent_id"] == tr["parent_id"]  # M0 -> SFT on M0's passing replies -> DPO


def test_sparse_warm_start_trains_only_on_the_types_dpo_gets_no_pair_for(tmp_path, tiny_model_dir):
    from openai_server import OpenAIServer

    from train.data import training_set

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    extra = [{"prompt": f"Write about a {w}.", "base": f"w{i}", "checks": [{"type": "max_words", "n": 50}]}
             for i, w in enumerate(WORDS)]
    with open(tmp / "prompts.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    with OpenAIServer(reply=_sparse_reply) as srv:
        corpus, out = _run(tmp, srv, tiny_model_dir, algo="sft+dpo", rounds=1, warm_start_types="sparse",
                           warm_start_epochs=1.0)
    st = _stages(corpus)
    tr = st[(0, "train")]
    b0 = out["budget"][0]["per_type"]
    assert b0["max_words"]["prompts_with_pair"] == 0 and b0["lowercase"]["prompts_with_pair"] > 0
    assert tr["warm_start"]["types"] == ["max_words"]
    rel = st[(0, "review")]["release_id"]
    every = training_set(corpus, "sft", rel)
    narrow = training_set(corpus, "sft", rel, check_types=["max_words"])
    assert 0 < len(narrow.rows) < len(every.rows) == len(every.ids)  # the lowercase prompts' passing replies are left out
    assert all("Write" in r["prompt"][-1]["content"] for r in narrow.rows)
    assert tr["warm_start"]["rows"] == len(narrow.rows)
    warm = corpus.query("SELECT config FROM models WHERE id = ?", [tr["warm_start"]["model_id"]])[0]
    cfg = json.loads(warm["config"])
    assert cfg["check_types"] == ["max_words"] and cfg["rows"] == len(narrow.rows)
    assert cfg["snapshot_hash"] == narrow.snapshot_hash != every.snapshot_hash
    # --warm-start-epochs: one pass over the narrow rows, not the DPO's --max-steps (1 here)
    assert (cfg["epochs"], cfg["max_steps"]) == (1.0, -1)
    dpo = json.loads(corpus.query("SELECT config FROM models WHERE id = ?", [tr["model_id"]])[0]["config"])
    assert dpo["max_steps"] == 1


def test_a_dead_backend_ends_in_one_line_and_the_same_command_resumes(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from openai_server import OpenAIServer

    from backends import BackendError
    from backends.fake import FakeBackend
    from corpus import run_cli
    from train.cli import main
    from train.policy import PolicyBackend

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")

    def dead(req):
        raise BackendError("vLLM engine failed: EngineDeadError: EngineCore encountered an issue")

    real_open = PolicyBackend.open
    with OpenAIServer(reply=_reply) as srv:
        argv = ["loop", "--db", str(tmp / "c.duckdb"), "--prompts", str(tmp / "prompts.jsonl"), "--rubric",
                str(tmp / "rubric.yaml"), "--filters-config", str(tmp / "filters.yaml"), "--base", str(tiny_model_dir),
                "--rounds", "1", "--n", "4", "--max-new-tokens", "8", "--max-steps", "1", "--batch-size", "2",
                "--max-length", "64", "--auto-release", "--heldout-types", "no_commas", "--backend", "openai",
                "--base-url", srv.base_url, "--api-key-env", "NO_KEY", "--model", "m0-served"]
        # the engine dies in round 0's rollouts (the second open; M0's eval, the first, ran on the server)
        opened: list[str] = []

        def open_then_die(self, path, first=False, batch_size=None):  # noqa: ANN001, ANN202
            opened.append(path)
            return real_open(self, path, first, batch_size) if len(opened) == 1 else FakeBackend(default=dead)

        monkeypatch.setattr(PolicyBackend, "open", open_then_die)
        assert run_cli("train", main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "round 0 generate: --backend openai failed" in err[0] and "rerun the same command" in err[0]
        assert "Traceback" not in err[0]
        monkeypatch.setattr(PolicyBackend, "open", real_open)
        # resumed from copies of the prompts and rubric elsewhere (another checkout): the same loop
        moved = tmp / "elsewhere"
        moved.mkdir()
        for name in ("prompts.jsonl", "rubric.yaml"):
            (moved / name).write_bytes((tmp / name).read_bytes())
        argv = [str(moved / Path(a).name) if a in (str(tmp / "prompts.jsonl"), str(tmp / "rubric.yaml")) else a
                for a in argv]
        assert run_cli("train", main, argv) == 0
    from corpus import Corpus

    c = Corpus(tmp / "c.duckdb", create=False, read_only=True)
    assert c.query("SELECT count(*) AS n FROM loops")[0]["n"] == 1
    st = _stages(c)
    assert st[(0, "train")]["trained"] and st[(0, "eval_base")]["trained_n"] >= 1


def test_an_edited_rubric_is_another_loop(tmp_path, tiny_model_dir):
    from corpus import Corpus
    from train.loop import LoopConfig, ModelLoop

    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    corpus = Corpus(tmp / "c.duckdb")
    cfg = LoopConfig(prompts=str(tmp / "prompts.jsonl"), rubric=str(tmp / "rubric.yaml"), base=str(tiny_model_dir))
    first = ModelLoop(corpus, cfg, progress=False).loop_id
    assert ModelLoop(corpus, cfg, progress=False).loop_id == first
    [row] = corpus.query("SELECT config FROM loops")
    config = json.loads(row["config"])  # the paths as given, for SQL readers, and the content that names it
    assert config["rubric"] == cfg.rubric and len(config["rubric_sha256"]) == 64
    (tmp / "rubric.yaml").write_text(RUBRIC.replace("PATTERN", "^[n-z]"))
    assert ModelLoop(corpus, cfg, progress=False).loop_id != first



def test_a_vllm_policy_keeps_one_engine_per_model_until_released(monkeypatch):
    """The loop's eval of M_t and its rollouts of M_t open the same model: the second open reuses
    the engine, `with` does not close it, another model or release() does."""
    from backends.fake import FakeBackend
    from train.policy import PolicyBackend

    made: list[FakeBackend] = []
    closed: list[str] = []

    class Counted(FakeBackend):
        def close(self) -> None:
            closed.append(self.model)

    def load(self, model, batch_size):  # noqa: ANN001, ANN202 - stands in for starting vLLM
        made.append(Counted(model))
        return made[-1]

    monkeypatch.setattr(PolicyBackend, "_load", load)
    p = PolicyBackend("vllm", keep_engine=True)
    with p.open("m1") as a:
        a.generate([])
    with p.open("m1") as b:
        assert b is a
    assert len(made) == 1 and closed == []
    with p.open("m2"):
        pass
    assert closed == ["m1"] and len(made) == 2
    p.release()
    assert closed == ["m1", "m2"]
    unkept = PolicyBackend("vllm")
    with unkept.open("m3"):
        pass
    assert closed[-1] == "m3"  # without keep_engine, `with` closes as before


def test_serve_adapters_needs_vllm_and_lora(tmp_path):
    from train.loop import LoopConfig
    from train.policy import PolicyBackend

    tmp = _files(tmp_path, "^a")
    for policy, lora in ((PolicyBackend("hf"), True), (PolicyBackend("vllm"), False)):
        with pytest.raises(UserError, match="--serve-adapters: .* --backend vllm --lora"):
            LoopConfig(prompts=str(tmp / "prompts.jsonl"), rubric=str(tmp / "rubric.yaml"), policy=policy, lora=lora,
                       serve_adapters=True)


def test_serve_adapters_one_engine_for_every_round(tmp_path, tiny_model_dir, monkeypatch):
    """--serve-adapters: one engine started on M0 for two rounds of SFT warm start + DPO; M1 and M2
    are served as LoRA adapters trained on M0 (each round goes on training the one adapter), and
    the engine stays up through judging and training. vLLM's engine is stood in for by a scripted
    backend that records what it is asked to serve (vLLM itself serving an adapter is
    tests/test_backend_vllm.py's test); training is real, on the tiny model."""
    from backends.embedded import model_identity
    from backends.fake import FakeBackend
    from corpus import Corpus
    from train.loop import run_loop
    from train.policy import PolicyBackend

    started, served, closed = [], [], []

    def reply(req):  # noqa: ANN001, ANN202 - sampled replies differ by seed; greedy ones pass
        seed = req.params.seed
        return "a calm lowercase answer" if seed is None else ("apple, Tree" if seed % 2 else "Zebra says hi")

    class Engine(FakeBackend):
        def with_adapter(self, adapter_dir, model):  # noqa: ANN001, ANN202
            served.append(adapter_dir)
            return Engine(model, default=reply)

        def close(self) -> None:
            closed.append(self.model)

    def load(self, model, batch_size):  # noqa: ANN001, ANN202
        started.append(model)
        return Engine(model, default=reply)

    monkeypatch.setattr(PolicyBackend, "_load", load)
    tmp = _files(tmp_path, "^\\\\s*[a-mA-M]")
    corpus = Corpus(tmp / "c.duckdb")
    out = run_loop(corpus, str(tmp / "prompts.jsonl"), str(tmp / "rubric.yaml"), 2, progress=False,
                   base=str(tiny_model_dir), filters_config=str(tmp / "filters.yaml"), auto_release=True, n=4,
                   max_new_tokens=8, max_steps=1, batch_size=2, max_length=64, algo="sft+dpo", lora=True,
                   heldout_types=["no_commas"], eval_every_round=True, serve_adapters=True,
                   workdir=str(tmp / "work"), policy=PolicyBackend("vllm"))
    root = str(tiny_model_dir.resolve())
    assert started == [root] and out["engine_starts"] == 1
    assert closed == [root]  # only when the loop ended
    work = (tmp / "work").resolve()
    # M1's eval, round 1's rollouts, M2's eval
    assert served == [str(work / "round-0" / "policy" / "adapter")] * 2 + [str(work / "round-1" / "policy" / "adapter")]
    for a in set(served):
        assert json.loads((Path(a) / "adapter_config.json").read_text())["base_model_name_or_path"] == root
    st = _stages(corpus)
    assert st[(1, "generate")]["model"] == model_identity(str(work / "round-0" / "policy"))
    configs = {r["path"]: json.loads(r["config"]) for r in corpus.query("SELECT path, config FROM models")}
    assert configs[str(work / "round-0" / "policy")]["continued_adapter"] == str(work / "round-0" / "warm-sft" / "adapter")
    assert configs[str(work / "round-1" / "policy")]["continued_adapter"] == str(work / "round-0" / "policy" / "adapter")
