"""The review page in a real headless chromium (Debian's package, driven by Playwright):
log in, approve, reject with a reason, edit, see an XSS payload as text, be refused without a
token and without a CSRF token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from review import add_reviewer, sample_queue
from test_review_helpers import ReviewServer, add_item, flag

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="needs Debian's chromium: apt-get update && apt-get install -y chromium"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = '<script>window.__xss = 1; alert("xss")</script><img src=x onerror="window.__xss=2">'
DOCS_PNG = Path(__file__).resolve().parent.parent / "docs" / "review.png"


@pytest.fixture
def site(corpus):
    with corpus.session():
        gids = [
            add_item(corpus, 0, {"helpful": 3, "correct": 3}, response=XSS),
            add_item(corpus, 1, {"helpful": 5, "correct": 4}, prompt="What is the capital of France?",
                     response="Paris is the capital of France. It has been since the 10th century."),
            add_item(corpus, 2, {"helpful": 1, "correct": 1}, prompt="What is the capital of France?", response="The capital of France is Berlin."),
            add_item(corpus, 3, {"helpful": 5, "correct": 2}, prompt="At what temperature does water boil?", response="Water boils at 90 C at sea level."),
        ]
        flag(corpus, gids[0], "jury_disagreement")
        sample_queue(corpus, size=4, population="judged")
        token = add_reviewer(corpus, "ann")
    server = ReviewServer(corpus.path).wait_ready()
    yield corpus, server, token, gids
    server.stop()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def queue_ids(corpus) -> list[str]:
    return [r["id"] for r in corpus.query("SELECT id FROM review_sample ORDER BY priority")]


def test_review_flow_in_the_browser(site, browser, tmp_path):
    corpus, server, token, gids = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(server.url + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url("**/item/*")

    # the disputed XSS item comes first, shown as text; nothing ran
    assert page.locator("#candidate").inner_text() == XSS
    assert page.evaluate("window.__xss === undefined") and dialogs == []
    assert "disputed: jury_disagreement" in page.content()

    # approve with the keyboard shortcut
    first = page.url
    page.keyboard.press("a")
    page.wait_for_url(lambda u: u != first)
    # reject with a reason
    second = page.url
    page.keyboard.press("r")
    page.keyboard.type("Berlin is wrong")
    page.click("#reject")
    page.wait_for_url(lambda u: u != second)
    # edit the third
    third = page.url
    page.keyboard.press("e")
    page.fill("#edited-response", "Water boils at 100 C at sea level.")
    page.fill("#edit-note", "fixed the number")
    page.click("#save-edit")
    page.wait_for_url(lambda u: u != third)

    # back to the first: it shows my verdict; a screenshot for the README
    page.goto(first)
    assert page.locator("#current-verdict").inner_text() == "approve"
    page.goto(second)
    # REVIEW_SCREENSHOT=1 refreshes the README's picture; otherwise the tree stays untouched
    shot = DOCS_PNG if os.environ.get("REVIEW_SCREENSHOT") else tmp_path / "review.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    rows = corpus.query("SELECT target_id, verdict, note, edited_generation_id FROM reviews ORDER BY created_at")
    order = [r["target_id"] for r in corpus.query("SELECT target_id FROM review_sample ORDER BY priority")]
    assert [(r["target_id"], r["verdict"]) for r in rows] == list(zip(order[:3], ["approve", "reject", "edit"]))
    assert rows[1]["note"] == "Berlin is wrong"
    edited = corpus.query("SELECT * FROM generations WHERE id = ?", [rows[2]["edited_generation_id"]])[0]
    assert edited["provenance"] == "human" and edited["parent_id"] == order[2]
    assert edited["response"] == "Water boils at 100 C at sea level."


def test_refused_without_token_and_without_csrf(site, browser):
    corpus, server, token, _ = site
    item = queue_ids(corpus)[0]
    anon = browser.new_page()
    anon.goto(f"{server.url}/item/{item}")
    assert anon.url.endswith("/login") and "Log in" in anon.content()
    r = anon.request.post(f"{server.url}/item/{item}/verdict", form={"verdict": "approve"})
    assert r.status == 401

    page = browser.new_page()
    page.goto(server.url + "/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url("**/item/*")
    # a link with planted alert text shows only a fixed message
    page.goto(f"{server.url}/item/{item}?error=Session+expired:+paste+your+token+at+evil.example")
    assert page.locator("[role=alert]").inner_text() == "not recorded: the verdict was not valid; try again."
    # same cookies as the logged-in page, but a forged form without the CSRF token
    r = page.request.post(f"{server.url}/item/{item}/verdict", form={"verdict": "approve"})
    assert r.status == 403
    # a form built in the page without the token (what a forged form looks like) is refused
    with page.expect_navigation():
        page.evaluate(
            """(url) => { const f = document.createElement('form'); f.method = 'post'; f.action = url;
               const i = document.createElement('input'); i.name = 'verdict'; i.value = 'approve'; f.appendChild(i);
               document.body.appendChild(f); f.submit(); }""",
            f"{server.url}/item/{item}/verdict",
        )
    assert "CSRF" in page.content()
    assert corpus.query("SELECT count(*) AS n FROM reviews")[0]["n"] == 0
