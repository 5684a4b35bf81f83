"""Run a candidate answer's code against its tests, isolated, with a verdict the code cannot forge.

Threat model. The answer is hostile: a policy trained against this verifier learns whatever
makes it say "passed". Three things stand between it and a false pass.

1. The operating system (Debian's bubblewrap, `bwrap`). Each run gets its own mount, PID,
   network, IPC and UTS namespaces: read-only binds of /usr and the Python installation, a
   fresh tmpfs /tmp (the working dir, size-capped) and /dev/shm, its own /proc that shows only
   its own processes, no network at all (not even loopback to the host), a new session, and
   SIGKILL for everything in it when the judge dies or the run ends (the PID namespace dies
   with its first process, so a detached grandchild dies too). Nothing of one run is visible to
   another. The environment is empty. The code never runs as root: as root, bwrap starts
   privileged with only CAP_SETUID/SETGID and the harness gives the answer one fresh unprivileged
   uid and the runner another (so RLIMIT_NPROC counts this run's processes only, and the answer
   cannot signal or trace its runner); otherwise bwrap runs in a user namespace as uid 65534 with
   nested user namespaces disabled. A seccomp filter (sandbox_seccomp.py) refuses new
   namespaces, mounts, BPF, io_uring, keyrings, ptrace and module loading. rlimits inside: CPU
   seconds, address space, processes, file size, open files, no core dumps; the judge adds a
   wall-clock limit (generous: the time limit counts CPU time, so a busy machine does not fail a verdict).
2. The verdict. The answer runs in its own process; the tests run in a separate trusted
   process (the runner, non-dumpable, holding the only end of the verdict pipe) that talks to
   it over two pipes. The runner asks "call `add` with (2, 3)" and gets back data, rebuilt as
   exact built-in types; every `assert` runs in the runner with real built-ins. So exiting
   early (os._exit, sys.exit, atexit), raising SystemExit inside a call, objects whose `__eq__`
   lies, lying str/int subclasses, patched builtins, printed markers, written files and forks
   that report cannot produce a pass: a pass means the runner executed the tests to their end,
   every assertion held, and the answer's own process was the only one of it still alive (the
   runner is the subreaper of its forks, so a fork that answered is seen whether or not its
   parent has exited yet). The tests never exist in the answer's process or on disk, so it
   cannot read them. Output is read from pipes, never from a path the code can replace. The tests
   see their own names, their imports, real builtins and modules, and only the answer's entry
   points (entry_points); the answer's exceptions cross as their real built-in kind.
3. Who failed. The runner writes STARTED to the verdict pipe before any of the answer's code
   runs. No verdict after it is the answer's doing (0, hack_suspected), whatever it printed or
   killed; nothing at all is the sandbox's failure, retried and then reported (infra=True).

What it does not protect against: kernel exploits through the system calls the filter allows
(the sandbox shares the host kernel); CPU and memory bandwidth shared with its neighbours; a test
that calls a helper the answer defines (and the prompt does not) trusts that helper. Limits of
the design: values that are not plain data (instances of the answer's classes) are compared by
identity only, arguments the tests mutate in place are not seen mutated, and tests cannot pass
functions to the answer.
Without bwrap the verifier refuses to run unless the user says `--unsafe-exec` (or `unsafe:
true`): then the same two processes run with rlimits and a fresh uid when root, but with the
host's filesystem, network and processes in view.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import random
import selectors
import shutil
import signal
import site
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .sandbox_seccomp import seccomp_fd

def _harness_source() -> str:
    """sandbox_wire.py, then sandbox_harness.py without its import of it: one `python -c` program."""
    here = Path(__file__).parent
    harness = (here / "sandbox_harness.py").read_text()
    start = harness.index("from judge.sandbox_wire import (")
    end = harness.index("# end inlined", start) + len("# end inlined")
    return (here / "sandbox_wire.py").read_text() + "\n\n" + harness[:start] + harness[end:]


HARNESS = _harness_source()
REASONS = ("passed", "failed_assertion", "error", "timeout", "killed", "refused", "hack_suspected")
_TAIL = 4000
UID_BASE, UID_SPAN = 1_500_000_000, 1 << 24  # per-run uids when we start as root
_RNG = random.SystemRandom()  # not the global generator, which a caller may seed
STARTED = b"started\n"  # the runner's first write to the verdict pipe, before any of the answer's code runs
SANDBOX_TRIES = 3  # a sandbox that fails this many times in a row is recorded as failed, not retried forever
INSTALL_HINT = "install bubblewrap (`apt-get install bubblewrap`, or scripts/setup.sh --dev)"


@dataclass
class Verdict:
    """What happened to one answer. `passed` only when the tests ran to their end and held."""

    passed: bool
    reason: Literal["passed", "failed_assertion", "error", "timeout", "killed", "refused", "hack_suspected"]
    detail: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    cpu_s: float | None = None
    calls: int = 0
    isolation: str = "none"
    infra: bool = False  # the sandbox itself failed (fork, bwrap, runner), not the answer: retry, never score it

    def to_dict(self) -> dict:
        return asdict(self)


class SandboxUnavailable(RuntimeError):
    """bwrap cannot start here and unsafe execution was not allowed."""


# -- how to start the sandbox ----------------------------------------------------------------

def _python() -> tuple[str, list[str]]:
    """The interpreter and its site-packages by real paths, which is how they are bound in the
    sandbox (a venv reached through a symlink has no path there under its linked name). The
    directory is resolved, not the file: a venv's python finds its pyvenv.cfg beside the path it
    was started by."""
    exe = os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))
    return exe, [os.path.realpath(p) for p in site.getsitepackages() if os.path.isdir(p)]


def _bind_roots() -> list[str]:
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    keep = sorted(r for r in roots if not (r == "/usr" or r.startswith("/usr/")))
    return [r for r in keep if not any(r != o and r.startswith(o + "/") for o in keep)]


def bwrap_command(python: str, seccomp_fd: int | None = None) -> list[str]:
    root = os.geteuid() == 0
    cmd = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session"]
    if seccomp_fd is not None:  # judge/sandbox_seccomp.py: loaded by bwrap just before the runner starts
        cmd += ["--seccomp", str(seccomp_fd)]
    if root:  # privileged bwrap; the harness drops to a fresh uid before anything else
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    # the private /tmp first: a Python installation (a venv) that lives under /tmp is bound on top
    # of it below, instead of being hidden by it
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(64 << 20), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(16 << 20), "--tmpfs", "/dev/shm"]
    made: set[str] = {"/tmp", "/dev", "/dev/shm", "/proc"}
    for r in _bind_roots():
        parts = Path(r).parts[1:-1]
        for i in range(len(parts)):
            d = "/" + "/".join(parts[: i + 1])
            if d not in made:
                made.add(d)
                cmd += ["--perms", "0755", "--dir", d]
        cmd += ["--ro-bind", r, r]
    cmd += ["--chdir", "/tmp", "--clearenv"]
    for k, v in _ENV.items():
        cmd += ["--setenv", k, v]
    return cmd + ["--", python, "-I", "-S", "-B", "-c", HARNESS]


def _harness_args(in_fd: int) -> list[str]:
    # settings and tests come on their own pipe, not stdin: bwrap's init process keeps stdin
    # open for the sandbox's whole life, and closes every other inherited fd at once
    return [str(in_fd)]


_ENV = {"HOME": "/tmp", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _world_usable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    try:
        return real.stat().st_mode & 0o005 == 0o005 and all(p.stat().st_mode & 0o001 for p in real.parents)
    except OSError:
        return False


_STATUS: dict[str, tuple[str | None, str]] = {}
_STATUS_LOCK = threading.Lock()


def sandbox_status(kind: str = "bwrap") -> tuple[str | None, str]:
    """("bwrap", "") when the real sandbox works here, else (None, why). Probed once: one real
    run of a tiny answer and test through the whole path."""
    with _STATUS_LOCK:
        if kind not in _STATUS:
            if kind == "bwrap" and shutil.which("bwrap") is None:
                _STATUS[kind] = (None, "bwrap is not installed")
            elif kind == "unsafe" and os.geteuid() == 0 and not any(_world_usable(p) for p in _unsafe_pythons()):
                _STATUS[kind] = (None, "no Python that an unprivileged uid can run (never as root)")
            else:
                for _ in range(SANDBOX_TRIES):  # a busy host's passing fork failure must not disable code_exec
                    v = _run("def f():\n    return 1\n", {"tests": "assert f() == 1", "entry_point": "f"}, kind,
                             _limits(10, 256, 16, 8, 64), 60)
                    if not v.infra:
                        break
                why = (v.detail + " " + v.stderr.strip().splitlines()[-1] if v.stderr.strip() else v.detail).strip()
                _STATUS[kind] = (kind, "") if v.passed else (None, why[:300])
        return _STATUS[kind]


def require_sandbox(unsafe: bool) -> str:
    """The isolation a run will use: "bwrap", or "unsafe" where the user allowed it.
    Raises SandboxUnavailable with a one-line message naming the fix."""
    mode, why = sandbox_status("bwrap")
    if mode:
        return mode
    if unsafe:
        mode2, why2 = sandbox_status("unsafe")
        if mode2:
            return mode2
        raise SandboxUnavailable(f"code_exec: cannot run answers even unsafely ({why2}); {INSTALL_HINT}")
    hint = INSTALL_HINT
    if shutil.which("bwrap") and os.geteuid() != 0:
        hint = ("allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04 "
                "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`)")
    elif shutil.which("bwrap"):  # installed, and failing for the reason above: never say "install it"
        hint = f"bwrap is installed at {shutil.which('bwrap')} but failed; fix the cause above"
    raise SandboxUnavailable(f"code_exec: the bwrap sandbox cannot start ({why}); {hint}, or pass --unsafe-exec "
                             "(rubric: `unsafe: true`) to run answers without isolation")


def _unsafe_pythons() -> list[str]:
    return [sys.executable, "/usr/bin/python3"]


# -- one run ---------------------------------------------------------------------------------

def _limits(timeout_s: float, memory_mb: int, max_file_mb: int, max_procs: int, max_open_files: int) -> dict:
    cpu = max(1, int(timeout_s + 0.999))
    return {"RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_AS": memory_mb << 20, "RLIMIT_FSIZE": max_file_mb << 20,
            "RLIMIT_NPROC": max_procs, "RLIMIT_NOFILE": max_open_files, "RLIMIT_CORE": 0}


def check_answer(code: str, tests: str, entry_point: str | None = None, *, prefix: str | None = None,
                 imports: str | None = None, timeout_s: float = 10.0, memory_mb: int = 1024, wall_s: float | None = None,
                 max_procs: int = 32, max_file_mb: int = 16, max_open_files: int = 256, unsafe: bool = False,
                 tries: int = SANDBOX_TRIES) -> Verdict:
    """Run `code` as module `solution` and `tests` against it (HumanEval `def check(candidate)`
    with `entry_point`, or plain asserts naming the answer's functions). Never raises.

    timeout_s is CPU time of the answer's process; wall_s (default 3x + 30 s) is the hard stop.
    `prefix` is trusted code from the prompt (HumanEval's stub and helpers): its helpers serve
    the tests instead of the answer's copies. `imports` (MBPP's test_imports) run in the tests'
    namespace. The tests see only their own names, real builtins and modules, and the answer's
    entry points (see entry_points). A sandbox failure is retried up to `tries` times; the
    verdict then has infra=True."""
    try:
        isolation = require_sandbox(unsafe)
    except SandboxUnavailable as e:
        return Verdict(False, "refused", str(e))
    limits = _limits(timeout_s, memory_mb, max_file_mb, max_procs, max_open_files)
    calls_check = any(line.startswith("check(") for line in tests.splitlines())
    spec = {"tests": tests, "entry_point": entry_point, "prefix": prefix, "imports": imports, "calls_check": calls_check,
            "entries": entry_points(tests, entry_point, prefix, imports)}
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(0.5 * attempt)  # a fork or memory shortage on a busy host often passes
        v = _run(code, spec, isolation, limits, wall_s if wall_s is not None else 3 * timeout_s + 30)
        if not v.infra:
            return v
    v.detail = f"the sandbox failed {max(1, tries)} times; the last: {v.detail}"
    return v


# CPython 3.11 keeps the AST builder's recursion count in interpreter-wide state: two threads
# parsing at once (check_answer runs answers on a thread pool) can make a plain `def` fail with
# "SystemError: AST constructor recursion depth mismatch". Parses take turns.
_PARSE_LOCK = threading.Lock()


def parse_python(source: str) -> ast.Module:
    """`ast.parse`, one thread at a time."""
    with _PARSE_LOCK:
        return ast.parse(source)


def entry_points(tests: str, entry_point: str | None, prefix: str | None = None, imports: str | None = None) -> list[str]:
    """The names the tests may take from the answer: `entry_point`, and every name the tests call
    that neither they, the prompt's code nor their imports define. A builtin the tests call counts
    only when they call nothing else (MBPP 126's answer defines `sum`; `set(f(x))` means f), and
    then only the innermost (`abs(sum(-3, 1))` means sum)."""
    trusted: set[str] = set()
    for src in (prefix, imports):
        trusted |= _bound_names(src)
    try:
        tree = parse_python(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [entry_point] if entry_point else []
    trusted |= _bound_names(tree)
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    # HumanEval-style `check(add)` hands the entry point over by name without calling it
    passed = [a.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and n.func.id == "check" for a in n.args if isinstance(a, ast.Name)]
    free = [c for c in dict.fromkeys(called + passed) if c not in trusted]
    own = [c for c in free if not hasattr(builtins, c)]
    if not own and not entry_point:
        # only builtins are called: the answer's is the innermost (`abs(sum(-3, 1)) == 2` means
        # `sum`), never every builtin around it, or an answer that also defines `abs` passes
        inner = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in free and not any(isinstance(m, ast.Call) and isinstance(m.func, ast.Name)
                                                   and m.func.id in free for a in n.args + [k.value for k in n.keywords]
                                                   for m in ast.walk(a))}
        free = [c for c in free if c in inner]
    names = ([entry_point] if entry_point else []) + (own or ([] if entry_point else free))
    return list(dict.fromkeys(names))


def _bound_names(src: str | ast.AST | None) -> set[str]:
    """Names a piece of trusted code binds anywhere (defs, classes, imports, assignments, arguments)."""
    if src is None:
        return set()
    try:
        tree = parse_python(src) if isinstance(src, str) else src
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
    return out


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">Q", len(data)) + data


def _run(code: str, tests: dict, isolation: str, limits: dict, wall_s: float) -> Verdict:
    t0 = time.perf_counter()
    root = os.geteuid() == 0
    uid = UID_BASE + _RNG.randrange(UID_SPAN) if root else os.getuid()
    python, sites = _python()
    popen: dict[str, Any] = {}
    workdir = None
    extra_fds: tuple[int, ...] = ()
    if isolation == "bwrap":
        sfd = seccomp_fd()
        extra_fds = () if sfd is None else (sfd,)
        cmd = bwrap_command(python, sfd)
    else:
        if root:
            usable = next(p for p in _unsafe_pythons() if _world_usable(p))
            sites = sites if usable in (python, sys.executable) else []
            python = usable
            popen = {"user": uid, "group": uid, "extra_groups": []}
        workdir = tempfile.mkdtemp(prefix="judge-unsafe-")
        os.chmod(workdir, 0o777)
        cmd = [python, "-I", "-S", "-B", "-c", HARNESS]
    ir, iw = os.pipe()
    cmd = cmd + _harness_args(ir)
    runner_limits = {**limits, "RLIMIT_CPU": [limits["RLIMIT_CPU"][0] * 3 + 5] * 2,
                     "RLIMIT_AS": limits["RLIMIT_AS"] + (768 << 20), "RLIMIT_NPROC": limits["RLIMIT_NPROC"] + 4}
    if not root and isolation != "bwrap":
        runner_limits.pop("RLIMIT_NPROC")  # would count all of this user's processes on the host
        limits = {k: v for k, v in limits.items() if k != "RLIMIT_NPROC"}
    vr, vw = os.pipe()
    # as root: one fresh uid for the runner, another for the answer, so the answer cannot signal it
    cfg = {"uid": uid, "runner_uid": uid + UID_SPAN if root else uid, "verdict_fd": vw, "site": sites, "limits": limits, "runner_limits": runner_limits,
           "modules": sorted(sys.stdlib_module_names | {"numpy"})}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(vw, ir, *extra_fds), env=dict(_ENV, HOME=workdir or "/tmp"), cwd=workdir,
                                start_new_session=True, **popen)
    except OSError as e:
        for fd in (vr, vw, ir, iw, *extra_fds):
            os.close(fd)
        return Verdict(False, "error", f"could not start the sandbox: {e}", isolation=isolation, infra=True)
    for fd in (vw, ir, *extra_fds):
        os.close(fd)
    try:
        out, err, verdict, timed_out = _communicate(proc, iw, _frame(cfg) + _frame(code) + _frame(tests), vr, t0 + wall_s)
    finally:
        os.close(vr)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    res = Verdict(False, "error", "", out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                  round(time.perf_counter() - t0, 3), isolation=isolation)
    # Infra or answer is read from the verdict pipe alone, which only the runner holds: the answer
    # can print anything and kill anything it reaches, but it cannot un-write STARTED.
    started = verdict.startswith(STARTED)
    if timed_out:
        if started:
            res.reason, res.detail = "timeout", f"still running after the wall-clock limit of {wall_s:g} s"
        else:
            res.detail, res.infra = f"the sandbox did not start within the wall-clock limit of {wall_s:g} s", True
        return res
    try:
        v = json.loads(verdict[len(STARTED):] if started else verdict)
        assert v["reason"] in REASONS
    except (ValueError, KeyError, TypeError, AssertionError):
        if started:
            res.reason = "hack_suspected"
            res.detail = f"the test runner ended without a verdict after the answer started (exit {proc.returncode})"
        else:
            tail = res.stderr.strip()[-300:]
            res.detail, res.infra = f"the sandbox failed before the answer ran (exit {proc.returncode}): {tail}", True
        return res
    res.reason, res.detail, res.passed = v["reason"], _utf8(str(v.get("detail", ""))), v["reason"] == "passed"
    res.cpu_s, res.calls = v.get("cpu_s"), int(v.get("calls") or 0)
    return res


def _utf8(text: str) -> str:
    """Text any store can hold. A detail quotes the answer's exception message, which may carry lone
    surrogates (`raise ValueError('\\ud800')`): stored as they are, they stopped the whole judge run at
    its next write (pyarrow: surrogates not allowed) and lost the batch."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _communicate(proc: subprocess.Popen, feed: int, data: bytes, vr: int, deadline: float) -> tuple[bytes, bytes, bytes, bool]:
    """Feed the input pipe, keep the tails of stdout/stderr and the verdict, until the process exits or
    the deadline passes (then kill its whole group)."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
    bufs = {out_fd: bytearray(), err_fd: bytearray(), vr: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    os.set_blocking(feed, False)
    sel.register(feed, selectors.EVENT_WRITE)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    pending, timed_out, exited = memoryview(data), False, False
    try:
        while not exited:
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                fd = key.fd
                if fd == pidfd:
                    exited = True
                elif fd == feed:
                    try:
                        pending = pending[os.write(feed, pending[: 1 << 16]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the runner is gone; its exit says why
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(feed)
                        os.close(feed)
                        feed = -1
                else:
                    _read(fd, bufs[fd], sel)
    finally:
        sel.close()
        os.close(pidfd)
        if feed >= 0:
            os.close(feed)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers (and everything, on a timeout)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for fd, buf in bufs.items():
            _drain(fd, buf)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), bytes(bufs[vr]), timed_out


def _read(fd: int, buf: bytearray, sel: selectors.BaseSelector) -> None:
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    if not chunk:
        sel.unregister(fd)
        return
    buf += chunk
    if len(buf) > 4 * _TAIL:
        del buf[: len(buf) - _TAIL]


def _drain(fd: int, buf: bytearray) -> None:
    for _ in range(64):  # what is left in the pipe; a detached writer cannot keep us here
        try:
            chunk = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        if len(buf) > 4 * _TAIL:
            del buf[: len(buf) - _TAIL]


def run_many(cases: list[dict], workers: int = 2, **limits: Any) -> list[Verdict]:
    """Run cases ({code, tests, entry_point?, prefix?}) in parallel; verdicts in input order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: check_answer(**c, **limits), cases))
