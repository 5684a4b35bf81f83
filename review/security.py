"""What keeps the review login safe on a network: rate limits, trusted hosts, https detection,
and error messages chosen by code.

- Login attempts are limited per client address (every attempt counts) and per token id from
  that address (failed attempts count; one still being checked holds its place until it is
  decided), with the `limits` library's moving window; a refused attempt gets 429 and
  Retry-After before any hashing, so a flood costs the server almost nothing. The token-id limit
  is keyed by the address too, so a guesser locks out only itself: the reviewer, from another
  address, still logs in. Guessing from many addresses gains nothing worth having: a secret has
  192 random bits.
- The Host header must name this server (`--allowed-host`); anything else gets 400, so no
  absolute URL the framework builds (a trailing-slash redirect, say) can point elsewhere.
- Cookies are `Secure` when the operator says the page is served over https (`--https`) or the
  request arrived over TLS, as uvicorn or a trusted proxy's X-Forwarded-Proto reports it.
- Pages take `?error=<code>`, never text: the alert box shows only a fixed message.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from corpus import UserError

DEFAULT_PER_ADDRESS = "20/minute"
DEFAULT_PER_TOKEN = "5/minute"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")

# code -> the only text the item page's alert box can show
ERRORS = {
    "verdict": "choose approve, reject or edit.",
    "reason": "a reject needs a reason, so the judge and filter authors can learn from it.",
    "edit-empty": "the corrected response is empty; reject the item instead.",
    "edit-unchanged": "the response is unchanged; approve it instead.",
    "edit-missing": "the candidate to edit is no longer in the corpus.",
    "invalid": "the verdict was not valid; try again.",
}
# a verdict's UserError message (review/verdicts.py) -> its code; first match wins
_ERROR_MARKERS = (("choose one of", "verdict"), ("give a reason", "reason"), ("is empty", "edit-empty"),
                  ("unchanged", "edit-unchanged"), ("no generation", "edit-missing"))


def error_code(exc: Exception) -> str:
    msg = str(exc)
    return next((code for marker, code in _ERROR_MARKERS if marker in msg), "invalid")


def error_message(code: str | None) -> str | None:
    """The fixed message for a code from the query string; an unknown code shows nothing of itself."""
    if not code:
        return None
    return ERRORS.get(code, ERRORS["invalid"])


def parse_rate(flag: str, value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise UserError(f"{flag} {value!r}: write a rate such as 20/minute, 5/minute or 100/hour") from None


def token_key(token: str) -> str:
    """The rate-limit key of a token: its id when well formed (never the secret); one shared key for junk."""
    token_id = (token or "").strip().partition(".")[0]
    return token_id if _TOKEN_ID.match(token_id) else "malformed"


@dataclass
class LoginLimiter:
    """Per-address and per-(address, token id) login limits held in this process's memory."""

    per_address: RateLimitItem = field(default_factory=lambda: parse(DEFAULT_PER_ADDRESS))
    per_token: RateLimitItem = field(default_factory=lambda: parse(DEFAULT_PER_TOKEN))
    tarpit_s: float = 1.0  # a refused attempt is answered after this long (asleep, no thread held)

    def __post_init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._pending: dict[tuple[str, str], int] = {}  # (address, token key) -> admitted, not finished yet
        self._lock = threading.Lock()

    def _wait(self, item: RateLimitItem, *keys: str) -> int:
        reset = self._limiter.get_window_stats(item, *keys).reset_time
        return max(1, math.ceil(reset - time.time()))

    def attempt(self, address: str, token: str) -> int | None:
        """Admit one attempt; None if it may go on (then call finished() once it is decided), else
        the seconds to wait (for Retry-After). An admitted attempt holds a place in its (address,
        token id) budget until it finishes, as if it will fail: concurrent guesses on one id
        cannot all pass the check before any of them is counted."""
        key = token_key(token)
        with self._lock:
            pending = self._pending.get((address, key), 0)
            if not self._limiter.test(self.per_token, "token", address, key, cost=pending + 1):
                return self._wait(self.per_token, "token", address, key)
            if not self._limiter.hit(self.per_address, "address", address):
                return self._wait(self.per_address, "address", address)
            self._pending[(address, key)] = pending + 1
        return None

    def finished(self, address: str, token: str, ok: bool) -> None:
        """An admitted attempt is decided: a failure counts against its (address, token id), a
        success does not."""
        key = token_key(token)
        with self._lock:
            left = self._pending.get((address, key), 1) - 1
            if left > 0:
                self._pending[(address, key)] = left
            else:
                self._pending.pop((address, key), None)
            if not ok:
                self._limiter.hit(self.per_token, "token", address, key)


def _lowest_priority() -> None:
    # Linux nice values are per thread: this lowers only the hash thread, never the pages'
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def hash_worker() -> ThreadPoolExecutor:
    """The one thread that runs login hashes: one at a time, at nice 19 on Linux, so a flood of
    logins gets at most one core and the scheduler gives reviewers' page threads first call on it."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="login-hash", initializer=_lowest_priority)


def host_form(host: str) -> str:
    """A host as it appears in a Host header: IPv6 literals in brackets, lower case."""
    host = host.strip().lower()
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def allowed_hosts(bind: str, extra: list[str] | None) -> list[str]:
    """The Host header values the server answers: the bound host, the localhost forms, and
    `--allowed-host` values. A wildcard bind (0.0.0.0, ::) has no name to check, so it needs
    --allowed-host: otherwise any Host header would do."""
    hosts = [host_form(h) for h in extra or []]
    for h in hosts:
        if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
            raise UserError(f"--allowed-host {h}: use a name (review.example.org), *.example.org, or * for any")
    wildcard = bind.strip() in ("0.0.0.0", "::", "")
    if wildcard and not hosts:
        raise UserError(f"--host {bind}: also give --allowed-host NAME, the host name reviewers type "
                        "(e.g. --allowed-host review.example.org); --allowed-host '*' accepts any Host header")
    bound = [] if wildcard else [host_form(bind)]
    return list(dict.fromkeys(bound + list(LOCAL_HOSTS) + hosts))


def is_https(scheme: str, forced: bool) -> bool:
    """True when the browser reached us over TLS: `--https`, uvicorn's own TLS, or a trusted proxy."""
    return forced or scheme == "https"
