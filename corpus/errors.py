"""User-facing errors and the CLI wrapper every `python -m X` uses.

A user's mistake ends in one line that names the file:line or flag and the fix, exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence


INCOMPLETE = 3  # exit status of a job that ran but left transient failures: rerun it to retry them
EXIT_STATUS = ("exit status: 0 every planned item is stored or failed for good; 2 a mistake in the input or flags "
               "(nothing written); 3 the job ran but transient failures remain (rerun the same command to retry "
               "only those); 130 interrupted")


def report_incomplete(prog: str, unresolved: int, planned: int, what: str) -> int:
    """The exit status of a finished job: 0, or INCOMPLETE after a line saying how many and how to retry."""
    if unresolved <= 0:
        return 0
    print(f"{prog}: incomplete: {unresolved} of {planned} planned {what} failed with transient errors and are not "
          f"stored; rerun the same command to retry only those (exit status {INCOMPLETE})", file=sys.stderr)
    return INCOMPLETE


class UserError(Exception):
    """A mistake in the user's input; the message is the whole story (where and how to fix).

    Always one line: a line break that came in with the user's data (a key, a value) is shown
    escaped, so no input can turn the error into several lines or fake a second message.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        for ch, esc in (("\r", "\\r"), ("\n", "\\n"), ("\x1b", "\\x1b"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
                        ("\x85", "\\x85"), ("\x0b", "\\x0b"), ("\x0c", "\\x0c")):
            text = text.replace(ch, esc)
        super().__init__(text)


def not_utf8(path: str | Path, e: UnicodeDecodeError, offset: int = 0) -> UserError:
    """The one-line error for a file that is not UTF-8 text, naming the first bad byte."""
    at = offset + e.start
    bad = e.object[e.start:e.start + 1].hex() if isinstance(e.object, (bytes, bytearray)) else "?"
    return UserError(f"{path}: not UTF-8 text (byte offset {at}: 0x{bad}); save the file as UTF-8 "
                     f"(e.g. `iconv -f latin1 -t utf-8`) or check that it is the file you meant")


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file's content as str (UTF-8, a BOM allowed); every way it can fail is a UserError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{p}: no such {what}; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a folder; give a {what}") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(p, e, 3 if data.startswith(b"\xef\xbb\xbf") else 0) from None


DUCKDB_MAGIC = b"DUCK"  # at byte 8 of every DuckDB database file
FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")  # what matplotlib writes, by name


def is_duckdb_file(path: str | Path) -> bool:
    """True for a DuckDB database, whatever its name says."""
    try:
        with Path(path).open("rb") as f:
            return f.read(12)[8:12] == DUCKDB_MAGIC
    except OSError:
        return False


def check_figure_out(flag: str, path: str | Path) -> Path:
    """The path for a figure (`--plot`), checked before any work: a format matplotlib writes,
    a folder that exists, and never a DuckDB file (a typo must not replace a corpus with a PNG)."""
    p = Path(path)
    if p.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"{flag} {p}: a figure is written as {', '.join(FIGURE_SUFFIXES)}; "
                        f"give e.g. {flag} {p.with_suffix('.png').name}")
    if p.is_dir() or not p.resolve().parent.is_dir():
        raise UserError(f"{flag} {p}: folder {p.parent} does not exist; create it first")
    if is_duckdb_file(p):
        raise UserError(f"{flag} {p}: is a DuckDB database; give another file name for the figure")
    return p


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
    except Exception as e:
        hint = _duckdb_hint(e)
        if hint is None:
            raise
        print(f"{prog}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to finish the missing work", file=sys.stderr)
        return 130


_MISSING = re.compile(r"(?:Table|View) with name (\w+) does not exist")
_FILE_IN = re.compile(r'file "([^"]+)"')
# what DuckDB says when the bytes of a file are not what it wrote: cut short, or overwritten
DAMAGED = ("Could not read enough bytes", "Corrupt database file", "checksum", "block id out of range")


def damaged(path: str, detail: str) -> str:
    """The one line for a corpus file whose bytes are cut short or corrupt."""
    detail = _FILE_IN.sub("file", detail.removeprefix("IO Error: "))[:160]  # the path is said once, up front
    return (f"{path}: the corpus file is damaged ({detail}): it was cut short or overwritten (a full disk, a partial "
            "copy, a crash); restore it from a copy or an export, or point --db at another file")


def disk_full(path: str | None) -> str:
    """The one line for a write that found no space left."""
    where = f"{path}: " if path else ""
    folder = str(Path(path).parent) if path else "."
    return (f"{where}the disk is full (No space left on device); the batch being written was not stored and the rows "
            f"stored before are intact; free space (see `df -h {folder}`) and rerun the same command")


def missing_table(table: str, made_by: str) -> str:
    return (f"the corpus has no table {table!r}: migration {made_by} creates it, and every command that writes "
            f"the corpus (e.g. python -m generate) applies missing migrations; if {made_by} already ran, the table "
            "was dropped since: restore the corpus from a copy or an export")


def _duckdb_hint(e: BaseException) -> str | None:
    """One line for the DuckDB errors a user's corpus or machine (not our code) causes: a table
    someone dropped, a file this user may not write, a damaged file, a full disk. None for
    anything else (a bug keeps its traceback)."""
    import errno

    import duckdb

    msg = str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return disk_full(e.filename if isinstance(e.filename, str) else None)
    if isinstance(e, duckdb.Error) and "No space left on device" in msg:
        m = _FILE_IN.search(msg)
        return disk_full(m.group(1).removesuffix(".wal") if m else None)
    if isinstance(e, duckdb.Error) and any(d in msg for d in DAMAGED):
        m = _FILE_IN.search(msg)
        return damaged(m.group(1) if m else "the corpus", msg.strip().splitlines()[0])
    if isinstance(e, duckdb.CatalogException) and (m := _MISSING.search(msg)):
        from .schema import migration_of

        table, made_by = m.group(1), migration_of(m.group(1))
        if made_by is None:
            return None
        return missing_table(table, made_by)
    if isinstance(e, duckdb.IOException) and ("Permission denied" in msg or "Read-only file system" in msg):
        return f"{msg.strip().splitlines()[0][:300]}; run as the corpus owner or fix the permissions of the file and its folder"
    return None
