"""The soak benchmark's machinery around the server: its process, its memory, the faults.

- :class:`ServerProcess`: ``npcadapt serve`` as a subprocess on one data directory,
  started, killed with SIGKILL and started again on the same port (``incarnation`` counts).
- :func:`trainer_pid`: the online trainer child of a server, found through ``/proc``.
- :class:`RssSampler`: the server's VmRSS from ``/proc/PID/status`` every ``interval`` s.
- :class:`DiskFull`: the data directory's filesystem filling up. Preferred: the data
  directory is a tmpfs of ``size_mb`` and a filler file takes all its free space during the
  window. Where mounting is impossible (not root, no tmpfs), the write failure is injected
  at the file layer instead: the server's RLIMIT_FSIZE is set to 0 with ``prlimit`` for the
  window, so every write that extends a file fails with EFBIG ("File too large"; CPython
  ignores SIGXFSZ) -- the same code paths as ENOSPC, a different errno.
- :func:`verify_acknowledged`: what successful flushes acknowledged, checked against the
  files of the data directory (adapter versions, interaction-log records).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import BenchmarkError
from .bridge import start_server

DISK_FULL_TEXT = re.compile(r"ENOSPC|EFBIG|disk full|no space|file too large", re.IGNORECASE)


# -- /proc ------------------------------------------------------------------------------------
def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's ``children`` file)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    kids += [int(p) for p in fh.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    except FileNotFoundError:
        return []
    return kids


def trainer_pid(server_pid: int) -> int | None:
    """The server's online trainer child (``python -c ... trainer_process ...``), or None."""
    for pid in child_pids(server_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"trainer_process" in fh.read():
                    return pid
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


# -- the server --------------------------------------------------------------------------------
class ServerProcess:
    """``npcadapt serve`` on `data_dir`; restartable on the same port after a SIGKILL."""

    def __init__(self, data_dir: Path, log_dir: Path, args: list[str], env: dict | None = None):
        self.data_dir, self.log_dir, self.args, self.env = data_dir, log_dir, args, env
        self.proc: subprocess.Popen | None = None
        self.port = 0  # 0 until the first start picks one
        self.incarnation = -1  # 0 for the first start, +1 per restart
        self.started_at: list[float] = []  # time.time() of each start's "listening" line
        self.kills = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 120.0) -> int:
        """Start (again) on the same data directory; the same port when it is free. Returns the port."""
        self.incarnation += 1
        ports = [self.port, 0] if self.port else [0]
        last = ""
        for port in ports:
            try:
                return self._start(port, timeout)
            except RuntimeError as exc:  # e.g. the port was taken meanwhile: a new one
                last = str(exc)
        raise BenchmarkError(last)

    def _start(self, port: int, timeout: float) -> int:
        self.proc, self.port = start_server(
            self.data_dir,
            *self.args,
            env=self.env,
            timeout=timeout,
            port=port,
            stderr_path=self.log_dir / f"server-{self.incarnation}.stderr",
        )
        self.started_at.append(time.time())
        return self.port

    def kill(self) -> int | None:
        """SIGKILL the server and wait for it; its trainer child exits on its own (its input
        closes) and is killed here if it has not within 10 s. Returns the old trainer pid."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        trainer = trainer_pid(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1
        if trainer is not None:
            deadline = time.monotonic() + 10
            while _alive(trainer) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(trainer):
                os.kill(trainer, signal.SIGKILL)
        return trainer

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (flush and exit), SIGKILL if it hangs; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# -- memory ------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """(time.time(), incarnation, VmRSS KiB) of the current server every `interval` s."""

    def __init__(self, interval: float = 0.5):
        super().__init__(name="soak-rss", daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self.target: tuple[int, int] | None = None  # (pid, incarnation)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            target = self.target
            if target is not None and (kb := rss_kb(target[0])) is not None:
                self.samples.append((time.time(), target[1], kb))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)


# -- the disk filling up -----------------------------------------------------------------------
@dataclass
class DiskFull:
    """Fill the data directory's filesystem (tmpfs) or fail its writes (RLIMIT_FSIZE)."""

    mode: str = "auto"  # auto (tmpfs if it mounts, else rlimit), tmpfs, rlimit
    size_mb: int = 256
    reason: str | None = None  # why the tmpfs was not used, when it was not
    mountpoint: Path | None = None
    filler_bytes: int = 0
    windows: list[tuple[float, float]] = field(default_factory=list)  # time.time() of fill, free
    _filled_at: float | None = None
    _limit: tuple[int, int] | None = None

    def prepare(self, root: Path) -> Path:
        """The data directory: a fresh tmpfs mount under `root`, or a plain directory."""
        data = root / "data"
        data.mkdir()
        if self.mode in ("auto", "tmpfs"):
            try:
                out = subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs", str(data)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                if out.returncode == 0:
                    self.mode, self.mountpoint = "tmpfs", data
                    return data
                self.reason = f"mount -t tmpfs failed: {(out.stderr or out.stdout).strip() or out.returncode}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.reason = f"mount -t tmpfs failed: {exc}"
            if self.mode == "tmpfs":
                raise BenchmarkError(self.reason)
        else:
            self.reason = "rlimit requested (--disk-full rlimit)"
        self.mode = "rlimit"
        return data

    def fill(self, server_pid: int | None) -> None:
        """Start the window: no write that extends a file succeeds until :meth:`free`."""
        if self.mode == "tmpfs":
            mountpoint = cast(Path, self.mountpoint)  # prepare() sets mode "tmpfs" with it, cleanup() comes after
            path = mountpoint / "soak-filler.bin"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                st = os.statvfs(mountpoint)
                try:
                    os.posix_fallocate(fd, 0, max(st.f_bavail * st.f_frsize, 1))
                except OSError:
                    pass  # (fallocate refused: the writes below do it)
                os.lseek(fd, 0, os.SEEK_END)
                chunk = bytes(1 << 20)
                while len(chunk) >= 512:  # until not one block is left
                    try:
                        os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        chunk = chunk[: len(chunk) // 2]
            finally:
                os.close(fd)
            self.filler_bytes = path.stat().st_size
        elif server_pid is not None:
            self._limit = resource.prlimit(server_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(server_pid, resource.RLIMIT_FSIZE, (0, self._limit[1]))
        self._filled_at = time.time()

    def free(self, server_pid: int | None) -> None:
        """End the window."""
        if self._filled_at is None:
            return
        if self.mode == "tmpfs":
            (cast(Path, self.mountpoint) / "soak-filler.bin").unlink(missing_ok=True)  # set with mode "tmpfs"
        elif server_pid is not None and self._limit is not None:
            try:
                resource.prlimit(server_pid, resource.RLIMIT_FSIZE, self._limit)
            except ProcessLookupError:
                pass
        self.windows.append((self._filled_at, time.time()))
        self._filled_at = None

    def cleanup(self) -> str | None:
        """Unmount the tmpfs (the server must be gone); returns an error text, or None."""
        if self.mountpoint is None:
            return None
        for _ in range(20):
            out = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True)
            if out.returncode == 0:
                self.mountpoint = None
                return None
            time.sleep(0.25)
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        self.mountpoint = None
        return f"umount failed ({out.stderr.strip()}); lazily unmounted"


# -- what was acknowledged ---------------------------------------------------------------------
def verify_acknowledged(
    data_dir: Path,
    archetype: str,
    versions: dict[str, int],
    decisions: dict[tuple[str, str], int],
    feedback: dict[tuple[str, str], int],
) -> dict:
    """Check the data directory (no server running on it) against what flushes acknowledged.

    `versions`: player -> the adapter version adapter_info reported before a successful
    flush (0 after a reset); `decisions` / `feedback`: (player, npc) -> decisions and
    feedback items answered before a successful flush. Returns the counts, and the
    shortfalls in ``lost`` (player or (player, npc) entries missing something)."""
    from ..log import read_records
    from ..store import AdapterStore

    corrupt: list[str] = []
    logged_decisions: Counter = Counter()
    logged_feedback: Counter = Counter()
    for rec in read_records(data_dir / "logs", on_corrupt=lambda bad: corrupt.append(bad.reason)):
        if rec.get("t") == "decisions":
            logged_decisions.update(zip(rec["players"], rec["npcs"]))
        elif rec.get("t") == "feedback":
            logged_feedback.update(zip(rec["players"], rec["npcs"]))
    store = AdapterStore(data_dir)
    lost: list[dict] = []
    for player, version in versions.items():
        if version <= 0:
            continue
        meta = store.read_meta(archetype, player)
        found = 0 if meta is None else meta.version
        if found < version:
            lost.append({"player": player, "adapter_version_acknowledged": version, "found": found})
    for what, acked, logged in (("decisions", decisions, logged_decisions), ("feedback", feedback, logged_feedback)):
        for key, count in acked.items():
            if logged[key] < count:
                lost.append({"player": key[0], "npc": key[1], f"{what}_acknowledged": count, "in_log": logged[key]})
    return {
        "players_checked": sum(v > 0 for v in versions.values()),
        "episodes_checked": len(decisions),
        "decisions_acknowledged": sum(decisions.values()),
        "decisions_in_log": sum(logged_decisions.values()),
        "feedback_acknowledged": sum(feedback.values()),
        "feedback_in_log": sum(logged_feedback.values()),
        "corrupt_log_records": len(corrupt),
        "lost": lost,
    }
