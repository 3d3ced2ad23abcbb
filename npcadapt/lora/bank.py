"""Stacked per-player adapters for one archetype: resident slots, LRU eviction, atomic swaps.

All of a player's LoRA tensors are packed into one flat row of ``storage`` (S, P) (which
slice is which layer's A and B: :mod:`npcadapt.lora.layout`), so a batch gathers every
layer's A and B with a single ``index_select``. Slot 0 is the zero adapter: rows of
unknown players point at it and get the base policy exactly.

Residency is LRU at batch granularity: each lookup stamps the slots it used with a
tick; eviction takes the stalest slot not used by the current batch, handing it to the
write-back callback first when it changed (the engine's callback queues it for a writer
thread, see npcadapt/writeback.py). Writes and gathers share one lock, so a forward pass
works on a snapshot and never sees half of an update.

No disk I/O under the lock: :meth:`AdapterBank.prefetch` runs the loader for players
the bank does not know before the lock is taken, and :meth:`AdapterBank.lookup` installs
what it read unless that player was evicted or removed meanwhile (a generation count per
player being read tells), in which case the caller reads again.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import AdapterMismatchError, InvalidInputError
from .layout import AdapterLayout

log = logging.getLogger(__name__)

ZERO_SLOT = 0


# player -> (flat adapter (P,), meta) or None when the player has no stored adapter
Loader = Callable[[str], "tuple[torch.Tensor, Any] | None"]
# (player, flat adapter (P,), meta) -> None; persists a changed adapter before eviction
Writeback = Callable[[str, torch.Tensor, Any], None]


class Prefetch:
    """What :meth:`AdapterBank.prefetch` read for the players the bank did not know, and the
    generation of each player when the read began (a later eviction or removal bumps it)."""

    __slots__ = ("generations", "loaded")

    def __init__(self, generations: dict[str, int]):
        self.loaded: dict[str, tuple[torch.Tensor, Any] | None] = {}
        self.generations = generations


class _NeedsLoad(Exception):
    """Internal: a lookup that may not load met a player it has no valid read for."""


class AdapterBank:
    """Resident adapters of one archetype in a (capacity + 1, P) tensor; slot 0 is zero."""

    def __init__(
        self,
        layout: AdapterLayout,
        capacity: int,
        *,
        loader: Loader | None = None,
        writeback: Writeback | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        if capacity < 1:
            raise InvalidInputError(f"adapter bank capacity must be >= 1, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.dtype = dtype
        self.storage = torch.zeros(capacity + 1, layout.size, dtype=dtype, device=device)  # (S, P), never replaced
        self.lock = threading.RLock()
        self._loader = loader
        self._writeback = writeback
        self._slot_of: dict[str, int] = {}  # resident player -> slot >= 1; known-absent player -> 0
        self._player_of: list[str | None] = [None] * (capacity + 1)
        self._meta: list[Any] = [None] * (capacity + 1)
        self._last_used = np.zeros(capacity + 1, dtype=np.int64)
        self._dirty = np.zeros(capacity + 1, dtype=bool)
        self._version = np.zeros(capacity + 1, dtype=np.int64)
        self._content = np.zeros(capacity + 1, dtype=np.int64)  # renumbered at every write of a slot's row
        self._writes = itertools.count(1)
        self._free = list(range(capacity, 0, -1))
        self._absent = 0  # how many known-absent players _slot_of holds
        self._reading: dict[str, list[int]] = {}  # player being prefetched -> [readers, generation]
        self._tick = 1
        self.evictions = 0
        self.locked_loads = 0  # loads run under the lock (a lookup without a valid prefetch)

    # -- residency ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot_of) - self._absent

    def __contains__(self, player: str) -> bool:
        return self._slot_of.get(player, ZERO_SLOT) != ZERO_SLOT

    def resident_players(self) -> list[str]:
        with self.lock:
            return [p for p, s in self._slot_of.items() if s != ZERO_SLOT]

    def prefetch(self, players: Sequence[str]) -> Prefetch | None:
        """Run the loader (disk I/O), without the lock, for the players the bank does not
        know; None when it knows them all (the usual case: no lock is taken). Pass the
        result to :meth:`lookup`, then to :meth:`release`."""
        known = self._slot_of
        if self._loader is None or all(map(known.__contains__, players)):
            return None
        with self.lock:
            generations = {}
            for player in dict.fromkeys(p for p in players if p not in self._slot_of):
                reading = self._reading.setdefault(player, [0, 0])
                reading[0] += 1
                generations[player] = reading[1]
        pre = Prefetch(generations)
        try:
            for player in generations:
                pre.loaded[player] = self._loader(player)
        except BaseException:
            self.release(pre)
            raise
        return pre

    def release(self, pre: Prefetch | None) -> None:
        """Done with a prefetch (idempotent)."""
        if pre is None or not pre.generations:
            return
        with self.lock:
            for player in pre.generations:
                reading = self._reading[player]
                reading[0] -= 1
                if not reading[0]:
                    del self._reading[player]
        pre.generations = {}

    def _changed(self, player: str) -> None:
        """`player`'s newest version moved (evicted, removed): reads begun before are stale."""
        reading = self._reading.get(player)
        if reading is not None:
            reading[1] += 1

    def lookup(
        self, players: Sequence[str], prefetched: Prefetch | None = None, *, may_load: bool = True
    ) -> np.ndarray | None:
        """Slots for a batch's players (int64, (N,)), loading stored adapters on a miss.

        Players without an adapter map to the zero slot. All slots used by this batch are
        stamped as most recently used and protected from eviction while it loads others.
        A miss uses `prefetched` when it is still valid; otherwise it runs the loader under
        the lock, or with ``may_load=False`` returns None (prefetch again and retry).
        """
        with self.lock:
            self._tick += 1
            try:
                if len(players) == 1:  # a single request: no array passes
                    return np.array([self._resolve(players[0], prefetched, may_load)])
                get = self._slot_of.get
                slots = np.fromiter((get(p, -1) for p in players), dtype=np.int64, count=len(players))
                if (slots < 0).any():
                    self._last_used[slots[slots > 0]] = self._tick
                    for i in np.flatnonzero(slots < 0):
                        slots[i] = self._resolve(players[int(i)], prefetched, may_load)
                self._last_used[slots] = self._tick
                return slots
            except _NeedsLoad:
                return None

    def _resolve(self, player: str, prefetched: Prefetch | None = None, may_load: bool = True) -> int:
        slot = self._slot_of.get(player)
        if slot is not None:
            self._last_used[slot] = self._tick
            return slot
        if (
            prefetched is not None
            and player in prefetched.loaded
            and self._reading[player][1] == prefetched.generations.get(player)
        ):
            loaded = prefetched.loaded[player]
        elif self._loader is None:
            loaded = None
        elif not may_load:
            raise _NeedsLoad(player)
        else:
            self.locked_loads += 1
            loaded = self._loader(player)
        if loaded is None:
            if self._absent >= 16 * self.capacity:
                self._forget_all_absent()
            self._slot_of[player] = ZERO_SLOT
            self._absent += 1
            return ZERO_SLOT
        flat, meta = loaded
        return self._install(player, flat, meta, dirty=False)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        candidates = self._last_used[1:]
        victim = int(np.argmin(candidates)) + 1
        if candidates[victim - 1] >= self._tick:
            raise InvalidInputError(
                f"one batch needs more than the bank's capacity of {self.capacity} resident adapters"
            )
        self._evict(victim)
        return victim

    def _evict(self, slot: int) -> None:
        player = self._player_of[slot]
        assert player is not None  # an evicted slot is an occupied one
        if self._dirty[slot] and self._writeback is not None:
            self._writeback(player, self.storage[slot].detach().cpu().clone(), self._meta[slot])
        self._changed(player)
        del self._slot_of[player]
        self._clear(slot)
        self.evictions += 1

    def _clear(self, slot: int) -> None:
        """Empty a slot: no player, no metadata, zero adapter."""
        self._player_of[slot] = None
        self._meta[slot] = None
        self._dirty[slot] = False
        self._version[slot] = 0
        self._content[slot] = next(self._writes)
        self.storage[slot].zero_()

    def _forget_all_absent(self) -> None:
        self._slot_of = {p: s for p, s in self._slot_of.items() if s != ZERO_SLOT}
        self._absent = 0

    def _install(self, player: str, flat: torch.Tensor, meta: Any, *, dirty: bool) -> int:
        slot = self._slot_of.get(player, ZERO_SLOT)
        if slot == ZERO_SLOT:
            slot = self._take_slot()
            if self._slot_of.get(player) == ZERO_SLOT:
                self._absent -= 1
            self._slot_of[player] = slot
            self._player_of[slot] = player
        self.storage[slot].copy_(flat.reshape(-1))
        self._content[slot] = next(self._writes)
        self._meta[slot] = meta
        self._version[slot] = getattr(meta, "version", 0)
        self._dirty[slot] = dirty
        self._last_used[slot] = self._tick
        return slot

    # -- reads and writes ---------------------------------------------------------
    def gather(self, slots: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Snapshot of the slots' adapter rows: (N, P) in the bank's dtype."""
        index = torch.as_tensor(slots, dtype=torch.int64, device=self.storage.device)
        with self.lock:
            return self.storage.index_select(0, index)

    def content_id(self, slot: int) -> int:
        """A number unique to what the slot's row holds now: every write through the bank
        gives a new one (a key for what is computed from the row; 0 for the zero slot)."""
        return int(self._content[slot])

    def versions(self, slots: np.ndarray) -> np.ndarray:
        """Adapter version per slot (0 for the zero slot)."""
        return self._version[slots]

    def put(self, player: str, flat: torch.Tensor, meta: Any, *, dirty: bool = True) -> int:
        """Install a new adapter version for `player` atomically; returns its slot."""
        if flat.numel() != self.layout.size:
            raise AdapterMismatchError(
                f"adapter for player {player!r} has {flat.numel()} numbers, expected {self.layout.size}"
            )
        with self.lock:
            self._tick += 1
            return self._install(player, flat, meta, dirty=dirty)

    def meta(self, player: str) -> Any:
        """The resident adapter's metadata, or None (no copy of the adapter)."""
        with self.lock:
            slot = self._slot_of.get(player, ZERO_SLOT)
            return None if slot == ZERO_SLOT else self._meta[slot]

    def get(self, player: str) -> tuple[torch.Tensor, Any] | None:
        """A copy of the player's resident adapter (P,) in fp32 and its meta, or None."""
        with self.lock:
            slot = self._slot_of.get(player, ZERO_SLOT)
            if slot == ZERO_SLOT:
                return None
            return self.storage[slot].float().cpu().clone(), self._meta[slot]

    def remove(self, player: str) -> bool:
        """Drop a player's resident adapter without writing it back."""
        with self.lock:
            self._changed(player)
            slot = self._slot_of.pop(player, None)
            if slot == ZERO_SLOT:
                self._absent -= 1
            if not slot:
                return False
            self._clear(slot)
            self._last_used[slot] = 0
            self._free.append(slot)
            return True

    def invalidate(self, player: str, version: int | None = None) -> bool:
        """Another copy of `player`'s adapter changed (a shared store): drop ours unless it is
        at least `version` (None: drop it whatever it is), without writing it back, so the
        next lookup loads the stored one. A known-absent entry is dropped too. True if a
        resident adapter was dropped."""
        with self.lock:
            slot = self._slot_of.get(player)
            if slot is None:
                self._changed(player)  # a read in flight may have seen the old version
                return False
            if slot != ZERO_SLOT and version is not None and getattr(self._meta[slot], "version", 0) >= version:
                return False
            return self.remove(player)

    def forget_absent(self) -> int:
        """Forget every known-absent player (their next lookup asks the loader again: a store
        that could not answer may have their adapter); reads in flight are redone."""
        with self.lock:
            n = self._absent
            self._forget_all_absent()
            for player in self._reading:
                self._changed(player)
            return n

    def drop_clean(self) -> int:
        """Drop every resident adapter not changed since it was written, and every known-absent
        player: after missed changes of a shared store, their next lookup reads it again."""
        with self.lock:
            clean = [p for p, s in self._slot_of.items() if s != ZERO_SLOT and not self._dirty[s]]
            for player in clean:
                self.remove(player)
            return len(clean) + self.forget_absent()

    def mark_changed(self, player: str, version: int) -> bool:
        """Mark `player`'s resident adapter as changed again if it is at `version` (its write
        was dropped): the next flush or eviction writes it. True if it was."""
        with self.lock:
            slot = self._slot_of.get(player, ZERO_SLOT)
            if slot == ZERO_SLOT or getattr(self._meta[slot], "version", None) != version:
                return False
            self._dirty[slot] = True
            return True

    def write_back_dirty(self) -> int:
        """Hand every changed resident adapter to the write-back callback and mark it clean;
        returns how many (the engine's callback only queues them, see npcadapt/writeback.py)."""
        if self._writeback is None:
            return 0
        with self.lock:
            slots = np.flatnonzero(self._dirty)
            for s in slots:
                player = self._player_of[s]
                assert player is not None  # a dirty slot is an occupied one
                self._writeback(player, self.storage[s].detach().cpu().clone(), self._meta[s])
            self._dirty[slots] = False
        return len(slots)
