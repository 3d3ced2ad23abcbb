"""Helpers shared by the benchmarks: median timing, memory bandwidth, the reference archetype."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from ..archetypes import Archetype, init_archetype


class _Reference(TypedDict):
    obs: int
    hidden: tuple[int, ...]
    actions: int
    rank: int


REFERENCE: _Reference = {"obs": 64, "hidden": (128, 128), "actions": 16, "rank": 8}


def median_seconds(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def read_bandwidth(nbytes: int, repeats: int = 15) -> float:
    """Bytes/s of summing a float32 buffer of `nbytes` (the memory floor's reference)."""
    buf = torch.ones(max(nbytes // 4, 1024), dtype=torch.float32)
    seconds = median_seconds(lambda: buf.sum(), repeats=repeats, warmup=3)
    return buf.numel() * 4 / seconds


def reference_archetype(root: Path, seed: int = 0) -> Archetype:
    """The guide's reference workload: obs 64, hidden 128x128, 16 actions, rank 8 on the actor."""
    return init_archetype(
        root / "reference",
        "reference",
        [("features", REFERENCE["obs"])],
        [f"action_{i}" for i in range(REFERENCE["actions"])],
        hidden=REFERENCE["hidden"],
        rank=REFERENCE["rank"],
        alpha=16.0,
        seed=seed,
    )


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
