"""A real ``redis-server`` on a free loopback port for the tests, killed by its pid
(npcadapt/bench/redis_server.py, shared with `npcadapt bench cluster`).

The server appends to an AOF in its own directory (``appendfsync always``, no RDB
snapshots), so a test can kill it and start it again on the same port and data, as a
restarted Redis would come back. Without the executable the test skips (fails in CI),
naming the Debian package.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from system_packages import require_package

from npcadapt.bench import redis_server
from npcadapt.bench.redis_server import free_port

__all__ = ["RedisServer", "free_port", "wait_for"]

_T = TypeVar("_T")


def wait_for(check: Callable[[], _T], timeout: float = 5.0, what: str = "condition") -> _T:
    """Poll `check()` until it is truthy (returned); AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout:g} s")


class RedisServer(redis_server.RedisServer):
    """One redis-server process; `stop()` / `kill()` / `start()` again on the same port and directory."""

    def __init__(self, directory: Path, port: int | None = None):
        require_package(redis_server.PACKAGE, redis_server.have_redis_server(), "the Redis server")
        super().__init__(directory, port)
