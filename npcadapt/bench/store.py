"""Adapter store benchmark: durable saves/s, loads/s and first-load latency.

Workload: ``n_players`` rank-8 fp32 adapters shaped like the reference actor
(obs 64 -> 128 -> 128 -> 16 actions; LoRA on each Linear, 18.9 KB of tensors each),
saved one by one (two fsyncs each) into a temp dir. "Cold" load means the first load of
a player by a fresh ``AdapterStore`` object after all saves; the OS page cache cannot be
dropped here, so the file bytes are usually in memory. Reference measured in the same
run: a plain ``open().read()`` of the same files, so ``load_over_raw_read`` says what
parsing and validation cost on top of the read itself. Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import torch

from npcadapt.adapter_meta import AdapterMeta, AdapterSpec
from npcadapt.store import AdapterStore

RANK = 8
SHAPES = {
    "actor.0.lora_A": (RANK, 64),
    "actor.0.lora_B": (128, RANK),
    "actor.1.lora_A": (RANK, 128),
    "actor.1.lora_B": (128, RANK),
    "actor.2.lora_A": (RANK, 128),
    "actor.2.lora_B": (16, RANK),
}


def _percentile_ms(samples_s: list[float], q: float) -> float:
    ordered = sorted(samples_s)
    return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n_players: int = 2000, seed: int = 0) -> dict:
    """Save, then load, ``n_players`` adapters; return throughput and latency figures."""
    gen = torch.Generator().manual_seed(seed)
    spec = AdapterSpec("duelist", "bench-base", RANK, SHAPES)
    players = [f"player-{i:05d}" for i in range(n_players)]
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="npcadapt-bench-store-") as root:
        store = AdapterStore(root)
        t0 = time.perf_counter()
        for player in players:
            tensors = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}
            meta = AdapterMeta("duelist", player, "bench-base", RANK, 16.0, False, 1, 1, now, now, "float32")
            store.save(tensors, meta)
        save_s = time.perf_counter() - t0

        fresh = AdapterStore(root)
        cold: list[float] = []
        for player in players:
            t = time.perf_counter()
            fresh.load(spec, player)
            cold.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        for player in players:
            fresh.load(spec, player)
        load_s = time.perf_counter() - t0

        raw: list[float] = []
        for player in players:
            path = fresh.path_for("duelist", player)
            t = time.perf_counter()
            with open(path, "rb") as f:
                f.read()
            raw.append(time.perf_counter() - t)
        file_bytes = store.path_for("duelist", players[0]).stat().st_size

    return {
        "bench": "store",
        "n_players": n_players,
        "file_bytes": file_bytes,
        "saves_per_s": n_players / save_s,
        "loads_per_s": n_players / load_s,
        "cold_load_ms_p50": _percentile_ms(cold, 0.50),
        "cold_load_ms_p99": _percentile_ms(cold, 0.99),
        "raw_read_ms_p50": _percentile_ms(raw, 0.50),
        "load_over_raw_read": statistics.median(cold) / statistics.median(raw),
        "cold_means": "first load after save by a fresh store object (page cache not dropped)",
    }


if __name__ == "__main__":
    print(json.dumps(run()))
