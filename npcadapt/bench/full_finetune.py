"""Full fine-tuning as a per-player parameterisation: the reference LoRA is measured against.

Each player gets a dense delta on every actor weight and bias (a full copy of the actor,
stored as base + delta), trained by the very same :class:`OnlineTrainer`. Only the
adaptation benchmark (bench/adapt.py) uses it; serving stays LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from ..episodes import EpisodeTracker
from ..host import Actions, Host
from ..numerics import draw_categorical_torch, masked_log_probs
from ..policy import ActorCritic, LayerDelta
from ..training.online import OnlineConfig, OnlineTrainer, OptimizerState, PlayerUpdate


@dataclass(frozen=True)
class DenseLayer:
    name: str
    d_in: int
    d_out: int
    w_start: int

    @property
    def b_start(self) -> int:
        return self.w_start + self.d_out * self.d_in


class DenseFamily:
    """Per-player dense deltas of the actor layers, packed as rows of size `size`."""

    def __init__(self, policy: ActorCritic):
        offset, layers = 0, []
        for i, module in enumerate(policy.actor):
            lin = cast(nn.Linear, module)  # the actor is a ModuleList of Linears
            layers.append(DenseLayer(f"actor.{i}", lin.in_features, lin.out_features, offset))
            offset += lin.out_features * lin.in_features + lin.out_features
        self.layers = tuple(layers)
        self.size = offset

    def scalable_mask(self) -> torch.Tensor:
        return torch.ones(self.size, dtype=torch.bool)

    def delta_fn(self, rows: torch.Tensor) -> LayerDelta:
        layers = {layer.name: layer for layer in self.layers}
        n = rows.shape[0]

        def delta(name: str, x: torch.Tensor) -> torch.Tensor | None:
            layer = layers.get(name)
            if layer is None:
                return None
            w = rows[:, layer.w_start : layer.b_start].view(n, layer.d_out, layer.d_in)  # (N, d_out, d_in)
            b = rows[:, layer.b_start : layer.b_start + layer.d_out]  # (N, d_out)
            return torch.bmm(x.unsqueeze(1), w.transpose(1, 2)).squeeze(1) + b

        return delta

    def single_delta_fn(self, row: torch.Tensor) -> LayerDelta:
        """The delta of one player's row (P,) applied to every input row (evaluation)."""
        layers = {layer.name: layer for layer in self.layers}

        def delta(name: str, x: torch.Tensor) -> torch.Tensor | None:
            layer = layers.get(name)
            if layer is None:
                return None
            w = row[layer.w_start : layer.b_start].view(layer.d_out, layer.d_in)  # (d_out, d_in)
            return x @ w.T + row[layer.b_start : layer.b_start + layer.d_out]  # (N, d_out)

        return delta


class FullFinetuneHost(Host):
    """A :class:`~npcadapt.host.Host` like the Service, with full per-player copies instead of LoRA."""

    def __init__(self, policy: ActorCritic, archetype: str, config: OnlineConfig, seed: int = 0):
        self.policy = policy
        self.archetype = archetype
        self.family = DenseFamily(policy)
        self.trainer = OnlineTrainer(policy, self.family, config)
        self.config = config
        self.tracker = EpisodeTracker()
        self.params: dict[str, torch.Tensor] = {}
        # as UpdateOutcome.state is typed; an outcome with params (the only one kept) always has a state
        self.states: dict[str, OptimizerState | None] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self._ids = 0

    def _rows(self, players: Sequence[str]) -> torch.Tensor:
        zero = torch.zeros(self.family.size)
        return torch.stack([self.params.get(p, zero) for p in players])  # (N, P)

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, base: bool = False) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, np.float32))
        names, rows_of = np.unique(np.asarray(players, dtype=object), return_inverse=True)
        with torch.inference_mode():
            if base:
                return masked_log_probs(self.policy.logits(obs_t)).exp().numpy()
            n_actions = cast(nn.Linear, self.policy.actor[-1]).out_features  # a ModuleList of Linears
            out = torch.empty(len(players), n_actions)
            for i, player in enumerate(names):  # evaluation asks for many rows of few players
                rows = torch.from_numpy(np.flatnonzero(rows_of == i))
                logits = self.policy.logits(obs_t[rows], self.family.single_delta_fn(self._rows([player])[0]))
                out[rows] = masked_log_probs(logits).exp()
            return out.numpy()

    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> Actions:
        """Draws in torch from this host's generator (the engine draws with :mod:`npcadapt.sampling`)."""
        obs_np = np.asarray(obs, np.float32)
        obs_t = torch.from_numpy(obs_np)
        with torch.inference_mode():
            logits, value = self.policy(obs_t, self.family.delta_fn(self._rows(players)))
            logp_all = masked_log_probs(logits)  # (N, A)
            action = draw_categorical_torch(logp_all.exp(), self.generator)  # (N,)
            logp = logp_all.gather(1, action.unsqueeze(1)).squeeze(1)
        ids = np.arange(self._ids, self._ids + len(players))
        self._ids += len(players)
        self.tracker.record(archetype, players, npcs, obs_np, None, action.numpy(), logp.numpy(), value.numpy(), ids)
        return Actions(action.numpy())

    def feedback_batch(self, players: Sequence[str], npcs: Sequence[str], rewards, dones) -> None:
        self.tracker.feedback_batch(players, npcs, rewards, dones)

    def train_pending(self) -> int:
        ready = self.tracker.ready(self.config.episodes_per_update)
        taken = self.tracker.take(ready)
        items = [
            PlayerUpdate(p, self.params.get(p, torch.zeros(self.family.size)), eps, self.states.get(p))
            for (_, p), eps in taken.items()
        ]
        done = 0
        for outcome in self.trainer.update(items):
            if outcome.params is not None:
                self.params[outcome.player] = outcome.params
                self.states[outcome.player] = outcome.state
                done += 1
        return done
