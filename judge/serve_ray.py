"""`python -m judge serve --executor ray`: the same service as replicas behind Ray Serve.

Each replica is the one-process service (judge/serve.py) with its own judges, pool and caches.
The corpus stays the single source of truth with one writer: replicas never write the DuckDB
file; their writer thread puts each flush as Parquet shards under --work-dir, and this process
(the driver) merges finished shards into the corpus every second, as generate's Ray path merges
its call shards. Replicas read the corpus once, read-only, at startup (rubric checks, caches).

The bearer token never travels through Ray (deployment arguments live in Ray's control store):
replicas read it from the same environment variable, which a private local cluster inherits
from this process and a remote cluster's nodes must be given.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from corpus import Corpus, UserError

from .serve_log import ShardSink, merge_shards

try:  # Ray Serve is optional (pip install 'rlaif-engine[serve]'); the error below says so
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment
    class RewardReplica:
        """One replica: the one-process service, forwarded to in-process over ASGI."""

        def __init__(self, options: dict[str, Any], run_id: str, work_dir: str):
            import httpx

            from .serve import create_app
            from .serve_main import app_options, build

            args = argparse.Namespace(**options)
            corpus = Corpus(args.db, read_only=True)
            self.service, self.scorer, self.writer = build(args, corpus, run_id, ShardSink(work_dir))
            token = os.environ.get(args.token_env) or None
            app = create_app(self.service, **app_options(args, token))
            self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica", timeout=None)

        async def __call__(self, request: Request) -> Response:
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
            r = await self.client.request(request.method, request.url.path, params=request.query_params,
                                          content=await request.body(), headers=headers)
            keep = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "retry-after", "www-authenticate")}
            return Response(r.content, status_code=r.status_code, headers=keep)

        def __del__(self) -> None:
            self.writer.close()  # flush the last shard when Ray Serve stops the replica
except ImportError:  # pragma: no cover - reported by serve_ray
    serve = None


def serve_ray(args: Any, corpus: Corpus, config: dict[str, Any], token: str | None) -> int:
    if serve is None:
        raise UserError("--executor ray needs Ray Serve: pip install 'ray[serve]>=2.50,<3' (the [serve] extra)")
    import ray

    from backends.ray_cluster import LocalCluster, free_port
    from backends.ray_executor import _use_token

    work = Path(args.work_dir or f"{args.db}.serve")
    work.mkdir(parents=True, exist_ok=True)
    merge_shards(corpus, work)  # what a killed server's replicas left behind
    port = args.port or free_port()
    cluster = None
    logging.getLogger("ray").setLevel(logging.WARNING)
    config = {**config, "replicas": args.replicas, "work_dir": str(work)}
    with corpus.run("judge serve", config) as run:
        try:
            address = args.ray_address
            if not address:
                root = str(Path(__file__).resolve().parent.parent)  # replicas import this code, not another copy
                env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                       "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
                cluster = LocalCluster(num_cpus=max(os.cpu_count() or 1, args.replicas + 1), env=env)
                address = cluster.start()
                _use_token({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # Ray read them at import
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            serve.start(http_options={"host": args.host, "port": port}, logging_config={"log_level": "WARNING"})
            options = {k: v for k, v in vars(args).items()}
            app = RewardReplica.options(num_replicas=args.replicas, max_ongoing_requests=args.max_concurrency,
                                        ray_actor_options={"num_cpus": 0.5}).bind(options, run.id, str(work))
            serve.run(app, name="reward", route_prefix="/", blocking=False)
            print(f"serving http://{args.host}:{port} rubric {config['rubric']} v{config['rubric_version']} "
                  f"({config['rubric_hash']}) run {run.id}; {args.replicas} Ray Serve replicas", flush=True)
            stopped: list[int] = []
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: stopped.append(signum))
            merged = 0
            while not stopped:
                time.sleep(1.0)
                merged += merge_shards(corpus, work)
            serve.delete("reward")  # replicas flush their last shards as they stop
            merged += merge_shards(corpus, work)
            run.summary = {"rows_merged": merged, "replicas": args.replicas}
        finally:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
            if cluster is not None:
                cluster.stop()
    return 0
