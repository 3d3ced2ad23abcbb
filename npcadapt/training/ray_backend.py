"""Ray executors: offline adapter fitting and population-prior statistics, batches of players spread over a Ray cluster.

Each batch runs :func:`npcadapt.training.offline.fit_batch` in a Ray task that loads the
archetype's base from its directory; the driver writes adapters and progress as results
arrive, exactly as the local engine does. ``address="auto"`` joins a running cluster;
``None`` starts a local Ray with `workers` CPUs. Install with ``pip install 'npcadapt[ray]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..episodes import Episode
from ..errors import NpcAdaptError
from .offline import OfflineConfig

log = logging.getLogger(__name__)


def joined_ray(address: str | None, workers: int | None):
    """The ray module, initialised: joining the cluster at `address` ('auto': a running one),
    or a local Ray with `workers` CPUs (None: all)."""
    try:
        import ray
    except ImportError:
        raise NpcAdaptError("--engine ray needs Ray: pip install 'npcadapt[ray]'") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    return ray


def _fit_remote(
    archetype_dir: str, start: dict[str, np.ndarray], episodes: dict[str, list[Episode]], config: OfflineConfig
) -> dict[str, tuple[np.ndarray, dict]]:
    """Body of the Ray task (module-level so the worker imports it from npcadapt)."""
    from ..archetypes import load_archetype
    from ..lora.bank import AdapterLayout
    from .offline import fit_batch
    from .online import OnlineTrainer

    torch.set_num_threads(1)
    arch = load_archetype(archetype_dir)
    trainer = OnlineTrainer(arch.policy, AdapterLayout.from_spec(arch.spec), config.online())
    results = fit_batch(trainer, {p: torch.from_numpy(v) for p, v in start.items()}, episodes, config)
    return {p: (flat.numpy(), row) for p, (flat, row) in results.items()}


class RayExecutor:
    """Callable executor for :func:`fit_adapters` (one Ray task per batch of players)."""

    def __init__(
        self,
        archetype_dir: str | Path,
        config: OfflineConfig,
        *,
        address: str | None = None,
        workers: int | None = None,
    ):
        self.ray = joined_ray(address, workers)
        self.archetype_dir = str(archetype_dir)
        self.config = config
        self._task = self.ray.remote(num_cpus=1)(_fit_remote)

    def __call__(self, jobs) -> Iterator[dict]:
        refs = [
            self._task.remote(self.archetype_dir, {p: t.numpy() for p, t in start.items()}, eps, self.config)
            for start, eps in jobs
        ]
        while refs:
            done, refs = self.ray.wait(refs, num_returns=1)
            results = self.ray.get(done[0])
            yield {p: (torch.from_numpy(np.array(flat)), row) for p, (flat, row) in results.items()}

    def shutdown(self) -> None:
        self.ray.shutdown()


def _decisions_remote(archetype_dir: str, episodes: list[list[Episode]], gamma: float) -> list[tuple[np.ndarray, ...]]:
    """Body of a population-prior Ray task: each player's decisions as numpy arrays."""
    from ..archetypes import load_archetype
    from ..prior.library import decisions

    torch.set_num_threads(1)
    policy = load_archetype(archetype_dir).policy
    return [tuple(t.numpy() for t in decisions(policy, eps, gamma)) for eps in episodes]


class RayDecisions:
    """`rows_of` for :func:`npcadapt.prior.library.build_library`: players' decisions computed
    in Ray tasks of `players_per_task` players (same numbers as computing them here)."""

    def __init__(
        self,
        archetype_dir: str | Path,
        *,
        address: str | None = None,
        workers: int | None = None,
        players_per_task: int = 16,
    ):
        self.ray = joined_ray(address, workers)
        self.archetype_dir = str(archetype_dir)
        self.players_per_task = players_per_task
        self._task = self.ray.remote(num_cpus=1)(_decisions_remote)

    def __call__(self, episodes: list, gamma: float) -> list:
        from ..prior.library import Decisions

        n = self.players_per_task
        refs = [self._task.remote(self.archetype_dir, episodes[i : i + n], gamma) for i in range(0, len(episodes), n)]
        return [Decisions(*(torch.from_numpy(np.array(a)) for a in row)) for ref in refs for row in self.ray.get(ref)]

    def shutdown(self) -> None:
        self.ray.shutdown()
