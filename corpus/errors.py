"""User-facing errors and the CLI wrapper every `python -m X` uses.

A user's mistake ends in one line that names the file:line or flag and the fix, exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, NoReturn, Sequence


class UserError(Exception):
    """A mistake in the user's input; the message is the whole story (where and how to fix)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn a UserError (or Ctrl-C, or SIGTERM) into a one-line message and
    an exit status."""
    with _sigterm_as_interrupt():
        return _run(prog, main, argv)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` (SIGTERM) ends a job like Ctrl-C: the run is recorded 'interrupted', not left
    'running'. Only in the main thread, and the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    from pydantic import ValidationError

    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "input"
        print(f"{prog}: error: {loc}: {err['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to finish the missing work", file=sys.stderr)
        return 130
