"""The engine: batched mixed-adapter inference over every archetype. No training code.

One :class:`Engine` owns a data directory (adapter store, later the interaction log),
the loaded archetypes and one adapter bank per archetype. ``act_batch`` answers N rows
from many players with one forward pass in which every row uses its own player's
adapter; rows of players without an adapter get the base policy exactly.

No disk I/O under a bank's lock (which every forward holds): adapters leaving the bank
and those written by ``flush`` go to a :class:`~npcadapt.writeback.WriteBehind` queue
written by its own thread, and cold loads read (the queue first, then the store) before
the lock is taken.

The store is adapter files in the data directory, or one shared by several servers
(Redis, npcadapt/stores.py). With a shared store every new version is queued for writing
at once; other servers' changes drop the bank's copy of that player (the next lookup
loads theirs); a write refused by compare-and-set (another server's is newer) drops ours;
while the store is unreachable the bank keeps serving, players it cannot load get the
base, and once it answers again every clean copy is dropped (changes may have been
missed) and failed writes are retried.

Over 450 lines: the engine's public surface (act, act_batch, action_probs, adapters in and out, flush, close) with its locking; the forward, layout and checks already live in their own modules."""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch

from .adapter_meta import DTYPES, AdapterMeta, AdapterSpec, validate_player_id
from .archetypes import BUILTIN_DIR, Archetype, find_archetypes
from .batch_checks import check_greedy, check_logits, check_masks, check_obs, single_row
from .errors import (
    AdapterMismatchError,
    CorruptAdapterError,
    InvalidInputError,
    NpcAdaptError,
    StaleAdapterError,
    StoreError,
    StoreUnavailableError,
)
from .lora.bank import AdapterBank
from .lora.forward import CompiledForward, Forward, TorchForward
from .lora.layout import AdapterLayout, fresh_row
from .lora.numpy_forward import NumpyForward
from .numerics import masked_log_probs_np
from .policy import ActorCritic
from .sampling import ExpNoise, decide
from .stores import Store, StoreEvent, open_store
from .types import AdapterInfo, BatchDecision, Decision
from .writeback import WriteBehind

log = logging.getLogger(__name__)

CLOSE_FLUSH_TIMEOUT = 60.0  # seconds close() waits for the adapter writer (a stalled disk must not hang shutdown)

MIN_PENDING_WRITES = 1024  # the default bound of waiting adapter writes is at least this
_READ_TRIES = 3  # prefetches before a lookup may read under the lock (a read raced an eviction)


@dataclass
class ArchetypeRuntime:
    """Per-archetype serving state: frozen policy on the device, layout, bank, and the
    forward chosen for it when the engine built it (see npcadapt/lora/forward.py)."""

    archetype: Archetype
    policy: ActorCritic
    layout: AdapterLayout
    bank: AdapterBank
    adapter_spec: AdapterSpec
    forward: Forward


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return device


