"""`npcadapt bench clients --quick`: one JSON line with every client's figures, measured
against the Python client in the same run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from system_packages import require_package

from npcadapt.bench.clients import BUILDERS

pytestmark = pytest.mark.timeout(600)


def test_bench_clients_reports_every_client_against_python(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "npcadapt.cli", "bench", "clients", "--quick"],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for name, skipped in result["skipped"].items():
        require_package(skipped["package"], False, f"the {name} client's toolchain")
    assert set(result["clients"]) == set(BUILDERS)
    for name, figures in result["clients"].items():
        assert figures["sequential_per_s"] > 0 and figures["pipelined_per_s"] > 0, name
        assert 0 < figures["p50_us"] <= figures["p99_us"], name
        assert figures["codec_us"] > 0, name
    python = result["clients"]["python"]
    for figures in result["clients"].values():  # ratios against the Python client of the same run
        assert figures["pipelined_vs_python"] == pytest.approx(figures["pipelined_per_s"] / python["pipelined_per_s"])
        assert figures["sequential_vs_python"] == pytest.approx(
            figures["sequential_per_s"] / python["sequential_per_s"]
        )
    assert set(result["targets"]) == {
        "cpp_codec_us_at_most_5",
        "csharp_codec_us_at_most_20",
        "godot_codec_us_at_most_200",
        "cpp_pipelined_within_2x_of_python",
    }
    assert all(isinstance(met, bool) for met in result["targets"].values())


def test_bench_clients_refuses_an_unknown_client():
    proc = subprocess.run(
        [sys.executable, "-m", "npcadapt.cli", "bench", "clients", "--clients", "python,lua"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "--clients: unknown ['lua']" in proc.stderr and "Traceback" not in proc.stderr
