"""The review server over real HTTP (uvicorn subprocess on loopback): authentication, CSRF,
escaping and verdicts, checked at the protocol level where status codes matter."""

from __future__ import annotations

import httpx
import pytest

from review import add_reviewer, sample_queue
from test_review_helpers import ReviewServer, add_item, login, page_csrf

XSS = '<script>window.__xss = 1; alert("xss")</script><img src=x onerror="window.__xss=2">'


@pytest.fixture(scope="module")
def server_corpus(tmp_path_factory):
    """One server for the module (starting one costs seconds); each test logs in as its own reviewer."""
    from corpus import Corpus

    corpus = Corpus(tmp_path_factory.mktemp("web") / "corpus.duckdb")
    with corpus.session():
        gids = [add_item(corpus, 0, {"helpful": 2}, response=XSS)] + [add_item(corpus, i, {"helpful": 4}) for i in (1, 2)]
        sample_queue(corpus, size=3, population="judged")
    server = ReviewServer(corpus.path).wait_ready()
    yield corpus, server, gids
    server.stop()


@pytest.fixture
def served(server_corpus, request):
    corpus, server, gids = server_corpus
    name = request.node.name[5:40]
    return corpus, server, add_reviewer(corpus, name), gids


def n_reviews(corpus) -> int:
    return corpus.query("SELECT count(*) AS n FROM reviews")[0]["n"]


def first_item(corpus) -> str:
    return corpus.query("SELECT id FROM review_sample ORDER BY priority LIMIT 1")[0]["id"]


def test_every_page_and_post_needs_a_reviewer(served):
    corpus, server, token, _ = served
    before = n_reviews(corpus)
    item = first_item(corpus)
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/").status_code == 303 and c.get("/").headers["location"] == "/login"
        assert c.get(f"/item/{item}").headers["location"] == "/login"
        r = c.post(f"/item/{item}/verdict", data={"verdict": "approve", "csrf_token": "x"})
        assert r.status_code == 401
        c.cookies.set("review_session", "forged")
        assert c.get(f"/item/{item}").status_code == 303
    assert n_reviews(corpus) == before


def test_wrong_token_and_login_without_csrf_are_refused(served):
    corpus, server, token, _ = served
    with httpx.Client(base_url=server.url) as c:
        page = c.get("/login")
        bad = c.post("/login", data={"token": token + "x", "csrf_token": page_csrf(page.text)})
        assert bad.status_code == 401 and "review_session" not in c.cookies
        no_csrf = c.post("/login", data={"token": token})
        assert no_csrf.status_code == 403 and "review_session" not in c.cookies


def test_post_without_or_with_a_wrong_csrf_token_is_refused(served):
    corpus, server, token, _ = served
    before = n_reviews(corpus)
    item = first_item(corpus)
    with httpx.Client(base_url=server.url) as c:
        login(c, token)
        assert c.post(f"/item/{item}/verdict", data={"verdict": "approve"}).status_code == 403
        assert c.post(f"/item/{item}/verdict", data={"verdict": "approve", "csrf_token": "0" * 64}).status_code == 403
        # a non-ASCII token is refused too, not a 500 (compare_digest on str rejects non-ASCII)
        assert c.post(f"/item/{item}/verdict", data={"verdict": "approve", "csrf_token": "é"}).status_code == 403
        assert c.post("/logout", data={"csrf_token": "é" * 64}).status_code == 403
        assert n_reviews(corpus) == before
        csrf = page_csrf(c.get(f"/item/{item}").text)
        ok = c.post(f"/item/{item}/verdict", data={"verdict": "approve", "csrf_token": csrf})
        assert ok.status_code == 303
    assert n_reviews(corpus) == before + 1


def test_model_text_is_escaped_and_scripts_are_forbidden(served):
    corpus, server, token, gids = served
    with httpx.Client(base_url=server.url) as c:
        login(c, token)
        r = c.get("/", follow_redirects=True)
        assert "&lt;script&gt;window.__xss = 1;" in r.text
        assert "<script>window.__xss" not in r.text and 'onerror="window' not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]


def test_reject_needs_a_reason_and_edit_makes_a_human_generation(served):
    corpus, server, token, gids = served
    before = n_reviews(corpus)
    item = first_item(corpus)
    with httpx.Client(base_url=server.url) as c:
        login(c, token)
        csrf = page_csrf(c.get(f"/item/{item}").text)
        r = c.post(f"/item/{item}/verdict", data={"verdict": "reject", "note": " ", "csrf_token": csrf})
        assert r.status_code == 303 and r.headers["location"] == f"/item/{item}?error=reason"
        assert "a reject needs a reason" in c.get(r.headers["location"]).text
        assert n_reviews(corpus) == before
        r = c.post(f"/item/{item}/verdict",
                   data={"verdict": "edit", "edited_response": "fixed <b>text</b>", "csrf_token": csrf})
        assert r.status_code == 303
    edit = corpus.query("SELECT * FROM reviews WHERE verdict = 'edit'")[0]
    gen = corpus.query("SELECT * FROM generations WHERE id = ?", [edit["edited_generation_id"]])[0]
    assert edit["verdict"] == "edit" and edit["target_id"] == gids[0]
    assert gen["provenance"] == "human" and gen["parent_id"] == gids[0] and gen["response"] == "fixed <b>text</b>"


def test_logout_ends_the_session(served):
    corpus, server, token, _ = served
    with httpx.Client(base_url=server.url) as c:
        login(c, token)
        home = c.get("/", follow_redirects=True)
        cookie = c.cookies.get("review_session")
        assert c.post("/logout", data={"csrf_token": page_csrf(home.text)}).status_code == 303
        c.cookies.set("review_session", cookie)  # replaying the old cookie does not work
        assert c.get("/").headers["location"] == "/login"


def test_a_disabled_reviewer_is_logged_out(served):
    from review.auth import disable_reviewer

    corpus, server, token, _ = served
    with httpx.Client(base_url=server.url) as c:
        login(c, token)
        assert c.get("/").status_code == 303 and "/item/" in c.get("/").headers["location"]
        me = corpus.query("SELECT name FROM reviewers WHERE token_id = ?", [token.split(".")[0]])[0]["name"]
        disable_reviewer(corpus, me)
        assert c.get("/").headers["location"] == "/login"
        page = c.get("/login")
        assert c.post("/login", data={"token": token, "csrf_token": page_csrf(page.text)}).status_code == 401


def test_a_foreign_host_header_is_refused_before_any_redirect(served):
    corpus, server, token, _ = served
    with httpx.Client(base_url=server.url) as c:
        for path in ("/static", "/", "/login"):
            r = c.get(path, headers={"host": "evil.example"})
            assert r.status_code == 400 and "location" not in r.headers
        assert c.get("/static").status_code == 404  # no trailing-slash redirect at all
        assert c.get("/login", headers={"host": f"localhost:{server.port}"}).status_code == 200


def test_forwarded_headers_are_ignored_without_a_trusted_proxy(served):
    """uvicorn believes X-Forwarded-* from 127.0.0.1 by default; `review serve` believes them only
    from --trusted-proxy addresses, so a local client cannot claim https (or another address)."""
    corpus, server, token, _ = served
    with httpx.Client(base_url=server.url, headers={"x-forwarded-proto": "https", "x-forwarded-for": "198.51.100.1"}) as c:
        page = c.get("/login")
        assert page.status_code == 200 and "secure" not in page.headers["set-cookie"].lower()
