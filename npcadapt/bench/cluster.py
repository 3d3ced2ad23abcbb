"""Benchmark of servers sharing one Redis adapter store: scaling, migration, outage, failover.

A real ``redis-server`` (npcadapt/bench/redis_server.py: a temporary directory, AOF with
``appendfsync always``, a free loopback port) and two real ``npcadapt serve --store
redis://...`` processes (A and B, each its own data directory; ``--episodes-per-update 2``
and a short ``--lease-ttl`` so adapters change often and a dead server's leases lapse
within the run). Simulated players: driver threads of this process, each playing a group of
``GROUP`` players' 4-step episodes (one ``act_batch`` of the group per step, then one
``feedback`` notification with ``done`` per player) on one server at a time. Phases:

- ``decisions_per_s_1``: every group on A alone for ``seconds``.
- ``decisions_per_s_n``: the groups move between A and B every ``MOVE_EVERY`` episodes for
  ``seconds`` (``servers`` = 2); ``scale_ratio`` = n / 1. Every process shares the
  machine's ``cores`` (with 2 cores the ratio stays near 1: the servers, their trainers,
  Redis and the players compete for the same two).
- ``migration_staleness_ms_p99``: then, with the groups paused (under that load the
  servers' trainers, at a lower priority, lag by seconds on 2 cores), a probe player plays
  only on A (B serves it once, so B has seen it). After each ``episodes_per_update``
  episodes the probe polls A's ``adapter_info`` until the version rises (when A installed
  it), then B's at ~1 ms until B reports that version: the time a player moving from A to
  B could still be served the older adapter (``migration_samples`` of them).
- ``redis_cold_load_p99_ms``: in this process, a :class:`~npcadapt.store_redis.RedisAdapterStore`
  saves ``COLD_ADAPTERS`` reference-size adapters (under its own key prefix), then a fresh
  store loads each once (validated, as a server's cold load): the p99 of those loads.
- ``served_during_redis_outage``: players stop moving; Redis is SIGKILLed for
  ``OUTAGE_S`` s while they keep acting on the players the servers hold: decisions served
  meanwhile, ``outage_errors`` by error code. Redis restarts on the same port and AOF;
  ``store_reachable_again_s`` is how long until both servers report ``store_reachable``.
- failover: players move again; after ``seconds`` / 3, B is flushed, then SIGKILLed
  mid-load; its groups move to A for another ``seconds`` / 3 (``server_killed``).

The checks (both must be 0):

- ``lost_updates``: players whose version in Redis at the end is lower than a version that
  was acknowledged: one a server reported (``adapter_info``) right after a ``flush`` of it
  succeeded (a flush returns once the server's writes are stored; taken for A and B after
  phase 2, for B just before its kill and for A at the end), or one Redis announced on its
  changes channel (a save that succeeded). Updates a killed server trained but had not
  written are not acknowledged (lost with it by design, see :mod:`npcadapt.lease`).
- ``double_trained``: announced saves, per player in Redis's own order, whose version is not
  above the player's last announced one. A version is one training turn on top of the
  stored version before it, so two servers storing the same version number (or one
  storing an older after a newer) means one turn was trained twice, or over a newer one.
  The store's compare-and-set should refuse that (refusals: ``store_conflicts``); this
  checks it end to end from what Redis published (a subscriber of this process that
  resubscribes after the outage).

Also reported, not checks: ``store_conflicts`` (writes the compare-and-set refused) and the
servers' ``episodes_forwarded`` / ``forwarded_trained`` (B's as of just before its kill).
``forwarded_trained`` counts forwarded episodes each time a training round reads them; a
round whose result is not stored (lease moved, update not accepted) leaves them unconsumed
(``forwarded_upto`` does not move) and the next round reads them again, so it may exceed
``episodes_forwarded`` without any version being trained twice.

Run ``npcadapt bench cluster [--quick] [--seconds S]``: one JSON line.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import redis
import torch

from ..adapter_meta import AdapterMeta, AdapterSpec
from ..client import Client
from ..errors import BenchmarkError, ConnectionLostError, RemoteError
from ..store_redis import RedisAdapterStore
from .bridge import ARCHETYPE, OBS_DIM, _stats
from .redis_server import RedisServer
from .soak_faults import ServerProcess
from .store import RANK, SHAPES

STEPS = 4  # steps per episode
MOVE_EVERY = 2  # episodes a group plays on one server before moving
GROUP = 8  # players per driver thread
EPISODES_PER_UPDATE = 2
LEASE_TTL = 2.0
OUTAGE_S = 1.5
COLD_ADAPTERS = 500
PREFIX = "npcadapt"  # the servers' key prefix (the store's default)


def _p99_ms(samples_s: list[float]) -> float:
    return float(np.percentile(np.asarray(samples_s) * 1e3, 99)) if samples_s else float("nan")


class _Players:
    """Driver threads playing `players` players in groups on the servers in `self.ports`."""

    def __init__(self, players: int, ports: list[int]) -> None:
        self.names = [f"player-{i:03d}" for i in range(players)]
        self.groups = [self.names[i : i + GROUP] for i in range(0, players, GROUP)]
        self.ports = list(ports)  # where groups may play now (the controller replaces the list)
        self.moving = True
        self.paused = False  # while set, no group starts an episode
        self.stop = threading.Event()
        self.decisions = 0
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._drive, args=(i, g), daemon=True) for i, g in enumerate(self.groups)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def snapshot(self) -> tuple[int, Counter[str]]:
        with self.lock:
            return self.decisions, Counter(self.errors)

    def _drive(self, index: int, group: list[str]) -> None:
        rng = np.random.default_rng(index)
        clients: dict[int, Client] = {}
        episode, port = 0, 0
        try:
            while not self.stop.is_set():
                if self.paused:
                    time.sleep(0.01)
                    continue
                ports = self.ports
                if self.moving or port not in ports:
                    port = ports[(episode // MOVE_EVERY + index) % len(ports)]
                client = clients.get(port) or clients.setdefault(port, Client(port=port, timeout=10))
                try:
                    actions = []
                    for _ in range(STEPS):
                        obs = rng.random((len(group), OBS_DIM), dtype=np.float32)
                        replies = client.act_batch(ARCHETYPE, [[p, "npc", o] for p, o in zip(group, obs)])
                        actions.append([r["action"] for r in replies])
                        with self.lock:
                            self.decisions += len(replies)
                    for j, player in enumerate(group):
                        reward = float(np.mean([a[j] == j % 4 for a in actions]))
                        client.feedback(player, "npc", reward, done=True)
                except RemoteError as exc:
                    with self.lock:
                        self.errors[str(exc.code)] += 1
                    time.sleep(0.02)
                except (ConnectionLostError, OSError):
                    with self.lock:
                        self.errors["connection"] += 1
                    clients.pop(port).close()
                    time.sleep(0.05)
                episode += 1
        finally:
            for c in clients.values():
                c.close()


class _Announcements:
    """Subscriber of the store's changes channel: each player's announced versions in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.versions: dict[str, list[int]] = defaultdict(list)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise BenchmarkError("could not subscribe to the Redis changes channel")

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=0.5) as r:
                    pubsub = r.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(f"{PREFIX}:changes")
                    self.ready.set()
                    while not self.stop.is_set():
                        message = pubsub.get_message(timeout=0.2)
                        if message is not None:
                            _origin, _arch, player, version = msgpack.unpackb(message["data"], raw=False)
                            if version >= 0:
                                self.versions[player].append(int(version))
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def double_trained(self) -> int:
        bad = 0
        for versions in list(self.versions.values()):
            for before, after in itertools.pairwise(versions):
                bad += after <= before
        return bad

    def highest(self, player: str) -> int:
        return max(self.versions.get(player, ()), default=0)


