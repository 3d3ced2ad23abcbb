"""The engine: batched mixed-adapter inference over every archetype. No training code.

One :class:`Engine` owns a data directory (adapter store, later the interaction log),
the loaded archetypes and one adapter bank per archetype. ``act_batch`` answers N rows
from many players with one forward pass in which every row uses its own player's
adapter; rows of players without an adapter get the base policy exactly.

No disk I/O under a bank's lock (which every forward holds): adapters leaving the bank
and those written by ``flush`` go to a :class:`~npcadapt.writeback.WriteBehind` queue
written by its own thread, and cold loads read (the queue first, then the store) before
the lock is taken.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .archetypes import BUILTIN_DIR, Archetype, find_archetypes
from .errors import AdapterMismatchError, CorruptAdapterError, InvalidInputError, NpcAdaptError, StoreError
from .lora.bank import ZERO_SLOT, AdapterBank, AdapterLayout
from .lora.numpy_forward import NumpyForward
from .policy import ActorCritic, masked_log_probs
from .adapter_meta import DTYPES, AdapterMeta, AdapterSpec, validate_player_id
from .sampling import ExpNoise, decide, log_probs
from .store import AdapterStore
from .types import AdapterInfo, BatchDecision, Decision
from .writeback import WriteBehind

log = logging.getLogger(__name__)

CLOSE_FLUSH_TIMEOUT = 60.0  # seconds close() waits for the adapter writer (a stalled disk must not hang shutdown)

_READ_TRIES = 3  # prefetches before a lookup may read under the lock (a read raced an eviction)


@dataclass
class ArchetypeRuntime:
    """Per-archetype serving state: frozen policy on the device, layout, bank."""

    archetype: Archetype
    policy: ActorCritic
    layout: AdapterLayout
    bank: AdapterBank
    adapter_spec: AdapterSpec
    fast: NumpyForward | None  # the CPU forward; None on other devices (torch forward)
    compiled: Callable | None = None  # torch.compile'd gather+forward, when asked for


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
    ):
        """`compile=True` fuses the gathered forward with torch.compile (about 2x faster on
        CPU; the first batch of each archetype pays a one-off compile of ~20 s)."""
        if adapter_dtype not in DTYPES:
            raise InvalidInputError(f"adapter_dtype must be one of {sorted(DTYPES)}, got {adapter_dtype!r}")
        self.data_dir = Path(data_dir)
        self.device = _resolve_device(device)
        self.adapter_dtype = adapter_dtype
        self.store = AdapterStore(self.data_dir)
        self.writeback = WriteBehind(lambda key, flat, meta: self._save_adapter(key[0], key[1], flat, meta))
        self._deleting: set[tuple[str, str]] = set()  # (archetype, player) being reset: load as absent
        self.compile = compile
        dirs = [BUILTIN_DIR] if archetype_dirs is None else list(archetype_dirs)
        self._runtimes: dict[str, ArchetypeRuntime] = {}
        for name, arch in find_archetypes(dirs).items():
            self._runtimes[name] = self._runtime(arch, capacity)
        self._noise = ExpNoise(seed)  # the draws' randomness (see sampling.py)
        self._decision_ids = itertools.count(1)
        self._rng_lock = threading.Lock()
        self._closed = False
        self.counters = {"decisions": 0, "batches": 0, "corrupt_adapters": 0, "stale_adapters": 0}

    # -- set-up -------------------------------------------------------------------
    def _runtime(self, arch: Archetype, capacity: int) -> ArchetypeRuntime:
        layout = AdapterLayout.from_spec(arch.spec)
        spec = AdapterSpec(arch.name, arch.base_hash, layout.rank, layout.tensor_shapes())
        policy = copy.deepcopy(arch.policy).to(self.device)
        fast = NumpyForward(policy, layout) if self.device.type == "cpu" else None
        bank = AdapterBank(
            layout,
            capacity,
            loader=lambda player, n=arch.name: self._load_adapter(n, player),
            writeback=lambda player, flat, meta, n=arch.name: self.writeback.submit((n, player), flat, meta),
            dtype=DTYPES[self.adapter_dtype],
            device=self.device,
        )
        return ArchetypeRuntime(arch, policy, layout, bank, spec, fast)

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
        """Write one adapter file (on the write-back thread)."""
        layout = self._runtimes[archetype].layout
        self.store.save({k: v.clone() for k, v in layout.unpack(flat.to(DTYPES[meta.dtype])).items()}, meta)

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
        obs_a = self._check_obs(obs, n, spec.obs_dim)  # (N, D)
        mask_a = self._check_masks(masks, n, spec.n_actions)  # (N, A) or None
        greedy_a = self._check_greedy(greedy, n)  # (N,) or None
        slots = self._lock_slots(rt.bank, players)  # no other thread may evict a slot between lookup and forward
        try:
            logits, value = self._logits(rt, slots, obs_a)  # (N, A), (N,)
            versions = rt.bank.versions(slots)
        finally:
            rt.bank.lock.release()
        _check_logits(logits)
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

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, masks=None, base: bool = False) -> np.ndarray:
        """Action probabilities (N, A) of each row's current policy (or of the base); no sampling."""
        rt = self.runtime(archetype)
        spec = rt.archetype.spec
        obs_a = self._check_obs(obs, len(players), spec.obs_dim)
        mask_a = self._check_masks(masks, len(players), spec.n_actions)
        if base:
            rt.bank.lock.acquire()
            slots = np.zeros(len(players), np.int64)
        else:
            slots = self._lock_slots(rt.bank, players)
        try:
            logits, _ = self._logits(rt, slots, obs_a)
        finally:
            rt.bank.lock.release()
        _check_logits(logits)
        return np.ascontiguousarray(log_probs(logits, mask_a)[1].T)

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

    def _logits(self, rt: ArchetypeRuntime, slots: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, A) and values (N,) as float32 numpy. On CPU the numpy forward (faster at
        every batch size, see lora/numpy_forward.py) unless torch.compile was asked for and
        the batch is large; elsewhere the torch forward."""
        fast = rt.fast
        if fast is not None and not (self.compile and len(slots) > fast.numpy_rows):
            rows, key = self._rows_for_numpy(rt, slots)
            return fast(obs, rows, key)
        with torch.inference_mode():
            obs_t = torch.from_numpy(obs if obs.flags.writeable else obs.copy()).to(self.device)
            logits, value = self._forward(rt, slots, obs_t)
            return logits.float().cpu().numpy(), value.float().cpu().numpy()

    @staticmethod
    def _rows_for_numpy(rt: ArchetypeRuntime, slots: np.ndarray) -> tuple[np.ndarray | None, int | None]:
        """The numpy forward's adapters, float32: None when every row is base, (1, P) when all
        rows share one adapter (with the key of its content), else (N, P). Read under the bank
        lock, held by the caller."""
        shared = _shared_slot(slots)
        if shared is None:
            return rt.bank.float32_rows(slots), None
        if shared == ZERO_SLOT:
            return None, None
        return rt.bank.float32_rows(slots[:1]), rt.bank.content_id(shared)

    @staticmethod
    def _adapter_rows(rt: ArchetypeRuntime, slots: np.ndarray) -> torch.Tensor | None:
        """A snapshot of the batch's adapters: None when every row is base, (1, P) when all
        rows share one adapter (the low-rank product needs no gather), else (N, P)."""
        shared = _shared_slot(slots)
        if shared is None:
            return rt.bank.gather(slots)
        return None if shared == ZERO_SLOT else rt.bank.gather(slots[:1])

    def _forward(self, rt: ArchetypeRuntime, slots: np.ndarray, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch forward for the rows' adapters (fused gather under torch.compile)."""
        if self.compile and _shared_slot(slots) is None:
            return self._compiled_forward(rt, slots, obs)
        rows = self._adapter_rows(rt, slots)
        if rows is None:
            return rt.policy(obs)
        if len(rows) == 1:
            return rt.policy(obs, rt.layout.single_delta_fn(rows[0].to(obs.dtype)))
        return rt.policy(obs, rt.layout.delta_fn(rows.to(obs.dtype)))

    def _compiled_forward(self, rt: ArchetypeRuntime, slots: np.ndarray, obs: torch.Tensor):
        """Gather + convert + forward fused by torch.compile; the bank lock is held throughout."""
        if rt.compiled is None:

            def gathered_forward(storage: torch.Tensor, index: torch.Tensor, x: torch.Tensor):
                rows = storage.index_select(0, index).to(x.dtype)  # (N, P)
                return rt.policy(x, rt.layout.delta_fn(rows))

            rt.compiled = torch.compile(gathered_forward, dynamic=True)
        index = torch.as_tensor(slots, dtype=torch.int64, device=self.device)
        with rt.bank.lock:
            return rt.compiled(rt.bank.storage, index, obs)

    # -- validation -----------------------------------------------------------------
    def _check_obs(self, obs, n: int, obs_dim: int) -> np.ndarray:
        """(n, obs_dim) finite numbers -> C-contiguous float32 (N, D)."""
        if n == 0:
            raise InvalidInputError("a batch needs at least one row")
        try:
            arr = obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"obs must be numbers: {exc}") from None
        if arr.dtype.kind not in "fiub":
            raise InvalidInputError(f"obs must be numbers, got dtype {arr.dtype}")
        if arr.shape != (n, obs_dim):
            raise InvalidInputError(f"obs must have shape ({n}, {obs_dim}) (rows, observation length), got {arr.shape}")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:5].tolist()
            raise InvalidInputError(f"obs rows {bad} contain NaN or infinite values")
        return np.ascontiguousarray(arr)

    def _check_masks(self, masks, n: int, n_actions: int) -> np.ndarray | None:
        """None, or (n, n_actions) booleans with at least one allowed action per row."""
        if masks is None:
            return None
        arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if arr.shape != (n, n_actions):
            raise InvalidInputError(f"mask must have shape ({n}, {n_actions}) (rows, actions), got {arr.shape}")
        if arr.dtype != np.bool_:
            if arr.dtype.kind not in "iub" or not np.isin(arr, (0, 1)).all():
                raise InvalidInputError(f"mask must hold booleans, got dtype {arr.dtype}")
            arr = arr.astype(bool)
        empty = ~arr.any(axis=1)
        if empty.any():
            raise InvalidInputError(f"mask rows {np.flatnonzero(empty)[:5].tolist()} allow no action")
        return arr

    def _check_greedy(self, greedy, n: int) -> np.ndarray | None:
        """A bool for every row or (n,) bools -> (N,) bool, or None when no row is greedy."""
        if isinstance(greedy, (bool, np.bool_)):
            return np.ones(n, dtype=bool) if greedy else None
        arr = np.asarray(greedy)
        if arr.shape != (n,) or arr.dtype != np.bool_:
            raise InvalidInputError(f"greedy must be a bool or {n} bools, got {arr.dtype} {arr.shape}")
        return arr if arr.any() else None

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
        rt = self.runtime(archetype)
        validate_player_id(player)
        self._lock_slots(rt.bank, [player])
        try:
            got = rt.bank.get(player)
        finally:
            rt.bank.lock.release()
        return None if got is None else got[0]

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
        return self._info(meta, resident=True, stored=self.store.path_for(archetype, player).exists())

    def put_adapter_row(self, archetype: str, player: str, flat: torch.Tensor, *, updates: int = 0) -> AdapterMeta:
        """:meth:`set_adapter_row` returning only the new metadata: no file-system check."""
        return self.put_adapter_rows(archetype, [player], flat.reshape(1, -1), updates=updates)[0]

    def put_adapter_rows(
        self, archetype: str, players: Sequence[str], flats: torch.Tensor, *, updates: int = 0,
        skip_non_finite: bool = False,
    ) -> list[AdapterMeta | None]:
        """Install new adapter versions for several players at once, flats (N, P): for the
        trainers, which install many adapters a second. Everything is checked before anything
        is installed; a row with non-finite values refuses the call, or with `skip_non_finite`
        is left out (that player keeps their adapter; None in its place in the result)."""
        rt = self.runtime(archetype)
        for player in players:
            validate_player_id(player)
        if flats.shape[0] != len(players):
            raise InvalidInputError(f"got {flats.shape[0]} adapters for {len(players)} players")
        finite = np.isfinite(flats.detach().cpu().float().numpy()).all(axis=1)  # (N,)
        if not (finite.all() or skip_non_finite):
            raise InvalidInputError(f"adapter for player {players[int(np.argmin(finite))]!r} has non-finite values")
        metas: list[AdapterMeta | None] = [None] * len(players)
        chosen = np.flatnonzero(finite)
        pre = rt.bank.prefetch([players[i] for i in chosen])  # the stored versions, read before the lock
        try:
            with rt.bank.lock:
                now = time.time()
                held = {players[i]: rt.bank.meta(players[i]) for i in chosen}  # before this loop evicts any
                for i in chosen:
                    player, flat = players[i], flats[i]
                    old = rt.bank.meta(player) or held[player]
                    if old is None:  # not resident: its stored version, one at a time (more players than the bank holds fit)
                        rt.bank.lookup([player], pre)
                        old = rt.bank.meta(player)
                    if old is None:
                        meta = AdapterMeta(
                            archetype=archetype, player=player, base_hash=rt.archetype.base_hash,
                            rank=rt.layout.rank, alpha=float(rt.archetype.spec.lora.alpha),
                            rslora=rt.archetype.spec.lora.rslora, version=1, updates=updates,
                            created=now, updated=now, dtype=self.adapter_dtype,
                        )
                    else:
                        meta = replace(old, version=old.version + 1, updates=old.updates + updates, updated=now)
                    rt.bank.put(player, flat, meta)
                    metas[i] = held[player] = meta
        finally:
            rt.bank.release(pre)
        return metas

    def adapter_info(self, archetype: str, player: str) -> AdapterInfo | None:
        """Version, update count and residency of a player's adapter; None when they have none."""
        rt = self.runtime(archetype)
        validate_player_id(player)
        meta = rt.bank.meta(player)
        if meta is not None:
            return self._info(meta, resident=True, stored=self.store.path_for(archetype, player).exists())
        pending = self.writeback.pending((archetype, player))
        if pending is not None:
            return self._info(pending[1], resident=False, stored=self.store.path_for(archetype, player).exists())
        meta = self.store.read_meta(archetype, player)
        return None if meta is None else self._info(meta, resident=False, stored=True)

    @staticmethod
    def _info(meta: AdapterMeta, *, resident: bool, stored: bool) -> AdapterInfo:
        return AdapterInfo(
            archetype=meta.archetype, player=meta.player, version=meta.version, updates=meta.updates,
            base_hash=meta.base_hash, rank=meta.rank, resident=resident, stored=stored,
            created=meta.created, updated=meta.updated,
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
        for rt in self._runtimes.values():
            rt.bank.write_back_dirty()
        return self.writeback.flush(timeout)

    def stats(self) -> dict:
        """Counters: decisions, batches, quarantined and stale adapters, cold loads under a
        lock, and the write-back queue's."""
        locked = sum(rt.bank.locked_loads for rt in self._runtimes.values())
        return {**self.counters, "locked_loads": locked, **self.writeback.stats()}

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

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def single_row(obs, mask=None) -> tuple[np.ndarray, np.ndarray | None]:
    """One observation (and optional mask) as a batch of one row: (1, D) and (1, A)."""
    try:
        arr = obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"obs must be a flat list of numbers: {exc}") from None
    if arr.ndim != 1:
        raise InvalidInputError(f"obs must be a flat list of numbers, got shape {arr.shape}")
    return arr[None], None if mask is None else np.asarray(mask)[None]


