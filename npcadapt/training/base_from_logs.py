"""Refreshing an archetype's base from recorded sessions: behaviour cloning of good play.

Episodes whose return is in the top `top_fraction` of the recordings are kept; the base
is fine-tuned (or trained fresh) to imitate the logged actions of those episodes
(cross-entropy), and its critic regresses to their discounted returns. The result is a
new base version: adapters trained against the old hash are refused by the engine (and
kept on disk), never silently applied.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w
import torch

from ..archetypes import Archetype, fresh_policy, load_archetype, save_base
from ..episodes import Episode
from ..errors import InvalidInputError
from ..fileio import write_atomic
from ..numerics import gae
from .base import CONFIG_NAME, RESULT_NAME


@dataclass(frozen=True)
class CloneConfig:
    """Settings of `train base --logs`."""

    top_fraction: float = 0.5  # keep episodes whose return is in this top share
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    gamma: float = 0.9  # for the critic's return targets
    value_coef: float = 0.5
    seed: int = 0
    init_from_current: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise InvalidInputError(f"top_fraction must be in (0, 1], got {self.top_fraction}")


def clone_base(
    directory: str | Path, episodes: list[Episode], config: CloneConfig = CloneConfig()
) -> tuple[Archetype, dict]:
    """Train the archetype in `directory` on the best recorded episodes; returns it and a summary."""
    directory = Path(directory)
    current = load_archetype(directory)
    spec = current.spec
    if not episodes:
        raise InvalidInputError(f"no recorded episodes of archetype {spec.name!r} to learn from")
    returns = np.array([ep.total_reward for ep in episodes])
    threshold = float(np.quantile(returns, 1 - config.top_fraction))
    kept = [ep for ep in episodes if ep.total_reward >= threshold]
    obs = torch.from_numpy(np.concatenate([np.stack(ep.obs) for ep in kept]))  # (T, D)
    if obs.shape[1] != spec.obs_dim:
        raise InvalidInputError(
            f"recorded observations have {obs.shape[1]} features, archetype {spec.name} expects {spec.obs_dim}"
        )
    actions = torch.tensor([a for ep in kept for a in ep.action])  # (T,)
    targets = torch.from_numpy(
        np.concatenate([gae(ep.reward, None, config.gamma, 1.0).astype(np.float32) for ep in kept])
    )  # (T,) reward-to-go
    gen = torch.Generator().manual_seed(config.seed)
    policy = fresh_policy(spec, config.seed)
    if config.init_from_current:
        policy.load_state_dict(current.policy.state_dict())
    policy.train().requires_grad_(True)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(obs), generator=gen)
        for i in range(0, len(obs), config.batch_size):
            idx = order[i : i + config.batch_size]
            logits, value = policy(obs[idx])
            loss = (
                torch.nn.functional.cross_entropy(logits, actions[idx])
                + config.value_coef * (value - targets[idx]).pow(2).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        agreement = float((policy.logits(obs).argmax(-1) == actions).float().mean())
    archetype = save_base(directory, dataclasses.replace(spec, trained=True), policy.eval().requires_grad_(False))
    summary = {
        "archetype": spec.name,
        "source": "recorded sessions",
        "previous_base_hash": current.base_hash,
        "base_hash": archetype.base_hash,
        "episodes": len(episodes),
        "episodes_kept": len(kept),
        "return_threshold": round(threshold, 4),
        "kept_mean_return": round(float(np.mean([e.total_reward for e in kept])), 4),
        "all_mean_return": round(float(returns.mean()), 4),
        "greedy_agreement_with_kept_actions": round(agreement, 4),
        "seconds": round(time.perf_counter() - start, 3),
        "seed": config.seed,
    }
    write_atomic(directory / CONFIG_NAME, tomli_w.dumps({"source": "logs", **dataclasses.asdict(config)}))
    write_atomic(directory / RESULT_NAME, json.dumps(summary, indent=1) + "\n")
    return archetype, summary
