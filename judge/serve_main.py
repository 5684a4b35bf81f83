"""`python -m judge serve`: flags, startup checks, and the uvicorn (or Ray Serve) server's life.

The server is one recorded run (`runs.command = 'judge serve'`): every served reward carries its
id. Startup refuses, with one line and exit 2, what would fail on every request: a bad rubric, a
sandbox that cannot start, a non-loopback address without a token.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from typing import Any, Sequence

from backends import BackendError, add_backend_args, backend_from_args, backend_limits
from corpus import ArgumentParser, Corpus, UserError

from .serve import RewardService, create_app
from .serve_log import CorpusSink, RewardLog
from .rubric import load_rubric
from .serve_score import RubricScorer


def serve_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m judge serve", description="Serve a rubric as a reward service over HTTP "
                       "(OpenRLHF's /get_reward, a JSON batch endpoint /v1/rewards); every reward is recorded in the corpus.")
    p.add_argument("--rubric", required=True, help="pointwise rubric YAML, e.g. prompts/code.yaml")
    p.add_argument("--db", required=True, help="the corpus DuckDB file (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, default=8100, help="port (default 8100; 0: any free port, printed at startup)")
    p.add_argument("--token-env", default="RLAIF_REWARD_TOKEN", help="environment variable holding the bearer token "
                   "clients must send (default RLAIF_REWARD_TOKEN; unset: no token on loopback)")
    p.add_argument("--workers", type=int, default=8, help="items scored at once (default 8)")
    p.add_argument("--item-timeout", type=float, default=120.0, help="seconds an item may take before its slot gets "
                   "an error (default 120)")
    p.add_argument("--max-concurrency", type=int, default=16, help="requests in flight; more get 429 (default 16)")
    p.add_argument("--max-items", type=int, default=1024, help="items per request (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body limit (default 8 MiB)")
    p.add_argument("--error-reward", type=float, default=0.0, help="/get_reward: the reward sent for an item that "
                   "could not be scored, since OpenRLHF needs a number (default 0.0; /v1/rewards sends null)")
    p.add_argument("--unsafe-exec", action="store_true", help="code_exec: where the bwrap sandbox cannot start, run "
                   "answers without isolation (recorded on the run and on each judgment)")
    p.add_argument("--executor", default="local", choices=("local", "ray"), help="local: this process (default); "
                   "ray: replicas behind Ray Serve, writing shards the server merges into the corpus")
    p.add_argument("--replicas", type=int, default=2, help="--executor ray: Ray Serve replicas (default 2)")
    p.add_argument("--ray-address", default=None, help="--executor ray: a running cluster (default: a private local one)")
    p.add_argument("--work-dir", default=None, help="--executor ray: shard folder every replica can reach (default <db>.serve)")
    add_backend_args(p, prefix="judge-", default=None)  # type: ignore[arg-type]
    return p


def _check(args: Any) -> str | None:
    for flag, v, lo in (("--workers", args.workers, 1), ("--max-concurrency", args.max_concurrency, 1),
                        ("--max-items", args.max_items, 1), ("--max-body-bytes", args.max_body_bytes, 1024),
                        ("--replicas", args.replicas, 1)):
        if v < lo:
            raise UserError(f"{flag} {v}: must be at least {lo}")
    if not args.item_timeout > 0:
        raise UserError(f"--item-timeout {args.item_timeout:g}: must be more than 0 seconds, e.g. --item-timeout 60")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: must be 0-65535")
    token = os.environ.get(args.token_env) or None
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise UserError(f"--host {args.host}: not an IP address; e.g. --host 127.0.0.1 or --host 0.0.0.0") from None
    if not loopback and token is None:
        raise UserError(f"--host {args.host} reaches other machines: set a bearer token in ${args.token_env} first "
                        f"(e.g. export {args.token_env}=$(openssl rand -hex 24))")
    return token


def build(args: Any, corpus: Corpus, run_id: str, sink: Any) -> tuple[RewardService, RubricScorer, RewardLog]:
    backend = None
    try:
        limits = backend_limits(args, prefix="judge-")
        if args.judge_backend:
            backend = backend_from_args(args, prefix="judge-")
    except BackendError as e:
        raise UserError(str(e)) from None
    writer = RewardLog(sink)
    scorer = RubricScorer(corpus, args.rubric, run_id, writer.add, backend=backend, limits=limits, unsafe_exec=args.unsafe_exec)
    scorer.warm()
    return RewardService(scorer, writer, workers=args.workers, item_timeout_s=args.item_timeout), scorer, writer


def app_options(args: Any, token: str | None) -> dict[str, Any]:
    return {"token": token, "max_body_bytes": args.max_body_bytes, "max_items": args.max_items,
            "max_concurrency": args.max_concurrency, "error_reward": args.error_reward}


def serve_main(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(list(argv))
    token = _check(args)
    corpus = Corpus(args.db)
    r = load_rubric(args.rubric)  # here, so that the run's config names the rubric version it serves
    config = {"rubric_path": args.rubric, "rubric": r.name, "rubric_version": r.version, "rubric_hash": r.rubric_hash, "host": args.host, "port": args.port, "executor": args.executor,
              "workers": args.workers, "item_timeout_s": args.item_timeout, "max_concurrency": args.max_concurrency,
              "token_env": args.token_env if token else None}  # the variable's name, never its value
    if args.executor == "ray":
        from .serve_ray import serve_ray

        return serve_ray(args, corpus, config, token)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen ({e.strerror}); pick another port") from None
    sock.listen(512)
    with corpus.run("judge serve", config) as run:
        service, scorer, writer = build(args, corpus, run.id, CorpusSink(corpus))
        try:
            port = sock.getsockname()[1]
            # the line clients and tests wait for: the socket already accepts (connections queue)
            print(f"serving http://{args.host}:{port} rubric {r.name} v{r.version} ({r.rubric_hash}) "
                  f"run {run.id}; {len(scorer.cache)} cached rewards", flush=True)
            _run_uvicorn(create_app(service, **app_options(args, token)), sock)
        finally:
            service.close()
            writer.close()
            scorer.close()
            run.summary = {"served": service.served, "errors": service.errors, "cache_hits": scorer.hits,
                           "rows_written": writer.written, "rows_lost": writer.errors}
    return 0


def _run_uvicorn(app: Any, sock: socket.socket) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=5))
    # uvicorn stops on SIGTERM / Ctrl-C, then re-raises the signal to the handler it found: ours
    # only notes it, so the writer flushes and the run is closed as 'ok' (stopping is how a server ends)
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    server.run(sockets=[sock])
    sys.stdout.flush()