class Engine:
    """Serve decisions for many players' NPCs, each with their own LoRA adapter."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        archetype_dirs: Iterable[str | Path] | None = None,
        capacity: int = 10_000,
        adapter_dtype: str = "float32",
        device: str | torch.device = "cpu",
        seed: int = 0,
        compile: bool = False,
        store: str | Store | None = None,
        max_pending_writes: int | None = None,
    ):
        """`compile=True` fuses the gathered forward with torch.compile (about 2x faster on
        CPU; the first batch of each archetype pays a one-off compile of ~20 s).

        `store`: None for adapter files under `data_dir`, a ``redis://HOST:PORT/DB`` URL for
        adapters shared with other servers, or a :class:`~npcadapt.stores.Store`.
        `max_pending_writes` bounds the adapter writes waiting in memory (default: as many
        as the banks hold, at least 1,024); past it the oldest is dropped (``writeback_dropped``)."""
        if adapter_dtype not in DTYPES:
            raise InvalidInputError(f"adapter_dtype must be one of {sorted(DTYPES)}, got {adapter_dtype!r}")
        self.data_dir = Path(data_dir)
        self.device = _resolve_device(device)
        self.adapter_dtype = adapter_dtype
        self.store: Store = open_store(store, self.data_dir)
        self.shared = bool(self.store.shared)
        self._deleting: set[tuple[str, str]] = set()  # (archetype, player) being reset: load as absent
        self.compile = compile
        dirs = [BUILTIN_DIR] if archetype_dirs is None else list(archetype_dirs)
        self._runtimes: dict[str, ArchetypeRuntime] = {}
        archetypes = find_archetypes(dirs)
        self.writeback: WriteBehind[tuple[str, str]] = WriteBehind(
            lambda key, flat, meta: self._save_adapter(key[0], key[1], flat, meta),
            # bounded only with a shared store, whose dropped writes the next flush rewrites from the
            # bank; the file store keeps every write until it lands (an evicted player has no other copy)
            max_pending=max_pending_writes
            or (max(MIN_PENDING_WRITES, capacity * len(archetypes)) if self.shared else None),
            on_drop=lambda key, flat, meta: self._dropped.append((key, meta.version)),
        )
        # writes dropped from the full queue, marked changed again by the next flush if their
        # bank still holds that version (not at once: the drop happens under another bank's lock)
        self._dropped: collections.deque[tuple[tuple[str, str], int]] = collections.deque(
            maxlen=self.writeback.max_pending
        )
        for name, arch in archetypes.items():
            self._runtimes[name] = self._runtime(arch, capacity)
        self._noise = ExpNoise(seed)  # the draws' randomness (see sampling.py)
        self._decision_ids = itertools.count(1)
        self._rng_lock = threading.Lock()
        self._closed = False
        self.counters = {
            "decisions": 0,
            "batches": 0,
            "corrupt_adapters": 0,
            "stale_adapters": 0,
            "store_load_errors": 0,  # loads that found the store unreachable (the base was served)
            "store_conflicts": 0,  # writes refused by compare-and-set: another server's version is newer
            "store_invalidations": 0,  # other servers' changes that reached this engine
        }
        self.store.watch(self._on_store_event)

    # -- set-up -------------------------------------------------------------------
    def _runtime(self, arch: Archetype, capacity: int) -> ArchetypeRuntime:
        layout = AdapterLayout.from_spec(arch.spec)
        spec = AdapterSpec(arch.name, arch.base_hash, layout.rank, layout.tensor_shapes())
        policy = copy.deepcopy(arch.policy).to(self.device)
        name = arch.name
        bank = AdapterBank(
            layout,
            capacity,
            loader=lambda player: self._load_adapter(name, player),
            writeback=lambda player, flat, meta: self.writeback.submit((name, player), flat, meta),
            dtype=DTYPES[self.adapter_dtype],
            device=self.device,
        )
        return ArchetypeRuntime(arch, policy, layout, bank, spec, self._choose_forward(policy, layout, bank))

    def _choose_forward(self, policy: ActorCritic, layout: AdapterLayout, bank: AdapterBank) -> Forward:
        """On CPU the numpy forward (faster at every batch size, see lora/numpy_forward.py),
        with compile=True only for batches small enough for numpy's matmul; elsewhere torch."""
        small = NumpyForward(policy, layout, bank) if self.device.type == "cpu" else None
        if self.compile:
            return CompiledForward(policy, layout, bank, small=small, small_rows=small.numpy_rows if small else 0)
        return small if small is not None else TorchForward(policy, layout, bank)

    def _load_adapter(self, archetype: str, player: str) -> tuple[torch.Tensor, AdapterMeta] | None:
        """The newest version: a write still pending, else the file (None while being reset)."""
        key = (archetype, player)
        if key in self._deleting:
            return None
        pending = self.writeback.pending(key)
        if pending is not None:
            return pending
        rt = self._runtimes[archetype]
        try:
            loaded = self.store.load(rt.adapter_spec, player)
        except StoreUnavailableError as exc:  # serve the base; a resync drops this answer once the store is back
            self.counters["store_load_errors"] += 1
            if self.counters["store_load_errors"] % 1000 == 1:
                log.warning("serving the base policy: %s", exc)
            return None
        except CorruptAdapterError as exc:
            self.counters["corrupt_adapters"] += 1
            log.warning("serving the base policy: %s", exc)
            return None
        except AdapterMismatchError as exc:
            self.counters["stale_adapters"] += 1
            log.warning("serving the base policy: %s", exc)
            return None
        if loaded is None:
            return None
        tensors, meta = loaded
        return rt.layout.pack(tensors, torch.float32), meta

    def _save_adapter(self, archetype: str, player: str, flat: torch.Tensor, meta: AdapterMeta) -> None:
        """Write one adapter (on the write-back thread). A version refused by compare-and-set
        is dropped, and so is the bank's copy if it is not newer than the stored one."""
        rt = self._runtimes[archetype]
        try:
            self.store.save({k: v.clone() for k, v in rt.layout.unpack(flat.to(DTYPES[meta.dtype])).items()}, meta)
        except StaleAdapterError as exc:
            self.counters["store_conflicts"] += 1
            log.warning("%s", exc)
            rt.bank.invalidate(player, exc.stored_version + 1)

    def _on_store_event(self, event: StoreEvent) -> None:
        """Another server changed a player's adapter (or events were missed: a resync)."""
        if self._closed:
            return
        if event.archetype is None or event.player is None:
            for rt in self._runtimes.values():
                rt.bank.drop_clean()
            self.writeback.retry_now()
            return
        runtime = self._runtimes.get(event.archetype)
        if runtime is None:
            return
        self.counters["store_invalidations"] += 1
        key = (event.archetype, event.player)
        newer = None if event.deleted else event.version
        self.writeback.discard_older(key, 2**62 if newer is None else newer)  # before a reload could read it
        runtime.bank.invalidate(event.player, newer)

    def refresh(self, archetype: str, player: str) -> AdapterMeta | None:
        """Read the stored metadata of `player` and drop the bank's copy if the store's is newer
        (what a server does before it starts training a player others may have trained);
        returns the stored metadata."""
        rt = self.runtime(archetype)
        meta = self.store.read_meta(archetype, player)
        if meta is not None:
            self.writeback.discard_older((archetype, player), meta.version)
            rt.bank.invalidate(player, meta.version)
        return meta

    # -- lookups ------------------------------------------------------------------
    @property
    def archetypes(self) -> dict[str, Archetype]:
        return {name: rt.archetype for name, rt in self._runtimes.items()}

    def runtime(self, archetype: str) -> ArchetypeRuntime:
        self._check_open()
        rt = self._runtimes.get(archetype) if isinstance(archetype, str) else None
        if rt is None:
            raise InvalidInputError(f"unknown archetype {archetype!r}; known: {sorted(self._runtimes)}")
        return rt

    def _check_open(self) -> None:
        if self._closed:
            raise NpcAdaptError("engine is closed")

    # -- inference ----------------------------------------------------------------
    def act(
        self,
        archetype: str,
        player: str,
        obs: Sequence[float] | np.ndarray,
        *,
        mask: Sequence[bool] | np.ndarray | None = None,
        greedy: bool = False,
    ) -> Decision:
        """One decision for one player's NPC."""
        obs_rows, masks = single_row(obs, mask)
        return self.act_batch(archetype, [player], obs_rows, masks=masks, greedy=greedy).row(0)

    def act_batch(
        self,
        archetype: str,
        players: Sequence[str],
        obs: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
        *,
        masks: np.ndarray | torch.Tensor | None = None,
        greedy: bool | Sequence[bool] | np.ndarray = False,
    ) -> BatchDecision:
        """Decisions for N rows in one forward pass; row i uses players[i]'s adapter."""
        return self.act_batch_checked(archetype, players, obs, masks=masks, greedy=greedy)[0]

    def act_batch_checked(
        self, archetype: str, players: Sequence[str], obs, *, masks=None, greedy=False
    ) -> tuple[BatchDecision, np.ndarray, np.ndarray | None]:
        """:meth:`act_batch`, also returning the checked observations (N, D) float32 and masks
        (N, A) bool or None that it decided on (what a caller records)."""
        rt = self.runtime(archetype)
        spec = rt.archetype.spec
        n = len(players)
        obs_a = check_obs(obs, n, spec.obs_dim)  # (N, D)
        mask_a = check_masks(masks, n, spec.n_actions)  # (N, A) or None
        greedy_a = check_greedy(greedy, n)  # (N,) or None
        slots = self._lock_slots(rt.bank, players)  # no other thread may evict a slot between lookup and forward
        try:
            logits, value = rt.forward.logits(obs_a, slots)  # (N, A), (N,)
            versions = rt.bank.versions(slots)
        finally:
            rt.bank.lock.release()
        check_logits(logits)
        with self._rng_lock:
            action, logp, entropy = decide(logits, mask_a, greedy_a, self._noise)
        ids = np.fromiter(itertools.islice(self._decision_ids, n), dtype=np.int64, count=n)
        self.counters["decisions"] += n
        self.counters["batches"] += 1
        out = BatchDecision(
            decision=ids,
            action=action,
            logp=logp,
            value=value,
            entropy=entropy,
            adapter_version=versions,
            action_names=spec.actions,
        )
        return out, obs_a, mask_a

    def action_probs(
        self, archetype: str, players: Sequence[str], obs, *, masks=None, base: bool = False
    ) -> np.ndarray:
        """Action probabilities (N, A) of each row's current policy (or of the base); no sampling."""
        rt = self.runtime(archetype)
        spec = rt.archetype.spec
        obs_a = check_obs(obs, len(players), spec.obs_dim)
        mask_a = check_masks(masks, len(players), spec.n_actions)
        if base:
            rt.bank.lock.acquire()
            slots = np.zeros(len(players), np.int64)
        else:
            slots = self._lock_slots(rt.bank, players)
        try:
            logits, _ = rt.forward.logits(obs_a, slots)
        finally:
            rt.bank.lock.release()
        check_logits(logits)
        return np.ascontiguousarray(masked_log_probs_np(logits, mask_a)[1].T)

    def _lock_slots(self, bank: AdapterBank, players: Sequence[str]) -> np.ndarray:
        """Slots for a batch, returned with `bank.lock` held (the caller releases it). Stored
        adapters of players the bank does not hold are read without the lock, then looked up again. Ids are
        validated where they are first seen: the store's loader."""
        if isinstance(players, (str, bytes)):
            raise InvalidInputError("players must be a sequence of player ids, not a single string")
        try:
            bank.lock.acquire()  # the usual case: the bank knows every player, one walk of them
            try:
                slots = bank.lookup(players, None, may_load=False)
            except BaseException:
                bank.lock.release()
                raise
            if slots is not None:
                return slots
            bank.lock.release()
            for attempt in range(_READ_TRIES):
                pre = bank.prefetch(players)
                bank.lock.acquire()
                try:
                    slots = bank.lookup(players, pre, may_load=attempt == _READ_TRIES - 1)
                except BaseException:
                    bank.lock.release()
                    raise
                finally:
                    bank.release(pre)
                if slots is not None:
                    return slots
                bank.lock.release()
            raise AssertionError("unreachable: the last try may load")
        except TypeError:  # an unhashable id: name it
            for p in players:
                validate_player_id(p)
            raise

    # -- adapters -----------------------------------------------------------------
    def fresh_adapter_row(self, archetype: str, player: str, *, seed: int | None = None) -> torch.Tensor:
        """A new packed adapter (P,) with A random and B zero: it reproduces the base exactly.

        Without a seed, the seed derives from (archetype, player), so it is reproducible.
        """
        return fresh_row(self.runtime(archetype).layout, archetype, player, seed=seed)

    def new_adapter(self, archetype: str, player: str, *, seed: int | None = None) -> dict[str, torch.Tensor]:
        """:meth:`fresh_adapter_row` as named tensors ('<layer>.lora_A', '<layer>.lora_B')."""
        return self._named(archetype, self.fresh_adapter_row(archetype, player, seed=seed))

    def _named(self, archetype: str, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.runtime(archetype).layout.unpack(flat).items()}

    def adapter_row(self, archetype: str, player: str) -> torch.Tensor | None:
        """The player's current packed adapter (P,) as an fp32 copy, or None if they have none."""
        state = self.adapter_state(archetype, player)
        return None if state is None else state[0]

    def get_adapter(self, archetype: str, player: str) -> dict[str, torch.Tensor] | None:
        """The player's current adapter tensors (fp32 copies), or None if they have none."""
        flat = self.adapter_row(archetype, player)
        return None if flat is None else self._named(archetype, flat)

    def set_adapter(
        self, archetype: str, player: str, tensors: Mapping[str, torch.Tensor], *, updates: int = 0
    ) -> AdapterInfo:
        """Install a new adapter version for `player` atomically (persisted on flush or eviction)."""
        flat = self.runtime(archetype).layout.pack(tensors, torch.float32)
        return self.set_adapter_row(archetype, player, flat, updates=updates)

    def set_adapter_row(self, archetype: str, player: str, flat: torch.Tensor, *, updates: int = 0) -> AdapterInfo:
        """:meth:`set_adapter` for a packed adapter (P,)."""
        meta = self.put_adapter_row(archetype, player, flat, updates=updates)
        return self._info(meta, resident=True, stored=self._stored(archetype, player))

    def put_adapter_row(self, archetype: str, player: str, flat: torch.Tensor, *, updates: int = 0) -> AdapterMeta:
        """:meth:`set_adapter_row` returning only the new metadata: no file-system check."""
        meta = self.put_adapter_rows(archetype, [player], flat.reshape(1, -1), updates=updates)[0]
        return cast(AdapterMeta, meta)  # not None: without skip_non_finite a non-finite row raises

    def put_adapter_rows(
        self,
        archetype: str,
        players: Sequence[str],
        flats: torch.Tensor,
        *,
        updates: int = 0,
        skip_non_finite: bool = False,
        forwarded_upto: Mapping[str, str] | None = None,
    ) -> list[AdapterMeta | None]:
        """Install new adapter versions for several players at once, flats (N, P): for the
        trainers, which install many adapters a second. Everything is checked before anything
        is installed; a row with non-finite values refuses the call, or with `skip_non_finite`
        is left out (that player keeps their adapter; None in its place in the result).
        `forwarded_upto`: per player, the last forwarded episode the new version was trained
        on (npcadapt/lease.py). With a shared store the new versions are queued for writing."""
        rt = self.runtime(archetype)
        for player in players:
            validate_player_id(player)
        if flats.shape[0] != len(players):
            raise InvalidInputError(f"got {flats.shape[0]} adapters for {len(players)} players")
        finite = np.isfinite(flats.detach().cpu().float().numpy()).all(axis=1)  # (N,)
        if not (finite.all() or skip_non_finite):
            raise InvalidInputError(f"adapter for player {players[int(np.argmin(finite))]!r} has non-finite values")
        metas: list[AdapterMeta | None] = [None] * len(players)
        chosen: list[int] = np.flatnonzero(finite).tolist()
        pre = rt.bank.prefetch([players[i] for i in chosen])  # the stored versions, read before the lock
        try:
            # a shared store remembers the version of a reset player: their new adapter starts above it
            floors = {
                p: self.version_floor(archetype, p)
                for p in (players[i] for i in chosen)
                if self.shared and rt.bank.meta(p) is None and (pre is None or pre.loaded.get(p) is None)
            }
            with rt.bank.lock:
                now = time.time()
                held = {players[i]: rt.bank.meta(players[i]) for i in chosen}  # before this loop evicts any
                for i in chosen:
                    player, flat = players[i], flats[i]
                    old = rt.bank.meta(player) or held[player]
                    if (
                        old is None
                    ):  # not resident: its stored version, one at a time (more players than the bank holds fit)
                        rt.bank.lookup([player], pre)
                        old = rt.bank.meta(player)
                    upto = (forwarded_upto or {}).get(player)
                    if old is None:
                        floor = floors[player] if player in floors else self.version_floor(archetype, player)
                        meta = self._new_meta(rt, player, floor + 1, updates, now, upto or "")
                    else:
                        meta = replace(
                            old,
                            version=old.version + 1,
                            updates=old.updates + updates,
                            updated=now,
                            forwarded_upto=upto or old.forwarded_upto,
                        )
                    rt.bank.put(player, flat, meta)
                    metas[i] = held[player] = meta
                if self.shared:  # other servers must see the new versions: write them now
                    rt.bank.write_back_dirty()
        finally:
            rt.bank.release(pre)
        return metas

    def _new_meta(
        self, rt: ArchetypeRuntime, player: str, version: int, updates: int, now: float, upto: str = ""
    ) -> AdapterMeta:
        """The metadata of a player's first adapter (or first after a reset)."""
        return AdapterMeta(
            archetype=rt.archetype.name,
            player=player,
            base_hash=rt.archetype.base_hash,
            rank=rt.layout.rank,
            alpha=float(rt.archetype.spec.lora.alpha),
            rslora=rt.archetype.spec.lora.rslora,
            version=version,
            updates=updates,
            created=now,
            updated=now,
            dtype=self.adapter_dtype,
            forwarded_upto=upto,
        )

    def version_floor(self, archetype: str, player: str) -> int:
        """The version a new adapter of `player` starts above (a reset player's last version
        in a shared store, else 0; 0 while the store cannot be reached: compare-and-set then
        refuses a version the store has seen)."""
        if not self.shared:
            return 0
        try:
            return self.store.version_floor(archetype, player)
        except StoreError as exc:
            log.warning("new adapter for player %r starts at version 1: %s", player, exc)
            return 0

    def publish_adapter_row(
        self,
        archetype: str,
        player: str,
        flat: torch.Tensor,
        *,
        version: int,
        after: AdapterMeta | None = None,
        updates: int = 0,
    ) -> AdapterMeta:
        """Store `flat` as exactly `version` of the player's adapter, now (not through the
        write-behind queue), then serve it (a shared store: the bank's older copy is dropped
        and the next lookup loads the stored one): for a result computed elsewhere from the
        version before (offline fitting). `after` is that version's metadata (None: a new adapter).
        A shared store refuses it with StaleAdapterError when it holds `version` or a newer
        one: another server updated the player since (nothing is installed then)."""
        rt = self.runtime(archetype)
        validate_player_id(player)
        flat = flat.reshape(-1)
        if not bool(torch.isfinite(flat).all()):
            raise InvalidInputError(f"adapter for player {player!r} has non-finite values")
        now = time.time()
        if after is None:
            meta = self._new_meta(rt, player, version, updates, now)
        else:
            meta = replace(after, version=version, updates=after.updates + updates, updated=now)
        self.writeback.discard_older((archetype, player), version)  # an older queued write must not land after it
        self.store.save(self._named(archetype, flat.to(DTYPES[meta.dtype])), meta)
        if self.shared:  # drop an older copy: the next lookup loads it (or a newer one written since)
            rt.bank.invalidate(player, version)
            return meta
        with rt.bank.lock:
            held = rt.bank.meta(player)
            if held is None or held.version <= version:
                rt.bank.put(player, flat, meta, dirty=False)
        return meta

    def adapter_info(self, archetype: str, player: str) -> AdapterInfo | None:
        """Version, update count and residency of a player's adapter; None when they have none."""
        rt = self.runtime(archetype)
        validate_player_id(player)
        meta = rt.bank.meta(player)
        if meta is not None:
            return self._info(meta, resident=True, stored=self._stored(archetype, player))
        pending = self.writeback.pending((archetype, player))
        if pending is not None:
            return self._info(pending[1], resident=False, stored=self._stored(archetype, player))
        meta = self.store.read_meta(archetype, player)
        return None if meta is None else self._info(meta, resident=False, stored=True)

    def adapter_state(self, archetype: str, player: str) -> tuple[torch.Tensor, AdapterMeta] | None:
        """The player's current packed adapter (P,) as an fp32 copy with its metadata, or None."""
        rt = self.runtime(archetype)
        validate_player_id(player)
        self._lock_slots(rt.bank, [player])
        try:
            return rt.bank.get(player)
        finally:
            rt.bank.lock.release()

    def _stored(self, archetype: str, player: str) -> bool:
        """Whether the store holds an adapter of the player (False while it cannot be reached)."""
        try:
            return self.store.exists(archetype, player)
        except StoreUnavailableError:
            return False

    @staticmethod
    def _info(meta: AdapterMeta, *, resident: bool, stored: bool) -> AdapterInfo:
        return AdapterInfo(
            archetype=meta.archetype,
            player=meta.player,
            version=meta.version,
            updates=meta.updates,
            base_hash=meta.base_hash,
            rank=meta.rank,
            resident=resident,
            stored=stored,
            created=meta.created,
            updated=meta.updated,
        )

    def reset_player(self, archetype: str, player: str) -> bool:
        """Erase a player's adapter (memory and file): they get the base policy again."""
        rt = self.runtime(archetype)
        validate_player_id(player)
        key = (archetype, player)
        self._deleting.add(key)  # loads see no adapter until the file is gone
        try:
            removed = rt.bank.remove(player)
            pending = self.writeback.discard(key)  # and waits for a write of it in progress
            deleted = self.store.delete(archetype, player)  # not under the bank lock
        finally:
            self._deleting.discard(key)
        return removed or pending or deleted

    def flush(self, timeout: float | None = None) -> int:
        """Persist every changed adapter (resident, or waiting for the write-back thread);
        returns how many were written. Raises StoreError if a write failed, or is not done
        within `timeout` seconds."""
        self._check_open()
        while self._dropped:
            (archetype, player), version = self._dropped.popleft()
            self._runtimes[archetype].bank.mark_changed(player, version)
        for rt in self._runtimes.values():
            rt.bank.write_back_dirty()
        return self.writeback.flush(timeout)

    def stats(self) -> dict:
        """Counters: decisions, batches, quarantined and stale adapters, cold loads under a
        lock, the write-back queue's (``store_pending``: writes waiting) and the store's
        (``store_reachable``, ``store_errors``, ...)."""
        locked = sum(rt.bank.locked_loads for rt in self._runtimes.values())
        queue = self.writeback.stats()
        return {
            **self.counters,
            "locked_loads": locked,
            **queue,
            "store_pending": queue["writeback_pending"],
            **self.store.stats(),
        }

    def close(self, timeout: float = CLOSE_FLUSH_TIMEOUT) -> None:
        """Flush (waiting at most `timeout` seconds for the writer) and release; further
        calls raise. Idempotent. If the flush fails, the adapters that never reached the
        disk are named in the error log and the StoreError is raised."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        except StoreError:
            lost = [f"{archetype}/{player}" for archetype, player in self.writeback.pending_keys()]
            log.error("closing with %d adapter(s) not written to disk (lost): %s", len(lost), lost)
            raise
        finally:
            self.writeback.close()
            self._closed = True
            self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
