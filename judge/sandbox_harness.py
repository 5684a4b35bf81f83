"""The program that runs INSIDE the sandbox (standard library only; see judge/sandbox.py).

Started as `python -I -S -c <sandbox_wire.py + this source> <fd>`; settings, the answer's code and the
tests arrive as three frames on fd.
Two processes:

- the runner (trusted): reads its settings, drops root, makes itself non-dumpable
  (so a same-uid process cannot read its memory or file descriptors), forks the candidate,
  only then reads the tests, runs them, and writes one verdict to a pipe that only
  it holds;
- the candidate (hostile): closes everything but its two pipes to the runner and stdout/stderr,
  sets its rlimits, runs the answer as module `solution` and then answers requests: "what is
  global X", "call handle H with these arguments", "next item of iterator H".

Values cross the pipes as tagged JSON and are rebuilt by the runner as exact built-in types,
so every comparison in the tests runs in the runner with real built-ins on real data. A value
that is not plain data (an instance of the answer's own class, a generator) stays in the
candidate as a handle; the runner compares handles by identity only, never by asking the
candidate, so an object whose `__eq__` lies is just not equal to anything.
"""

import builtins
# The answer may patch `builtins`; the harness's own names are bound here, before it runs.
from builtins import (  # noqa: A004
    BaseException, Exception, KeyError, OSError, RecursionError, StopIteration, TypeError, ValueError, bool, bytes,
    callable, compile, complex, dict, exec, float, frozenset, getattr, int, isinstance, iter, len, list, next, repr, set,
    str, super, tuple, type,
)
import json
import os
import resource
import signal
import sys

from judge.sandbox_wire import (  # inlined: sandbox.py puts sandbox_wire.py's text here instead
    CandidateGone, Misbehaved, ProtocolError, RemoteError, decode, encode, exception_kind, read_frame, recv,
    remote_exception, send,
)  # end inlined


# -- the candidate process -----------------------------------------------------------------------

def set_limits(limits):
    for name, value in limits.items():
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _plain(x):
    """The base value of a subclass of a built-in (a lying str/int subclass is sent as what it
    really holds); None when it is not one."""
    for base in (bool, int, float, str, bytes, complex):
        if isinstance(x, base):
            return base.__new__(base, x) if base is not bool else bool(x)
    for base in (list, tuple, set, frozenset):
        if isinstance(x, base):
            return base(base.__iter__(x))
    if isinstance(x, dict):
        return {k: dict.__getitem__(x, k) for k in dict.__iter__(x)}
    item = getattr(type(x), "item", None)  # numpy scalars
    if type(x).__module__ == "numpy" and callable(item) and getattr(x, "shape", None) == ():
        return item(x)
    return None


def candidate_main(link, code):
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    lo = 3
    for fd in sorted(link):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)
    os.setpgid(0, 0)

    objects = {}

    def ref(x, depth=0):
        if depth < 90:
            plain = _plain(x)
            if plain is not None and type(plain) is not type(x):
                return encode(plain, ref, depth + 1)
        objects[len(objects) + 1] = x
        return {"h": len(objects)}

    def value(x):
        try:
            return encode(x, ref)
        except RecursionError:
            return ref(x, 99)

    def local(h):
        if h not in objects:
            raise KeyError(f"no object {h}")
        return objects[h]

    saved = dict(builtins.__dict__)  # the answer's patches to builtins are undone before we answer

    mod = type(sys)("solution")
    mod.__file__ = "solution.py"
    sys.modules["solution"] = mod
    sys.argv = ["solution.py"]
    try:
        exec(compile(code, "solution.py", "exec"), mod.__dict__)
    except BaseException as e:  # noqa: B902 - reported to the runner, which decides
        import traceback

        traceback.print_exc()
        kind, base = exception_kind(e)
        info = {"loaded": False, "exc": kind, "msg": _text(e), "base": base}
        if isinstance(e, SystemExit):
            info["code"] = e.code if e.code is None or isinstance(e.code, int) else 1
        builtins.__dict__.update(saved)
        _flush()
        send(link, info)
        os._exit(1)
    builtins.__dict__.update(saved)
    _flush()
    send(link, {"loaded": True})
    while True:
        try:
            req = recv(link)
        except (CandidateGone, ProtocolError, OSError):
            os._exit(0)
        try:
            out = {"id": req["id"], "v": _answer(req, mod, value, local)}
        except BaseException as e:  # noqa: B902
            kind, base = exception_kind(e)
            if kind == "StopIteration" and req.get("op") == "next":  # the only place "exhausted" is an answer
                out = {"id": req.get("id"), "stop": True}
            else:
                out = {"id": req.get("id"), "exc": kind, "msg": _text(e), "base": base}
        builtins.__dict__.update(saved)
        _flush()
        send(link, out)


