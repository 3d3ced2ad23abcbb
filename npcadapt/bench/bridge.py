"""Benchmark of the socket bridge: round-trip latency and throughput over loopback.

The server is a real ``npcadapt serve`` subprocess (default settings: online adaptation
and recording on) on a fresh temporary data directory, so the load generated here never
shares its GIL; its torch intra-op threads are set with OMP_NUM_THREADS (default 1: on
a 2-core machine shared with the clients, torch's default of one thread per core makes
every forward wait for a busy core). The reference is a raw asyncio echo server
(``asyncio.Protocol`` writing back what it reads) in its own process, measured the same
way in the same run. Observations are float32 binary (what :mod:`npcadapt.client`
sends); archetype ``duelist`` (8 floats, 8 actions). Measuring starts once the server's
online trainer process is up (``trainer_start_wait_s``: how long the benchmark waited for
it once both servers were started). Phases, ``seconds_per_phase`` each:

- light load: one client, one blocking socket, sequential ``act`` round trips of the same
  prebuilt request bytes -> ``act_p50_ms``, ``act_p99_ms``; the echo server gets the
  same bytes the same way -> ``echo_p50_ms``, ``echo_p99_ms``, ``p99_ratio_vs_echo``.
  The light player has no adapter (the base policy answers); ``act_p50_ms_with_adapter``,
  ``act_p99_ms_with_adapter`` and ``p99_ratio_with_adapter_vs_echo`` repeat the measurement
  for a player holding one (given by one online update first), as a game's players would.
- ``single_row_decisions_per_s``: 64 connections (64 players), each keeping 16 single-row
  ``act`` requests in flight (prebuilt bytes; each reply sends the next request).
- ``batched_decisions_per_s``: 8 connections, each keeping 4 ``act_batch`` requests of
  64 rows (64 distinct players per request) in flight.
- ``act_p99_ms_while_training``: the light-load measurement again while the online trainer
  works through a backlog and nothing else talks to the server: first ``backlog_players``
  players (default 4,096) each play the server's ``episodes_per_update`` 4-step episodes
  (``act_batch`` of 256 rows, then one ``feedback`` notification with ``done`` per player),
  then the light load runs while the trainer updates them round after round (it starts
  during the filling: ``backlog_at_start`` players are still waiting when the measurement
  starts); ``training_updates`` counts the adapters installed during the measurement, and
  ``trainer_busy_throughout`` says whether players were still waiting for an update when
  it ended (so training never ran dry). The benchmark then waits for the backlog to drain.
- ``act_p99_ms_while_training_with_driver``: the light-load measurement while a driver
  process plays ``driver_players`` players' 4-step episodes (default 16; an ``act_batch``
  of them every 10 ms; after each episode's last reply one ``feedback`` notification per
  player with ``done``), so the trainer keeps updating adapters (every player every
  ``episodes_per_update`` episodes) while another client's requests share the two cores:
  ``driver_training_updates``. Then the same driver with the same players (now with
  adapters) without ``done`` (the same requests at the same cost, no episode ever
  completes, no training) gives ``act_p99_ms_same_load_no_training``, which separates the
  trainer's cost from the driver's requests. ``trainer`` says where the server trains
  (``serve --trainer``: a child process by default, or a thread).

Run ``npcadapt bench bridge [--seconds S] [--server-threads N] [--backlog-players N]
[--driver-players N] [--trainer process|thread] [--busy-poll-us U]``: one JSON line.

Over 450 lines: 46 of them are this docstring describing the phases; the rest is one benchmark's phases and their load generators."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import cast

import msgpack
import numpy as np

from ..errors import BenchmarkError

ARCHETYPE = "duelist"
OBS_DIM = 8
_READY = re.compile(r"bridge on [\d.]+:(\d+)")
# The episode driver of the training phases: 4-step episodes, a step per 10 ms.
DRIVER_STEPS, DRIVER_INTERVAL = 4, 0.01
BACKLOG_BATCH = 256  # rows per act_batch while filling the trainer's backlog


# -- request bytes --------------------------------------------------------------------------
def _obs(rng: np.random.Generator) -> bytes:
    return rng.random(OBS_DIM, dtype=np.float32).astype("<f4").tobytes()


def act_request(player: str, obs: bytes, msgid: int = 0) -> bytes:
    return msgpack.packb([0, msgid, "act", [ARCHETYPE, player, "npc", obs]], use_bin_type=True)


def act_batch_request(players: list[str], rng: np.random.Generator, msgid: int = 0) -> bytes:
    rows = [[p, "npc", _obs(rng)] for p in players]
    return msgpack.packb([0, msgid, "act_batch", [ARCHETYPE, rows]], use_bin_type=True)


def _feedback_notifications(players: list[str], rewards: np.ndarray, done: bool) -> bytes:
    return b"".join(msgpack.packb([2, "feedback", [p, "npc", float(r), done]]) for p, r in zip(players, rewards))


# -- processes ------------------------------------------------------------------------------
def start_server(
    data_dir: Path,
    *args: str,
    env: dict | None = None,
    timeout: float = 120.0,
    port: int = 0,
    stderr_path: Path | None = None,
) -> tuple[subprocess.Popen, int]:
    """`npcadapt serve --port PORT [args]` in a subprocess (port 0: any free one); returns it
    and the port it printed. Its stderr is appended to `stderr_path` (default: a file beside
    the data directory), whose tail the error names if it does not start."""
    cmd = [
        sys.executable,
        "-m",
        "npcadapt.cli",
        "serve",
        "--port",
        str(port),
        "--data",
        str(data_dir),
        "--seed",
        "0",
        *args,
    ]
    errors = stderr_path or data_dir.parent / "server-stderr.txt"
    with open(errors, "ab") as stderr:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=None if env is None else {**os.environ, **env}
        )
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None  # stdout=PIPE
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = _READY.search(line)
        if match:
            return proc, int(match.group(1))
    stop_process(proc)
    tail = errors.read_text(errors="replace")[-600:]
    raise BenchmarkError(
        f"npcadapt serve did not report a port within {timeout:.0f}s (port {port}, exit code {proc.poll()}): {tail}"
    )


def stop_process(proc: subprocess.Popen | mp.Process, timeout: float = 30.0) -> None:
    """SIGTERM (the server flushes and exits), then SIGKILL if it hangs."""
    if isinstance(proc, subprocess.Popen):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    else:
        proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _echo_server(ports: mp.Queue) -> None:
    """Child process: a raw asyncio echo server on a free loopback port."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


