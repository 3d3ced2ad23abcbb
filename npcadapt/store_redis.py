"""Adapters in Redis, shared by many servers: compare-and-set writes, changes announced.

Keys, under a prefix (``npcadapt``); ``<key>`` is the sha256 of the player id, as in the
file store, so a player id never becomes part of a key name::

    <prefix>:adapter:<archetype>:<key>             hash: data (safetensors bytes, the metadata
                                                    in its header), version, base, digest; or,
                                                    once deleted, a tombstone: version, deleted
    <prefix>:players:<archetype>                   set of the <key>s stored (for players())
    <prefix>:quarantine:<archetype>:<key>:<ns>     hash: data, reason (data that failed validation)
    <prefix>:quarantined:<archetype>               list of those quarantine keys
    channel <prefix>:changes                        msgpack [origin, archetype, player, version]

A save is one Lua script, atomic in Redis: it stores the adapter only if its version is
newer than the stored one (the same adapter again is a retried write and succeeds),
indexes it and publishes the change; anything else is refused (StaleAdapterError), so a
server never overwrites a newer adapter with an older one. Loads validate as the file
store does (``_validate``); bad data is moved to a quarantine key by a script that checks
it is still the data that was read. A delete (a reset) publishes version -1 and leaves a
tombstone that keeps the version as a floor: reads see no adapter, a late write of that
version or an older one (from a server that had not heard of the reset) is refused, and
the player's next adapter starts above it (:meth:`RedisAdapterStore.version_floor`).
Tombstones stay (about 100 bytes each).

:meth:`RedisAdapterStore.watch` subscribes to the channel in a thread and hands other
servers' changes to the engine (its own are skipped by origin). When the subscription was
lost, or an operation found Redis unreachable, it hands a resync event once Redis
answers again: changes may have been missed meanwhile.

Unreachable (refused, timed out, loading after a restart) raises
:class:`~npcadapt.errors.StoreUnavailableError` (after one quick retry, for a pooled
connection that a restart closed); for ``FAST_FAIL`` seconds after that, calls fail at once
without trying, so a partition does not cost every cold load a connect timeout. Any other
error Redis answers raises StoreError.

Over 450 lines: the store's operations, their Lua scripts and the change feed share one client and its failure handling.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, NoReturn, TypeVar

import msgpack
import redis
import torch
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .adapter_meta import AdapterMeta, AdapterSpec, player_key, show_id, validate_archetype_name
from .errors import (
    AdapterMismatchError,
    CorruptAdapterError,
    InvalidInputError,
    StaleAdapterError,
    StoreError,
    StoreUnavailableError,
)
from .store import _Invalid, _meta_for, _read_header, _reason_text, _serialize, _validate
from .stores import StoreEvent, reply_text

__all__ = ["RedisAdapterStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
_DELETED = -1  # the version a delete announces
FAST_FAIL = 0.5  # seconds after finding Redis unreachable during which calls fail without trying
_MAX_EVENT_BYTES = 4096  # an announcement is ~300 bytes; anything larger is not ours
_FIELDS = ("data", "version", "deleted")  # what a read of an adapter's hash fetches

_SAVE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version'))
local v = tonumber(ARGV[2])
if cur then
  local reset = redis.call('HEXISTS', KEYS[1], 'deleted')
  if cur > v then return {0, cur, reset} end
  if cur == v then
    if redis.call('HGET', KEYS[1], 'digest') == ARGV[4] then return {1, cur, 0} end
    return {0, cur, reset}
  end
end
redis.call('HDEL', KEYS[1], 'deleted')
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'version', ARGV[2], 'base', ARGV[3], 'digest', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1, v, 0}
"""

_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'deleted') == 1 then return 0 end
local floor = redis.call('HGET', KEYS[1], 'version')
redis.call('DEL', KEYS[1])
if floor and tonumber(floor) then redis.call('HSET', KEYS[1], 'version', floor, 'deleted', '1') end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

_QUARANTINE = """
local data = redis.call('HGET', KEYS[1], 'data') or ''
if redis.call('EXISTS', KEYS[1]) == 0 or redis.sha1hex(data) ~= ARGV[1] then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'reason', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('RPUSH', KEYS[4], KEYS[2])
return 1
"""


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//[^@/]*@", "//", url)


