"""Figures behind the sizing plan in docs/deploy.md, measured on the shipped archetypes.

Usage: .venv/bin/python scripts/research/deploy_sizing.py [--no-redis]

Measures (each takes well under a second; the whole script about 5-10 s, most of it imports):
  1. adapter layout size P per shipped archetype (npcadapt/lora/layout.py) and the size of one
     stored adapter: safetensors bytes including the metadata header, saved through
     AdapterStore into a temp dir (fp32, the server's default, and bf16);
  2. the per-player posterior statistics of the population prior (trainer memory today);
  3. bytes on the wire of act / act_batch / feedback messages, encoded with the repo's
     protocol code (list obs as the Python client sends it, float64; float32-bin obs);
  4. interaction-log bytes per decision and per feedback (a Service writing its log);
  5. with a local `redis-server` (skipped if absent or --no-redis): bytes Redis's allocator
     holds per adapter key, as a string and as a hash, for 2,000 real adapters, and per member
     of the per-archetype index set.
Then prints the derived plan for 1,000,000 concurrent players from the stated assumptions
(the ASSUMPTIONS dict below) and the throughput figures quoted from docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import npcadapt
from npcadapt.adapter_meta import AdapterMeta, player_key
from npcadapt.archetypes import BUILTIN_DIR, find_archetypes
from npcadapt.lora.layout import AdapterLayout, fresh_row
from npcadapt.prior.library_file import find_library
from npcadapt.protocol_codec import DecisionEncoder, encode_notification, encode_request, packed_response
from npcadapt.store import AdapterStore
from npcadapt.types import BatchDecision

PLAYER = "player-000421337"  # 16 bytes: the id length assumed throughout
NPC = "npc-00042"  # 9 bytes
MSGID = 100_000  # a client that has counted past 65,535: msgid takes 5 bytes

ASSUMPTIONS = {
    "players": 1_000_000,
    "archetypes_met": (1, 3, 5),  # adapters per player; 3 is the plan's figure
    "archetypes_met_plan": 3,
    "combat_share": 0.3,  # share of players in combat at any moment (nominal)
    "combat_hz": 4.0,  # one adapted-NPC decision every 250 ms per player in combat
    "idle_hz": 0.25,  # one every 4 s otherwise
    "headroom": 2.0,  # run cores at <= 50 % of the measured rate
    "redis_key_overhead_b": 100,  # per key, when not measured (dictEntry, robj, key sds, expiry-less)
    "fragmentation": (1.1, 1.2, 1.5),  # jemalloc mem_fragmentation_ratio; 1.2 is the plan's figure
    "fragmentation_plan": 1.2,
    "node_ram_gb": 32,  # RAM per Redis node
    "data_share_of_ram": 0.5,  # maxmemory / RAM: the rest is fork copy-on-write room for AOF rewrite
    "replicas": 1,  # per primary
    "episode_minutes": (1, 2, 5),  # each player completes one episode (with any archetype) every N minutes
    "episode_minutes_plan": 2,
    "session_minutes": 30,  # a player's session on one game server: adapters read from Redis once each
    "players_per_host": 1000,  # players on one game-server host (one npcadapt server beside it)
    "aof_rewrite_disk_mb_s": 500,  # sequential write rate of a Redis node's disk during an AOF rewrite
    "invalidation_msg_b": 120,  # one pub/sub invalidation (channel + archetype + player + version), assumed
}

# Throughput quoted from docs/benchmarks.md (2-core AMD EPYC VM, torch 2.13.0 CPU; the server's
# decisions run on one event-loop thread, so one server process is about one core).
BENCH = {
    # "Renovation (issue 16) before and after (session 8)", `npcadapt bench bridge --seconds 3`, "after" rows
    "single_row_per_s": (38_971, 45_049, 48_575),
    "batched_per_s": (233_822, 278_972, 251_493),  # act_batch of 64 rows
    "trainer_updates_per_s": (178, 199, 125),  # same runs: prior path, one player-episode per update
    # "Offline fitting: `npcadapt bench fit`": 32 players x 20 episodes, 5 epochs, 2 cores
    "fit_players_per_s_local_2cores": 34.11,
    "fit_players_per_s_ray_2workers": 22.75,
}


def jemalloc_class(size: int) -> int:
    """jemalloc 5's size class for a request of `size` bytes (4 classes per doubling above 128 B)."""
    if size <= 8:
        return 8
    if size <= 128:
        return (size + 15) // 16 * 16
    delta = 1 << (int(math.log2(size - 1)) - 2)
    return (size + delta - 1) // delta * delta


