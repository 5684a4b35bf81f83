"""`python -m review sample|add-reviewer|serve|next|report|release`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from corpus import ArgumentParser, Corpus, UserError
from corpus.errors import check_figure_out

from .auth import add_reviewer, disable_reviewer
from .release import DEFAULT_MIN_REVIEWS, DEFAULT_THRESHOLD, release
from .report import agreement_report, plot_report, print_report, set_score_threshold
from .security import DEFAULT_PER_ADDRESS, DEFAULT_PER_TOKEN
from .sampler import sample_queue


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="review", description="The human spot-check queue: sample, review, calibrate, release.")
    ap.add_argument("--db", default="corpus.duckdb", help="corpus file (default corpus.duckdb)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("sample", help="add a stratified sample (disputed items first) to the queue")
    s.add_argument("--size", type=int, required=True, help="items to add")
    s.add_argument("--population", choices=["auto", "accepted", "judged"], default="auto",
                   help="draw from accepted_sft, from every judged generation, or auto: accepted_sft when it has rows")
    s.add_argument("--rubric", help="only this rubric's scores define strata and disputes")
    s.add_argument("--buckets", type=int, default=4, help="score buckets per criterion (default 4)")
    s.add_argument("--threshold", type=float, default=0.5, help="overall score cut the filters use (default 0.5)")
    s.add_argument("--margin", type=float, default=0.05, help="|score - threshold| <= margin counts as disputed (default 0.05)")
    s.add_argument("--disputed-share", type=float, default=0.5, help="at most this share of the sample is disputed items (default 0.5)")
    s.add_argument("--seed", type=int, default=0)

    a = sub.add_parser("add-reviewer", help="register a reviewer and print a login token once")
    a.add_argument("name")
    a.add_argument("--rotate", action="store_true", help="issue a new token for an existing reviewer (old one stops working)")

    d = sub.add_parser("disable-reviewer", help="revoke a reviewer's token and sessions (verdicts stay)")
    d.add_argument("name")

    v = sub.add_parser("serve", help="serve the review page")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; put TLS in front for other hosts)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host header the page answers, e.g. review.example.org (repeat for more; *.example.org "
                        "for subdomains). Default: the --host address and localhost; other Host headers get 400")
    v.add_argument("--https", action="store_true",
                   help="reviewers reach the page over https (a TLS proxy in front): cookies are always Secure")
    v.add_argument("--trusted-proxy", action="append", metavar="ADDR",
                   help="a proxy address or network (e.g. 127.0.0.1, 10.0.0.0/8) whose X-Forwarded-For and "
                        "X-Forwarded-Proto are believed: https there makes cookies Secure; repeat for more")
    v.add_argument("--login-rate-per-address", default=DEFAULT_PER_ADDRESS, metavar="RATE",
                   help=f"login attempts allowed per client address (default {DEFAULT_PER_ADDRESS}); more get 429")
    v.add_argument("--login-rate-per-token", default=DEFAULT_PER_TOKEN, metavar="RATE",
                   help=f"failed logins allowed per token id from one client address (default {DEFAULT_PER_TOKEN}); "
                        "more get 429 there, while the same token from another address still works")

    n = sub.add_parser("next", help="review queued items in the terminal")
    n.add_argument("--reviewer", required=True, help="a name registered with add-reviewer")
    n.add_argument("--limit", type=int, help="stop after this many answers")

    r = sub.add_parser("report", help="judge-vs-human agreement and the approval rate")
    r.add_argument("--plot", type=Path, help="also draw the figures into this PNG")
    r.add_argument("--score-threshold", type=float,
                   help="binarize judge scores at this cut (stored; the judge reads the same figures)")
    r.add_argument("--confidence", type=float, default=0.95)

    g = sub.add_parser("release", help="release the filtered snapshot if the reviewed sample passes")
    g.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"the Wilson lower bound of the approval rate must reach this (default {DEFAULT_THRESHOLD})")
    g.add_argument("--min-reviews", type=int, default=DEFAULT_MIN_REVIEWS,
                   help=f"reviewed items of the snapshot needed (default {DEFAULT_MIN_REVIEWS})")
    g.add_argument("--confidence", type=float, default=0.95)
    g.add_argument("--auto", action="store_true", help="release without the gate, recorded as auto_released (no human checked)")
    for parser in sub.choices.values():  # `review sample --db X` works as well as `review --db X sample`
        parser.add_argument("--db", default=argparse.SUPPRESS, help="corpus file (default corpus.duckdb)")
    return ap


def _summary(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows.items():
        t.add_row(str(k), f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(t)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag in ("confidence",):
        val = getattr(args, flag, None)
        if val is not None and not 0 < val < 1:
            raise UserError(f"--confidence {val}: must be between 0 and 1, e.g. 0.95")
    if args.cmd == "report" and args.plot:  # before any work
        check_figure_out("--plot", args.plot)
    # a report that stores no threshold only reads: an archived corpus this user cannot write will do
    reads_only = args.cmd == "report" and args.score_threshold is None
    corpus = Corpus(args.db, create=False, read_only=reads_only)
    if args.cmd == "sample":
        res = sample_queue(corpus, args.size, args.population, args.buckets, args.threshold, args.margin,
                           args.disputed_share, args.seed, args.rubric)
        strata = res.pop("strata")
        _summary("review sample", {**res, **{f"stratum {k}": n for k, n in strata.items()}})
    elif args.cmd == "add-reviewer":
        token = add_reviewer(corpus, args.name, args.rotate)
        print(f"reviewer {args.name}: token (shown once, stored hashed):\n{token}")
    elif args.cmd == "disable-reviewer":
        disable_reviewer(corpus, args.name)
        print(f"reviewer {args.name}: disabled; `add-reviewer {args.name} --rotate` enables it with a new token")
    elif args.cmd == "serve":
        from .web import serve

        options = serve_options(args)
        _check_listen(args.host, args.port)
        scheme = "https" if args.https else "http"
        print(f"review page on {scheme}://{args.host}:{args.port}/ for Host {', '.join(options['allowed_hosts'])}"
              "  (Ctrl-C to stop)", flush=True)
        serve(args.db, args.host, args.port, **options)
    elif args.cmd == "next":
        from .terminal import review_in_terminal

        counts = review_in_terminal(corpus, args.reviewer, limit=args.limit)
        _summary("review next", counts)
    elif args.cmd == "report":
        if args.score_threshold is not None:
            set_score_threshold(corpus, args.score_threshold)
        rep = agreement_report(corpus, args.confidence)
        print_report(rep)
        if args.plot:
            print(f"wrote {plot_report(rep, args.plot)}")
    elif args.cmd == "release":
        if not 0 <= args.threshold <= 1:
            raise UserError(f"--threshold {args.threshold}: must be between 0 and 1")
        if args.min_reviews < 0:
            raise UserError(f"--min-reviews {args.min_reviews}: must be >= 0")
        res = release(corpus, args.threshold, args.min_reviews, args.auto, args.confidence)
        missing = res.pop("missing")
        _summary(f"review release: {res['decision']}", {k: v for k, v in res.items() if v is not None})
        if res["decision"] == "blocked":
            print("not released; missing:")
            for m in missing:
                print(f"  - {m}")
            return 1
    return 0


def serve_options(args: argparse.Namespace) -> dict:
    """create_app's options from the serve flags; a bad value is a one-line error."""
    import ipaddress

    from .security import LoginLimiter, allowed_hosts, parse_rate

    limiter = LoginLimiter(parse_rate("--login-rate-per-address", args.login_rate_per_address),
                           parse_rate("--login-rate-per-token", args.login_rate_per_token))
    for proxy in args.trusted_proxy or []:
        try:
            proxy == "*" or ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise UserError(f"--trusted-proxy {proxy}: give an IP address or network, e.g. 127.0.0.1 or 10.0.0.0/8") from None
    return {"allowed_hosts": allowed_hosts(args.host, args.allowed_host), "https": args.https,
            "trusted_proxies": args.trusted_proxy, "limiter": limiter}


def _check_listen(host: str, port: int) -> None:
    """A bad --port or --host is the user's to fix: say so in one line before the server starts."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: must be between 1 and 65535 (e.g. 8000)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve ({e.strerror}); use an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another port or stop what uses it") from None


def cli_parsers() -> dict[str, ArgumentParser]:
    """The parser of `python -m review`, for the generated CLI reference."""
    return {"python -m review": _parser()}
