"""The checks that keep the code as it is, run with the suite: ruff's lint and format check,
and mypy (strict on the core modules, basic elsewhere; configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["npcadapt", "sim", "tests", "scripts", "clients/python"]
pytestmark = pytest.mark.timeout(600)


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=580)


def test_ruff_lint_passes():
    proc = run("ruff", "check", "--no-cache", *PATHS)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_is_applied():
    proc = run("ruff", "format", "--check", "--no-cache", *PATHS)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_passes():
    proc = run("mypy")  # files, strictness per module: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout
