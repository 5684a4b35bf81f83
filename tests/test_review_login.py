"""The hardened review login: rate limits with 429 + Retry-After, one hash for known and unknown
token ids (outside the corpus lock), trusted Host headers, Secure cookies over https, error
codes instead of query-string text, and no token in logs or the corpus.

Most tests run the real FastAPI app in-process (Starlette's TestClient lets a test choose the
client address, which a loopback socket cannot); the end-to-end ones run `python -m review serve`
or uvicorn on loopback. Nothing here depends on timing: the lock test uses events."""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from limits import parse
from starlette.testclient import TestClient

from corpus import run_cli
from review import add_reviewer, sample_queue
from review import auth
from review.cli import main as review_main
from review.security import LoginLimiter, allowed_hosts
from review.web import create_app
from test_review_helpers import ReviewServer, add_item, free_port, login, page_csrf


@pytest.fixture
def queued(corpus):
    with corpus.session():
        add_item(corpus, 0, {"helpful": 2})
        add_item(corpus, 1, {"helpful": 4})
        sample_queue(corpus, size=2, population="judged")
        token = add_reviewer(corpus, "ann")
    return corpus, token


def client(app, address: str = "10.0.0.1", host: str = "localhost", **kw) -> TestClient:
    return TestClient(app, base_url=f"http://{host}", client=(address, 50000), follow_redirects=False, **kw)


def try_login(c, token: str, **kw) -> httpx.Response:
    page = c.get("/login")
    return c.post("/login", data={"token": token, "csrf_token": page_csrf(page.text)}, **kw)


def post_login(c, page: httpx.Response, token: str) -> httpx.Response:
    """POST the form with the page's nonce sent as a plain Cookie header: a Secure cookie is
    (rightly) not sent back over the plain-http test connection."""
    nonce = page_csrf(page.text)
    return c.post("/login", data={"token": token, "csrf_token": nonce}, headers={"cookie": f"review_login_csrf={nonce}"})


def limited(per_address: str = "100/minute", per_token: str = "100/minute") -> LoginLimiter:
    return LoginLimiter(parse(per_address), parse(per_token))


def test_too_many_logins_from_one_address_get_429_with_retry_after(queued):
    corpus, token = queued
    app = create_app(corpus.path, limiter=limited(per_address="3/minute"))
    with client(app, "10.0.0.1") as c:
        assert [try_login(c, f"{'ab' * 6}.wrong{i}").status_code for i in range(3)] == [401, 401, 401]
        refused = try_login(c, token)  # even the right token: the address has spent its attempts
        assert refused.status_code == 429 and "review_session" not in c.cookies
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Too many login attempts" in refused.text
    with client(app, "10.0.0.2") as other:  # another address is not held up
        assert try_login(other, token).status_code == 303


def test_failed_logins_on_one_token_id_lock_out_the_guesser_not_the_reviewer(queued):
    """Issue 20: after 5 wrong tries on a token id, the correct token was refused with 429 too."""
    corpus, token = queued
    token_id = token.split(".")[0]
    app = create_app(corpus.path, limiter=limited(per_token="2/minute"))
    for i in range(3):  # successes do not count against the token id
        with client(app, "10.0.1.1") as c:
            assert try_login(c, token).status_code == 303
    with client(app, "10.0.2.1") as guesser:
        assert [try_login(guesser, f"{token_id}.guess{i}").status_code for i in range(2)] == [401, 401]
        refused = try_login(guesser, token)  # this address has spent its tries on this id
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert try_login(guesser, f"{'cd' * 6}.other").status_code == 401  # other ids are unaffected
    with client(app, "10.0.3.1") as reviewer:  # the reviewer, elsewhere, still gets in
        assert try_login(reviewer, token).status_code == 303 and "review_session" in reviewer.cookies
    with client(app, "10.0.2.2") as next_door:  # and a wrong try elsewhere is judged on its own
        assert try_login(next_door, f"{token_id}.guess9").status_code == 401


