"""Benchmark of the interaction log's append path.

Workload: ``n`` typical decision records (64-float32 observation as bytes, a 16-byte
mask on half of them, ids, action, logp, value, base hash, adapter version, time,
decision id; about 420 bytes on disk each), cycled from a pool of 4096 distinct records.
Measured, median over ``repeats`` runs in one process:

- ``append``: ``InteractionLog.append`` of every record into a fresh log in a temporary
  directory, then one ``flush()`` (with its fsync);
- reference ``pack``: ``msgpack.packb(record, use_bin_type=True)`` of the same records;
- reference ``write``: writing the same number of bytes to a file in 1 MiB chunks.

``ratio_vs_pack`` is appends/s over packs/s; ``ratio_vs_pack_and_write`` compares the
append time with pack time plus raw write time. Run ``python -m npcadapt.bench.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from npcadapt.log import InteractionLog

_POOL = 4096


def _records(n: int, seed: int = 0) -> list[dict]:
    """``n`` decision records drawn from a pool of distinct ones."""
    rng = np.random.default_rng(seed)
    pool = [
        {
            "t": "decision",
            "archetype": "duelist",
            "player": f"p{i % 1024}",
            "npc": f"n{i % 7}",
            "obs": rng.standard_normal(64).astype("<f4").tobytes(),
            "mask": (rng.random(16) < 0.8).astype(np.uint8).tobytes() if i % 2 else None,
            "action": int(rng.integers(16)),
            "logp": float(rng.normal()),
            "value": float(rng.normal()),
            "base": "ab12cd34ef56",
            "adapter_version": i % 11,
            "time": 1.7e9 + i,
            "decision": i,
        }
        for i in range(min(n, _POOL))
    ]
    return [pool[i % len(pool)] for i in range(n)]


def _time_pack(records: list[dict]) -> float:
    packb = msgpack.packb
    t0 = time.perf_counter()
    for rec in records:
        packb(rec, use_bin_type=True)
    return time.perf_counter() - t0


def _time_append(records: list[dict], directory: Path) -> tuple[float, int]:
    with InteractionLog(directory, fsync_on_flush=True) as log:
        append = log.append
        t0 = time.perf_counter()
        for rec in records:
            append(rec)
        log.flush()
        elapsed = time.perf_counter() - t0
        return elapsed, log.bytes_written


def _time_write(nbytes: int, path: Path) -> float:
    chunk = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(chunk[: min(left, len(chunk))])
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def run(n: int = 200_000, repeats: int = 3) -> dict:
    """Measure appends/s against packing (and writing) the same records in this run."""
    records = _records(n)
    packs, appends, writes = [], [], []
    nbytes = 0
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="npcadapt-bench-log-") as tmp:
            packs.append(_time_pack(records))
            elapsed, nbytes = _time_append(records, Path(tmp) / "log")
            appends.append(elapsed)
            writes.append(_time_write(nbytes, Path(tmp) / f"raw{r}"))
    t_pack, t_append, t_write = (statistics.median(x) for x in (packs, appends, writes))
    return {
        "bench": "log.append",
        "n": n,
        "repeats": repeats,
        "bytes_per_record": round(nbytes / n, 1),
        "appends_per_s": round(n / t_append),
        "packs_per_s": round(n / t_pack),
        "ratio_vs_pack": round(t_pack / t_append, 3),
        "ratio_vs_pack_and_write": round((t_pack + t_write) / t_append, 3),
        "append_mb_per_s": round(nbytes / t_append / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="records appended per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.repeats)))


if __name__ == "__main__":
    main()
