"""`npcadapt bench cluster --quick`: two real servers on a real redis-server; no update lost
or trained twice through a Redis outage and a server SIGKILL."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from system_packages import require_package

from npcadapt.bench import redis_server

pytestmark = pytest.mark.timeout(180)


def test_bench_cluster_quick():
    require_package(redis_server.PACKAGE, redis_server.have_redis_server(), "the Redis server")
    proc = subprocess.run(
        [sys.executable, "-m", "npcadapt.cli", "bench", "cluster", "--quick"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["lost_updates"] == 0, result
    assert result["double_trained"] == 0, result
    assert result["served_during_redis_outage"] > 0, result
    staleness = result["migration_staleness_ms_p99"]
    assert isinstance(staleness, float) and math.isfinite(staleness) and staleness > 0, result
    assert result["servers"] == 2 and result["decisions_per_s_1"] > 0 and result["decisions_per_s_n"] > 0