def _answer(req, mod, value, local):
    op = req["op"]
    if op == "get":
        name = req["name"]
        if name not in mod.__dict__:
            return {"missing": True}
        obj = mod.__dict__[name]
        if isinstance(obj, type(sys)):
            return {"module": obj.__name__}
        return value(obj)
    obj = local(req["h"])
    if op == "call":
        dec = lambda v: decode(v, local)  # noqa: E731
        return value(obj(*[dec(a) for a in req["args"]], **{k: dec(v) for k, v in req["kwargs"].items()}))
    if op == "getattr":
        return value(getattr(obj, req["name"]))
    if op == "iter":
        return value(iter(obj))
    if op == "next":
        return value(next(obj))
    if op == "getitem":
        return value(obj[decode(req["key"], local)])
    if op == "len":
        return len(obj)
    if op == "bool":
        return bool(obj)
    if op == "repr":
        return repr(obj)[:500]
    raise ValueError(f"unknown op {op}")


def _text(e):
    try:
        return str(e)[:500]
    except BaseException:  # noqa: B902 - a hostile __str__
        return "?"


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:  # noqa: B902
            pass


# -- the runner ----------------------------------------------------------------------------------

class Channel:
    def __init__(self, link):
        self.link, self.seq, self.calls, self.suspect = link, 0, 0, None

    def request(self, op, **kw):
        self.seq += 1
        if op == "call":
            self.calls += 1
        try:
            send(self.link, {"id": self.seq, "op": op, **kw})
        except BrokenPipeError:
            raise CandidateGone from None
        resp = recv(self.link)
        if type(resp) is not dict or resp.get("id") != self.seq:
            raise ProtocolError("an answer out of order (a forged or extra message)")
        if "exc" in resp:
            if resp.get("base"):
                self.suspect = f"the answer raised {str(resp['exc'])[:40]} out of a call"
                raise Misbehaved(self.suspect)
            raise remote_exception(resp["exc"], str(resp.get("msg", ""))[:500])
        if resp.get("stop") is True and op == "next":
            raise StopIteration
        if "v" not in resp:
            raise ProtocolError("an answer without a value")
        return resp["v"]

    def value(self, op, **kw):
        return decode(self.request(op, **kw), self.remote)

    def remote(self, h):
        return Remote(self, h)

    def arg(self, x):
        def refuse(obj, depth):
            if isinstance(obj, Remote) and obj._chan is self:
                return {"h": obj._h}
            raise TypeError(f"the sandbox cannot pass a {type(obj).__name__} to the answer (plain data only)")

        return encode(x, refuse)


class Remote:
    """An object that lives in the candidate. No __eq__: compared by identity only."""

    __slots__ = ("_chan", "_h")

    def __init__(self, chan, h):
        self._chan, self._h = chan, h

    def __call__(self, *args, **kwargs):
        c = self._chan
        return c.value("call", h=self._h, args=[c.arg(a) for a in args], kwargs={str(k): c.arg(v) for k, v in kwargs.items()})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._chan.value("getattr", h=self._h, name=name)

    def __iter__(self):
        it = self._chan.value("iter", h=self._h)
        while True:
            try:
                yield it._chan.value("next", h=it._h) if isinstance(it, Remote) else next(it)
            except StopIteration:
                return

    def __next__(self):
        return self._chan.value("next", h=self._h)

    def __getitem__(self, key):
        return self._chan.value("getitem", h=self._h, key=self._chan.arg(key))

    def __len__(self):
        n = self._chan.request("len", h=self._h)
        if type(n) is not int or n < 0:
            raise ProtocolError("len() answered with a non-integer")
        return n

    def __bool__(self):
        b = self._chan.request("bool", h=self._h)
        if type(b) is not bool:
            raise ProtocolError("bool() answered with a non-bool")
        return b

    def __repr__(self):
        r = self._chan.request("repr", h=self._h)
        return f"<answer's object {str(r)[:200]}>"