def adapters(store_dir: Path) -> dict:
    out = {}
    store = AdapterStore(store_dir)
    now = time.time()
    for name, arch in sorted(find_archetypes([BUILTIN_DIR]).items()):
        layout = AdapterLayout.from_spec(arch.spec)
        row = fresh_row(layout, name, PLAYER)
        row += 0.01 * torch.randn(layout.size)  # trained: B non-zero (size does not depend on values)
        sizes = {}
        for dtype, tdtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            meta = AdapterMeta(
                archetype=name,
                player=PLAYER,
                base_hash=arch.base_hash,
                rank=layout.rank,
                alpha=float(arch.spec.lora.alpha),
                rslora=arch.spec.lora.rslora,
                version=1234,
                updates=1234,
                created=now - 86_400.123456,
                updated=now,
                dtype=dtype,
            )
            tensors = {k: v.clone() for k, v in layout.unpack(row.to(tdtype)).items()}
            path = store.save(tensors, meta)
            sizes[dtype] = path.stat().st_size
            sizes[dtype + "_bytes"] = path.read_bytes()
        long_meta = AdapterMeta(**{**meta.__dict__, "player": "x" * 256, "dtype": "float32"})
        long_size = store.save({k: v.clone() for k, v in layout.unpack(row).items()}, long_meta).stat().st_size
        (header_len,) = struct.unpack("<Q", sizes["float32_bytes"][:8])
        lib = find_library(arch)
        post = None
        if lib is not None:
            k, a, d = lib.mean.shape
            post = (a * d * d + a * d + 2 * a + (k + 1)) * 8  # Stats (float64) + cohort weights
        out[name] = {
            "obs_dim": arch.spec.obs_dim,
            "actions": list(arch.spec.actions),
            "P": layout.size,
            "raw_fp32": layout.size * 4,
            "raw_bf16": layout.size * 2,
            "file_fp32": sizes["float32"],
            "file_bf16": sizes["bfloat16"],
            "header_fp32": 8 + header_len,
            "file_fp32_256b_id": long_size,
            "posterior_bytes": post,
            "bytes": sizes["float32_bytes"],
            "bytes_bf16": sizes["bfloat16_bytes"],
        }
    return out


def wire(archs: dict) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for name, a in archs.items():
        n = a["obs_dim"]
        obs = rng.random(n).tolist()  # non-integer floats: 9 bytes each as float64
        obs_bin = struct.pack(f"<{n}f", *obs)
        enc = DecisionEncoder(a["actions"])
        act_list = len(encode_request(MSGID, "act", [name, PLAYER, NPC, obs]))
        act_bin = len(encode_request(MSGID, "act", [name, PLAYER, NPC, obs_bin]))

        def reply(rows: int, action: np.ndarray, a: dict = a, enc: DecisionEncoder = enc) -> int:
            bd = BatchDecision(
                decision=np.arange(10**6, 10**6 + rows),
                action=action,
                logp=np.full(rows, -0.9, np.float32),
                value=np.full(rows, 0.3, np.float32),
                entropy=np.full(rows, 1.2, np.float32),
                adapter_version=np.full(rows, 1234),
                action_names=tuple(a["actions"]),
            )
            encoded = enc.encode(bd)
            if rows == 1:
                return len(packed_response(MSGID, encoded.data))
            return len(packed_response(MSGID, encoded.data, count=rows))

        n_act = len(a["actions"])
        reply_mean = sum(reply(1, np.array([i])) for i in range(n_act)) / n_act
        reply_max = max(reply(1, np.array([i])) for i in range(n_act))
        players = [f"player-{i:09d}" for i in range(64)]
        batch_list = len(encode_request(MSGID, "act_batch", [name, [[p, NPC, obs] for p in players]]))
        batch_bin = len(encode_request(MSGID, "act_batch", [name, [[p, NPC, obs_bin] for p in players]]))
        batch_reply = reply(64, np.arange(64) % n_act)
        fb = len(encode_notification("feedback", [PLAYER, NPC, 0.5, False]))
        fb_done = len(encode_notification("feedback", [PLAYER, NPC, 0.5, True]))
        out[name] = {
            "act_req_list": act_list,
            "act_req_bin": act_bin,
            "act_reply_mean": reply_mean,
            "act_reply_max": reply_max,
            "batch64_req_list_per_row": batch_list / 64,
            "batch64_req_bin_per_row": batch_bin / 64,
            "batch64_reply_per_row": batch_reply / 64,
            "feedback": fb,
            "feedback_done": fb_done,
        }
    return out


