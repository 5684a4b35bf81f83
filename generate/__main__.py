import sys

from corpus import run_cli

from .cli import main

if __name__ == "__main__":
    sys.exit(run_cli("generate", main))
