"""Fitting per-player adapters from recorded sessions (off-policy).

Method: clipped importance-weighted policy gradient (PPO-clip against the *logged*
behaviour log-probabilities), several epochs over each player's recorded episodes,
many players per batched update, under the same KL-to-base bound as online training.
The clip keeps each player's policy within a trust region of what was actually played,
which is what makes learning from someone else's decisions safe.

Evaluation: per-decision weighted importance sampling (PDWIS) of the episode return,
for the fitted policy and for the base, from the same recorded episodes.

Publishing: each fitted adapter is stored as the version after the one it was fitted from
(read when the fit started), at once and through the engine's store. A store shared with
serving servers (Redis) refuses it by compare-and-set when an online update landed
meanwhile: an offline result never overwrites a newer online one; that player's row says
``"skipped": "newer online version"``. The same code runs whether the batches are fitted
here or on Ray (the executor only computes; this process writes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from ..adapter_meta import AdapterMeta
from ..engine import Engine
from ..episodes import Episode
from ..errors import StaleAdapterError
from ..fileio import write_atomic
from ..numerics import masked_kl_rows
from ..sampling import derived_seed
from .online import OnlineConfig, OnlineTrainer, PlayerUpdate

log = logging.getLogger(__name__)

SKIPPED_NEWER = "newer online version"  # a report row's "skipped": the store held a newer version


@dataclass(frozen=True)
class OfflineConfig:
    """Settings of `train adapters`."""

    epochs: int = 20  # passes over each player's recorded episodes
    players_per_batch: int = 64  # players updated together in one batched pass
    learning_rate: float = 1e-2
    clip_coef: float = 0.2
    kl_bound: float = 5.0  # same guardrail as online training
    gamma: float = 0.9
    gae_lambda: float = 0.5
    min_episodes: int = 1  # players with fewer recorded episodes are skipped
    seed: int = 0

    def online(self) -> OnlineConfig:
        return OnlineConfig(
            episodes_per_update=1,
            epochs=1,
            learning_rate=self.learning_rate,
            clip_coef=self.clip_coef,
            kl_bound=self.kl_bound,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            validation_gate=False,
        )  # recorded sessions are judged by importance sampling instead

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def pdwis(episodes: Sequence[Episode], target_logp: Sequence[np.ndarray], gamma: float = 1.0) -> float:
    """Per-decision weighted importance sampling estimate of the episode return.

    target_logp[i] holds log pi_target(a_t | s_t) for episode i's logged actions.
    """
    horizon = max(len(ep) for ep in episodes)
    weights = np.zeros((len(episodes), horizon))
    rewards = np.zeros((len(episodes), horizon))
    for i, (ep, lp) in enumerate(zip(episodes, target_logp)):
        log_rho = np.cumsum(np.asarray(lp, np.float64) - np.asarray(ep.logp, np.float64))
        weights[i, : len(ep)] = np.exp(np.clip(log_rho, -50, 50))
        rewards[i, : len(ep)] = ep.reward
    totals = weights.sum(0)
    per_step = np.divide((weights * rewards).sum(0), totals, out=np.zeros(horizon), where=totals > 0)
    return float((per_step * gamma ** np.arange(horizon)).sum())


def _steps(trainer: OnlineTrainer, episodes: Sequence[Episode]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All steps of `episodes`: obs (T, D), masks (T, A), logged actions (T,)."""
    n_actions = cast(nn.Linear, trainer.policy.actor[-1]).out_features  # the actor is a ModuleList of Linears
    obs = torch.from_numpy(np.concatenate([np.stack(ep.obs) for ep in episodes]))
    masks = torch.from_numpy(
        np.stack([m if m is not None else np.ones(n_actions, bool) for ep in episodes for m in ep.mask])
    )
    actions = torch.tensor([a for ep in episodes for a in ep.action])
    return obs, masks, actions


def _policy_logp(trainer: OnlineTrainer, params: torch.Tensor | None, obs, masks) -> torch.Tensor:
    """Masked log-probabilities (T, A) under `params` (None = the base)."""
    rows = None if params is None else params.unsqueeze(0).expand(len(obs), -1)
    with torch.no_grad():
        return trainer.log_probs(obs, masks, rows)


def evaluate(trainer: OnlineTrainer, params: torch.Tensor, episodes: Sequence[Episode], gamma: float) -> dict:
    """PDWIS return estimates of the fitted policy and of the base, and mean KL(fitted || base)."""
    obs, masks, actions = _steps(trainer, episodes)
    splits = np.cumsum([len(ep) for ep in episodes])[:-1]
    base = _policy_logp(trainer, None, obs, masks)
    fitted = _policy_logp(trainer, params, obs, masks)
    taken = lambda lp: np.split(lp.gather(1, actions.unsqueeze(1)).squeeze(1).numpy(), splits)
    return {
        "estimate_base": round(pdwis(episodes, taken(base), gamma), 4),
        "estimate_fitted": round(pdwis(episodes, taken(fitted), gamma), 4),
        "kl_to_base": round(float(masked_kl_rows(fitted, base, masks).mean()), 4),
    }