def fresh_row(layout: AdapterLayout, archetype: str, player: str, *, seed: int | None = None) -> torch.Tensor:
    """:meth:`Engine.fresh_adapter_row` for a layout: (P,), seeded by (archetype, player) by default."""
    return layout.fresh(torch.Generator().manual_seed(derived_seed(archetype, player) if seed is None else seed))


def derived_seed(*parts: str) -> int:
    """A reproducible 56-bit seed from strings (SHA-256 of their NUL-joined UTF-8 bytes)."""
    key = "\0".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(key).digest()[:7], "little")


def _shared_slot(slots: np.ndarray) -> int | None:
    """The slot every row of a batch uses (ZERO_SLOT for no rows), or None when they differ."""
    if len(slots) == 0:
        return ZERO_SLOT
    first = int(slots[0])
    return first if len(slots) == 1 or (slots == first).all() else None


def _check_logits(logits: np.ndarray) -> None:
    """Finite observations can still overflow the network (e.g. 3e38): refuse, never sample from NaN."""
    if not np.isfinite(logits).all():
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))[:5].tolist()
        raise InvalidInputError(f"obs rows {bad} drive the policy to non-finite logits (values far out of range?)")


def sample_actions(
    logits: torch.Tensor, mask: torch.Tensor | None, greedy: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked categorical draw: logits (N, A) -> action, logp, entropy, each (N,).

    Masked actions get probability exactly 0 and are never drawn; rows with greedy True
    take the argmax instead.
    """
    logp_all = masked_log_probs(logits, mask)  # (N, A)
    probs = logp_all.exp()
    entropy = -torch.where(probs > 0, probs * logp_all, torch.zeros_like(probs)).sum(-1)
    action = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)
    if greedy is not None:
        action = torch.where(greedy, logp_all.argmax(-1), action)
    logp = logp_all.gather(1, action.unsqueeze(1)).squeeze(1)
    return action, logp, entropy