class RedisAdapterStore:
    """The :class:`~npcadapt.stores.Store` of many servers: adapters in one Redis (thread-safe)."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "npcadapt",
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", prefix):
            raise InvalidInputError(f"Redis key prefix must be 1-64 of [A-Za-z0-9_.-], got {prefix!r}")
        self.where = _redact(url)
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self.origin = uuid.uuid4().hex  # this store's announcements are not news to it
        options: dict[str, Any] = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout)
        try:
            self.client = redis.Redis.from_url(
                url,
                # only a refused/reset connection is retried: a timed-out reply may be of a command
                # that ran (an episode forwarded twice, a lease taken but reported taken by another)
                retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, supported_errors=(redis.ConnectionError,)),
                retry_on_error=[redis.ConnectionError],
                **options,
            )
            # the subscriber sees every lost connection itself (a silent reconnect could hide missed changes)
            self._sub_client = redis.Redis.from_url(
                url, retry=Retry(NoBackoff(), 0), health_check_interval=1, **options
            )
        except ValueError as exc:
            raise InvalidInputError(f"bad Redis URL {self.where!r}: {exc}") from None
        self._save = self.client.register_script(_SAVE)
        self._delete = self.client.register_script(_DELETE)
        self._quarantine_script = self.client.register_script(_QUARANTINE)
        self._callbacks: list[Callable[[StoreEvent], None]] = []
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._reachable = True
        self._failed_at = 0.0  # monotonic time Redis was last found unreachable
        self._needs_resync = False
        self.counters = {"store_errors": 0, "store_events": 0, "store_resyncs": 0}
        try:
            self.client.ping()
        except redis.AuthenticationError as exc:  # a configuration error, not an outage
            raise StoreError(f"Redis at {self.where} refused the credentials: {exc}") from exc
        except _UNREACHABLE as exc:  # serve anyway: cached and new players get what they can
            self._unreachable(exc)
            log.warning("adapter store: Redis at %s is unreachable now (%s); serving without it", self.where, exc)
        except redis.RedisError as exc:  # e.g. a wrong password: a configuration error
            raise StoreError(f"Redis at {self.where} refused the connection: {exc}") from exc

    # -- keys -------------------------------------------------------------------------
    def key_for(self, archetype: str, player: str) -> str:
        """The Redis key of (archetype, player)'s adapter; validates both names."""
        key = player_key(player)
        return f"{self.prefix}:adapter:{validate_archetype_name(archetype)}:{key}"

    def _index(self, archetype: str) -> str:
        return f"{self.prefix}:players:{validate_archetype_name(archetype)}"

    # -- the Store protocol -----------------------------------------------------------
    def save(self, tensors: Mapping[str, torch.Tensor], meta: AdapterMeta) -> str:
        """Store `meta.version` unless Redis holds a newer one (StaleAdapterError); returns the key."""
        if not isinstance(meta, AdapterMeta):
            raise InvalidInputError(f"meta must be an AdapterMeta, got {type(meta).__name__}")
        key = self.key_for(meta.archetype, meta.player)
        data = _serialize(tensors, meta)
        announce = msgpack.packb([self.origin, meta.archetype, meta.player, meta.version], use_bin_type=True)
        args: list[Any] = [data, meta.version, meta.base_hash, _digest(tensors, meta), player_key(meta.player)]
        what = f"save adapter for player {show_id(meta.player)} to {key}"
        stored, version, reset = self.call(
            what,
            lambda: self._save(keys=[key, self._index(meta.archetype)], args=[*args, self.channel, announce]),
        )
        if not stored:
            held = (
                f"was reset at version {version} (a write from before the reset)"
                if reset
                else f"holds version {version} (a newer or different adapter, kept)"
            )
            raise StaleAdapterError(
                f"adapter for player {show_id(meta.player)} version {meta.version} not saved: {self.where} {key} {held}",
                int(version),
            )
        return key

    def load(self, spec: AdapterSpec, player: str) -> tuple[dict[str, torch.Tensor], AdapterMeta] | None:
        """The player's validated adapter, or None if there is none (serve the base policy)."""
        if not isinstance(spec, AdapterSpec):
            raise InvalidInputError(f"spec must be an AdapterSpec, got {type(spec).__name__}")
        key = self.key_for(spec.archetype, player)
        loaded = self._read_checked(spec.archetype, player, "adapter", lambda data: _validate(data, spec, player))
        if loaded is None:
            return None
        if loaded[1].base_hash != spec.base_hash:
            raise AdapterMismatchError(
                f"adapter for player {show_id(player)} ({self.where} {key}) was trained against base "
                f"{loaded[1].base_hash}, archetype {spec.archetype!r} is at {spec.base_hash}"
            )
        return loaded

    def read_meta(self, archetype: str, player: str) -> AdapterMeta | None:
        """The player's adapter metadata (from the data's header); None if absent."""
        got = self._read_checked(
            archetype, player, "adapter metadata", lambda data: _header_meta(data, archetype, player)
        )
        return None if got is None else got[1]

    def read_metas(self, archetype: str, players: Iterable[str]) -> dict[str, AdapterMeta | None]:
        """:meth:`read_meta` of each of `players`, in one round trip."""
        keys = {player: self.key_for(archetype, player) for player in players}
        pipe = self.client.pipeline(transaction=False)
        for key in keys.values():
            pipe.hmget(key, *_FIELDS)
        replies = self.call(f"read adapter metadata of {len(keys)} players", pipe.execute)
        out: dict[str, AdapterMeta | None] = {}
        for (player, key), reply in zip(keys.items(), replies):
            got = self._checked(
                archetype, player, key, reply, partial(_header_meta, archetype=archetype, player=player)
            )
            out[player] = None if got is None else got[1]
        return out

    def _read_checked(
        self, archetype: str, player: str, what: str, parse: Callable[[bytes], tuple[_T, AdapterMeta]]
    ) -> tuple[_T, AdapterMeta] | None:
        """`parse(data)` of the player's entry (:meth:`_checked`)."""
        key = self.key_for(archetype, player)
        reply = self.call(f"read {what} of player {show_id(player)}", lambda: self.client.hmget(key, *_FIELDS))
        return self._checked(archetype, player, key, reply, parse)

    def _checked(
        self, archetype: str, player: str, key: str, reply: list[Any], parse: Callable[[bytes], tuple[_T, AdapterMeta]]
    ) -> tuple[_T, AdapterMeta] | None:
        """`parse(data)` of the HMGET `reply` (_FIELDS) of the player's `key`, its version field
        checked: None if absent (or deleted: a tombstone); bad data is quarantined
        (CorruptAdapterError)."""
        data, version, deleted = map(_as_bytes, reply)
        if (data is None and version is None) or deleted is not None:
            return None
        try:
            if data is None:
                raise _Invalid("its hash has no 'data' field")
            parsed = parse(data)
            _check_version(version, parsed[1])
        except _Invalid as exc:
            self._quarantine(archetype, player, key, data or b"", str(exc))
        return parsed

    def delete(self, archetype: str, player: str) -> bool:
        """Remove the player's adapter (announced to other servers), leaving a tombstone with
        its version (:meth:`version_floor`); True if there was one."""
        key = self.key_for(archetype, player)
        announce = msgpack.packb([self.origin, archetype, player, _DELETED], use_bin_type=True)
        done = self.call(
            f"delete adapter of player {show_id(player)}",
            lambda: self._delete(keys=[key, self._index(archetype)], args=[player_key(player), self.channel, announce]),
        )
        return bool(done)

    def players(self, archetype: str) -> Iterator[str]:
        """Player ids (from metadata) of stored adapters; unreadable entries are skipped."""
        index, prefix = self._index(archetype), f"{self.prefix}:adapter:{archetype}:"
        keys = sorted(map(reply_text, self.call("list stored players", lambda: list(self.client.sscan_iter(index)))))
        for start in range(0, len(keys), 500):
            pipe = self.client.pipeline(transaction=False)
            for pkey in keys[start : start + 500]:
                pipe.hget(prefix + pkey, "data")
            for pkey, data in zip(keys[start : start + 500], self.call("read stored players", pipe.execute)):
                try:
                    meta = (
                        None if data is None else AdapterMeta.from_metadata(_read_header(io.BytesIO(data), len(data)))
                    )
                except (ValueError, _Invalid) as exc:
                    log.warning("skipping unreadable adapter %s%s: %s", prefix, pkey, exc)
                    continue
                if meta is None:
                    continue  # deleted or quarantined meanwhile
                if meta.archetype == archetype and player_key(meta.player) == pkey:
                    yield meta.player
                else:
                    log.warning(
                        "skipping %s%s: it holds %r player %s", prefix, pkey, meta.archetype, show_id(meta.player)
                    )

    def exists(self, archetype: str, player: str) -> bool:
        key = self.key_for(archetype, player)
        return bool(self.call(f"look up adapter of player {show_id(player)}", lambda: self.client.hexists(key, "data")))

    def version_floor(self, archetype: str, player: str) -> int:
        """The version a new adapter of the player must be above: the stored one's, or that of
        the adapter deleted last (its tombstone); 0 if there was never one."""
        key = self.key_for(archetype, player)
        got = self.call(f"read adapter version of player {show_id(player)}", lambda: self.client.hget(key, "version"))
        try:
            return max(0, int(got)) if got is not None else 0
        except ValueError:  # not a number: the entry is corrupt (quarantined when read); no floor
            return 0

    def quarantined(self, archetype: str) -> list[str]:
        """Quarantine keys of ``archetype``, oldest first (each a hash: data, reason)."""
        index = f"{self.prefix}:quarantined:{validate_archetype_name(archetype)}"
        return [reply_text(k) for k in self.call("list quarantined adapters", lambda: self.client.lrange(index, 0, -1))]

    def watch(self, callback: Callable[[StoreEvent], None]) -> None:
        """Hand other servers' changes (and resyncs) to `callback`, from the subscriber thread."""
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="npcadapt-store-watch", daemon=True)
                self._thread.start()

    @property
    def reachable(self) -> bool:
        """Whether the last operation (or the subscriber) reached Redis."""
        return self._reachable

    def stats(self) -> dict[str, object]:
        return {"store_backend": "redis", "store_reachable": self._reachable, **self.counters}

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self.client.close()
        self._sub_client.close()

    # -- internals ------------------------------------------------------------------------
    def call(self, what: str, op: Callable[[], _T]) -> _T:
        """`op()`, its Redis errors turned into StoreUnavailableError / StoreError naming `what`."""
        if not self._reachable and time.monotonic() - self._failed_at < FAST_FAIL:
            self.counters["store_errors"] += 1
            raise StoreUnavailableError(f"could not {what}: Redis at {self.where} is unreachable")
        try:
            out = op()
        except _UNREACHABLE as exc:
            self._unreachable(exc)
            raise StoreUnavailableError(f"could not {what}: Redis at {self.where} is unreachable ({exc})") from exc
        except redis.RedisError as exc:
            self.counters["store_errors"] += 1
            raise StoreError(f"could not {what}: Redis at {self.where} answered: {exc}") from exc
        self._reachable = True
        return out

    def _unreachable(self, exc: BaseException) -> None:
        self.counters["store_errors"] += 1
        self._reachable = False
        self._failed_at = time.monotonic()
        self._needs_resync = True  # what was read as absent meanwhile may not be

    def _quarantine(self, archetype: str, player: str, key: str, data: bytes, reason: str) -> NoReturn:
        """Move bad data to a quarantine key with the reason (if it is still what was read),
        then raise CorruptAdapterError."""
        pkey = player_key(player)
        target = f"{self.prefix}:quarantine:{archetype}:{pkey}:{time.time_ns()}"
        what = f"adapter for player {show_id(player)} in {self.where} {key} failed validation: {reason}"
        note = _reason_text(player, pkey, f"{self.where} {key}", reason)
        keys = [key, target, self._index(archetype), f"{self.prefix}:quarantined:{archetype}"]
        moved = self.call(
            f"quarantine adapter of player {show_id(player)}",
            lambda: self._quarantine_script(keys=keys, args=[hashlib.sha1(data).hexdigest(), note, pkey]),
        )
        if not moved:
            raise CorruptAdapterError(f"{what}; it was replaced or removed meanwhile, so nothing was quarantined")
        log.warning("quarantined %s -> %s: %s", key, target, reason)
        raise CorruptAdapterError(f"{what}; moved to {target}")

    def _listen(self) -> None:
        """The subscriber thread: other servers' changes to the callbacks; a resync after any gap."""
        gap, backoff = False, 0.05
        while not self._closed.is_set():
            pubsub = self._sub_client.pubsub()
            try:
                self._subscribe(pubsub)
                self._reachable, backoff = True, 0.05
                if gap:
                    self._resync()
                gap = False
                self._follow(pubsub)
            except (*_UNREACHABLE, OSError) as exc:
                if not gap:
                    log.warning("adapter store: lost the change feed of %s (%s); retrying", self.where, exc)
                gap = True
                self._unreachable(exc)
                self._closed.wait(backoff)
                backoff = min(1.0, backoff * 2)
            except Exception:  # a bug must not end the feed
                log.exception("adapter store: change feed failed")
                gap = True
                self._closed.wait(1.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def _subscribe(self, pubsub: Any) -> None:
        """Subscribe to the channel and wait until the subscription is in place (or closed)."""
        pubsub.subscribe(self.channel)
        while not self._closed.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if msg is not None and msg["type"] == "subscribe":
                return

    def _follow(self, pubsub: Any) -> None:
        """Hand on announcements until closed; resync once Redis answers after a failed operation."""
        last_check = time.monotonic()
        while not self._closed.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if msg is not None and msg["type"] == "message":
                self._on_message(msg["data"])
            if not (self._needs_resync and time.monotonic() - last_check > 0.2):
                continue
            last_check = time.monotonic()
            self._needs_resync = False  # before the ping: a failure meanwhile asks again
            try:
                self.client.ping()  # an operation failed: once Redis answers, resync
            except BaseException:
                self._needs_resync = True
                raise
            self._resync()

    def _resync(self) -> None:
        self._needs_resync = False
        self._reachable = True
        self.counters["store_resyncs"] += 1
        self._emit(StoreEvent())

    def _on_message(self, data: object) -> None:
        """One announcement: [origin, archetype, player, version]; anything else is logged and dropped."""
        try:
            if not isinstance(data, bytes) or len(data) > _MAX_EVENT_BYTES:
                raise ValueError("not a short byte string")
            origin, archetype, player, version = msgpack.unpackb(data, raw=False, strict_map_key=True)
            if not (isinstance(origin, str) and isinstance(archetype, str) and isinstance(player, str)):
                raise ValueError("origin, archetype and player must be strings")
            if type(version) is not int:
                raise ValueError("version must be an int")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            log.warning("adapter store: ignoring a malformed change announcement: %s", exc)
            return
        if origin == self.origin:
            return
        self.counters["store_events"] += 1
        deleted = version == _DELETED
        self._emit(StoreEvent(archetype, player, 0 if deleted else version, deleted=deleted))

    def _emit(self, event: StoreEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("adapter store: a change handler failed")


def _digest(tensors: Mapping[str, torch.Tensor], meta: AdapterMeta) -> str:
    """sha256 of an adapter's numbers and metadata, the same for the same adapter (its
    safetensors bytes are not: the header's key order varies), so a retried write is known."""
    h = hashlib.sha256(json.dumps(meta.to_metadata(), sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode() + b"\0")
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_bytes(value: object) -> bytes | None:
    """A reply field as bytes (this client answers bytes; None when absent)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _header_meta(data: bytes, archetype: str, player: str) -> tuple[None, AdapterMeta]:
    """The metadata in an adapter's safetensors header, checked against (archetype, player)."""
    return None, _meta_for(_read_header(io.BytesIO(data), len(data)), archetype, player)


def _check_version(field: bytes | None, meta: AdapterMeta) -> None:
    """The hash's version field must be the header's (the compare-and-set reads it)."""
    if field != str(meta.version).encode():
        raise _Invalid(f"its version field is {field!r}, its header says {meta.version}")