class TestGlobals(dict):
    """The tests' builtins: the real ones, then the answer's entry points, then real standard-library
    modules by name. Nothing else is looked up in the answer: a test that says `math.isclose`
    gets the real `math` even when the answer defines `class math`."""

    def __init__(self, chan, allowed_modules, entries):
        super().__init__(builtins.__dict__)
        self.chan, self.allowed, self.entries = chan, allowed_modules, frozenset(entries)
        for name in self.entries:  # an answer's `sum` is the entry point, not the builtin (MBPP 126)
            self.pop(name, None)

    def __missing__(self, name):
        if name in self.entries:
            got = self.chan.request("get", name=name)
            if type(got) is dict and got.get("missing") is True:
                if name in builtins.__dict__:  # the tests call a builtin the answer does not redefine
                    self[name] = builtins.__dict__[name]
                    return self[name]
                raise KeyError(name)
            if type(got) is dict and "module" in got:
                raise KeyError(name)  # an entry point is code the answer wrote, not a module it imported
            value = decode(got, self.chan.remote)
        elif name in self.allowed and not name.startswith("_"):
            import importlib

            value = importlib.import_module(name)  # the real module, as if the tests had imported it
        else:
            raise KeyError(name)
        self[name] = value
        return value


STARTED = b"started\n"


def runner_main():
    in_fd = int(sys.argv[1])
    cfg = read_frame(in_fd)
    vfd = cfg["verdict_fd"]
    root = os.getuid() == 0
    if root:  # two fresh uids: the answer's cannot signal, trace or read the runner's process
        os.setgroups([])
    elif 0 in (os.geteuid(), os.getgid(), os.getegid()):
        return finish(vfd, "refused", "the sandbox would run the answer as root; refused")
    _not_dumpable()
    sys.path.extend(cfg["site"])
    set_limits(cfg["runner_limits"])
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the answer's orphaned forks stay the runner's descendants
    from_runner, to_cand = os.pipe()  # (read end, write end)
    from_cand, to_runner = os.pipe()
    # From here on the answer's code may run: whatever ends this run without a verdict is its
    # doing (the judge scores it 0, hack_suspected); before it, only the sandbox can fail.
    os.write(vfd, STARTED)
    code = read_frame(in_fd)  # the answer's text: after STARTED, so no answer can make its own load look like ours
    pid = os.fork()
    if pid == 0:
        try:
            os.close(vfd)
            os.close(in_fd)
            os.close(to_cand)
            os.close(from_cand)
            if root:
                _become(cfg["uid"])
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the runner
            set_limits(cfg["limits"])
            candidate_main((from_runner, to_runner), code)
        finally:
            os._exit(1)
    if root:
        _become(cfg["runner_uid"])
        _not_dumpable()  # a uid change resets the flag
    os.close(from_runner)
    os.close(to_runner)
    tests = read_frame(in_fd)
    os.close(in_fd)
    reason, detail, calls = run_tests(Channel((from_cand, to_cand)), pid, cfg, tests)
    os.close(to_cand)  # an idle answer reads EOF and exits
    status, cpu = _reap(pid)
    finish(vfd, reason, detail, calls=calls, cpu_s=cpu)


def _become(uid):
    os.setgid(uid)
    os.setuid(uid)
    if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
        os._exit(70)  # never run as root; after STARTED this reads as a failed answer, never a pass


def _not_dumpable():
    """A non-dumpable process's memory, fds and environ are closed to other same-uid processes."""
    _prctl(4, 0)  # PR_SET_DUMPABLE


def _prctl(option, arg):
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {arg}) failed")


def _forks_alive(pid):
    """The runner's live descendants other than the answer's process `pid` (its forks: as the
    runner is their subreaper, an orphaned fork is still one). Zombies have exited and count not."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # it exited while we looked
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]  # the name may hold spaces and ")"
        if state not in ("Z", "X"):
            parents[int(entry)] = int(ppid)
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in mine]
        mine.update(kids)
        todo.extend(kids)
    return sorted(mine - {pid})


def finish(vfd, reason, detail, **extra):
    os.write(vfd, json.dumps({"reason": reason, "detail": str(detail)[:1000], **extra}).encode())
    os.close(vfd)
    os._exit(0)


def _reap(pid):
    """Kill the candidate's process group; its exit status and CPU seconds (None when it outlives
    a short grace: under another uid the runner may not signal it; the PID namespace ends it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        status, cpu = _exited(pid, 2.0)
    except ChildProcessError:
        return None, None
    return status, None if cpu is None else round(cpu, 3)


def _exited(pid, grace_s=5.0):
    """The candidate's wait status once it is gone (None if it is still alive after grace_s:
    it closed its pipes without exiting)."""
    import select
    import time

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll
        fd = None
    try:
        end = time.monotonic() + grace_s
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                return status, usage.ru_utime + usage.ru_stime
            if time.monotonic() >= end:
                return None, None
            select.select([fd] if fd is not None else [], [], [], 0.01 if fd is None else end - time.monotonic())
    finally:
        if fd is not None:
            os.close(fd)


