"""What the engine needs of an adapter store, and :func:`open_store` to pick one.

Two stores keep the same promises (tests/test_store.py runs one suite against both):

- :class:`~npcadapt.store.AdapterStore`, the default: safetensors files under the data
  directory, for one server.
- :class:`~npcadapt.store_redis.RedisAdapterStore` (``redis://HOST:PORT/DB``): adapters
  shared by many servers, written with compare-and-set on the version; every write is
  announced, so each server drops its cached copy of that player (:meth:`Store.watch`).

Either way the engine's adapter bank is the hot cache and the write-behind queue
(npcadapt/writeback.py) does the writes; ``shared`` tells the engine to write every new
version at once (other servers must see it) instead of on eviction or flush.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .adapter_meta import AdapterMeta, AdapterSpec
from .errors import InvalidInputError

__all__ = ["REDIS_SCHEMES", "Store", "StoreEvent", "open_store"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StoreEvent:
    """A change another server made. With ``archetype`` None it is a resync: events may
    have been missed (the store was unreachable), so every cached copy is in doubt."""

    archetype: str | None = None
    player: str | None = None
    version: int = 0  # the version now stored
    deleted: bool = False  # the adapter was deleted (reset)


@runtime_checkable
class Store(Protocol):
    """Per-player adapters: validated on load, base hash checked, bad data quarantined."""

    shared: bool  # other processes write it too: write new versions at once, watch for theirs

    def save(self, tensors: Mapping[str, torch.Tensor], meta: AdapterMeta) -> object:
        """Store one version (a shared store refuses one not newer than its own: StaleAdapterError)."""
        ...

    def load(self, spec: AdapterSpec, player: str) -> tuple[dict[str, torch.Tensor], AdapterMeta] | None:
        """The validated adapter or None; CorruptAdapterError (quarantined), AdapterMismatchError."""
        ...

    def read_meta(self, archetype: str, player: str) -> AdapterMeta | None:
        """The adapter's metadata only, or None."""
        ...

    def delete(self, archetype: str, player: str) -> bool:
        """Remove the adapter; True if there was one."""
        ...

    def players(self, archetype: str) -> Iterator[str]:
        """Player ids of the stored adapters of `archetype`."""
        ...

    def exists(self, archetype: str, player: str) -> bool:
        """Whether an adapter of the player is stored (no validation)."""
        ...

    def version_floor(self, archetype: str, player: str) -> int:
        """The version a new adapter of the player starts above: a shared store remembers the
        version of a deleted adapter, so a late write of it from another server is refused
        (0: none, as for the file store, whose only writer is its server)."""
        ...

    def watch(self, callback: Callable[[StoreEvent], None]) -> None:
        """Call `callback` (from a thread of the store) for every change made elsewhere."""
        ...

    def stats(self) -> dict[str, object]:
        """The store's own counters (``store_*``)."""
        ...

    def close(self) -> None: ...


def reply_text(value: object) -> str:
    """A Redis reply field (a key name, a stream id, a server id: bytes) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def open_store(store: str | Store | None, data_dir: str | os.PathLike[str]) -> Store:
    """None: adapter files under `data_dir`; a ``redis://`` URL: a shared Redis store; a
    store object: itself."""
    if store is None:
        from .store import AdapterStore

        return AdapterStore(Path(data_dir))
    if isinstance(store, str):
        if not store.startswith(REDIS_SCHEMES):
            raise InvalidInputError(
                f"store must be a Redis URL ({', '.join(s + '...' for s in REDIS_SCHEMES)}), got {store!r}; "
                "leave it out for adapter files in the data directory"
            )
        try:
            from .store_redis import RedisAdapterStore
        except ModuleNotFoundError as exc:
            if exc.name != "redis":
                raise
            raise InvalidInputError(
                "a Redis store needs the redis client: pip install 'npcadapt[redis]' (or redis>=5)"
            ) from None
        return RedisAdapterStore(store)
    if isinstance(store, Store):
        return store
    raise InvalidInputError(f"store must be None, a Redis URL or a store object, got {type(store).__name__}")