def log_bytes(tmp: Path) -> dict:
    """Interaction-log bytes per decision and per feedback row (64-row batches, duelist)."""
    svc = npcadapt.open(tmp / "svc", online=None, record=True)
    try:
        players = [f"player-{i:09d}" for i in range(64)]
        rng = np.random.default_rng(0)
        svc.flush()
        logs = tmp / "svc" / "logs"
        size0 = sum(f.stat().st_size for f in logs.iterdir())
        for _ in range(50):
            svc.act_batch("duelist", players, rng.random((64, 8), dtype=np.float32), npcs=[NPC] * 64)
        svc.flush()
        size1 = sum(f.stat().st_size for f in logs.iterdir())
        for _ in range(50):
            svc.feedback_batch(players, [NPC] * 64, np.full(64, 0.5), np.zeros(64, bool))
        svc.flush()
        size2 = sum(f.stat().st_size for f in logs.iterdir())
    finally:
        svc.close()
    return {"per_decision": (size1 - size0) / 3200, "per_feedback": (size2 - size1) / 3200}


def redis_bytes(value: bytes, value_bf16: bytes, tmp: Path, n: int = 2000) -> dict | None:
    """used_memory growth per key for n adapters stored as strings, then as hashes (fp32: data,
    version, base, digest, the Redis store's fields), then as hashes of bf16 adapters; and per
    member of the per-archetype set of stored players."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    import redis

    tmp.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    return None  # it did not start
                time.sleep(0.05)
        else:
            return None
        pkeys = [player_key(f"player-{i:09d}") for i in range(n)]
        keys = [f"npcadapt:adapter:duelist:{k}" for k in pkeys]  # the Redis store's key layout
        digest = "0" * 64  # sha256 hex, as the store's 'digest' field
        out = {"key_len": len(keys[0]), "value_len": len(value), "jemalloc_class": jemalloc_class(len(value))}
        for kind in ("string", "hash", "hash_bf16"):
            r.flushall()
            base = r.info("memory")["used_memory"]
            pipe = r.pipeline(transaction=False)
            for k in keys:
                if kind == "string":
                    pipe.set(k, value)
                else:
                    data = value if kind == "hash" else value_bf16
                    pipe.hset(k, mapping={"data": data, "version": 1234, "base": "bc45f48d0963e9e7", "digest": digest})
            pipe.execute()
            mem = r.info("memory")
            out[kind] = (mem["used_memory"] - base) / n
            out[kind + "_memory_usage"] = r.memory_usage(keys[0])
        r.flushall()  # the per-archetype index of stored players (a set of player keys)
        base = r.info("memory")["used_memory"]
        r.sadd("npcadapt:players:duelist", *pkeys)
        out["index_member"] = (r.info("memory")["used_memory"] - base) / n
        out["redis_version"] = r.info("server")["redis_version"]
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-redis", action="store_true", help="skip the redis-server measurement")
    args = ap.parse_args()
    A, B = ASSUMPTIONS, BENCH
    tmp = Path(tempfile.mkdtemp(prefix="deploy-sizing-"))
    try:
        archs = adapters(tmp / "store")
        w = wire(archs)
        lg = log_bytes(tmp)
        largest = max(archs.values(), key=lambda a: a["file_fp32"])
        red = None if args.no_redis else redis_bytes(largest["bytes"], largest["bytes_bf16"], tmp / "redis")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("== 1. adapters at the shipped shapes (rank 8 on actor.0-2; stored by AdapterStore)")
    print(
        "archetype   obs act  P      fp32 raw  fp32 file  header  bf16 file  fp32 file, 256-B id  posterior (trainer)"
    )
    for name, a in archs.items():
        print(
            f"{name:<11} {a['obs_dim']:>3} {len(a['actions']):>3}  {a['P']:<6} {a['raw_fp32']:>8,}  {a['file_fp32']:>9,}"
            f"  {a['header_fp32']:>6,}  {a['file_bf16']:>9,}  {a['file_fp32_256b_id']:>19,}  {a['posterior_bytes'] or 0:>10,}"
        )
    file_b = largest["file_fp32"]
    print(f"largest stored adapter: {file_b:,} B (fp32), {largest['file_bf16']:,} B (bf16)")

    print("\n== 2. Redis memory per adapter key (largest adapter)")
    if red:
        print(
            f"measured, redis {red['redis_version']}, {red['key_len']}-B key, {red['value_len']:,}-B value "
            f"(jemalloc class {red['jemalloc_class']:,}): string {red['string']:,.0f} B/key "
            f"(MEMORY USAGE {red['string_memory_usage']:,}), hash data+version+base+digest {red['hash']:,.0f} B/key "
            f"(MEMORY USAGE {red['hash_memory_usage']:,}); bf16 hash {red['hash_bf16']:,.0f} B/key; "
            f"index set {red['index_member']:,.0f} B per member"
        )
        per_key = max(red["string"], red["hash"]) + red["index_member"]  # the hash and its index entry
    else:
        per_key = jemalloc_class(file_b) + A["redis_key_overhead_b"]
        print(f"not measured; assumed jemalloc class {jemalloc_class(file_b):,} + {A['redis_key_overhead_b']} B")
    print(f"per adapter used in the plan (hash + index member): {per_key:,.0f} B")
    players = A["players"]
    print("archetypes met  keys       used_memory  x1.1      x1.2      x1.5      (GB, primaries only)")
    for m in A["archetypes_met"]:
        used = players * m * per_key
        print(
            f"{m:<15} {players * m:<10,} {used / 1e9:8.1f}  "
            + "  ".join(f"{used * f / 1e9:8.1f}" for f in A["fragmentation"])
        )
    m, f = A["archetypes_met_plan"], A["fragmentation_plan"]
    rss = players * m * per_key * f
    per_node = A["node_ram_gb"] * 1e9 * A["data_share_of_ram"]
    shards = max(3, math.ceil(rss / per_node))
    print(
        f"plan: {m} archetypes, fragmentation {f}: {rss / 1e9:.1f} GB RSS; at {A['node_ram_gb']} GB/node with "
        f"{A['data_share_of_ram']:.0%} for data ({per_node / 1e9:.0f} GB, the rest fork copy-on-write room): "
        f"{math.ceil(rss / per_node)} shards by memory, {shards} primaries (cluster minimum 3) "
        f"+ {shards * A['replicas']} replicas = {shards * (1 + A['replicas'])} nodes"
    )
    post = largest["posterior_bytes"]
    if post:
        extra = players * m * (jemalloc_class(post) + A["redis_key_overhead_b"]) * f
        print(f"if the posterior statistics ({post:,} B each) were stored too: +{extra / 1e9:.1f} GB")

    print("\n== 3. decisions per second")
    per_player = A["combat_share"] * A["combat_hz"] + (1 - A["combat_share"]) * A["idle_hz"]
    nominal, peak = players * per_player, players * A["combat_hz"]
    print(
        f"{A['combat_share']:.0%} in combat at {A['combat_hz']} Hz, the rest at {A['idle_hz']} Hz: "
        f"{per_player:.3f} decisions/s per player -> {nominal:,.0f}/s; everyone in combat: {peak:,.0f}/s"
    )

    print("\n== 4. cores for decisions (docs/benchmarks.md, renovation section, current code)")
    for label, key in (("single-row act", "single_row_per_s"), ("act_batch of 64", "batched_per_s")):
        rate = min(B[key])
        print(
            f"{label}: {rate:,}/s per server process (lowest of {B[key]}); cores at {A['headroom']}x headroom: "
            f"nominal {math.ceil(nominal / rate * A['headroom'])}, peak {math.ceil(peak / rate * A['headroom'])}"
        )
    hosts = players // A["players_per_host"]
    host_nom, host_peak = nominal / hosts, peak / hosts
    print(
        f"per game-server host ({A['players_per_host']:,} players, {hosts:,} hosts): {host_nom:,.0f}/s nominal, "
        f"{host_peak:,.0f}/s peak = {host_peak / min(B['single_row_per_s']):.1%} of one core single-row, "
        f"{host_peak / min(B['batched_per_s']):.1%} batched"
    )

    print("\n== 5. bytes per decision (duelist; all shipped archetypes have 8 obs floats)")
    d = w["duelist"]
    for name, x in w.items():
        print(
            f"{name:<11} act req list {x['act_req_list']} / bin {x['act_req_bin']} B, reply mean "
            f"{x['act_reply_mean']:.1f} max {x['act_reply_max']}; act_batch(64) per row: req list "
            f"{x['batch64_req_list_per_row']:.1f} / bin {x['batch64_req_bin_per_row']:.1f}, reply "
            f"{x['batch64_reply_per_row']:.1f}; feedback notification {x['feedback']} ({x['feedback_done']} done)"
        )
    rows = {
        "act, list obs": d["act_req_list"] + d["act_reply_mean"],
        "act, bin obs": d["act_req_bin"] + d["act_reply_mean"],
        "act_batch 64, list obs": d["batch64_req_list_per_row"] + d["batch64_reply_per_row"],
        "act_batch 64, bin obs": d["batch64_req_bin_per_row"] + d["batch64_reply_per_row"],
    }
    for label, b in rows.items():
        tot = b + d["feedback"]
        print(
            f"{label}: {b:.0f} B + feedback {d['feedback']} B = {tot:.0f} B/decision -> "
            f"{tot * nominal / 1e6:,.0f} MB/s nominal, {tot * peak / 1e6:,.0f} MB/s peak (all hosts, payload only)"
        )
    per_dec = lg["per_decision"] + lg["per_feedback"]  # one feedback per decision
    print(
        f"interaction log: {lg['per_decision']:.1f} B per decision, {lg['per_feedback']:.1f} B per feedback -> "
        f"per host {per_dec * host_nom / 1e6:.2f} MB/s nominal ({per_dec * host_nom * 86_400 / 1e9:.0f} GB/day), "
        f"{per_dec * host_peak / 1e6:.2f} MB/s peak; all hosts {per_dec * nominal * 86_400 / 1e12:.1f} TB/day nominal"
    )
    bank = A["players_per_host"] * m * largest["P"] * 4
    post_host = A["players_per_host"] * m * (post or 0)
    print(
        f"per host memory for {A['players_per_host']:,} players x {m} archetypes: resident adapters "
        f"{bank / 1e6:.0f} MB, posterior statistics in the trainer {post_host / 1e6:.0f} MB"
    )

    print("\n== 6. online training and Redis traffic")
    for n in A["episode_minutes"]:
        ups = players / (n * 60)  # one update per completed episode (the prior path)
        cores = ups / min(B["trainer_updates_per_s"]) * A["headroom"]
        print(
            f"an episode every {n} min per player: {ups:,.0f} updates/s -> "
            f"{math.ceil(cores)} trainer cores at {min(B['trainer_updates_per_s'])}/s per trainer process x{A['headroom']}"
            f"; Redis writes {ups * file_b / 1e6:,.0f} MB/s (x{1 + A['replicas']} with replication)"
        )
    n = A["episode_minutes_plan"]
    ups = players / (n * 60)
    loads = players / (A["session_minutes"] * 60) * m
    print(
        f"adapter reads at session start ({A['session_minutes']} min sessions): {loads:,.0f}/s, "
        f"{loads * file_b / 1e6:.0f} MB/s; pub/sub invalidations {ups:,.0f}/s x {A['invalidation_msg_b']} B "
        f"= {ups * A['invalidation_msg_b'] / 1e6:.1f} MB/s into every subscribed server; "
        f"fan-out to {hosts:,} servers {ups * hosts / 1e6:.1f} M messages/s, "
        f"{ups * hosts * A['invalidation_msg_b'] / 1e9:.1f} GB/s out of Redis"
    )
    shard_write = ups * file_b / shards
    shard_data = rss / shards
    aof_disk = A["aof_rewrite_disk_mb_s"] * 1e6
    rewrite_s = shard_data / aof_disk
    print(
        f"per primary ({shards}): writes {shard_write / 1e6:.0f} MB/s into the AOF and to its replica; the AOF "
        f"doubles (auto-aof-rewrite-percentage 100) every {shard_data / shard_write / 60:.0f} min; a rewrite of "
        f"{shard_data / 1e9:.1f} GB at {A['aof_rewrite_disk_mb_s']} MB/s takes {rewrite_s:.0f} s, during which "
        f"~{shard_write * rewrite_s / 1e9:.1f} GB of values are rewritten (copy-on-write bound: the whole "
        f"{shard_data / 1e9:.1f} GB)"
    )
    fit_core = B["fit_players_per_s_local_2cores"] / 2
    fits = players * m
    print(
        f"offline refit of every adapter (bench fit workload: 20 episodes, 5 epochs): {fits:,} fits at "
        f"{fit_core:.1f}/s per core (local) = {fits / fit_core / 3600:,.0f} core-hours; on Ray "
        f"{B['fit_players_per_s_ray_2workers'] / 2:.1f}/s per core = "
        f"{fits / (B['fit_players_per_s_ray_2workers'] / 2) / 3600:,.0f} core-hours"
    )


if __name__ == "__main__":
    main()
