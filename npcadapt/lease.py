"""One trainer per player at a time when servers share a Redis store: leases and forwarded episodes.

Keys, beside the store's (same prefix; ``<key>`` is the sha256 of the player id)::

    <prefix>:lease:<archetype>:<key>      id of the server that trains the player (SET NX PX)
    <prefix>:episodes:<archetype>:<key>   stream: the player's episodes forwarded by other servers
    <prefix>:work:<server>                set of msgpack [archetype, player]: forwarded to that server

A training round (``Service.train_pending``), for the players with completed episodes here
and those other servers forwarded to this one:

1. :meth:`LeasedTraining.plan`: one script call takes each free lease, renews those held
   here (for ``ttl`` seconds) and names the holder of the others.
2. :meth:`LeasedTraining.prepare`: episodes of players leased elsewhere go to the player's
   stream and the holder's work set (one transaction; if it fails they go back to the
   tracker). For players leased here the episodes in their stream after the served
   adapter's ``forwarded_upto`` join the local ones; a lease just taken first refreshes the
   player from the store (the previous holder may have trained them) and forgets any
   trainer state kept from an earlier turn.
3. :meth:`LeasedTraining.confirm`, after training: the leases are renewed again; a result
   for a player whose lease moved meanwhile is dropped and its local episodes forwarded to
   the new holder.
4. The new versions carry ``forwarded_upto`` = the last stream entry trained and are
   written at once (compare-and-set); :meth:`LeasedTraining.settle` waits for the writes,
   then trims each stream up to and including the ``forwarded_upto`` of the version the
   store holds (not of the one written: a write refused by compare-and-set, discarded by
   another server's newer version or dropped from a full queue consumed nothing), and
   clears the work set of the players with nothing left after it.

No update lost or applied twice when a server dies: which forwarded episodes a version has
consumed is in that version's own bytes (``forwarded_upto``), so consuming them and
storing the result are one atomic write. A holder killed before its write leaves the
stored version where it was, and the next holder (once the lease lapses, ``ttl`` after the
last renewal) trains those episodes once; killed after it, they are consumed. A holder
waits for its writes before a round ends, so a server that takes a lapsed lease reads the
last version. Compare-and-set keeps a holder stalled past its lease (a partition longer
than ``ttl`` with a write pending) from overwriting the newer version; its refused update
is counted (``store_conflicts``) and lost. Lost with a killed server, as without Redis:
its open episodes, its own episodes not yet trained, its trainer state; episodes forwarded
to it stay in the stream until a server next trains that player. A stream keeps about the
last ``STREAM_MAX`` episodes of its player (older ones are trimmed, untrained).

The holder keeps a player while it keeps training them (its trainer state stays useful);
the lease moves when the holder stops renewing it: it died, or the player has been idle
there for ``ttl``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from .adapter_meta import player_key, validate_player_id
from .archetypes import Archetype
from .episodes import Episode, EpisodeTracker
from .errors import StoreError
from .stores import reply_text
from .training.online import PlayerUpdate, UpdateOutcome
from .training.trainer_process import decode_items, encode_items

if TYPE_CHECKING:
    from .engine import Engine
    from .store_redis import RedisAdapterStore

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (archetype, player)
STREAM_MAX = 10_000  # forwarded episodes kept per player (approximately); older ones are trimmed
READ_MAX = 1_000  # forwarded episodes read per player and round
_MAX_ENTRY_BYTES = 64 << 20

_CLAIM = """
local out = {}
for i, k in ipairs(KEYS) do
  local h = redis.call('GET', k)
  if not h then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[#out + 1] = ARGV[1]
    out[#out + 1] = 1
  else
    if h == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
    out[#out + 1] = h
    out[#out + 1] = 0
  end
end
return out
"""

_CLEAR_WORK = """
for i = 2, #KEYS do
  local after = ARGV[2 * i - 2]
  local start = after == '' and '-' or '(' .. after
  if #redis.call('XRANGE', KEYS[i], start, '+', 'COUNT', 1) == 0 then
    redis.call('SREM', KEYS[1], ARGV[2 * i - 3])
  end
end
return 0
"""

_RELEASE = """
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"""


@dataclass
class Plan:
    """Who trains each player of a round: `mine` (new: just taken), `elsewhere` (holder id)."""

    mine: dict[Key, bool] = field(default_factory=dict)  # key -> lease newly taken
    elsewhere: dict[Key, str] = field(default_factory=dict)
    work: list[Key] = field(default_factory=list)  # from this server's work set


class LeasedTraining:
    """The lease side of online training for one server (see the module docstring)."""

    def __init__(
        self,
        store: RedisAdapterStore,
        engine: Engine,
        tracker: EpisodeTracker,
        *,
        ttl: float = 10.0,
        on_claim: Callable[[str, str], None] | None = None,
    ):
        """`on_claim(archetype, player)` runs for each lease newly taken (forget trainer state)."""
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        self.store, self.engine, self.tracker = store, engine, tracker
        self.redis = store.client
        self.prefix = store.prefix
        self.server = uuid.uuid4().hex
        self.ttl_ms = max(1, round(ttl * 1000))
        self._on_claim = on_claim
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._clear_work_script = self.redis.register_script(_CLEAR_WORK)
        self._held: set[Key] = set()
        self._local: dict[Key, list[Episode]] = {}  # this round's own episodes of players leased here
        self._upto: dict[Key, str] = {}  # this round's last forwarded entry per player leased here
        self._after: dict[Key, str] = {}  # the last forwarded entry trained once this round is stored
        self._planned_at = 0.0  # monotonic time of this round's claims
        self.counters = {
            "lease_claims": 0,  # leases taken (not renewals)
            "lease_lost": 0,  # results dropped: the lease moved during the round
            "episodes_forwarded": 0,  # this server's episodes sent to the holder
            "forwarded_trained": 0,  # other servers' episodes trained here
            "forwarded_bad": 0,  # forwarded entries that could not be read (skipped)
        }

    # -- keys ---------------------------------------------------------------------------
    def _key(self, kind: str, archetype: str, player: str) -> str:
        return f"{self.prefix}:{kind}:{archetype}:{player_key(player)}"

    def _work_key(self, server: str) -> str:
        return f"{self.prefix}:work:{server}"

    # -- a round --------------------------------------------------------------------------
    def plan(self, ready: Sequence[Key]) -> Plan:
        """Claim or renew the leases of `ready` players and of this server's work set."""
        self._planned_at = time.monotonic()
        members = self.store.call("read work set", lambda: list(self.redis.smembers(self._work_key(self.server))))
        work = [k for k in map(self._work_item, members) if k is not None and k[0] in self.engine.archetypes]
        keys = list(dict.fromkeys([*ready, *work]))
        plan = Plan(work=work)
        if keys:
            self._claim_leases("claim training leases", keys, plan)
            self.counters["lease_claims"] += sum(plan.mine.values())
        return plan

    def prepare(self, plan: Plan, taken: Mapping[Key, list[Episode]]) -> dict[Key, list[Episode]]:
        """Forward the episodes of players leased elsewhere; for those leased here, their
        episodes plus the forwarded ones not trained yet (players with none are left out).
        If the store fails, every taken episode not forwarded goes back to the tracker and the
        error is raised."""
        forwarded = False
        try:
            self._forward({k: eps for k, eps in taken.items() if k in plan.elsewhere}, plan.elsewhere)
            forwarded = True
            return self._prepare(plan, taken)
        except StoreError:
            for (archetype, player), eps in taken.items():
                if not (forwarded and (archetype, player) in plan.elsewhere):
                    self.tracker.restore(archetype, player, eps)
            raise

    def _prepare(self, plan: Plan, taken: Mapping[Key, list[Episode]]) -> dict[Key, list[Episode]]:
        stale_work = [k for k in plan.work if k in plan.elsewhere]
        if stale_work:  # the lease moved: tell the holder instead
            self._notify(stale_work, plan.elsewhere)
        out: dict[Key, list[Episode]] = {}
        self._local, self._upto, self._after = {}, {}, {}
        afters: dict[Key, str] = {}  # the last forwarded entry the served adapter consumed
        for key, new in plan.mine.items():
            archetype, player = key
            if new:
                self.engine.refresh(archetype, player)
                if self._on_claim is not None:
                    self._on_claim(archetype, player)
            state = self.engine.adapter_state(archetype, player)
            afters[key] = state[1].forwarded_upto if state is not None else ""
        for key, (forwarded, upto) in self._read_forwarded(afters).items():
            local, after = list(taken.get(key, ())), afters[key]
            if upto:
                self._upto[key] = upto
            self._after[key] = upto or after
            if local or forwarded:
                self._local[key] = local
                out[key] = local + forwarded
                self.counters["forwarded_trained"] += len(forwarded)
        self._clear_work([k for k in plan.work if k in plan.mine and k not in out])  # nothing to train for them
        return out

    def confirm(self, archetype: str, outcomes: Sequence[UpdateOutcome]) -> tuple[list[UpdateOutcome], dict[str, str]]:
        """Renew the leases of a trained round: the outcomes still ours to install, with the
        `forwarded_upto` of each. A lease another server took drops the result and forwards its
        local episodes there; one that lapsed meanwhile (taken again now: someone may have
        trained the player in between) drops it and keeps them for the next round."""
        keys = [(archetype, o.player) for o in outcomes]
        if not keys:
            return [], {}
        try:
            plan = self._renew(keys)
        except StoreError as exc:
            if time.monotonic() - self._planned_at < self.ttl_ms / 2000:  # the leases taken at the start still hold
                log.warning("training leases not renewed (%s); installing: they were taken moments ago", exc)
                plan = Plan(mine=dict.fromkeys(keys, False))
            else:
                for key in keys:
                    self.tracker.restore(*key, self._local.get(key, []))
                raise
        lapsed = [k for k in keys if plan.mine.get(k)]
        for key in lapsed:
            self.tracker.restore(*key, self._local.get(key, []))
        lost = {k: plan.elsewhere[k] for k in keys if k in plan.elsewhere}
        self.counters["lease_lost"] += len(lapsed)
        if lost:
            self.counters["lease_lost"] += len(lost)
            log.warning("%d training lease(s) moved during the round; their results are dropped", len(lost))
            local = {k: self._local.get(k, []) for k in lost}
            try:
                self._forward(local, lost)
            except StoreError as exc:
                log.warning("could not forward their episodes (kept for the next round): %s", exc)
                for (name, player), eps in local.items():
                    self.tracker.restore(name, player, eps)
        kept = [o for o in outcomes if (archetype, o.player) not in lost and not plan.mine.get((archetype, o.player))]
        return kept, {o.player: self._upto[(archetype, o.player)] for o in kept if (archetype, o.player) in self._upto}

    def settle(self, archetype: str, players: Iterable[str], timeout: float) -> None:
        """After installing: wait for the new versions' writes, then trim the trained
        streams to what the stored versions consumed, and this server's work set. The wait
        also ends when a write was refused or discarded (a newer version is stored), so
        what was consumed is read back from the store, not taken from this round. A write
        that fails is retried by the queue; the streams are then left as they are."""
        keys = [(archetype, p) for p in players]
        if not keys:
            return
        self.engine.writeback.wait(keys, timeout)
        trained = [p for a, p in keys if (a, p) in self._upto]  # the others trained nothing forwarded
        metas = self.store.read_metas(archetype, trained) if trained else {}
        pipe = self.redis.pipeline(transaction=False)
        for player, meta in metas.items():
            key = (archetype, player)
            stored = meta.forwarded_upto if meta is not None else ""
            self._after[key] = stored  # the work set keeps the player while entries after it remain
            if stored:  # MINID keeps the entry it names: trim from the one after it, so it goes too
                pipe.xtrim(self._key("episodes", *key), minid=_next_id(stored), approximate=False)
        self.store.call("trim forwarded episodes", pipe.execute)
        self._clear_work(keys)

    def _clear_work(self, keys: Sequence[Key]) -> None:
        """Take `keys` off this server's work set, each only if its stream holds nothing after
        what was trained (atomic: an episode forwarded meanwhile keeps its notice)."""
        if not keys:
            return
        streams = [self._key("episodes", *k) for k in keys]
        args: list[bytes | str] = []
        for key in keys:
            args += [_member(key), self._after.get(key, "")]
        self.store.call(
            "clear work set",
            lambda: self._clear_work_script(keys=[self._work_key(self.server), *streams], args=args),
        )

    def _renew(self, keys: Sequence[Key]) -> Plan:
        """Renew (or take again, when lapsed) the leases of `keys`; no work set."""
        return self._claim_leases("renew training leases", keys, Plan())

    def _claim_leases(self, what: str, keys: Sequence[Key], plan: Plan) -> Plan:
        """Take, renew or name the holder of each lease of `keys` (one script call), into `plan`."""
        answer = self.store.call(
            what,
            lambda: self._claim(keys=[self._key("lease", a, p) for a, p in keys], args=[self.server, self.ttl_ms]),
        )
        for key, holder, new in zip(keys, answer[0::2], answer[1::2]):
            holder = reply_text(holder)
            if holder == self.server:
                plan.mine[key] = bool(new)
                self._held.add(key)
            else:
                plan.elsewhere[key] = holder
                self._held.discard(key)
        return plan

    def release_all(self) -> int:
        """Give up every lease held here (at shutdown, after a flush): others may take them at once."""
        held, self._held = sorted(self._held), set()
        if not held:
            return 0
        return int(
            self.store.call(
                "release training leases",
                lambda: self._release(keys=[self._key("lease", a, p) for a, p in held], args=[self.server]),
            )
        )

    def reset(self, archetype: str, player: str) -> None:
        """A reset player: their forwarded episodes are dropped with their adapter."""
        self.store.call("drop forwarded episodes", lambda: self.redis.delete(self._key("episodes", archetype, player)))

    def holder(self, archetype: str, player: str) -> str | None:
        """The server id holding the player's lease now, or None."""
        got = self.store.call("read training lease", lambda: self.redis.get(self._key("lease", archetype, player)))
        return None if got is None else reply_text(got)

    def stats(self) -> dict[str, object]:
        return {**self.counters, "leases_held": len(self._held), "server_id": self.server}

    # -- internals ------------------------------------------------------------------------
    def _forward(self, episodes: Mapping[Key, list[Episode]], holders: Mapping[Key, str]) -> None:
        """Append each player's episodes to their stream and tell the holder (one transaction)."""
        episodes = {k: eps for k, eps in episodes.items() if eps}
        if not episodes:
            return
        pipe = self.redis.pipeline(transaction=True)
        for (archetype, player), eps in episodes.items():
            stream = self._key("episodes", archetype, player)
            for maps in encode_items([PlayerUpdate(player, None, [ep]) for ep in eps]):
                pipe.xadd(stream, {"e": msgpack.packb(maps, use_bin_type=True)}, maxlen=STREAM_MAX, approximate=True)
            pipe.sadd(self._work_key(holders[(archetype, player)]), _member((archetype, player)))
        self.store.call("forward episodes to their trainer", pipe.execute)
        self.counters["episodes_forwarded"] += sum(map(len, episodes.values()))

    def _notify(self, keys: Sequence[Key], holders: Mapping[Key, str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for key in keys:
            pipe.sadd(self._work_key(holders[key]), _member(key))
        pipe.srem(self._work_key(self.server), *map(_member, keys))
        self.store.call("pass on forwarded work", pipe.execute)

    def _read_forwarded(self, afters: Mapping[Key, str]) -> dict[Key, tuple[list[Episode], str]]:
        """Each player's forwarded episodes after stream id `afters[key]` ('' from the start),
        and the last id read ('' if none); one pipeline."""
        if not afters:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for (archetype, player), after in afters.items():
            start = f"({after}" if after else "-"
            pipe.xrange(self._key("episodes", archetype, player), min=start, count=READ_MAX)
        replies = self.store.call("read forwarded episodes", pipe.execute)
        return {
            (archetype, player): self._decode_forwarded(self.engine.archetypes[archetype], player, entries or [])
            for (archetype, player), entries in zip(afters, replies)
        }

    def _decode_forwarded(self, archetype: Archetype, player: str, entries: list[Any]) -> tuple[list[Episode], str]:
        """The episodes of the player's stream `entries` (unreadable ones skipped), and the last id."""
        stream = self._key("episodes", archetype.name, player)
        episodes: list[Episode] = []
        last = ""
        for entry_id, fields in entries:
            last = reply_text(entry_id)
            data = fields.get(b"e")
            try:
                if not isinstance(data, bytes) or len(data) > _MAX_ENTRY_BYTES:
                    raise ValueError("no episode bytes")
                [item] = decode_items(archetype, [msgpack.unpackb(data, raw=False)])
                if item.player != player:
                    raise ValueError(f"entry names another player {item.player!r}")
                episodes.extend(item.episodes)
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                self.counters["forwarded_bad"] += 1
                log.warning("skipping forwarded episode %s of %s: %s", last, stream, exc)
        return episodes, last

    @staticmethod
    def _work_item(member: object) -> Key | None:
        """A work-set member back to (archetype, player); None (ignored) if it is not one."""
        try:
            if not isinstance(member, bytes):
                return None
            archetype, player = msgpack.unpackb(member, raw=False)
            return (archetype, validate_player_id(player)) if isinstance(archetype, str) else None
        except (ValueError, TypeError, msgpack.UnpackException):
            return None


def _next_id(stream_id: str) -> str:
    """The smallest stream id after `stream_id` ('<ms>-<seq>')."""
    ms, seq = map(int, stream_id.split("-"))
    return f"{ms}-{seq + 1}" if seq < 2**64 - 1 else f"{ms + 1}-0"


def _member(key: Key) -> bytes:
    """The work-set member of (archetype, player)."""
    return msgpack.packb(list(key), use_bin_type=True)
