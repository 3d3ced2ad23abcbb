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
from typing import cast

from ..lora.bank import AdapterLayout
from ..lora.layout import fresh_row
from ..policy import ActorCritic
from ..prior.library import Library
from ..prior.trainer import PosteriorState, PriorTrainer
from .online import OnlineConfig, OnlineTrainer, OptimizerState, PlayerUpdate, UpdateOutcome


class InProcessTrainer:
    """Online trainers by archetype and each player's state (optimizer or posterior), kept
    in a bounded LRU (in memory: a restart starts every player's trainer state afresh).

    An archetype with a population prior in `libraries` (the caller leaves them out when
    ``config.prior`` is off) adapts with :class:`~npcadapt.prior.trainer.PriorTrainer`, the
    others with PPO (:class:`~npcadapt.training.online.OnlineTrainer`)."""

    def __init__(
        self,
        models: Mapping[str, tuple[ActorCritic, AdapterLayout]],
        config: OnlineConfig,
        capacity: int,
        libraries: Mapping[str, Library] | None = None,
    ):
        libraries = libraries or {}
        self.trainers = {
            name: PriorTrainer(policy, layout, libraries[name], config)
            if name in libraries
            else OnlineTrainer(policy, layout, config)
            for name, (policy, layout) in models.items()
        }
        self.states: OrderedDict[tuple[str, str], OptimizerState | PosteriorState] = OrderedDict()
        self.capacity = capacity
        self._lock = threading.Lock()  # guards states: forget may come from another thread

    ready = True  # nothing to start

    def wait_ready(self, stop=None) -> bool:
        return True

    def update(self, archetype: str, items: Sequence[PlayerUpdate]) -> list[UpdateOutcome]:
        """One batched update of `items` (their `state`, and for new players their fresh
        adapter, are filled in here); remembers the new states."""
        trainer = self.trainers[archetype]
        layout = cast(AdapterLayout, trainer.family)  # __init__ built every trainer on its AdapterLayout
        with self._lock:
            items = [
                replace(
                    it,
                    state=self.states.get((archetype, it.player)) or self._warm_start(archetype, it.player),
                    params=fresh_row(layout, archetype, it.player) if it.params is None else it.params,
                )
                for it in items
            ]
        outcomes = self.trainers[archetype].update(items)
        with self._lock:
            for outcome in outcomes:
                if outcome.params is not None:  # an update that ran: it always carries the new state
                    self._remember(archetype, outcome.player, cast(OptimizerState | PosteriorState, outcome.state))
        return outcomes

    def _warm_start(self, archetype: str, player: str) -> PosteriorState | None:
        """A new player's start from their posteriors with other archetypes (cross-archetype
        transfer), where this archetype's prior has a transfer matrix built on those cohorts."""
        trainer = self.trainers[archetype]
        if not isinstance(trainer, PriorTrainer):
            return None
        sources = {}
        for name, fingerprint in trainer.library.transfer_from.items():
            state = self.states.get((name, player))
            source = self.trainers.get(name)
            if (
                isinstance(state, PosteriorState)
                and isinstance(source, PriorTrainer)
                and source.library.fingerprint == fingerprint
            ):
                sources[name] = state
        return trainer.warm_state(sources) if sources else None

    def _remember(self, archetype: str, player: str, state: OptimizerState | PosteriorState) -> None:
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
