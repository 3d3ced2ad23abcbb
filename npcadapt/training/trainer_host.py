"""Where online updates run: every archetype's trainer plus each player's carried state.

:class:`InProcessTrainer` runs :class:`~npcadapt.training.online.OnlineTrainer` in the
calling thread; :class:`~npcadapt.training.trainer_process.TrainerProcess` runs the same
object in a child process. Both answer ``update(archetype, items)`` with the same
outcomes and ``forget(archetype, player)``, and say whether they are ``ready`` (a child
process takes seconds to start), so the Service does not care which it has.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..engine import fresh_row
from ..lora.bank import AdapterLayout
from ..policy import ActorCritic
from .online import OnlineConfig, OnlineTrainer, OptimizerState, PlayerUpdate, UpdateOutcome


class InProcessTrainer:
    """Online trainers by archetype and each player's OptimizerState, kept in a bounded LRU
    (in memory: a restart starts every player's optimizer and validation evidence afresh)."""

    def __init__(self, models: Mapping[str, tuple[ActorCritic, AdapterLayout]], config: OnlineConfig, capacity: int):
        self.trainers = {name: OnlineTrainer(policy, layout, config) for name, (policy, layout) in models.items()}
        self.states: OrderedDict[tuple[str, str], OptimizerState] = OrderedDict()
        self.capacity = capacity
        self._lock = threading.Lock()  # guards states: forget may come from another thread

    ready = True  # nothing to start

    def wait_ready(self, stop=None) -> bool:
        return True

    def update(self, archetype: str, items: Sequence[PlayerUpdate]) -> list[UpdateOutcome]:
        """One batched update of `items` (their `state`, and for new players their fresh
        adapter, are filled in here); remembers the new states."""
        layout = self.trainers[archetype].family
        with self._lock:
            items = [replace(it, state=self.states.get((archetype, it.player)),
                             params=fresh_row(layout, archetype, it.player) if it.params is None else it.params)
                     for it in items]
        outcomes = self.trainers[archetype].update(items)
        with self._lock:
            for outcome in outcomes:
                if outcome.params is not None:
                    self._remember(archetype, outcome.player, outcome.state)
        return outcomes

    def _remember(self, archetype: str, player: str, state: OptimizerState) -> None:
        key = (archetype, player)
        self.states[key] = state
        self.states.move_to_end(key)
        while len(self.states) > self.capacity:
            self.states.popitem(last=False)

    def forget(self, archetype: str, player: str) -> None:
        with self._lock:
            self.states.pop((archetype, player), None)

    def close(self) -> None:
        pass
