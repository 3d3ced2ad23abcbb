"""``npcadapt bench soak``: the bridge under good load, hostile connections and injected faults.

A real ``npcadapt serve`` subprocess (``--token`` by default, ``--input-budget-mb``
small enough that the budget binds, one torch thread) on a fresh data directory on a
loopback port. For ``minutes`` (T):

- **Good load** (this process, one event loop, :mod:`.soak_clients`): ``clients``
  connections, each owning ``players_per_client`` players: act, act_batch, feedback
  requests ending episodes, adapter_info, reset_player and acknowledged flushes.
- **The good client** (its own process): a single-row ``act`` round trip every
  1/``good_client_hz`` s. ``good_client_p99_ms``: its p99 in the first 15% of T (the same
  good load, no attack, no fault); ``good_client_p99_ms_under_attack``: from 0.15 T to
  the end, without the seconds from each server kill until 2 s after the restarted
  server listens (a dead server has no latency); ``good_client_p99_ratio``: the second
  over the first.
- **Hostile connections** (their own process at nice 10, :mod:`.soak_hostile`) from 0.15 T
  to the end; ``hostile_kinds`` picks some kinds (an empty list: a control run without).
  ``good_client_p99_ms_while_kind_open``: the good client's p99 under attack while a
  connection of each kind was open, and while none of that kind was.
- **Faults**: the trainer child killed with SIGKILL at jittered times between 0.15 T and
  0.9 T (``trainer_kills``; ``trainer_restarts`` is what the servers' stats counted);
  the server killed with SIGKILL and started again on the same data directory and port
  ``server_kills`` times between 0.20 T and 0.32 T; the data directory's filesystem full
  from 0.36 T to 0.46 T (:class:`.soak_faults.DiskFull`).
- **Acknowledged data**: after each server kill (server down) and after the final
  SIGTERM, the data directory is checked against every flush acknowledged so far
  (:func:`.soak_faults.verify_acknowledged`): ``acknowledged_flushes_lost`` counts the
  adapters and (player, npc) log entries short of what was acknowledged.
- **Memory**: the server's VmRSS every 0.5 s. ``idle_footprint_mb``: a fresh idle
  server's RSS (trainer up, no client). Before T starts, the good load alone plays for
  ``warmup_s`` (default 45 s: RSS levels off after about 45 s of this load) and
  ``model_footprint_mb`` is the median RSS over its last 10 s: the served model with
  its players' state (resident adapters, episodes in flight, trainer rounds) and no
  attack; ``rss_good_load_only_max_mb``: the most before the attack. ``rss_growth_last_half_pct``: RSS at the end over RSS at T/2 (the final server
  run covers the whole last half; means of 4 samples). Output buffers are bounded
  per connection (8 MiB of unread replies, 64 KiB before auth) but not in total, so the
  RSS bound allows for the soak's worst case: ``output_allowance_mb`` = 2 concurrent
  authenticated slow readers x 8 MiB + every other hostile connection x 64 KiB.

Prints one JSON line; ``targets`` says which goals were met.

Over 450 lines: 38 of them are this docstring describing the workload; the rest is the schedule and the report of one benchmark (its clients, hostile connections and faults are in their own modules)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import secrets
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import cast

import numpy as np

from ..client import AsyncClient, Client
from ..errors import BenchmarkError
from .soak_clients import Load, call, connect, good_client_main, good_worker
from .soak_faults import DiskFull, RssSampler, ServerProcess, rss_kb, trainer_pid, verify_acknowledged
from .soak_hostile import CAPS, hostile_main

ATTACK_AT = 0.15  # fraction of the run without attack: the good client's reference p99
SERVER_KILLS_SPAN = (0.20, 0.32)
DISK_FULL_SPAN = (0.36, 0.46)
RESTART_SETTLE = 2.0  # s after a restarted server listens that the attack p99 leaves out
MAX_OUTPUT_BUFFER_MB = 8.0  # ServerConfig.max_output_buffer
PRE_AUTH_MB = 64 / 1024  # ServerConfig.pre_auth_max_bytes
SERVER_SUMS = (
    "requests",
    "notifications",
    "errors",
    "protocol_errors",
    "auth_failures",
    "overloaded",
    "budget_pauses",
    "budget_shed",
    "connections_total",
    "connections_refused",
    "decisions",
    "feedback",
    "updates",
    "trainer_restarts",
    "log_flush_errors",
    "writeback_failures",
    "writeback_written",
)


def run(
    minutes: float = 3.0,
    *,
    clients: int = 200,
    seed: int = 0,
    token: bool = True,
    players_per_client: int = 4,
    think_ms: float = 100.0,
    server_kills: int = 2,
    trainer_kills: int | None = None,
    disk_full: str = "auto",
    tmpfs_mb: int = 256,
    input_budget_mb: float = 16.0,
    hostile_rate: float = 15.0,
    hostile_concurrency: int = 40,
    good_client_hz: float = 100.0,
    hostile_kinds: list[str] | None = None,
    warmup_s: float = 45.0,
    out: str | None = None,
) -> dict:
    """Run the soak (see the module docstring); returns the result dict (also written to `out`)."""
    began = time.perf_counter()
    soak_s = minutes * 60.0
    if trainer_kills is None:
        trainer_kills = max(3, round(soak_s / 15))
    secret = secrets.token_hex(8) if token else None
    ctx = mp.get_context("spawn")
    result: dict = {
        "benchmark": "soak",
        "minutes": minutes,
        "clients": clients,
        "players": clients * players_per_client,
        "seed": seed,
        "token": token,
        "input_budget_mb": input_budget_mb,
        "warmup_s": warmup_s,
    }
    with tempfile.TemporaryDirectory(prefix="npcadapt-soak-") as tmp:
        root = Path(tmp)
        disk = DiskFull(mode=disk_full, size_mb=tmpfs_mb)
        data = disk.prepare(root)
        args = ["--seed", str(seed), "--threads", "1", "--input-budget-mb", str(input_budget_mb)]
        server = ServerProcess(data, root, args + (["--token", secret] if secret else []), env={"OMP_NUM_THREADS": "1"})
        port = ctx.Value("i", 0)
        begin, attack, stop = ctx.Event(), ctx.Event(), ctx.Event()
        good_out, hostile_out = root / "good-client.npy", root / "hostile.json"
        children = [
            ctx.Process(
                target=good_client_main,
                args=(port, secret, begin, stop, str(good_out), 1.0 / good_client_hz, seed),
                daemon=True,
            ),
            ctx.Process(
                target=hostile_main,
                args=(
                    port,
                    secret,
                    attack,
                    stop,
                    str(hostile_out),
                    hostile_rate,
                    hostile_concurrency,
                    seed + 1,
                    hostile_kinds,
                ),
                daemon=True,
            ),
        ]
        sampler = RssSampler()
        timeline = None
        try:
            for child in children:
                child.start()
            port.value = server.start()
            _wait_trainer_ready(server.port, secret)
            time.sleep(1.0)
            idle_footprint = float(np.median([_sleep_then(0.3, rss_kb, server.pid) for _ in range(3)])) / 1024
            sampler.target = (cast(int, server.pid), server.incarnation)  # started just above
            sampler.start()
            load = Load(
                port=lambda: server.port,
                incarnation=lambda: server.incarnation,
                token=secret,
                players=players_per_client,
                think=think_ms / 1e3,
            )
            timeline = asyncio.run(
                _soak(
                    load,
                    server,
                    disk,
                    sampler,
                    port,
                    begin,
                    attack,
                    soak_s,
                    warmup_s,
                    clients,
                    seed,
                    trainer_kills,
                    server_kills,
                )
            )
        finally:
            stop.set()
            try:
                for child in children:
                    if child.pid is not None:
                        child.join(60)
                        if child.is_alive():
                            child.kill()
                            child.join()
                sampler.stop()
                disk.free(server.pid)
            finally:
                try:
                    exit_code = server.stop()
                    if timeline is not None:  # the soak ran: check the data once the server flushed and exited
                        versions, decisions, feedback = load.ledger.snapshot()
                        checks_final = verify_acknowledged(data, "duelist", versions, decisions, feedback)
                        result["data_dir_mb"] = round(
                            sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20, 1
                        )
                finally:
                    unmount_error = disk.cleanup()
        good = np.load(good_out) if good_out.exists() else np.zeros((0, 3))
        hostile = json.loads(hostile_out.read_text() or "{}") if hostile_out.exists() else {}
    checks = timeline["checks"] + [{"after": "final SIGTERM", "server_exit_code": exit_code, **checks_final}]
    result.update(
        _summarise(
            load,
            timeline,
            checks,
            good,
            sampler.samples,
            idle_footprint,
            disk,
            server,
            hostile,
            input_budget_mb,
            hostile_concurrency,
            soak_s,
        )
    )
    if unmount_error:
        result["unmount_error"] = unmount_error
    result["seconds"] = round(time.perf_counter() - began, 1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _sleep_then(seconds: float, fn, *args):
    time.sleep(seconds)
    return fn(*args)


def _wait_trainer_ready(port: int, secret: str | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with Client(port=port, token=secret) as client:
        while client.stats().get("trainer_ready") is False:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the server's online trainer was not ready within {timeout:.0f}s")
            time.sleep(0.1)


async def _soak(
    load: Load,
    server: ServerProcess,
    disk: DiskFull,
    sampler: RssSampler,
    port,
    begin,
    attack,
    soak_s: float,
    warmup_s: float,
    clients: int,
    seed: int,
    trainer_kills: int,
    server_kills: int,
) -> dict:
    """The load's warm-up, then the load, the poller and the fault schedule for `soak_s`
    seconds; returns the timeline."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed + 7)
    workers = [asyncio.create_task(good_worker(load, i, seed)) for i in range(clients)]
    warm_from = time.time()
    await asyncio.sleep(warmup_s)
    t0 = time.time()
    warm = [kib for t, _, kib in list(sampler.samples) if t >= max(warm_from, t0 - 10.0)]
    tl: dict = {
        "warm_from": warm_from,
        "served_footprint_mb": float(np.median(warm)) / 1024 if warm else None,
        "t0": t0,
        "attack_at": t0 + ATTACK_AT * soak_s,
        "end": t0 + soak_s,
        "server_kills": [],
        "trainer_kills": [],
        "trainer_kill_misses": 0,
        "checks": [],
        "stats": {},
        "disk": {},
    }
    events = [(tl["attack_at"], "attack")]
    span = (1 - ATTACK_AT - 0.1) * soak_s / max(trainer_kills, 1)
    events += [
        (t0 + ATTACK_AT * soak_s + (i + rng.uniform(0.1, 0.9)) * span, "trainer_kill") for i in range(trainer_kills)
    ]
    lo, hi = SERVER_KILLS_SPAN
    events += [
        (t0 + soak_s * (lo + (hi - lo) * i / max(server_kills - 1, 1)), "server_kill") for i in range(server_kills)
    ]
    events += [
        (t0 + DISK_FULL_SPAN[0] * soak_s, "disk_fill"),
        (t0 + max(DISK_FULL_SPAN[1] * soak_s, DISK_FULL_SPAN[0] * soak_s + 2.0), "disk_free"),
    ]
    events.sort()
    begin.set()
    poller = asyncio.create_task(_poll_stats(load, server, tl["stats"]))

    async def restart() -> None:
        killed_at = time.time()
        sampler.target = None
        await loop.run_in_executor(None, server.kill)
        await asyncio.sleep(0.5)  # replies already in the sockets reach the workers (and the ledger)
        versions, decisions, feedback = load.ledger.snapshot()
        check = await loop.run_in_executor(
            None, verify_acknowledged, server.data_dir, "duelist", versions, decisions, feedback
        )
        tl["checks"].append({"after": f"SIGKILL {len(tl['server_kills']) + 1}", **check})
        port.value = await loop.run_in_executor(None, server.start)
        sampler.target = (cast(int, server.pid), server.incarnation)  # started just above
        tl["server_kills"].append((killed_at, server.started_at[-1]))

    for when, what in events:
        await asyncio.sleep(max(0.0, when - time.time()))
        if what == "attack":
            attack.set()
        elif what == "server_kill":
            await restart()
        elif what == "trainer_kill":
            for _ in range(10):  # the trainer may be between a death and its restart
                pid = trainer_pid(server.pid) if server.pid else None
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    tl["trainer_kills"].append(time.time())
                    break
                tl["trainer_kill_misses"] += 1
                await asyncio.sleep(0.5)
        elif what == "disk_fill":
            tl["disk"]["before"] = dict(tl["stats"].get(server.incarnation, {}))
            await loop.run_in_executor(None, disk.fill, server.pid)
            load.disk_full_now = True
        else:
            load.disk_full_now = False
            tl["disk"]["during"] = dict(tl["stats"].get(server.incarnation, {}))
            await loop.run_in_executor(None, disk.free, server.pid)
    await asyncio.sleep(max(0.0, tl["end"] - time.time()))
    load.stop = True
    await asyncio.wait(workers, timeout=30)
    for task in workers:
        task.cancel()
    await asyncio.sleep(0.6)  # a last poll
    poller.cancel()
    # bounded: a task stuck in a call that ignores cancellation must not hang the benchmark
    _, stuck = await asyncio.wait([poller, *workers], timeout=10)
    tl["tasks_not_stopped"] = len(stuck)
    tl["stopped"] = time.time()
    return tl


