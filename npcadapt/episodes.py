"""Episode bookkeeping between decisions and feedback.

Each (player, npc) pair has at most one open episode: decisions append steps, feedback
adds reward to the latest step, ``done`` closes the episode and files it under the
player's completed episodes for that archetype, where the online trainer picks it up.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInputError


@dataclass
class Episode:
    """One NPC's episode with one player: per-step arrays once closed."""

    archetype: str
    player: str
    npc: str
    obs: list[np.ndarray] = field(default_factory=list)  # each (obs_dim,) float32
    mask: list[np.ndarray | None] = field(default_factory=list)  # each (n_actions,) bool or None
    action: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)  # behaviour log-prob at decision time
    value: list[float] = field(default_factory=list)  # critic value at decision time
    reward: list[float] = field(default_factory=list)
    decision: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.action)

    @property
    def total_reward(self) -> float:
        return float(sum(self.reward))


class EpisodeTracker:
    """Open episodes per (player, npc); completed ones per (archetype, player)."""

    def __init__(self, max_open_steps: int = 100_000):
        self.max_open_steps = max_open_steps
        self._open: dict[tuple[str, str], Episode] = {}
        self._done: dict[tuple[str, str], list[Episode]] = defaultdict(list)
        self._lock = threading.Lock()
        self.dropped_steps = 0

    def record(self, archetype: str, players, npcs, obs: np.ndarray, masks, actions, logps, values, decisions) -> None:
        """Append one step per row to that (player, npc)'s open episode."""
        with self._lock:
            for i, (player, npc) in enumerate(zip(players, npcs)):
                key = (player, npc)
                ep = self._open.get(key)
                if ep is None or ep.archetype != archetype:
                    ep = self._open[key] = Episode(archetype, player, npc)
                if len(ep) >= self.max_open_steps:  # an NPC that never gets `done`: keep the newest steps
                    self._trim(ep)
                ep.obs.append(obs[i])
                ep.mask.append(None if masks is None else masks[i])
                ep.action.append(int(actions[i]))
                ep.logp.append(float(logps[i]))
                ep.value.append(float(values[i]))
                ep.reward.append(0.0)
                ep.decision.append(int(decisions[i]))

    def _trim(self, ep: Episode) -> None:
        half = len(ep) // 2
        for name in ("obs", "mask", "action", "logp", "value", "reward", "decision"):
            del getattr(ep, name)[:half]
        self.dropped_steps += half

    def feedback(self, player: str, npc: str, reward: float, done: bool) -> Episode | None:
        """Add reward to the latest step of (player, npc); returns the episode if it closed."""
        with self._lock:
            ep = self._open.get((player, npc))
            if ep is None or not len(ep):
                raise InvalidInputError(f"no decision to attach feedback to for player {player!r}, npc {npc!r}")
            ep.reward[-1] += float(reward)
            if not done:
                return None
            del self._open[(player, npc)]
            self._done[(ep.archetype, player)].append(ep)
            return ep

    def completed_count(self, archetype: str, player: str) -> int:
        with self._lock:
            return len(self._done.get((archetype, player), ()))

    def ready(self, min_episodes: int) -> list[tuple[str, str]]:
        """(archetype, player) keys with at least `min_episodes` completed episodes."""
        with self._lock:
            return [k for k, eps in self._done.items() if len(eps) >= min_episodes]

    def take(self, keys) -> dict[tuple[str, str], list[Episode]]:
        """Remove and return the completed episodes of `keys`."""
        with self._lock:
            return {k: self._done.pop(k) for k in keys if k in self._done}

    def forget_player(self, archetype: str, player: str) -> None:
        """Drop everything tracked for one player of one archetype (used by reset)."""
        with self._lock:
            self._done.pop((archetype, player), None)
            for key in [k for k, ep in self._open.items() if k[0] == player and ep.archetype == archetype]:
                del self._open[key]

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