def start_echo(ctx) -> tuple[mp.Process, int]:
    ports = ctx.Queue()
    proc = ctx.Process(target=_echo_server, args=(ports,), daemon=True)
    proc.start()
    return proc, ports.get(timeout=120)


def _drive_episodes(port: int, players: int, steps: int, interval: float, finish: bool, ready, stop) -> None:
    """Child process: `players` NPC episodes of `steps` steps, one step per `interval` s.

    Each step is one ``act_batch`` of all players; after the last step's reply, one
    ``feedback`` notification per player carries the episode's reward. With `finish` it
    sets ``done`` (episodes complete and the online trainer updates adapters); without it
    no episode ever ends: the same load, no training. Sets `ready` after the first episode.
    """
    import socket

    rng = np.random.default_rng(1)
    names = [f"driver-{i}" for i in range(players)]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    unpacker = msgpack.Unpacker()
    while not stop.is_set():
        for step in range(steps):
            started = time.perf_counter()
            sock.sendall(act_batch_request(names, rng))
            while (reply := next(unpacker, None)) is None:
                unpacker.feed(_recv(sock, 1 << 20))
            if reply[2] is not None:
                raise BenchmarkError(f"driver act_batch failed: {reply[2]}")
            if step == steps - 1:  # sparse reward: one feedback per episode, after the last reply
                sock.sendall(_feedback_notifications(names, rng.random(players), finish))
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
        ready.set()
    sock.close()


