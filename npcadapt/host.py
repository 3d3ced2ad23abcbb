"""The Host protocol: something that decides NPC actions and takes feedback on them.

The simulation loop (:func:`npcadapt.simulation.run_simulation`), the adaptation
benchmark and the demo drive a Host, whatever it is:

- :class:`npcadapt.service.Service`: the engine with LoRA adapters and online training;
- :class:`npcadapt.bench.full_finetune.FullFinetuneHost`: the same trainer on full copies;
- the Thompson-sampling baselines (:mod:`npcadapt.bench.baselines`);
- the demo's backends (:mod:`npcadapt.demo.backend`): the Service in-process, or a running
  bridge through :class:`npcadapt.client.Client`.

Implementations may take more keyword-only options than the protocol names (the
Service's ``masks``, ``greedy`` and ``max_players``) and return more than it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Decisions(Protocol):
    """What ``act_batch`` returns: at least each row's action (the Service's
    :class:`~npcadapt.types.BatchDecision` adds log-probabilities, values, versions)."""

    @property
    def action(self) -> np.ndarray:
        """(N,) int: the action index chosen for each row."""
        ...


@dataclass(frozen=True)
class Actions:
    """The smallest :class:`Decisions`: the actions alone."""

    action: np.ndarray  # (N,) int


class Host(Protocol):
    """Batched decisions and feedback per (player, NPC), adapter training, action probabilities."""

    def act_batch(self, archetype: str, players: Sequence[str], obs: Any, *, npcs: Sequence[str]) -> Decisions:
        """One decision per row: obs (N, D) for `players` (N,) and their NPCs `npcs` (N,)."""
        ...

    def feedback_batch(self, players: Sequence[str], npcs: Sequence[str], rewards: Any, dones: Any) -> object:
        """Rewards (N,) for each (player, NPC)'s latest decision; dones (N,) end their episodes.
        (What it returns is the implementation's own.)"""
        ...

    def train_pending(self) -> int:
        """Update the players with enough completed episodes now; returns how many were updated
        (0 for a host that learns as feedback arrives, or trains in the background)."""
        ...

    def action_probs(self, archetype: str, players: Sequence[str], obs: Any, *, base: bool = False) -> np.ndarray:
        """(N, A) action probabilities of each row's current policy, or of the base with
        `base`; nothing is drawn, logged or tracked."""
        ...
