"""A private local Ray cluster that dies with the command that started it, even on SIGKILL.

`ray.init()` without an address starts a head node whose agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) outlive a SIGKILLed driver: measured here, they were still running
minutes later. So the cluster is started by a small supervisor process instead:

- the supervisor runs in a session of its own (`setsid`) and is a child subreaper, so every
  process of the cluster (raylet, gcs, agents, workers) is in its session and, once orphaned,
  becomes its child;
- it starts `ray start --head --block` with free ports and a private temp dir, and reports
  the address once `ray start` has written it;
- it then blocks reading a pipe whose only write end the driver holds. The kernel closes that
  end when the driver exits for any reason (normal exit, exception, SIGKILL, OOM), so the read
  returns and the supervisor stops the cluster: SIGTERM to `ray start`, then SIGKILL to
  whatever is left in its session, reaps the children and removes the temp dir.

This file imports only the standard library: it runs as a script (`python ray_cluster.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36
READY = "ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Every process (but this one) whose session id is `sid`, read from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(name))
    return out


class LocalCluster:
    """Start with `start()` (returns the GCS address), stop with `stop()`; a driver that dies
    without calling `stop()` stops it as well (see the module docstring)."""

    def __init__(self, num_cpus: int, num_gpus: int | None = None, env: dict[str, str] | None = None,
                 start_timeout_s: float = 120.0):
        self.num_cpus, self.num_gpus, self.env = num_cpus, num_gpus, env or {}
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self._w: int | None = None
        self.address: str | None = None

    @property
    def session_id(self) -> int | None:
        """The session every process of this cluster belongs to (the supervisor's pid)."""
        return self.proc.pid if self.proc else None

    def start(self) -> str:
        r, w = os.pipe()
        cfg = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "fd": r, "timeout": self.start_timeout_s}
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), json.dumps(cfg)], pass_fds=[r], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        os.close(r)
        self._w = w
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith(READY + " "):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            last = [x for x in err.strip().splitlines() if x.strip()][-1:] or ["no output"]
            raise RuntimeError(f"the local Ray cluster did not start: {last[0][:300]}")
        self.address = line.split(" ", 1)[1]
        return self.address

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()
            self.proc = None


def _kill_session(sid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while session_pids(sid) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.1)
    for _ in range(50):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _closed(fd: int) -> bool:
    """Whether the driver's end of the pipe is closed (the driver exited), without blocking."""
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable) and not os.read(fd, 4096)


def supervise(cfg: dict) -> int:
    """The supervisor's body (runs in its own session, see the module docstring)."""
    sid = os.getpid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tmp = tempfile.mkdtemp(prefix="rlaif-ray-")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
           "--include-dashboard=false", f"--port={free_port()}", f"--num-cpus={cfg['num_cpus']}",
           f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={tmp}"]
    if cfg.get("num_gpus") is not None:
        cmd.append(f"--num-gpus={cfg['num_gpus']}")
    log = open(os.path.join(tmp, "ray-start.log"), "w")
    ray_start = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    signal.signal(signal.SIGTERM, lambda *_: None)  # the pipe decides when we stop, not a stray signal
    try:
        address_file = os.path.join(tmp, "ray_current_cluster")
        deadline = time.monotonic() + float(cfg["timeout"])
        while not os.path.exists(address_file):
            if _closed(cfg["fd"]):  # the driver died while the cluster started: stop now, not once it is up
                return 1
            if ray_start.poll() is not None or time.monotonic() > deadline:
                log.flush()
                with open(log.name) as f:
                    sys.stderr.write(f.read()[-2000:] or "ray start exited\n")
                return 1
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give it its newline
        with open(address_file) as f:
            address = f.read().strip()
        print(f"{READY} {address}", flush=True)
        while os.read(cfg["fd"], 4096):  # EOF: the driver closed its end or died
            pass
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            ray_start.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            ray_start.wait(timeout=15)
        _kill_session(sid, grace_s=3.0)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(supervise(json.loads(sys.argv[1])))