def gone(pid, cpu_limit):
    status, cpu = _exited(pid)
    if status is None:
        return "hack_suspected", "the answer closed its pipes to the tests and kept running"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            return "timeout", f"the answer used its {cpu_limit} s of CPU time"
        if sig == signal.SIGXFSZ:
            return "killed", "the answer wrote a file over the size limit"
        return "killed", f"the answer's process was killed by {name}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "hack_suspected", "the answer's process exited with status 0 before the tests finished"
    return "error", f"the answer's process exited with status {code} before the tests finished"


def run_tests(chan, pid, cfg, tests):
    """(reason, detail, calls): run the tests against the answer through `chan`."""
    cpu_limit = cfg["limits"]["RLIMIT_CPU"][0]
    try:
        hello = recv(chan.link)
    except CandidateGone:
        return (*gone(pid, cpu_limit), 0)
    except ProtocolError as e:
        return "hack_suspected", f"protocol violation: {e}", 0
    if type(hello) is not dict or "loaded" not in hello:
        return "hack_suspected", "protocol violation: no load report", 0
    if hello["loaded"] is not True:
        exc, msg = str(hello.get("exc"))[:60], str(hello.get("msg"))[:300]
        if exc == "SystemExit" and hello.get("code") in (0, None):
            return "hack_suspected", "the answer exited with status 0 before the tests ran", 0
        if hello.get("base") and exc != "SystemExit":
            return "hack_suspected", f"the answer raised {exc} while loading", 0
        return "error", f"the answer failed to load: {exc}: {msg}", 0
    entry = tests.get("entry_point")
    ns = {"__builtins__": TestGlobals(chan, set(cfg["modules"]), tests.get("entries") or ([entry] if entry else [])),
          "__name__": "__tests__"}
    try:
        if tests.get("imports"):
            try:  # the tests' own imports (MBPP's test_imports), in the tests' namespace
                exec(compile(tests["imports"], "<test imports>", "exec"), ns)
            except Exception as e:
                return "error", f"the tests' imports failed: {type(e).__name__}: {_text(e)}"[:400], 0
        if tests.get("prefix"):
            try:  # the prompt's own code (trusted): its helpers, not the answer's, serve the tests
                exec(compile(tests["prefix"], "<prompt>", "exec"), ns)
            except Exception:
                pass
            ns.pop(entry, None)
        source = tests["tests"]
        exec(compile(source, "<tests>", "exec"), ns)
        if entry and callable(ns.get("check")) and not tests.get("calls_check"):
            try:
                candidate = ns["__builtins__"][entry]
            except KeyError:
                return "error", f"the answer does not define `{entry}`", chan.calls
            ns["check"](candidate)
    except CandidateGone:
        return (*gone(pid, cpu_limit), chan.calls)
    except Misbehaved as e:
        return "hack_suspected", str(e), chan.calls
    except ProtocolError as e:
        return "hack_suspected", f"protocol violation: {e}", chan.calls
    except RemoteError as e:
        return "error", f"the answer raised {type(e).__name__}: {e}"[:400], chan.calls
    except AssertionError as e:
        return "failed_assertion", _where(e, tests["tests"]), chan.calls
    except NameError as e:
        return "error", f"NameError: {e} (the tests use a name the answer does not define)", chan.calls
    except BaseException as e:  # noqa: B902 - anything else the tests raised
        return "error", f"{type(e).__name__}: {_text(e)}"[:400], chan.calls
    if chan.suspect:
        return "hack_suspected", chan.suspect, chan.calls
    if chan.calls == 0:
        return "error", "the tests never called the answer's code", 0
    try:
        got, _, _ = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        got = pid
    if got:
        return "hack_suspected", "the answer's process exited while a fork of it answered the tests", chan.calls
    # Its process is alive; was it the one answering? Only it may be alive now: a fork that answered
    # is still waiting for the next call, whether or not its parent has yet been scheduled to exit.
    if _forks_alive(pid):
        return "hack_suspected", "a fork of the answer was still running when the tests ended", chan.calls
    return "passed", "", chan.calls


def _where(e, source):
    import traceback

    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == "<tests>"), None)
    text = source.splitlines()[line - 1].strip() if line and line <= len(source.splitlines()) else ""
    msg = _text(e)
    return f"tests line {line}: {text[:200]}" + (f" ({msg[:200]})" if msg else "")


if __name__ == "__main__":
    runner_main()
