"""The review page: FastAPI, server-rendered with Jinja2 (autoescaped: model text is untrusted).

Every page and POST needs a logged-in reviewer; every POST needs the session's CSRF token. The
server holds no connection to the corpus between requests: each request opens the file, does
its reads or its one write transaction, and closes it (see corpus/store.py), so a batch job can
write between two clicks. A lock serializes requests inside this process, because one Corpus
object shares its connection across nested calls and request threads must not share it.

A login reads the token's row under that lock, then hashes outside it on one dedicated worker
thread at the lowest CPU priority (see security.hash_worker), so a login flood takes at most one
core, yields it to reviewers' pages, and never holds the lock while it hashes.
Rate limits, trusted hosts, Secure cookies and error codes live in review/security.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from corpus import Corpus, UserError

from .auth import (
    TokenCheck, csrf_ok, csrf_token, end_session, lookup_token, session_reviewer, start_session, verify_token,
)
from .security import LOCAL_HOSTS, LoginLimiter, error_code, error_message, hash_worker, is_https
from .verdicts import item_details, next_item, progress, record_verdict

HERE = Path(__file__).parent
SESSION_COOKIE = "review_session"
LOGIN_COOKIE = "review_login_csrf"
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"


class NotLoggedIn(Exception):
    pass


def create_app(
    db: str | Path, allowed_hosts: list[str] | None = None, https: bool = False,
    trusted_proxies: list[str] | None = None, limiter: LoginLimiter | None = None,
) -> FastAPI:
    """The review app. `allowed_hosts`: Host header values it answers (default the localhost
    forms); `https`: cookies always Secure; `trusted_proxies`: addresses whose X-Forwarded-For
    and X-Forwarded-Proto are believed; `limiter`: the login rate limits."""
    corpus = Corpus(db, create=False)
    lock = threading.Lock()
    limiter = limiter or LoginLimiter()
    hasher = hash_worker()
    # no trailing-slash redirects: the app never builds an absolute URL from the Host header
    app = FastAPI(title="review", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOCAL_HOSTS), www_redirect=False)
    if trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxies)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescape on for .html

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse("not logged in: open /login and paste your reviewer token", status_code=401)

    @contextlib.contextmanager
    def db(read: bool = False) -> Iterator[None]:
        """One open of the corpus per request (closed before the response goes out); pages that
        only show things open it read-only, so DuckDB refuses any write they might attempt."""
        with lock, (corpus.read_session() if read else corpus.session()):
            yield

    def reviewer_of(request: Request) -> tuple[str, str]:
        cookie = request.cookies.get(SESSION_COOKIE)
        name = session_reviewer(corpus, cookie)
        if not name:
            raise NotLoggedIn()
        return name, cookie  # type: ignore[return-value]

    def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def secure(request: Request) -> bool:
        return is_https(request.url.scheme, https)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(24)
        resp = render(request, "login.html", csrf=nonce, error=None)
        resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=secure(request))
        return resp

    def lookup(token: str) -> TokenCheck:
        with db():
            return lookup_token(corpus, token)

    def new_session(name: str) -> str:
        with db():
            return start_session(corpus, name)

    @app.post("/login")
    async def login(request: Request, token: str = Form(""), csrf_token_: str = Form("", alias="csrf_token")) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or not secrets.compare_digest(nonce.encode(), csrf_token_.encode()):
            return HTMLResponse("missing or wrong CSRF token: reload /login and try again", status_code=403)
        address = request.client.host if request.client else "unknown"
        wait = limiter.attempt(address, token)
        if wait is not None:
            await asyncio.sleep(limiter.tarpit_s)  # a flood's threads wait here, not burning CPU on retries
            resp = render(request, "login.html", status=429, csrf=nonce,
                          error=f"Too many login attempts. Wait {wait} s and try again.")
            resp.headers["Retry-After"] = str(wait)
            return resp
        name = None
        try:
            check = await run_in_threadpool(lookup, token)
            name = await asyncio.get_running_loop().run_in_executor(hasher, verify_token, check)
        finally:
            limiter.finished(address, token, ok=bool(name))
        if not name:
            return render(request, "login.html", status=401, csrf=nonce, error="Unknown or revoked token.")
        cookie = await run_in_threadpool(new_session, name)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", max_age=12 * 3600, secure=secure(request))
        resp.delete_cookie(LOGIN_COOKIE, httponly=True, samesite="strict", secure=secure(request))
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf_token_: str = Form("", alias="csrf_token")) -> Response:
        with db():
            _, cookie = reviewer_of(request)
            if not csrf_ok(cookie, csrf_token_):
                return HTMLResponse("missing or wrong CSRF token", status_code=403)
            end_session(corpus, cookie)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=secure(request))
        return resp

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        with db(read=True):
            name, cookie = reviewer_of(request)
            item = next_item(corpus, name)
            prog = progress(corpus, name)
        if item is not None:
            return RedirectResponse(f"/item/{item['id']}", status_code=303)
        return render(request, "done.html", reviewer=name, progress=prog, csrf=csrf_token(cookie))

    @app.get("/item/{sample_id}", response_class=HTMLResponse)
    def item_page(request: Request, sample_id: str) -> Response:
        with db(read=True):
            name, cookie = reviewer_of(request)
            d = item_details(corpus, sample_id, name)
            prog = progress(corpus, name)
        if d is None:
            return HTMLResponse("no such item in the review queue", status_code=404)
        return render(request, "item.html", reviewer=name, progress=prog, csrf=csrf_token(cookie), d=d,
                      error=error_message(request.query_params.get("error")))

    @app.post("/item/{sample_id}/verdict")
    def verdict(
        request: Request, sample_id: str, verdict: str = Form(""), note: str = Form(""),
        edited_response: str = Form(""), csrf_token_: str = Form("", alias="csrf_token"),
    ) -> Response:
        with db():
            name, cookie = reviewer_of(request)
            if not csrf_ok(cookie, csrf_token_):
                return HTMLResponse("missing or wrong CSRF token: reload the page", status_code=403)
            rows = corpus.query("SELECT target_id, priority FROM review_sample WHERE id = ?", [sample_id])
            if not rows:
                return HTMLResponse("no such item in the review queue", status_code=404)
            try:
                record_verdict(corpus, rows[0]["target_id"], name, verdict, note=note, edited_response=edited_response)
            except UserError as e:  # the page shows a fixed message for the code, never text from the URL
                return RedirectResponse(f"/item/{sample_id}?error={error_code(e)}", status_code=303)
            nxt = next_item(corpus, name, after=rows[0]["priority"]) or next_item(corpus, name)
        return RedirectResponse(f"/item/{nxt['id']}" if nxt else "/", status_code=303)

    return app


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8000, **app_options: Any) -> None:
    """Run the app with uvicorn. Access logs stay off (warning level); uvicorn's own proxy-header
    handling is off too, because create_app trusts only the proxies it is given."""
    import uvicorn

    uvicorn.run(create_app(db, **app_options), host=host, port=port, log_level="warning",
                proxy_headers=False, server_header=False)