def _recv(sock, size: int) -> bytes:
    """sock.recv that raises when the server closed the connection (instead of spinning on b"")."""
    data = sock.recv(size)
    if not data:
        raise BenchmarkError("the server closed the connection during the benchmark")
    return data


# -- measurements ------------------------------------------------------------------------
def round_trips(
    port: int,
    request: bytes,
    seconds: float,
    *,
    echo: bool,
    warmup: int = 200,
    max_calls: int = 50_000,
) -> np.ndarray:
    """Sequential round-trip times (s) of `request` on one blocking socket."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    unpacker = msgpack.Unpacker()
    size = len(request)
    times: list[float] = []

    def once() -> None:
        sock.sendall(request)
        if echo:
            got = 0
            while got < size:
                got += len(_recv(sock, 65536))
        else:
            while (reply := next(unpacker, None)) is None:
                unpacker.feed(_recv(sock, 65536))
            if reply[2] is not None:
                raise BenchmarkError(f"act failed during the benchmark: {reply[2]}")

    for _ in range(warmup):
        once()
    end = time.perf_counter() + seconds
    while len(times) < max_calls:
        start = time.perf_counter()
        once()
        now = time.perf_counter()
        times.append(now - start)
        if now > end:
            break
    sock.close()
    return np.asarray(times)


class _Pipeline(asyncio.Protocol):
    """Keeps `window` copies of one request in flight; each reply sends the next."""

    def __init__(self, request: bytes, window: int, tally: dict):
        self.request, self.window, self.tally = request, window, tally
        self.unpacker = msgpack.Unpacker()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's
        self.transport.write(self.request * self.window)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        n = 0
        for reply in self.unpacker:
            n += 1
            if reply[2] is not None:
                self.tally["errors"] += 1
        self.tally["replies"] += n
        if n and self.tally["running"]:
            self.transport.write(self.request * n)


async def _pipelined(port: int, requests: list[bytes], window: int, seconds: float, warmup: float = 0.5) -> float:
    """Replies per second with one connection per request, each keeping `window` in flight."""
    loop = asyncio.get_running_loop()
    tally = {"replies": 0, "errors": 0, "running": True}
    transports = []
    for request in requests:
        transport, _ = await loop.create_connection(partial(_Pipeline, request, window, tally), "127.0.0.1", port)
        transports.append(transport)
    await asyncio.sleep(warmup)
    start_count, start = tally["replies"], time.perf_counter()
    await asyncio.sleep(seconds)
    count, elapsed = tally["replies"] - start_count, time.perf_counter() - start
    tally["running"] = False
    for transport in transports:
        transport.close()
    if tally["errors"]:
        raise BenchmarkError(f"{tally['errors']} error replies during a throughput phase")
    return count / elapsed


def _stats(port: int) -> dict:
    from ..client import Client

    with Client(port=port) as client:
        return client.stats()


def wait_trainer_ready(port: int, timeout: float = 120.0) -> float:
    """Wait until the server's online trainer process is up (``stats().trainer_ready``): its
    start-up (importing torch, loading archetypes) would share the cores with the first
    phase. Returns the seconds waited."""
    start = time.perf_counter()
    while _stats(port).get("trainer_ready") is False:
        if time.perf_counter() - start > timeout:
            raise BenchmarkError(f"the server's online trainer was not ready within {timeout:.0f}s")
        time.sleep(0.05)
    return round(time.perf_counter() - start, 2)


def _ms(times: np.ndarray, q: float) -> float:
    return round(float(np.percentile(times, q)) * 1e3, 4)


def _ratio(times: np.ndarray, reference: np.ndarray) -> float:
    """p99 over the reference's p99."""
    return round(float(np.percentile(times, 99) / np.percentile(reference, 99)), 3)


