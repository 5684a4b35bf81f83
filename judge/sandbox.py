"""Run untrusted Python (a candidate's code plus its tests) and report what happened.

What it does, in layers:
- a fresh temp dir per run is the working directory and HOME; it is deleted afterwards;
- the environment is emptied (no API keys, no PYTHONPATH);
- resource limits: RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space, so a 10 GB allocation
  fails with MemoryError), RLIMIT_NPROC (processes and threads), RLIMIT_FSIZE (largest file,
  which also caps stdout/stderr since they go to files), no core dumps;
- a wall-clock timeout, after which the whole process group is killed with SIGKILL;
- when running as root with util-linux `unshare`: a new network namespace (no interfaces but a
  down loopback: no network at all) and a new PID namespace (the program cannot see or signal
  any process outside it, and when its first process dies the kernel kills every process left
  in it, so a fork bomb dies with it); the program then drops to uid/gid 65534 (nobody), so
  RLIMIT_NPROC applies and files readable only by their owner stay closed;
- always, a Python audit hook installed before the program runs: it refuses to create sockets,
  to open files for writing outside the temp dir, to open files for reading outside the temp
  dir and the Python installation, to signal other processes, to start programs, and ctypes.

What it does NOT protect against: native code (a C extension already installed, or a bug in
the interpreter) can bypass the audit hook; without root the network and PID namespaces and the
uid drop are missing, so isolation rests on the hook and the rlimits; files under the Python
installation (and /usr when Python lives there) are readable; CPU time and memory bandwidth of
the machine are shared (a program can slow its neighbours down to its limits); kernel
exploits. For hostile code at scale, run this inside a VM or gVisor container as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

NOBODY = 65534
_TAIL = 2000

_BOOT = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
work = os.path.realpath(cfg["dir"])
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if cfg["drop"] and os.getuid() == 0:
    os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
readable = tuple({os.path.realpath(p) for p in (work, sys.prefix, sys.base_prefix, sys.exec_prefix,
                  os.path.dirname(os.__file__))})
devices = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero")
blocked = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "os.system", "os.exec",
           "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen", "pty.spawn",
           "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "os.putenv", "os.chroot"}
def inside(path, roots):
    return any(path == r or path.startswith(r + os.sep) for r in roots)
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        path = os.path.realpath(os.path.join(work, os.fsdecode(path)))
        writing = (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and not inside(path, (work,)) and path != "/dev/null":
            raise PermissionError(f"sandbox: writing outside the sandbox is not allowed: {path}")
        if not writing and not inside(path, readable) and path not in devices:
            raise PermissionError(f"sandbox: reading outside the sandbox is not allowed: {path}")
    elif event in ("os.kill", "os.killpg"):
        if args[0] not in (0, os.getpid()):
            raise PermissionError("sandbox: signalling other processes is not allowed")
    elif event in blocked:
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.path.insert(0, work)
sys.addaudithook(hook)
import runpy
runpy.run_path(os.path.join(work, "main.py"), run_name="__main__")
'''


@dataclass
class ExecResult:
    """What happened to one program. `passed` is True only for a clean exit 0."""

    passed: bool
    status: Literal["passed", "failed", "timeout", "memory", "blocked", "error"]
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str

    def to_dict(self) -> dict:
        return asdict(self)


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "true"], capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _world_usable(path: str) -> bool:
    """Can uid nobody execute this interpreter (every parent folder searchable by others)?"""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o005 == 0o005:
            return False
        return all(p.stat().st_mode & 0o001 for p in real.parents)
    except OSError:
        return False


_MODE: tuple[str, str] | None = None


def _choose() -> tuple[str, str]:
    """(isolation mode, interpreter). Dropping to nobody needs an interpreter nobody can run:
    a Python under /root (pyenv) is not, so fall back to the system Python for the sandbox."""
    global _MODE
    if _MODE is None:
        if not _namespaces_available():
            _MODE = ("rlimits+audit", sys.executable)
        else:
            usable = [p for p in (sys.executable, shutil.which("python3", path="/usr/bin:/bin") or "") if p and _world_usable(p)]
            _MODE = ("namespaces+nobody+rlimits+audit", usable[0]) if usable else ("namespaces+rlimits+audit", sys.executable)
    return _MODE


def isolation_mode() -> str:
    return _choose()[0]


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, max_procs: int = 32,
               max_file_mb: int = 16) -> ExecResult:
    """Run `code` as a Python program in the sandbox. Never raises; see `ExecResult`."""
    t0 = time.perf_counter()
    mode, python = _choose()
    work = tempfile.mkdtemp(prefix="judge-sandbox-")
    try:
        Path(work, "main.py").write_text(code)
        Path(work, "boot.py").write_text(_BOOT)
        drop = "nobody" in mode
        if drop:
            for p in (work, *(str(x) for x in Path(work).iterdir())):
                os.chown(p, NOBODY, NOBODY)
        limits = {
            "RLIMIT_CPU": max(1, int(timeout_s) + 1),
            "RLIMIT_AS": memory_mb * 1024 * 1024,
            "RLIMIT_FSIZE": max_file_mb * 1024 * 1024,
            "RLIMIT_CORE": 0,
        }
        if drop or os.geteuid() != 0:
            limits["RLIMIT_NPROC"] = max_procs
        cfg = {"dir": work, "limits": limits, "drop": drop, "uid": NOBODY}
        cmd = [python, "-I", "-X", "utf8", os.path.join(work, "boot.py"), json.dumps(cfg)]
        if mode.startswith("namespaces"):
            cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1"}
        out_path, err_path = Path(work, "stdout.txt"), Path(work, "stderr.txt")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
            except OSError as e:
                return ExecResult(False, "error", None, "", f"could not start the sandbox: {e}", time.perf_counter() - t0, mode)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers too, not only the first process
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        stdout, stderr = _tail(out_path), _tail(err_path)
        return ExecResult(rc == 0 and not timed_out, _status(rc, timed_out, stderr), rc, stdout, stderr,
                          round(time.perf_counter() - t0, 3), mode)
    except Exception as e:  # the sandbox itself failed: report, never raise
        return ExecResult(False, "error", None, "", f"{type(e).__name__}: {e}", time.perf_counter() - t0, mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _status(rc: int | None, timed_out: bool, stderr: str) -> str:
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGKILL):
        return "timeout"
    if rc == 0:
        return "passed"
    if "MemoryError" in stderr:
        return "memory"
    if "sandbox:" in stderr and "not allowed" in stderr:
        return "blocked"
    return "failed"


def run_many(programs: list[str], workers: int = 4, **limits) -> list[ExecResult]:
    """Run programs in parallel (threads only wait on subprocesses), results in input order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_python(code, **limits), programs))


# -- assembling a program from a candidate answer ------------------------------------------------

_FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


def extract_code(response: str) -> str:
    """The Python in an answer: its fenced code blocks, or the whole text when there are none."""
    blocks = [b for b in _FENCED.findall(response) if b.strip()]
    return "\n\n".join(blocks) if blocks else response


def build_program(response: str, tests: str, entry_point: str | None = None, code_prefix: str | None = None) -> str:
    """Candidate code + tests. HumanEval-style tests define `check(candidate)`; we call it."""
    code = extract_code(response)
    if code_prefix and entry_point and not re.search(rf"def\s+{re.escape(entry_point)}\s*\(", code):
        code = code_prefix + code  # a completion of the given signature, HumanEval style
    program = f"{code}\n\n\n{tests}\n"
    if entry_point and re.search(r"def\s+check\s*\(", tests):
        program += f"\n\ncheck({entry_point})\n"
    return program
