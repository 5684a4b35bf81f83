from corpus import run_cli

from .cli import main

raise SystemExit(run_cli("train", main))
