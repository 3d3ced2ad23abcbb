"""A population prior built from recorded sessions: cohorts of players and their reward models.

Building (:func:`build_library`): every recorded player's decisions become sufficient
statistics of a Bayesian linear reward model on the base's last hidden features
(:mod:`npcadapt.prior.bayes`); players are clustered by what their posterior-mean model
predicts on a shared probe of recorded observations (k-means in function space, so two
players who reward the same actions land together whatever their data); each cohort's
model is the posterior of its pooled statistics, with its covariance inflated so that a
new player can still differ from the cohort. The mixture weights are the cohort sizes.

Stored (:func:`save_library` / :func:`load_library`) as safetensors beside the archetype,
bound to the base hash: a library built on other base weights is refused like a stale
adapter, and a damaged file is refused with the reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..archetypes import Archetype
from ..episodes import Episode
from ..errors import AdapterMismatchError, InvalidInputError, StoreError
from ..fileio import write_atomic
from .bayes import Stats, posterior

log = logging.getLogger(__name__)

LIBRARY_NAME = "population_prior.safetensors"


@dataclass(frozen=True)
class LibraryConfig:
    """Settings of `train library` (saved in the file's metadata)."""

    cohorts: int = 10  # K
    noise_var: float = 0.25  # reward noise variance of every model
    weight_precision: float = 100.0  # precision of the broad prior each player's model starts from (strong
    # shrinkage: recorded play rarely tries most actions, and unshrunk models cluster by noise)
    inflate: float = 2.0  # cohort covariance multiplier: room for a player to differ from the cohort
    gamma: float = 0.0  # discount of the reward-to-go target (0: immediate reward; > 0 for sequential games)
    probe: int = 512  # recorded observations the players' models are compared on
    min_decisions: int = 12  # players with fewer recorded decisions are left out
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cohorts < 1 or self.probe < 1 or self.min_decisions < 1:
            raise InvalidInputError(f"LibraryConfig: cohorts, probe and min_decisions must be >= 1: {self}")
        if not (self.noise_var > 0 and self.weight_precision > 0 and self.inflate >= 1 and 0 <= self.gamma <= 1):
            raise InvalidInputError(f"LibraryConfig: noise_var and weight_precision must be > 0, inflate >= 1, "
                                    f"gamma in [0, 1]: {self}")


@dataclass(frozen=True)
class Library:
    """K cohort reward models for one archetype's base."""

    archetype: str
    base_hash: str
    mean: torch.Tensor  # (K, A, H) float64
    cov: torch.Tensor  # (K, A, H, H) float64
    log_weights: torch.Tensor  # (K,) log mixture weights
    noise_var: float
    meta: dict

    @property
    def cohorts(self) -> int:
        return int(self.mean.shape[0])


def reward_to_go(rewards: Sequence[float], gamma: float) -> np.ndarray:
    """(T,) discounted reward still to come at each step (the rewards themselves when gamma is 0)."""
    out, running = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def player_stats(archetype: Archetype, episodes: Sequence[Episode], gamma: float) -> tuple[Stats, torch.Tensor]:
    """One player's statistics and their observations (T, D)."""
    policy = archetype.policy
    obs = torch.as_tensor(np.stack([o for ep in episodes for o in ep.obs]), dtype=torch.float32)  # (T, D)
    actions = torch.as_tensor([a for ep in episodes for a in ep.action], dtype=torch.int64)  # (T,)
    y = torch.as_tensor(np.concatenate([reward_to_go(ep.reward, gamma) for ep in episodes]))  # (T,)
    with torch.inference_mode():
        hidden = policy.actor_features(obs)  # (T, H)
    return Stats.empty(policy.actor[-1].out_features, hidden.shape[1]).add(hidden, actions, y), obs


def _kmeans(points: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """(N,) cluster labels; k-means++ seeding, Lloyd iterations."""
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d = np.min([((points - c) ** 2).sum(-1) for c in centres], axis=0)
        centres.append(points[rng.choice(len(points), p=d / d.sum())] if d.sum() > 0 else points[rng.integers(len(points))])
    centres = np.stack(centres)
    for _ in range(iters):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels


def build_library(archetype: Archetype, episodes: Mapping[str, Sequence[Episode]],
                  config: LibraryConfig = LibraryConfig()) -> tuple[Library, dict[str, int]]:
    """Cohort models from recorded players' episodes; also returns each player's cohort."""
    eligible = {p: eps for p, eps in episodes.items() if sum(len(ep) for ep in eps) >= config.min_decisions}
    if len(eligible) < config.cohorts:
        raise InvalidInputError(f"train library: {len(eligible)} players with >= {config.min_decisions} recorded "
                                f"decisions, fewer than the {config.cohorts} cohorts asked for")
    players = sorted(eligible)
    stats, observations = zip(*(player_stats(archetype, eligible[p], config.gamma) for p in players))
    n_actions, hidden = stats[0].hy.shape
    broad_mean = torch.zeros(n_actions, hidden, dtype=torch.float64)
    broad_cov = torch.eye(hidden, dtype=torch.float64).expand(n_actions, hidden, hidden) / config.weight_precision
    means = torch.stack([posterior(broad_mean, broad_cov, s, config.noise_var)[0] for s in stats])  # (N, A, H)
    pool = torch.cat(observations)
    pick = np.random.default_rng(config.seed).choice(len(pool), min(config.probe, len(pool)), replace=False)
    with torch.inference_mode():
        probe_h = archetype.policy.actor_features(pool[torch.as_tensor(pick)]).double()  # (S, H)
    predicted = torch.einsum("sh,nah->nsa", probe_h, means).reshape(len(players), -1).numpy()  # (N, S * A)
    labels = _kmeans(predicted, config.cohorts, config.seed)
    cohort_mean, cohort_cov, sizes = [], [], []
    for k in range(config.cohorts):
        members = [s for s, label in zip(stats, labels) if label == k]
        if not members:
            continue
        pooled = Stats(*(torch.stack(parts).sum(0) for parts in zip(*members)))
        mean, cov = posterior(broad_mean, broad_cov, pooled, config.noise_var)
        cohort_mean.append(mean)
        cohort_cov.append(cov * config.inflate)
        sizes.append(len(members))
    sizes_t = torch.tensor(sizes, dtype=torch.float64)
    meta = {"config": config.__dict__, "players": len(players), "cohort_sizes": sizes}
    library = Library(archetype.name, archetype.base_hash, torch.stack(cohort_mean), torch.stack(cohort_cov),
                      torch.log(sizes_t / sizes_t.sum()), config.noise_var, meta)
    return library, dict(zip(players, (int(x) for x in labels)))


def save_library(library: Library, path: str | Path) -> Path:
    """Write the library (float32 tensors, metadata: archetype, base hash, settings) atomically."""
    path = Path(path)
    tensors = {"mean": library.mean.float().contiguous(), "cov": library.cov.float().contiguous(),
               "log_weights": library.log_weights.float().contiguous()}
    metadata = {"archetype": library.archetype, "base_hash": library.base_hash,
                "noise_var": repr(library.noise_var), "meta": json.dumps(library.meta)}
    write_atomic(path, save(tensors, metadata=metadata))
    return path


def load_library(path: str | Path, archetype: Archetype) -> Library:
    """Read a library for `archetype`; refuses one built on another base or a damaged file."""
    path = Path(path)
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise StoreError(f"population prior {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreError(f"population prior {path} cannot be read: {exc}") from None
    if metadata.get("archetype") != archetype.name or metadata.get("base_hash") != archetype.base_hash:
        raise AdapterMismatchError(
            f"population prior {path} was built for {metadata.get('archetype')!r} version "
            f"{metadata.get('base_hash')!r}, not {archetype.name!r} version {archetype.base_hash!r}: rebuild it "
            "with `npcadapt train library`")
    n_actions, hidden = archetype.policy.actor[-1].out_features, archetype.policy.actor[-1].in_features
    mean, cov, log_w = tensors.get("mean"), tensors.get("cov"), tensors.get("log_weights")
    if (mean is None or cov is None or log_w is None or mean.ndim != 3 or tuple(mean.shape[1:]) != (n_actions, hidden)
            or tuple(cov.shape) != (mean.shape[0], n_actions, hidden, hidden) or tuple(log_w.shape) != (mean.shape[0],)):
        raise StoreError(f"population prior {path} has tensors {({k: tuple(v.shape) for k, v in tensors.items()})} "
                         f"that do not fit {archetype.name} ({n_actions} actions, {hidden} hidden)")
    if not all(torch.isfinite(t).all() for t in (mean, cov, log_w)):
        raise StoreError(f"population prior {path} holds non-finite numbers")
    return Library(archetype.name, archetype.base_hash, mean.double(), cov.double(), log_w.double(),
                   float(metadata.get("noise_var", "0.25")), json.loads(metadata.get("meta", "{}")))
