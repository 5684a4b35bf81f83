"""Reviewers, login tokens and web sessions.

A token is "<token_id>.<secret>": the token_id finds the reviewer's row, and only a salted
scrypt hash of the secret is stored. A session cookie is a random string of which only the
SHA-256 is stored; the CSRF token is an HMAC of the cookie, so it needs no storage and a page
on another site, which cannot read the cookie, cannot forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from corpus import Corpus, UserError
from corpus.records import now

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SESSION_TTL = timedelta(hours=12)


def _scrypt(secret: str, salt: str) -> str:
    # n=2**14 costs ~50 ms per login: nothing for a person, expensive for a stolen-corpus brute force
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1, dklen=32).hex()


# unknown ids are checked against this, so they cost the same hash as known ones
_DUMMY_SALT = secrets.token_hex(16)
_DUMMY_DIGEST = secrets.token_hex(32)
_MAX_SECRET = 256


def add_reviewer(corpus: Corpus, name: str, rotate: bool = False) -> str:
    """Register `name` (or give it a new token with rotate=True); returns the token, shown once."""
    if not _NAME.match(name):
        raise UserError(f"add-reviewer {name!r}: use 1-64 letters, digits or _ . @ -")
    token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(24), secrets.token_hex(16)
    digest = _scrypt(secret, salt)
    with corpus.transaction() as con:
        exists = con.execute("SELECT 1 FROM reviewers WHERE name = ?", [name]).fetchone()
        if exists and not rotate:
            raise UserError(f"add-reviewer {name}: already a reviewer; add --rotate to issue a new token")
        if exists:
            con.execute(
                "UPDATE reviewers SET token_id = ?, token_salt = ?, token_hash = ?, disabled = false WHERE name = ?",
                [token_id, salt, digest, name],
            )
            con.execute("DELETE FROM review_sessions WHERE reviewer = ?", [name])  # old logins end
        else:
            con.execute(
                "INSERT INTO reviewers (name, token_id, token_salt, token_hash) VALUES (?, ?, ?, ?)",
                [name, token_id, salt, digest],
            )
    return f"{token_id}.{secret}"


def disable_reviewer(corpus: Corpus, name: str) -> None:
    """Revoke a reviewer's token and sessions; their verdicts stay."""
    with corpus.transaction() as con:
        if not con.execute("SELECT 1 FROM reviewers WHERE name = ?", [name]).fetchone():
            raise UserError(f"disable-reviewer {name}: no such reviewer")
        con.execute("UPDATE reviewers SET disabled = true WHERE name = ?", [name])
        con.execute("DELETE FROM review_sessions WHERE reviewer = ?", [name])


@dataclass(frozen=True)
class TokenCheck:
    """What verifying a token needs, read from the corpus in one quick query; the slow hash
    (`verify_token`) then runs without the corpus or any lock."""

    secret: str
    name: str | None  # None: no such id, disabled, or malformed; the hash still runs
    salt: str = _DUMMY_SALT
    digest: str = _DUMMY_DIGEST


def lookup_token(corpus: Corpus, token: str) -> TokenCheck:
    token_id, _, secret = (token or "").strip().partition(".")
    rows = corpus.query(
        "SELECT name, token_salt, token_hash FROM reviewers WHERE token_id = ? AND NOT disabled", [token_id]
    ) if token_id and secret else []
    secret = secret[:_MAX_SECRET]  # a megabyte "secret" costs no more to hash than a real one
    if not rows:
        return TokenCheck(secret, None)
    r = rows[0]
    return TokenCheck(secret, r["name"], r["token_salt"], r["token_hash"])


def verify_token(check: TokenCheck) -> str | None:
    """The reviewer, or None. Exactly one scrypt whether or not the id exists, so the time a
    login takes does not tell which token ids are real."""
    ok = hmac.compare_digest(_scrypt(check.secret, check.salt), check.digest)
    return check.name if ok and check.name is not None else None


def check_token(corpus: Corpus, token: str) -> str | None:
    """The reviewer a token belongs to, or None."""
    return verify_token(lookup_token(corpus, token))


def reviewer_exists(corpus: Corpus, name: str) -> bool:
    return bool(corpus.query("SELECT 1 FROM reviewers WHERE name = ? AND NOT disabled", [name]))


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def start_session(corpus: Corpus, reviewer: str) -> str:
    cookie = secrets.token_urlsafe(32)
    t = now()
    with corpus.transaction() as con:
        con.execute("DELETE FROM review_sessions WHERE expires_at < ?", [t])
        con.execute(
            "INSERT INTO review_sessions (id_hash, reviewer, created_at, expires_at) VALUES (?, ?, ?, ?)",
            [_hash(cookie), reviewer, t, t + SESSION_TTL],
        )
    return cookie


def session_reviewer(corpus: Corpus, cookie: str | None) -> str | None:
    """The logged-in reviewer for a session cookie, or None (unknown, expired or disabled)."""
    if not cookie:
        return None
    rows = corpus.query(
        "SELECT s.reviewer FROM review_sessions s JOIN reviewers r ON r.name = s.reviewer "
        "WHERE s.id_hash = ? AND s.expires_at > ? AND NOT r.disabled",
        [_hash(cookie), now()],
    )
    return rows[0]["reviewer"] if rows else None


def end_session(corpus: Corpus, cookie: str) -> None:
    corpus.execute("DELETE FROM review_sessions WHERE id_hash = ?", [_hash(cookie)])


def csrf_token(cookie: str) -> str:
    return hmac.new(cookie.encode(), b"review-csrf", hashlib.sha256).hexdigest()


def csrf_ok(cookie: str | None, token: str | None) -> bool:
    return bool(cookie and token) and hmac.compare_digest(csrf_token(cookie).encode(), token.encode())  # type: ignore[union-attr]