def test_concurrent_attempts_on_one_token_id_cannot_outrun_the_limit():
    """12 attempts on one id from one address admitted before any is decided (as concurrent
    requests are, while the first ones wait for the hash): at most 5 at 5/minute. A success gives
    its place back; a failure keeps it."""
    lim = limited(per_token="5/minute")
    token = f"{'ef' * 6}.guess"
    admitted = [lim.attempt("10.0.4.1", token) is None for i in range(12)]
    assert sum(admitted) == 5 and admitted[:5] == [True] * 5
    assert lim.attempt("10.0.4.1", f"{'ab' * 6}.other") is None  # another id is unaffected
    assert lim.attempt("10.0.4.2", token) is None  # so is the same id from another address
    lim.finished("10.0.4.2", token, ok=True)
    for _ in range(4):
        lim.finished("10.0.4.1", token, ok=True)
    lim.finished("10.0.4.1", token, ok=False)
    assert sum(lim.attempt("10.0.4.1", token) is None for _ in range(12)) == 4  # one failure spent


def test_known_and_unknown_token_ids_cost_exactly_one_hash(queued, monkeypatch):
    from review.auth import check_token, disable_reviewer

    corpus, token = queued
    token_id = token.split(".")[0]
    add_reviewer(corpus, "gone")
    disable_reviewer(corpus, "gone")
    gone_id = corpus.query("SELECT token_id FROM reviewers WHERE name = 'gone'")[0]["token_id"]
    calls = []
    real = auth._scrypt
    monkeypatch.setattr(auth, "_scrypt", lambda secret, salt: calls.append(salt) or real(secret, salt))
    cases = {token: "ann", f"{token_id}.wrong": None, "ffffffffffff.unknown": None, f"{gone_id}.x": None,
             "no-dot-at-all": None, "": None, f"{token_id}." + "x" * 100_000: None}
    for t, expected in cases.items():
        before = len(calls)
        assert check_token(corpus, t) == expected
        assert len(calls) == before + 1, t[:40]
    assert len(set(calls[2:6])) == 1 and calls[6] == calls[0]  # unknown ids share the dummy salt


def test_a_login_being_hashed_does_not_hold_up_a_reviewer(queued, monkeypatch):
    """A login is stopped inside its hash (an event, not a delay); meanwhile a logged-in reviewer
    loads pages through a real uvicorn on loopback. With the hash under the corpus lock, the
    page would wait for the event and the request would time out."""
    import uvicorn

    corpus, token = queued
    entered, release = threading.Event(), threading.Event()
    real = auth._scrypt

    def held(secret, salt):
        if secret == "hold-me":
            entered.set()
            release.wait(60)
        return real(secret, salt)

    monkeypatch.setattr(auth, "_scrypt", held)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(corpus.path), host="127.0.0.1", port=port, log_level="warning"))
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            entered.wait(0.05)  # polling for readiness only
        with httpx.Client(base_url=url, timeout=30) as reviewer, httpx.Client(base_url=url, timeout=90) as flood:
            login(reviewer, token)
            results = []
            attacker = threading.Thread(target=lambda: results.append(try_login(flood, "ffffffffffff.hold-me")))
            attacker.start()
            assert entered.wait(30)
            page = reviewer.get("/", follow_redirects=True)
            assert page.status_code == 200 and "/item/" in str(page.url)
            assert attacker.is_alive() and not results  # the login is still inside its hash
            release.set()
            attacker.join(60)
            assert results[0].status_code == 401
    finally:
        release.set()
        server.should_exit = True
        runner.join(30)


def test_a_foreign_host_header_gets_400_and_redirects_stay_relative(queued):
    corpus, token = queued
    app = create_app(corpus.path)
    with client(app, host="evil.example") as evil:
        assert evil.get("/login").status_code == 400
        assert evil.get("/static").status_code == 400
        assert evil.get("/").status_code == 400
    with client(app) as c:
        assert c.get("/static").status_code == 404  # no trailing-slash redirect built from the Host header
        r = try_login(c, token)
        locations = [r.headers["location"], c.get("/").headers["location"]]
        home = c.get("/", follow_redirects=True)
        item = str(home.url).rsplit("/", 1)[-1]
        bad = c.post(f"/item/{item}/verdict", data={"verdict": "reject", "note": "", "csrf_token": page_csrf(home.text)})
        locations.append(bad.headers["location"])
    assert all(loc.startswith("/") and not loc.startswith("//") for loc in locations), locations


