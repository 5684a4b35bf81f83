"""In CI the sandbox must start: `scripts/setup.sh --dev` installs bubblewrap, and the sandbox and
red-team suites skip themselves where it cannot start, which would otherwise hide a broken sandbox."""

from __future__ import annotations

import os

import pytest

from judge.sandbox import sandbox_status


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI promises bubblewrap (scripts/setup.sh --dev)")
def test_the_bwrap_sandbox_starts_in_ci():
    mode, why = sandbox_status()
    assert mode is not None, f"the code_exec sandbox cannot start in CI: {why}"
