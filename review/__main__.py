import sys

from corpus import run_cli

from .cli import main

sys.exit(run_cli("review", main))