GAUGES = (
    "connections",
    "open_episodes",
    "pending_feedback",
    "ready_players",
    "writeback_pending",
    "input_buffered",
    "connections_paused",
    "queued_rows",
)


async def _poll_stats(load: Load, server: ServerProcess, out: dict) -> None:
    """The latest stats of every server run, every 0.5 s: out[incarnation] = stats, and
    out["peaks"][gauge] = the most any poll saw."""
    peaks = out.setdefault("peaks", {})
    client: AsyncClient | None = None
    inc = -1
    try:
        while True:
            try:
                if client is None:
                    inc = server.incarnation
                    client = await connect(server.port, load.token)
                stats = out[inc] = await call(client, "stats", timeout=5)
                for gauge in GAUGES:
                    peaks[gauge] = max(peaks.get(gauge, 0), int(stats.get(gauge) or 0))
            except Exception:
                if client is not None:
                    await client.close()
                client = None
            await asyncio.sleep(0.5)
    finally:
        if client is not None:
            await client.close()


# -- the figures ----------------------------------------------------------------------------------
def _p99(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return round(float(np.percentile(values, 99)) * 1e3, 3) if values.size else None


def _summarise(
    load: Load,
    tl: dict,
    checks: list[dict],
    good: np.ndarray,
    rss: list,
    idle_footprint: float,
    disk: DiskFull,
    server: ServerProcess,
    hostile: dict,
    budget_mb: float,
    hostile_cap: int,
    soak_s: float,
) -> dict:
    t0, attack_at, end = tl["t0"], tl["attack_at"], tl["end"]
    down = [(k, ready + RESTART_SETTLE) for k, ready in tl["server_kills"]]

    def outside_restarts(t: np.ndarray) -> np.ndarray:
        keep = np.ones(t.shape, bool)
        for a, b in down:
            keep &= (t < a) | (t > b)
        return keep

    sent, rtt, code = good[:, 0], good[:, 1], good[:, 2]
    ok = code == 0
    base = ok & (sent >= t0) & (sent < attack_at)
    under = ok & (sent >= attack_at) & (sent < end) & outside_restarts(sent)
    p99_base, p99_attack = _p99(rtt[base]), _p99(rtt[under])
    ratio = round(p99_attack / p99_base, 3) if p99_base and p99_attack else None
    # which hostile kinds hurt: the good client's p99 while a connection of that kind was open, and while none was
    intervals = hostile.pop("intervals", [])
    attacked = ok & (sent >= attack_at) & (sent < end) & outside_restarts(sent)
    any_open = np.zeros(sent.shape, bool)
    by_kind: dict = {}
    for kind in sorted({k for k, _, _ in intervals}):
        during = np.zeros(sent.shape, bool)
        for k, a, b in intervals:
            if k == kind:
                during |= (sent >= a) & (sent <= b)
        any_open |= during
        by_kind[kind] = {
            "open": _p99(rtt[attacked & during]),
            "not_open": _p99(rtt[attacked & ~during]),
            "calls_open": int((attacked & during).sum()),
        }
    by_kind["none_open"] = {"p99": _p99(rtt[attacked & ~any_open]), "calls": int((attacked & ~any_open).sum())}
    in_disk_window = np.zeros(sent.shape, bool)
    for a, b in disk.windows:
        in_disk_window |= (sent >= a) & (sent <= b)

    # the servers' own counters: the last poll of each run, summed
    peaks = tl["stats"].pop("peaks", {})
    runs = [tl["stats"][i] for i in sorted(tl["stats"])]
    server_sums = {key: sum(int(s.get(key) or 0) for s in runs) for key in SERVER_SUMS}
    errors_by_code: Counter = Counter()
    for s in runs:
        errors_by_code.update({k: int(v) for k, v in (s.get("errors_by_code") or {}).items()})

    samples = np.asarray(rss, dtype=np.float64).reshape(-1, 3)  # time, incarnation, KiB
    mb = samples[:, 2] / 1024
    by_inc = []
    for inc in np.unique(samples[:, 1]).astype(int):
        sel = samples[:, 1] == inc
        by_inc.append(
            {
                "incarnation": int(inc),
                "start_mb": round(float(mb[sel][0]), 1),
                "end_mb": round(float(mb[sel][-1]), 1),
                "max_mb": round(float(mb[sel].max()), 1),
                "seconds": round(float(samples[sel, 0][-1] - samples[sel, 0][0]), 1),
            }
        )
    last_inc = samples[-1, 1] if len(samples) else -1
    half = (samples[:, 0] >= t0 + soak_s / 2) & (samples[:, 0] <= end) & (samples[:, 1] == last_inc)
    half_mb = mb[half]
    growth = None
    if half_mb.size >= 2:
        k = max(1, min(4, half_mb.size // 4))
        growth = round(float((half_mb[-k:].mean() - half_mb[:k].mean()) / half_mb[:k].mean() * 100), 2)
    allowance = CAPS["slow_reader"] * MAX_OUTPUT_BUFFER_MB + hostile_cap * PRE_AUTH_MB
    footprint = tl["served_footprint_mb"] or idle_footprint  # no warm-up: the idle server's
    bound = budget_mb + footprint + allowance
    rss_max = round(float(mb.max()), 1) if mb.size else None
    baseline_mb = mb[samples[:, 0] < attack_at]

    lost = sum(len(c["lost"]) for c in checks)
    disk_errors = sum(load.disk_full_errors.values())
    before, during = tl["disk"].get("before", {}), tl["disk"].get("during", {})
    served_disk = load.served_during_disk_full + int((ok & in_disk_window).sum())
    good_load_mb = float(baseline_mb.max()) if baseline_mb.size else None
    targets = {
        "nothing_acknowledged_lost": lost == 0 and load.ledger.flushes > 0,
        "rss_growth_last_half_under_5pct": growth is not None and growth < 5.0,
        "good_client_p99_under_attack_within_3x": ratio is not None and ratio <= 3.0,
        "rss_within_budget_plus_footprint_plus_output_allowance": rss_max is not None and rss_max <= bound,
    }
    act_rtt = np.asarray([s[1] for s in load.act_samples])
    return {
        "requests": server_sums["requests"],
        "errors_by_code": dict(sorted(errors_by_code.items())),
        "act_p99_ms": _p99(act_rtt),
        "act_p50_ms": round(float(np.median(act_rtt)) * 1e3, 3) if act_rtt.size else None,
        "server_act_p99_ms": runs[-1].get("act_p99_ms") if runs else None,
        "rss_start_mb": round(float(mb[0]), 1) if mb.size else None,
        "rss_end_mb": round(float(mb[-1]), 1) if mb.size else None,
        "rss_max_mb": rss_max,
        "rss_max_at_s": round(float(samples[int(mb.argmax()), 0] - t0), 1) if mb.size else None,
        "rss_good_load_only_max_mb": None if good_load_mb is None else round(good_load_mb, 1),
        "rss_half_mb": round(float(half_mb[:4].mean()), 1) if half_mb.size else None,
        "rss_growth_last_half_pct": growth,
        "rss_by_server_run": by_inc,
        "trainer_kills": len(tl["trainer_kills"]),
        "trainer_restarts": server_sums["trainer_restarts"],
        "server_kills": server.kills,
        "server_restarts": len(tl["server_kills"]),
        "acknowledged_flushes": load.ledger.flushes,
        "acknowledged_flushes_lost": lost,
        "ack_checks": [{k: v if k != "lost" else v[:5] for k, v in c.items()} for c in checks],
        "disk_full_mode": disk.mode,
        "disk_full_fallback_reason": disk.reason if disk.mode != "tmpfs" else None,
        "disk_full_tmpfs_mb": disk.size_mb if disk.mode == "tmpfs" else None,
        "disk_full_filler_mb": round(disk.filler_bytes / 2**20, 1),
        "disk_full_windows_s": [round(b - a, 1) for a, b in disk.windows],
        "disk_full_from_s": [round(a - t0, 1) for a, _ in disk.windows],
        "disk_full_errors_reported": disk_errors,
        "disk_full_errors_by_method": dict(load.disk_full_errors),
        "errors_during_disk_full": dict(load.disk_full_other_errors),
        "server_log_flush_errors_during_disk_full": int(during.get("log_flush_errors", 0))
        - int(before.get("log_flush_errors", 0)),
        "server_writeback_failures_during_disk_full": int(during.get("writeback_failures", 0))
        - int(before.get("writeback_failures", 0)),
        "served_during_disk_full": served_disk,
        "good_client_p99_ms": p99_base,
        "good_client_p99_ms_under_attack": p99_attack,
        "good_client_p99_ratio": ratio,
        "good_client_p99_ms_while_kind_open": by_kind,
        "good_client_calls_without_attack": int(base.sum()),
        "good_client_calls_under_attack": int(under.sum()),
        "good_client_errors": {str(int(c)): int(n) for c, n in zip(*np.unique(code[~ok], return_counts=True))},
        "input_budget_mb": budget_mb,
        "idle_footprint_mb": round(float(idle_footprint), 1),
        "model_footprint_mb": round(float(footprint), 1),
        "output_allowance_mb": round(allowance, 1),
        "rss_bound_mb": round(bound, 1),
        "good_load_calls": dict(load.ok),
        "good_load_errors": dict(load.errors),
        "good_load_connects": load.connects,
        "server_totals": server_sums,
        "server_peaks": peaks,
        "server_final": {gauge: runs[-1].get(gauge) for gauge in GAUGES} if runs else {},
        "hostile": hostile,
        "targets": targets,
        "soak_seconds": round(tl["stopped"] - t0, 1),
    }
