"""Episode bookkeeping between decisions and feedback.

Each (player, npc) pair has at most one open episode: decisions append steps, feedback
adds reward to the latest step, ``done`` closes the episode and files it under the
player's completed episodes for that archetype, where the online trainer picks it up.

Recording is on the serving hot path, so it stays column-wise: one ``record`` call
keeps its batch's arrays once (a :class:`_Batch`), and an open episode holds only a
batch reference and a row number per step (two flat lists: no per-step objects for the
garbage collector to walk). Steps become an :class:`Episode`'s per-step lists
when the trainer takes the episode.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError

Rewards = Sequence[float] | npt.NDArray[np.floating[Any]]  # one reward per feedback row
Dones = Sequence[bool] | npt.NDArray[np.bool_]  # one flag per feedback row: the episode ended


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


class _Batch:
    """The arrays of one `record` call, shared by every step that came from it."""

    __slots__ = ("action", "decision", "logp", "masks", "obs", "value")

    def __init__(
        self,
        obs: npt.ArrayLike,
        masks: npt.ArrayLike | None,
        action: npt.ArrayLike,
        logp: npt.ArrayLike,
        value: npt.ArrayLike,
        decision: npt.ArrayLike,
    ) -> None:
        self.obs = np.array(obs, dtype=np.float32)  # (N, D), a copy: callers may reuse theirs
        self.masks = None if masks is None else np.array(masks, dtype=bool)  # (N, A)
        # (N,) each, copies: the caller's result arrays are theirs to change
        self.action, self.logp, self.value, self.decision = (np.array(a) for a in (action, logp, value, decision))


class _Steps:
    """An episode in progress: step k is row rows[k] of batches[k]; rewards by step index."""

    __slots__ = ("archetype", "batches", "rewards", "rows")

    def __init__(self, archetype: str):
        self.archetype = archetype
        self.batches: list[_Batch] = []
        self.rows: list[int] = []
        self.rewards: dict[int, float] = {}  # step index -> reward (absent = 0)

    def trim(self) -> int:
        """Drop the older half of the steps; returns how many were dropped."""
        half = len(self.rows) // 2
        del self.batches[:half], self.rows[:half]
        self.rewards = {i - half: r for i, r in self.rewards.items() if i >= half}
        return half

    def episode(self, player: str, npc: str) -> Episode:
        ep = Episode(self.archetype, player, npc)
        for batch, i in zip(self.batches, self.rows):
            ep.obs.append(batch.obs[i])
            ep.mask.append(None if batch.masks is None else batch.masks[i])
            ep.action.append(int(batch.action[i]))
            ep.logp.append(float(batch.logp[i]))
            ep.value.append(float(batch.value[i]))
            ep.decision.append(int(batch.decision[i]))
        ep.reward = [0.0] * len(self.rows)
        for i, r in self.rewards.items():
            ep.reward[i] = r
        return ep


class EpisodeTracker:
    """Open episodes per (player, npc); completed ones per (archetype, player).

    Completed episodes wait (for the trainer, or for their player to complete enough of
    them) holding at most `max_done_steps` steps in all: an episode completing past that
    bound discards the oldest completed episodes, of any player, until it fits (one longer
    than the bound by itself is discarded at once), counted in ``dropped_episodes``. Oldest
    first, so a player who never completes enough episodes for an update does not hold
    the bound forever; feedback itself is never refused for it.
    """

    def __init__(self, max_open_steps: int = 4096, max_done_steps: int | None = None):
        # An NPC whose episode never ends keeps its newest steps only: each step refers to the
        # whole decision batch it came from, so this also bounds the batches it keeps alive
        # (referring, not copying each episode's own rows out, keeps recording off the hot path).
        self.max_open_steps = max_open_steps
        self.max_done_steps = max_done_steps  # None: unbounded
        self._open: dict[tuple[str, str], _Steps] = {}
        self._done: dict[tuple[str, str], list[tuple[str, _Steps]]] = defaultdict(list)  # -> [(npc, steps)]
        self._order: OrderedDict[int, tuple[str, str]] = OrderedDict()  # id(steps) -> key, oldest first
        self._lock = threading.RLock()  # feedback_batch holds it across feedback calls
        self.dropped_steps = 0
        self.dropped_episodes = 0  # completed episodes discarded past max_done_steps
        self.done_steps = 0  # steps of completed episodes held (not yet taken by the trainer)

    def record(
        self,
        archetype: str,
        players: Sequence[str],
        npcs: Sequence[str],
        obs: np.ndarray,
        masks: npt.ArrayLike | None,
        actions: npt.ArrayLike,
        logps: npt.ArrayLike,
        values: npt.ArrayLike,
        decisions: npt.ArrayLike,
    ) -> None:
        """Append one step per row to that (player, npc)'s open episode."""
        batch = _Batch(obs, masks, actions, logps, values, decisions)
        limit = self.max_open_steps
        with self._lock:
            open_ = self._open
            for i, key in enumerate(zip(players, npcs)):
                ep = open_.get(key)
                if ep is None or ep.archetype != archetype:
                    ep = open_[key] = _Steps(archetype)
                elif len(ep.rows) >= limit:  # an NPC that never gets `done`: keep the newest steps
                    self.dropped_steps += ep.trim()
                ep.batches.append(batch)
                ep.rows.append(i)

    def feedback(self, player: str, npc: str, reward: float, done: bool) -> bool:
        """Add reward to the latest step of (player, npc); True when `done` closed the episode."""
        self.feedback_batch([player], [npc], [reward], [done])
        return bool(done)

    def feedback_batch(
        self, players: Sequence[str], npcs: Sequence[str], rewards: Rewards, dones: Dones, *, skip_refused: bool = False
    ) -> list[int]:
        """Several `feedback` calls in order: all or none (see :meth:`refused`), or with
        `skip_refused` every row but the refused ones, whose indices are returned."""
        with self._lock:
            refused = self.refused(players, npcs, dones)
            if refused and not skip_refused:
                i = refused[0]
                raise InvalidInputError(f"no decision to attach feedback to for player {players[i]!r}, npc {npcs[i]!r}")
            skip = set(refused)
            for k, (player, npc, reward, done) in enumerate(zip(players, npcs, rewards, dones)):
                if k in skip:
                    continue
                ep = self._open[(player, npc)]
                last = len(ep.rows) - 1
                ep.rewards[last] = ep.rewards.get(last, 0.0) + float(reward)
                if done:
                    del self._open[(player, npc)]
                    self._complete((ep.archetype, player), npc, ep)
            return refused

    def _complete(self, key: tuple[str, str], npc: str, ep: _Steps) -> None:
        """File a completed episode, then discard the oldest ones past `max_done_steps`."""
        self._done[key].append((npc, ep))
        self._order[id(ep)] = key
        self.done_steps += len(ep.rows)
        bound = self.max_done_steps
        while bound is not None and self.done_steps > bound:
            _, old_key = self._order.popitem(last=False)
            eps = self._done[old_key]  # a key's episodes complete in order: its oldest is first
            _, old = eps.pop(0)
            if not eps:
                del self._done[old_key]
            self.done_steps -= len(old.rows)
            self.dropped_episodes += 1

    def _forget(self, eps: Iterable[tuple[str, _Steps]]) -> None:
        for _, steps in eps:
            self._order.pop(id(steps), None)
            self.done_steps -= len(steps.rows)

    def refused(self, players: Sequence[str], npcs: Sequence[str], dones: Dones) -> list[int]:
        """Indices of feedback rows with no decision to attach to, taken in order: a row
        after the one that closed its episode is refused too."""
        with self._lock:
            refused: list[int] = []
            closed: set[tuple[str, str]] = set()
            for i, key in enumerate(zip(players, npcs)):
                ep = self._open.get(key)
                if key in closed or ep is None or not ep.rows:
                    refused.append(i)
                elif dones[i]:
                    closed.add(key)
            return refused

    def completed_count(self, archetype: str, player: str) -> int:
        with self._lock:
            return len(self._done.get((archetype, player), ()))

    def ready(
        self, min_episodes: int, limit: int | None = None, per_archetype: Mapping[str, int] | None = None
    ) -> list[tuple[str, str]]:
        """(archetype, player) keys with at least `min_episodes` completed episodes (or the
        archetype's own count in `per_archetype`), in the order they completed their first
        pending one; the first `limit` of them."""
        need = per_archetype or {}
        with self._lock:
            keys = (k for k, eps in self._done.items() if len(eps) >= need.get(k[0], min_episodes))
            return list(itertools.islice(keys, limit))

    def take(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[Episode]]:
        """Remove and return the completed episodes of `keys`."""
        with self._lock:
            taken = {k: self._done.pop(k) for k in keys if k in self._done}
            for eps in taken.values():
                self._forget(eps)
        return {k: [steps.episode(k[1], npc) for npc, steps in eps] for k, eps in taken.items()}

    def restore(self, archetype: str, player: str, episodes: Sequence[Episode]) -> None:
        """File completed episodes that were taken but could not be used (their forward to
        another server failed) again, as the newest of that player's."""
        with self._lock:
            for ep in episodes:
                steps = _Steps(archetype)
                if len(ep):
                    given = [m for m in ep.mask if m is not None]
                    masks = (
                        None
                        if not given
                        else np.stack([np.ones(len(given[0]), bool) if m is None else m for m in ep.mask])
                    )
                    steps.batches = [_Batch(np.stack(ep.obs), masks, ep.action, ep.logp, ep.value, ep.decision)] * len(
                        ep
                    )
                    steps.rows = list(range(len(ep)))
                    steps.rewards = {i: r for i, r in enumerate(ep.reward) if r}
                self._complete((archetype, player), ep.npc, steps)

    def forget_player(self, archetype: str, player: str) -> None:
        """Drop everything tracked for one player of one archetype (used by reset)."""
        with self._lock:
            self._forget(self._done.pop((archetype, player), ()))
            for key in [k for k, ep in self._open.items() if k[0] == player and ep.archetype == archetype]:
                del self._open[key]

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def open_keys(self) -> list[tuple[str, str]]:
        """The (player, npc) of every open episode: a snapshot, oldest opened first."""
        with self._lock:
            return list(self._open)

    def open_steps(self, player: str, npc: str) -> int:
        """Steps held by (player, npc)'s open episode (each refers to one decision batch); 0 if none is open."""
        with self._lock:
            ep = self._open.get((player, npc))
            return 0 if ep is None else len(ep.rows)

    def done_count(self) -> int:
        """Completed episodes held, of all players: not yet taken by the trainer nor discarded."""
        with self._lock:
            return len(self._order)