def fit_batch(
    trainer: OnlineTrainer, start: dict[str, torch.Tensor], episodes: dict[str, list[Episode]], config: OfflineConfig
) -> dict[str, tuple[torch.Tensor, dict]]:
    """Fit one batch of players together from their start adapters: {player: (params, report row)}.

    Pure computation (no store, no files), so a local loop or a Ray worker can run it.
    """
    params = dict(start)
    states: dict = {}  # each player's optimizer state, carried from epoch to epoch
    for _ in range(config.epochs):
        items = [PlayerUpdate(p, params[p], episodes[p], states.get(p)) for p in params]
        for outcome in trainer.update(items):
            if outcome.params is None:
                log.warning("player %r: non-finite update skipped, keeping the previous adapter", outcome.player)
                continue
            params[outcome.player] = outcome.params
            states[outcome.player] = outcome.state
    out = {}
    for p, flat in params.items():
        eps = episodes[p]
        out[p] = (
            flat,
            {
                "player": p,
                "episodes": len(eps),
                "steps": sum(len(e) for e in eps),
                "logged_return": round(float(np.mean([e.total_reward for e in eps])), 4),
                **evaluate(trainer, flat, eps, config.gamma),
            },
        )
    return out


# batches of (start adapters, episodes) -> results of fit_batch, in any order
Executor = Callable[[list[tuple[dict[str, torch.Tensor], dict[str, list[Episode]]]]], Iterator[dict]]


def fit_adapters(
    engine: Engine,
    archetype: str,
    episodes: dict[str, list[Episode]],
    config: OfflineConfig,
    *,
    state_file: Path | None = None,
    on_players: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> list[dict]:
    """Fit each player's adapter in `engine` (e.g. ``service.engine``) from their episodes;
    returns one report row per player.

    Batches run through `executor` (default: in this process, one after another; see
    :mod:`npcadapt.training.ray_backend` for Ray). Each fitted adapter is stored at once as
    the version after the one it started from (see the module docstring): a shared store
    refuses it when a newer version landed meanwhile, and that player's row gets
    ``"skipped": SKIPPED_NEWER``. With `state_file`, finished players (not skipped ones) are
    recorded after each batch, and a rerun with the same config skips them: the fit resumes
    after an interruption with the same adapters.
    """
    rt = engine.runtime(archetype)
    trainer = OnlineTrainer(rt.policy, rt.layout, config.online())
    state = _load_state(state_file, config)
    done_rows: dict[str, dict] = state["players"]
    todo = sorted(p for p, eps in episodes.items() if len(eps) >= config.min_episodes and p not in done_rows)
    starts: dict[str, torch.Tensor] = {}  # the adapter each fit starts from
    read: dict[str, tuple[int, AdapterMeta | None]] = {}  # the version it is, and its metadata
    for p in todo:
        starts[p], read[p] = _start(engine, archetype, p, config.seed)
    batches = [todo[i : i + config.players_per_batch] for i in range(0, len(todo), config.players_per_batch)]
    jobs = [({p: starts[p] for p in batch}, {p: episodes[p] for p in batch}) for batch in batches]
    skipped: dict[str, dict] = {}
    run = executor or (lambda js: (fit_batch(trainer, start, eps, config) for start, eps in js))
    for results in run(jobs):
        for p, (flat, row) in results.items():
            if not torch.equal(flat, starts[p]):
                version, after = read[p]
                try:
                    engine.publish_adapter_row(
                        archetype, p, flat, version=version + 1, after=after, updates=config.epochs
                    )
                except StaleAdapterError as exc:
                    log.warning("offline fit of player %r not stored: %s", p, exc)
                    skipped[p] = {**row, "skipped": SKIPPED_NEWER}  # not done: a rerun fits the new version
                    continue
            done_rows[p] = row
        engine.flush()
        _save_state(state_file, state)
        if on_players:
            on_players(len(results))
    rows = {**done_rows, **skipped}
    return [rows[p] for p in sorted(rows) if p in episodes]


def _start(
    engine: Engine, archetype: str, player: str, seed: int
) -> tuple[torch.Tensor, tuple[int, AdapterMeta | None]]:
    """The player's current adapter (to refine), else a fresh one seeded by (seed, player);
    with the version it is (a fresh one: the store's floor) and its metadata (None if fresh)."""
    floor = engine.version_floor(archetype, player)  # first: an adapter stored after it is read below
    current = engine.adapter_state(archetype, player)
    if current is not None:
        return current[0], (current[1].version, current[1])
    return engine.fresh_adapter_row(archetype, player, seed=derived_seed(str(seed), archetype, player)), (floor, None)


def _load_state(path: Path | None, config: OfflineConfig) -> dict:
    fresh = {"config": config.fingerprint(), "players": {}}
    if path is None or not path.exists():
        return fresh
    state = json.loads(path.read_text())
    if state.get("config") != config.fingerprint():
        log.warning("%s was written with other settings; starting over", path)
        return fresh
    return state


def _save_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    write_atomic(path, json.dumps(state))
