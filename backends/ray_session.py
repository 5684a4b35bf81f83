"""The Ray cluster a command works on: join one, or start a private one; notice when it dies.

`RaySession` is shared by the backend executor (backends/ray_executor.py) and by anything else a
stage spreads over the cluster (the judge's verifiers): one connection per command.

- An address is checked before Ray sees it: nothing listening, or something that is not a Ray
  head (an HTTP server), is refused in seconds; Ray itself would retry "Failed to connect to
  GCS" for a minute or forever.
- Without an address, a private local cluster starts (backends/ray_cluster.py) and stops with
  the command, even on SIGKILL, even during its own start.
- While waiting on the cluster, `check_alive` probes the head; one unreachable for
  `DEAD_AFTER_S` raises `ClusterError` (exit 3), before Ray's own minute runs out and it ends
  the process with pages of C++ log.
- Secrets (the API key the inner backend reads, object-store credentials) reach the workers in
  `runtime_env`, which the cluster keeps in memory: never in the work dir or the corpus.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from .base import BackendError

DEAD_AFTER_S = 15.0  # a head unreachable this long is a dead cluster (Ray itself waits 60 s, then aborts)
WAIT_S = 2.0  # how often a waiting driver looks at the head
# what workers need from the driver's environment besides the API key: object-store credentials
SECRET_PREFIXES = ("AWS_", "AZURE_STORAGE_", "GOOGLE_CLOUD_PROJECT")


class ClusterError(BackendError):
    """The cluster failed under the job (it stopped answering): infrastructure, exit status 3."""


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether an HTTP/2 server (Ray's GCS and client server are gRPC) answers the connection
    preface with a SETTINGS frame; an HTTP/1 server, or anything else, does not."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    head = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(preface)
        try:
            while len(head) < 9:
                got = s.recv(9 - len(head))
                if not got:
                    break
                head += got
        except OSError:
            pass
    return len(head) >= 4 and head[3] == 0x04


def check_address(address: str) -> None:
    """Fail in seconds when nothing, or something that is not a Ray head, listens at host:port."""
    if address == "auto":
        return
    u = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = u.port
    except ValueError:
        port = None
    if not u.hostname or not port:
        raise BackendError(f"--ray-address {address}: give host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        grpc = _speaks_grpc(u.hostname, port, timeout=4.0)
    except OSError as e:
        raise BackendError(f"--ray-address {address}: cannot connect ({e.strerror or e}); start the cluster "
                           "(`ray start --head`) or fix the address") from None
    if not grpc and not os.environ.get("RAY_USE_TLS"):  # a TLS head answers the preface with TLS, not HTTP/2
        raise BackendError(f"--ray-address {address}: something listens there but it is not a Ray head (no gRPC "
                           "answer); give the head's GCS port (`ray start --head` prints it, default 6379)")


def worker_env(api_key_env: str | None = None) -> dict[str, str]:
    """The secrets workers need, for runtime_env: the API key the inner backend reads and
    object-store credentials for the work dir, as this process has them."""
    names = [api_key_env] if api_key_env else []
    names += [k for k in os.environ if k.startswith(SECRET_PREFIXES)]
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def cause(e: BaseException) -> str:
    """One line out of a Ray error: its traceback's last line, or what happened to the actor."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    pick = lines[-1] if lines and ":" in lines[-1] else (lines[0] if lines else type(e).__name__)
    return pick[:300]


class RaySession:
    """`address`: a running cluster (host:port, ray://host:10001, auto); None means RAY_ADDRESS
    or, if unset, a private local cluster of `num_cpus` that stops with this process."""

    def __init__(self, address: str | None, num_cpus: int = 1):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address == "local":  # Ray's own local start leaves agents behind on SIGKILL: ours does not
            self.address = None
        if self.address:
            check_address(self.address)
        self.num_cpus = num_cpus
        self.cluster: Any = None
        self.connected = self.dead = False
        self._owns_ray = False
        self._probe = ""
        self._last_seen = time.monotonic()

    def connect(self) -> None:
        if self.connected:
            return
        import ray

        from .ray_cluster import LocalCluster

        logging.getLogger("ray").setLevel(logging.WARNING)
        address = self.address
        if not ray.is_initialized():
            if not address:
                # A token of our own: nobody else can use this cluster while it runs.
                env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
                root = str(Path(__file__).resolve().parent.parent)  # workers import our code, not another copy
                env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
                self.cluster = LocalCluster(num_cpus=max(os.cpu_count() or 1, self.num_cpus), env=env)
                try:
                    address = self.cluster.start()
                except RuntimeError as e:
                    self.cluster = None
                    raise BackendError(str(e)) from None
                self._env_before = use_token({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
            except Exception as e:
                self.close()
                raise BackendError(f"--ray-address {address}: cannot join the Ray cluster ({cause(e)})") from None
            self._owns_ray = True
        self._probe = str(address or "")
        if not self._probe.startswith("ray://"):
            try:
                self._probe = ray.get_runtime_context().gcs_address
            except Exception:  # the address given is the head's
                pass
        self._last_seen = time.monotonic()
        self.connected = True

    def seen(self) -> None:
        """Something came back from the cluster: it is alive."""
        self._last_seen = time.monotonic()

    def ensure_alive(self) -> None:
        """Before something that needs the head (starting an actor, after one died): wait while
        it does not answer, up to DEAD_AFTER_S, instead of blocking inside Ray for its minute."""
        self._last_seen = time.monotonic()
        while not self._reachable():
            self.check_alive()
            time.sleep(1.0)

    def _reachable(self) -> bool:
        u = urlparse(self._probe if "://" in self._probe else f"x://{self._probe}")
        try:
            socket.create_connection((u.hostname, u.port), timeout=2.0).close()
            return True
        except (OSError, TypeError, ValueError):
            return False

    def check_alive(self) -> None:
        """A head that does not accept connections for DEAD_AFTER_S is a dead cluster."""
        if self._reachable():
            self._last_seen = time.monotonic()
        elif time.monotonic() - self._last_seen > DEAD_AFTER_S:
            self.dead = True
            raise ClusterError(f"ray: the cluster at {self._probe} stopped answering for {DEAD_AFTER_S:.0f} s; "
                               "the run is marked failed: restart the cluster and rerun the same command "
                               "(stored answers are kept)")

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], num_cpus: float = 1.0, max_attempts: int = 3,
            env: dict[str, str] | None = None) -> list[Any]:
        """`fn(*a)` for each `a` as Ray tasks over the cluster's CPUs, results in order. A task
        whose worker dies is run again, at most `max_attempts` times in all; an exception it
        raises is not (it would raise again) and comes back as a BackendError."""
        import ray

        self.connect()
        task = ray.remote(fn).options(num_cpus=num_cpus, max_retries=max_attempts - 1, retry_exceptions=False,
                                      runtime_env={"env_vars": env or {}})
        refs = [task.remote(*a) for a in args]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_S, fetch_local=False)
            if done:
                self.seen()
            else:
                self.check_alive()
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise BackendError(f"ray: a task failed {max_attempts} times or raised: {cause(e)}") from None

    def close(self) -> None:
        if self._owns_ray and not self.dead:  # a dead cluster cannot be left politely: Ray would wait its minute
            import ray

            ray.shutdown()
        self._owns_ray = self.connected = False
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
            use_token(self._env_before)


def use_token(env: dict[str, str | None]) -> dict[str, str | None]:
    """Make this process present our cluster's token (None values: unset); return what was
    there before. Ray reads the auth mode and token once at import: make it read them again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    before = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return before