def _fill_backlog(port: int, players: list[str], episodes: int, rng: np.random.Generator) -> None:
    """`episodes` completed 4-step episodes for every player, as fast as the server answers."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    unpacker = msgpack.Unpacker()
    chunks = [players[i : i + BACKLOG_BATCH] for i in range(0, len(players), BACKLOG_BATCH)]
    for _ in range(episodes):
        for chunk in chunks:
            for _ in range(DRIVER_STEPS):
                sock.sendall(act_batch_request(chunk, rng))
                while (reply := next(unpacker, None)) is None:
                    unpacker.feed(_recv(sock, 1 << 20))
                if reply[2] is not None:
                    raise BenchmarkError(f"act_batch failed while filling the backlog: {reply[2]}")
            sock.sendall(_feedback_notifications(chunk, rng.random(len(chunk)), True))
    sock.close()


def _give_adapter(port: int, player: str, timeout: float = 60.0) -> None:
    """Play `player` the episodes of one online update and wait for its adapter."""
    from ..client import Client
    from ..training.online import OnlineConfig

    _fill_backlog(port, [player], OnlineConfig().episodes_per_update, np.random.default_rng(3))
    deadline = time.monotonic() + timeout
    with Client(port=port) as client:
        while client.adapter_info(ARCHETYPE, player) is None:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"no adapter for {player!r} within {timeout:.0f}s")
            time.sleep(0.05)


def _light_while_training(port: int, request: bytes, seconds: float, players: int) -> tuple[np.ndarray, dict]:
    """Light-load round trips while the trainer works through `players` players' backlog
    (no other client traffic); returns the times and what the trainer did meanwhile."""
    from ..training.online import OnlineConfig

    episodes = OnlineConfig().episodes_per_update  # the server runs the default online settings
    _fill_backlog(port, [f"backlog-{i}" for i in range(players)], episodes, np.random.default_rng(2))
    before, start = _stats(port), time.perf_counter()
    times = round_trips(port, request, seconds, echo=False)
    after, elapsed = _stats(port), time.perf_counter() - start
    deadline = time.monotonic() + 600
    while _stats(port)["ready_players"] and time.monotonic() < deadline:  # drain before the next phase
        time.sleep(0.25)
    time.sleep(1.0)  # the last round's reply
    updates = after["updates"] - before["updates"]
    return times, {
        "updates": updates,
        "seconds": elapsed,
        "waiting": before["ready_players"],
        "busy": after["ready_players"] > 0,
    }


def _light_while_driving(
    ctx, port: int, request: bytes, seconds: float, finish: bool, players: int
) -> tuple[np.ndarray, dict]:
    """Light-load round trips while a driver process plays episodes; returns times and stat deltas."""
    ready, stop = ctx.Event(), ctx.Event()
    driver = ctx.Process(
        target=_drive_episodes,
        args=(port, players, DRIVER_STEPS, DRIVER_INTERVAL, finish, ready, stop),
        daemon=True,
    )
    driver.start()
    try:
        ready.wait(120)  # the driver process has started and played one episode
        time.sleep(1.5)  # more episodes complete; the trainer gets going
        before, start = _stats(port), time.perf_counter()
        times = round_trips(port, request, seconds, echo=False)
        after, elapsed = _stats(port), time.perf_counter() - start
    finally:
        stop.set()
        driver.join(10)
        if driver.is_alive():
            stop_process(driver)
    if driver.exitcode != 0:
        raise BenchmarkError(f"the episode driver failed (exit code {driver.exitcode})")
    delta = {k: after[k] - before[k] for k in ("updates", "feedback", "decisions")}
    return times, {**delta, "seconds": elapsed}


def run(
    seconds_per_phase: float = 3.0,
    *,
    server_threads: int | None = 1,
    backlog_players: int = 4096,
    driver_players: int = 16,
    trainer: str = "process",
    busy_poll_us: float = 0.0,
) -> dict:
    """Measure every figure (see the module docstring); about 14 x `seconds_per_phase` + start-up.

    `server_threads` sets OMP_NUM_THREADS (torch's intra-op threads) for the server
    process; None leaves torch's default (one per core). `backlog_players` sizes the
    trainer's backlog, `driver_players` the episode driver of the phases with another
    client; `trainer` and `busy_poll_us` are the server's ``--trainer`` and ``--busy-poll-us``.
    """
    rng = np.random.default_rng(0)
    ctx = mp.get_context("spawn")
    light = act_request("bench-light", _obs(rng))
    result: dict = {
        "benchmark": "bridge",
        "seconds_per_phase": seconds_per_phase,
        "server_threads": server_threads,
        "backlog_players": backlog_players,
        "driver_players": driver_players,
        "trainer": trainer,
        "busy_poll_us": busy_poll_us,
    }
    env = None if server_threads is None else {"OMP_NUM_THREADS": str(server_threads)}
    with tempfile.TemporaryDirectory(prefix="npcadapt-bench-bridge-") as tmp:
        server, port = start_server(
            Path(tmp) / "data", "--trainer", trainer, "--busy-poll-us", str(busy_poll_us), env=env
        )
        echo, echo_port = start_echo(ctx)
        try:
            result["trainer_start_wait_s"] = wait_trainer_ready(port)
            acts = round_trips(port, light, seconds_per_phase, echo=False)
            echoes = round_trips(echo_port, light, seconds_per_phase, echo=True)
            result.update(
                act_p50_ms=_ms(acts, 50),
                act_p99_ms=_ms(acts, 99),
                act_calls=len(acts),
                echo_p50_ms=_ms(echoes, 50),
                echo_p99_ms=_ms(echoes, 99),
                p99_ratio_vs_echo=_ratio(acts, echoes),
            )
            _give_adapter(port, "bench-adapted")
            adapted = round_trips(port, act_request("bench-adapted", _obs(rng)), seconds_per_phase, echo=False)
            result.update(
                act_p50_ms_with_adapter=_ms(adapted, 50),
                act_p99_ms_with_adapter=_ms(adapted, 99),
                p99_ratio_with_adapter_vs_echo=_ratio(adapted, echoes),
            )

            singles = [act_request(f"bench-single-{i}", _obs(rng)) for i in range(64)]
            result["single_row_decisions_per_s"] = round(asyncio.run(_pipelined(port, singles, 16, seconds_per_phase)))
            batches = [act_batch_request([f"bench-batch-{c}-{i}" for i in range(64)], rng) for c in range(8)]
            result["batched_decisions_per_s"] = round(64 * asyncio.run(_pipelined(port, batches, 4, seconds_per_phase)))

            trained, work = _light_while_training(port, light, seconds_per_phase, backlog_players)
            result.update(
                act_p50_ms_while_training=_ms(trained, 50),
                act_p99_ms_while_training=_ms(trained, 99),
                p99_ratio_training_vs_idle=_ratio(trained, acts),
                training_updates=work["updates"],
                training_updates_per_s=round(work["updates"] / work["seconds"], 1),
                backlog_at_start=work["waiting"],
                trainer_busy_throughout=work["busy"],
            )

            driven, drive = _light_while_driving(ctx, port, light, seconds_per_phase, True, driver_players)
            loaded, control = _light_while_driving(  # the same players, adapters and requests
                ctx, port, light, seconds_per_phase, False, driver_players
            )
            result.update(
                act_p99_ms_while_training_with_driver=_ms(driven, 99),
                p99_ratio_training_with_driver_vs_idle=_ratio(driven, acts),
                driver_training_updates=drive["updates"],
                driver_decisions_per_s=round(drive["decisions"] / drive["seconds"]),
                act_p99_ms_same_load_no_training=_ms(loaded, 99),
                p99_ratio_training_vs_same_load=_ratio(driven, loaded),
                control_updates=control["updates"],
            )
        finally:
            stop_process(echo)
            stop_process(server)
    return result
