"""Benchmark: players fitted per second by `train adapters`, local vs Ray (1 and 2 workers).

Workload: recordings of `players` duel players x `episodes` episodes (12 decisions each),
played by the frozen base; each player's adapter fitted with `epochs` epochs, 8 players
per batch. Ray figures include task dispatch but not Ray's start-up (measured apart).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import npcadapt

from ..archetypes import BUILTIN_DIR, find_archetypes
from ..recordings import read_episodes
from ..training.offline import OfflineConfig, fit_adapters


def _record(data: Path, players: int, episodes: int) -> dict:
    from ..simulation import run_simulation

    svc = npcadapt.open(data, seed=0, online=None)
    run_simulation(svc, "npcadapt/Duel-v0", "duelist", players=players, episodes=episodes, seed=0, train=False)
    svc.close()
    eps, _ = read_episodes(data / "logs")
    return {p: e for (_, p), e in eps.items()}


def _fit(tmp: Path, name: str, episodes: dict, config: OfflineConfig, executor=None) -> float:
    svc = npcadapt.open(tmp / name, seed=0, online=None, record=False)
    start = time.perf_counter()
    fit_adapters(svc.engine, "duelist", episodes, config, executor=executor)
    seconds = time.perf_counter() - start
    svc.close()
    return seconds


def run(players: int = 32, episodes: int = 20, epochs: int = 5) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="npcadapt-fit-"))
    recorded = _record(tmp / "recorded", players, episodes)
    config = OfflineConfig(epochs=epochs, players_per_batch=8)
    result = {"benchmark": "fit", "players": players, "episodes_per_player": episodes, "epochs": epochs}
    local = _fit(tmp, "local", recorded, config)
    result["local_players_per_s"] = round(players / local, 2)
    try:
        import ray

        from ..training.ray_backend import RayExecutor
    except ImportError:
        result["ray"] = "not installed"
        return result
    archetype_dir = find_archetypes([BUILTIN_DIR])["duelist"].directory
    for workers in (1, 2):
        start = time.perf_counter()
        executor = RayExecutor(archetype_dir, config, workers=workers)
        ray.get(executor._task.remote(str(archetype_dir), {}, {}, config))  # warm the workers up
        result[f"ray{workers}_startup_s"] = round(time.perf_counter() - start, 2)
        seconds = _fit(tmp, f"ray{workers}", recorded, config, executor)
        result[f"ray{workers}_players_per_s"] = round(players / seconds, 2)
        result[f"ray{workers}_vs_local"] = round(local / seconds, 3)
        executor.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps(run()))