def test_allowed_host_flag_adds_names_and_a_wildcard_bind_needs_one(queued, capsys):
    corpus, _ = queued
    hosts = allowed_hosts("127.0.0.1", ["Review.Example.org", "::1"])
    assert {"127.0.0.1", "localhost", "[::1]", "review.example.org"} == set(hosts)
    app = create_app(corpus.path, allowed_hosts=hosts)
    with client(app, host="review.example.org") as c:
        assert c.get("/login").status_code == 200
    with client(app, host="other.example.org") as c:
        assert c.get("/login").status_code == 400
    for args, flag in ((["--host", "0.0.0.0"], "--allowed-host"), (["--allowed-host", "a*b"], "--allowed-host a*b"),
                       (["--login-rate-per-address", "lots"], "--login-rate-per-address"),
                       (["--trusted-proxy", "my-proxy"], "--trusted-proxy my-proxy")):
        assert run_cli("review", review_main, ["--db", str(corpus.path), "serve", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and "Traceback" not in err


def test_cookies_are_secure_with_https_or_a_trusted_proxy_saying_https(queued):
    corpus, token = queued

    def cookie_flags(app, address: str = "10.0.0.1", **headers) -> list[str]:
        with client(app, address, headers=headers) as c:
            page = c.get("/login")
            r = post_login(c, page, token)
            assert r.status_code == 303
            return [h.lower() for h in page.headers.get_list("set-cookie") + r.headers.get_list("set-cookie")]

    assert not any("secure" in h for h in cookie_flags(create_app(corpus.path)))
    assert all("secure" in h for h in cookie_flags(create_app(corpus.path, https=True)))
    proxied = create_app(corpus.path, trusted_proxies=["127.0.0.1"])
    assert all("secure" in h for h in cookie_flags(proxied, "127.0.0.1", **{"x-forwarded-proto": "https"}))
    # the same header from an address that is not a trusted proxy changes nothing
    assert not any("secure" in h for h in cookie_flags(proxied, "10.9.9.9", **{"x-forwarded-proto": "https"}))


def test_the_error_box_shows_fixed_messages_never_query_text(queued):
    corpus, token = queued
    item = corpus.query("SELECT id FROM review_sample ORDER BY priority LIMIT 1")[0]["id"]
    with client(create_app(corpus.path)) as c:
        assert try_login(c, token).status_code == 303
        planted = "Your session expired: mail your token to attacker@evil.example"
        page = c.get(f"/item/{item}", params={"error": planted})
        assert page.status_code == 200 and "attacker@evil.example" not in page.text
        assert "the verdict was not valid" in page.text
        r = c.post(f"/item/{item}/verdict", data={"verdict": "reject", "note": " ", "csrf_token": page_csrf(page.text)})
        assert r.headers["location"] == f"/item/{item}?error=reason"
        shown = c.get(r.headers["location"]).text
        assert re.search(r'role="alert">not recorded: a reject needs a reason', shown)


def test_through_the_cli_a_proxy_is_trusted_and_no_token_reaches_logs_or_corpus(queued):
    """`review serve --trusted-proxy 127.0.0.1 --login-rate-per-address 2/minute` on loopback:
    X-Forwarded-For gives each forwarded client its own limit, X-Forwarded-Proto https makes the
    cookie Secure; afterwards neither the server's output nor any corpus table holds a token."""
    corpus, token = queued
    secret = token.split(".", 1)[1]
    server = ReviewServer(str(corpus.path), "--trusted-proxy", "127.0.0.1", "--login-rate-per-address", "2/minute",
                          "--allowed-host", "review.example.org").wait_ready()
    try:
        fwd = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "host": "review.example.org"}
        with httpx.Client(base_url=server.url, headers=fwd) as c:
            codes = [post_login(c, c.get("/login"), f"{token_id}.{secret}x").status_code for token_id in ("aa" * 6, "bb" * 6, "cc" * 6)]
            assert codes == [401, 401, 429]
        with httpx.Client(base_url=server.url, headers={**fwd, "x-forwarded-for": "203.0.113.8"}) as c:
            page = c.get("/login")
            assert "secure" in page.headers["set-cookie"].lower()
            r = post_login(c, page, token)
            assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
        with httpx.Client(base_url=server.url, headers={"host": "evil.example"}) as c:
            assert c.get("/static").status_code == 400
    finally:
        server.stop()
    logs = server.proc.stdout.read()
    assert "review page on" in logs and secret not in logs and token.split(".")[0] not in logs
    with corpus.session():
        for t in [r["table_name"] for r in corpus.query("SELECT table_name FROM duckdb_tables()")]:
            assert secret not in str(corpus.query(f'SELECT * FROM "{t}"')), t
