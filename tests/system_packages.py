"""Tests that need a Debian package: skip naming it, or fail in CI.

`scripts/setup.sh` installs the packages when it runs as root; `.ci/run` sets
NPCADAPT_REQUIRE_SYSTEM_PACKAGES=1, so there a missing package fails the test instead of
skipping it (a skipped engine-client test must not let CI pass).
"""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("NPCADAPT_REQUIRE_SYSTEM_PACKAGES") == "1"


def require_package(package: str, present: bool, what: str) -> None:
    """Skip (or fail, in CI) when `present` is false: `what` says what is missing, from Debian `package`."""
    if present:
        return
    message = f"needs Debian package {package} ({what}; scripts/setup.sh installs it when run as root)"
    if STRICT:
        pytest.fail(message)
    pytest.skip(message)