def _cold_load_p99_ms(url: str, count: int) -> float:
    """Save `count` adapters through one store, load each once through a fresh one: p99 ms."""
    spec = AdapterSpec(ARCHETYPE, "bench-base", RANK, SHAPES)
    gen = torch.Generator().manual_seed(0)
    now = time.time()
    with closing(RedisAdapterStore(url, prefix="coldbench")) as writer:
        for i in range(count):
            tensors = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}
            writer.save(
                tensors, AdapterMeta(ARCHETYPE, f"cold-{i}", "bench-base", RANK, 16.0, False, 1, 1, now, now, "float32")
            )
    samples = []
    with closing(RedisAdapterStore(url, prefix="coldbench")) as reader:
        for i in range(count):
            t = time.perf_counter()
            if reader.load(spec, f"cold-{i}") is None:
                raise BenchmarkError(f"cold load: adapter cold-{i} missing from Redis")
            samples.append(time.perf_counter() - t)
    return _p99_ms(samples)


def _version(client: Client, player: str) -> int:
    info = client.adapter_info(ARCHETYPE, player)
    return 0 if info is None else int(info["version"])


def _wait_version(client: Client, player: str, at_least: int, timeout: float = 10.0) -> int | None:
    """Poll `client` every ~1 ms until it reports `player` at version `at_least` or above:
    that version, or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (version := _version(client, player)) < at_least:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)
    return version


class _Probe:
    """One player trained on A; after each new version on A, how long until B reports it."""

    def __init__(self, port_a: int, port_b: int) -> None:
        self.a, self.b = Client(port=port_a, timeout=10), Client(port=port_b, timeout=10)
        self.samples: list[float] = []
        self.timeouts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(99)
        player = "probe"
        obs = rng.random(OBS_DIM, dtype=np.float32)
        self.b.act_batch(ARCHETYPE, [[player, "npc", obs]])  # B has served the player once
        version = 0
        while not self.stop.is_set():
            for _ in range(EPISODES_PER_UPDATE):
                for _ in range(STEPS):
                    self.a.act_batch(ARCHETYPE, [[player, "npc", rng.random(OBS_DIM, dtype=np.float32)]])
                self.a.feedback(player, "npc", 1.0, done=True)
            new = _wait_version(self.a, player, version + 1)
            if new is None:
                self.timeouts += 1
                continue
            version, seen = new, time.perf_counter()
            if _wait_version(self.b, player, version) is None:
                self.timeouts += 1
            else:
                self.samples.append(time.perf_counter() - seen)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.a.close()
        self.b.close()


def _acknowledged(port: int, players: list[str], into: dict[str, int]) -> None:
    """Flush the server, then record the versions it reports (acknowledged: stored)."""
    with Client(port=port, timeout=30) as client:
        client.flush()
        infos = client.call_many([("adapter_info", [ARCHETYPE, p]) for p in players])
    for player, info in zip(players, infos):
        if info is not None:
            into[player] = max(into.get(player, 0), int(info["version"]))


def _wait_reachable(ports: list[int], timeout: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(_stats(p).get("store_reachable") for p in ports):
            return time.monotonic() - start
        time.sleep(0.05)
    raise BenchmarkError(f"servers did not report store_reachable within {timeout:g} s of Redis's restart")


def _measure(players: _Players, seconds: float) -> float:
    before, t0 = players.snapshot()[0], time.perf_counter()
    time.sleep(seconds)
    return (players.snapshot()[0] - before) / (time.perf_counter() - t0)


def run(seconds: float = 8.0, players: int = 48, quick: bool = False) -> dict[str, Any]:
    """The phases of the module docstring; `quick`: 2.5 s phases, 16 players, fewer cold loads."""
    if quick:
        seconds, players = min(seconds, 2.5), min(players, 16)
    if not (seconds > 0 and players >= 1):
        raise BenchmarkError(f"bench cluster: --seconds must be > 0 and players >= 1, got {seconds}, {players}")
    env = {"OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="npcadapt-bench-cluster-") as tmp:
        root = Path(tmp)
        store = RedisServer(root / "redis")
        servers: list[ServerProcess] = []
        try:
            cold_p99 = _cold_load_p99_ms(store.url, 100 if quick else COLD_ADAPTERS)
            announced = _Announcements(store.url)
            args = [
                "--store",
                store.url,
                "--lease-ttl",
                str(LEASE_TTL),
                "--episodes-per-update",
                str(EPISODES_PER_UPDATE),
            ]
            for name in ("a", "b"):
                (root / name).mkdir()
                servers.append(ServerProcess(root / name / "data", root / name, args, env=env))
            port_a, port_b = (server.start() for server in servers)
            crowd = _Players(players, [port_a])
            crowd.start()
            time.sleep(1.0)  # connections open, first adapters loaded
            per_s_1 = _measure(crowd, seconds)

            crowd.ports = [port_a, port_b]
            per_s_n = _measure(crowd, seconds)
            crowd.paused = True  # the probe alone: under full load the starved trainers lag by seconds
            time.sleep(0.5)
            probe = _Probe(port_a, port_b)
            probe.thread.start()
            deadline = time.monotonic() + 15
            while len(probe.samples) < (3 if quick else 10) and time.monotonic() < deadline:
                time.sleep(0.1)
            probe.close()
            crowd.paused = False

            acked: dict[str, int] = {}
            for port in (port_a, port_b):
                _acknowledged(port, crowd.names, acked)

            crowd.moving = False  # through the outage every player stays where it is cached
            time.sleep(0.5)
            served_before, errors_before = crowd.snapshot()
            store.kill()
            time.sleep(OUTAGE_S)
            served_after, errors_after = crowd.snapshot()
            store.start()
            reachable_s = _wait_reachable([port_a, port_b])
            crowd.moving = True

            time.sleep(seconds / 3)
            _acknowledged(port_b, crowd.names, acked)
            stats_b = _stats(port_b)
            time.sleep(0.3)
            servers[1].kill()  # SIGKILL mid-load
            crowd.ports = [port_a]
            time.sleep(seconds / 3)
            crowd.close()
            _acknowledged(port_a, crowd.names, acked)
            stats_a = _stats(port_a)
            time.sleep(0.3)  # the last announcements reach the subscriber
            announced.close()

            with closing(RedisAdapterStore(store.url)) as reader:
                stored = {p: (m.version if (m := reader.read_meta(ARCHETYPE, p)) else 0) for p in crowd.names}
            lost = sum(stored[p] < max(acked.get(p, 0), announced.highest(p)) for p in crowd.names)
            final_errors = crowd.snapshot()[1]
        finally:
            for server in servers:
                server.stop()
            store.kill()
    summed = {
        k: stats_a.get(k, 0) + stats_b.get(k, 0) for k in ("store_conflicts", "forwarded_trained", "episodes_forwarded")
    }
    return {
        "decisions_per_s_1": round(per_s_1, 1),
        "decisions_per_s_n": round(per_s_n, 1),
        "scale_ratio": round(per_s_n / per_s_1, 3) if per_s_1 else None,
        "migration_staleness_ms_p99": round(_p99_ms(probe.samples), 2),
        "migration_samples": len(probe.samples),
        "migration_timeouts": probe.timeouts,
        "redis_cold_load_p99_ms": round(cold_p99, 3),
        "lost_updates": lost,
        "double_trained": announced.double_trained(),
        "served_during_redis_outage": served_after - served_before,
        "outage_s": OUTAGE_S,
        "outage_errors": dict(errors_after - errors_before),
        "store_reachable_again_s": round(reachable_s, 3),
        "server_killed": "b",
        "updates_stored": sum(stored.values()),
        **summed,
        "client_errors": dict(final_errors),
        "servers": 2,
        "players": players,
        "seconds": seconds,
        "cores": os.cpu_count(),
    }
