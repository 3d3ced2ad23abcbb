"""A real ``redis-server`` on a free loopback port, killed by its pid (benchmarks and tests).

The server appends to an AOF in its own directory (``appendfsync always``, no RDB
snapshots), so a caller can kill it and start it again on the same port and data, as a
restarted Redis would come back. Without the ``redis-server`` executable (Debian package
``redis-server``) it raises BenchmarkError naming the package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from ..errors import BenchmarkError
from .bridge import stop_process

PACKAGE = "redis-server"  # the Debian package with the executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """One redis-server process; `stop()` / `kill()` / `start()` again on the same port and directory."""

    def __init__(self, directory: Path, port: int | None = None):
        if not have_redis_server():
            raise BenchmarkError(
                f"redis-server not found on PATH: install the Debian package {PACKAGE} "
                "(scripts/setup.sh does when run as root)"
            )
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        cmd = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-800:]
                raise BenchmarkError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except (redis.exceptions.BusyLoadingError, redis.ConnectionError):
                pass
            time.sleep(0.02)
        self.kill()
        raise BenchmarkError(f"redis-server did not answer on port {self.port} within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (Redis finishes its AOF and exits), SIGKILL if it hangs."""
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        self.proc = None
