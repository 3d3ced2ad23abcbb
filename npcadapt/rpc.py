"""The bridge's methods: one table of what each is, its parameter checks and results; no I/O.

:attr:`Methods.table` declares every method the bridge serves with its :class:`Kind`,
which alone tells the server how to run it (the server knows no method by name). Each
method takes the decoded MessagePack-RPC params list and either returns a result (plain
msgpack-able data) or raises an :class:`~npcadapt.errors.NpcAdaptError` whose message
names the problem; :func:`error_reply` is what any failure becomes on the wire.

``act`` rows are parsed here (column-wise when they allow it) into :class:`ActBlock` s,
which the server's micro-batcher merges into one Service call (:meth:`Methods.run_blocks`);
:class:`~npcadapt.protocol_codec.DecisionEncoder` packs that call's results straight to
MessagePack bytes. Everything else runs directly against the Service.
"""

from __future__ import annotations

import enum
import hmac
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .adapter_meta import all_valid_ids, validate_npc_id, validate_player_id
from .errors import InvalidInputError, NpcAdaptError
from .protocol import INTERNAL_ERROR, INVALID_PARAMS
from .protocol_codec import DecisionEncoder, EncodedRows
from .service import Service

__all__ = ["ActBlock", "BridgeMethod", "DecisionEncoder", "EncodedRows", "Kind", "Methods", "error_reply"]

ACT_OPTIONS = ("mask", "greedy")
NOT_AUTHENTICATED = "authenticate first: call auth(token) before {method!r}"  # UNAUTHORIZED before auth
WRONG_TOKEN = "auth(token): wrong token"  # UNAUTHORIZED: auth's params are not the token


class Kind(enum.Enum):
    """How the server runs a bridge method; what `call` (and `many`) of a
    :class:`BridgeMethod` of that kind take and return."""

    DECISION = "decision"
    """``call(params) -> (archetype, ActBlock)``, parsed on the event loop; the rows wait
    in the micro-batcher and one engine forward per archetype answers every queued
    request. The reply is the decision map (``one_row``) or the array of them."""

    DIRECT = "direct"
    """``call(params) -> result``, answered at once on the event loop."""

    FEEDBACK = "feedback"
    """``call(params) -> result`` as a request, ``many([params, ...]) -> [refusal, ...]``
    for the run of notifications of one read (applied as one batch). Either way it
    follows the decisions this connection sent before it (they are made first)."""

    WORKER = "worker"
    """``call(params) -> result`` in a worker thread (disk writes never stall the event
    loop), after this connection's queued decisions are made; the reply comes when it is
    done. ``shared``: ``check(params)`` runs on the loop, then ``call()`` takes none, one
    run at a time, and the calls made while one runs share the next run."""

    CONNECTION = "connection"
    """The connection's own state: ``call(params, token) -> bool``, whether the params
    authenticate the connection. The only kind a connection may call before it has
    authenticated; called again later, it checks the token again (a wrong one is refused,
    the connection stays authenticated)."""


@dataclass(frozen=True, slots=True)
class BridgeMethod:
    """One row of the method table: its kind and the callables the kind runs."""

    kind: Kind
    call: Callable
    one_row: bool = False  # DECISION: the reply is one decision map, not an array of them
    many: Callable[[Sequence[list]], list] | None = None  # FEEDBACK: a run of notifications at once
    check: Callable[[list], None] | None = None  # WORKER (shared): the params, checked on the loop
    shared: bool = False  # WORKER: calls made while one runs share the next run


def error_reply(exc: BaseException, method: str | None = None) -> tuple[int, str]:
    """The error ``(code, message)`` a failed call answers: a caller's mistake
    (InvalidInputError) is INVALID_PARAMS, any other NpcAdaptError (disk full, ...) is
    INTERNAL_ERROR with its message, and anything else, a bug, INTERNAL_ERROR naming the
    method; `method` None (an engine forward of merged requests) keeps the repr wording
    decisions have always had."""
    if isinstance(exc, NpcAdaptError):
        return (INVALID_PARAMS if isinstance(exc, InvalidInputError) else INTERNAL_ERROR), str(exc)
    if method is None:
        return INTERNAL_ERROR, f"internal error: {exc!r}"
    return INTERNAL_ERROR, f"internal error in {method}: {type(exc).__name__}: {exc}"


@dataclass(slots=True)
class ActBlock:
    """The validated rows of one ``act`` or ``act_batch`` request, column by column."""

    players: list[str]
    npcs: list[str]
    obs: np.ndarray  # (n, D) float32
    masks: np.ndarray | None  # (n, A) bool; None = every action allowed
    greedy: np.ndarray | None  # (n,) bool; None = no row greedy

    def __len__(self) -> int:
        return len(self.players)


def _arity(method: str, params: list, *counts: int) -> None:
    if len(params) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise InvalidInputError(f"{method} takes {want} params, got {len(params)}")


def parse_obs(value: Any, obs_dim: int) -> np.ndarray:
    """An array of numbers, or binary float32 little-endian -> (obs_dim,) finite float32."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 4 * obs_dim:
            raise InvalidInputError(f"binary obs must be {4 * obs_dim} bytes ({obs_dim} float32), got {len(value)}")
        arr = np.frombuffer(value, dtype="<f4").astype(np.float32)
    elif isinstance(value, list):
        if len(value) != obs_dim:
            raise InvalidInputError(f"obs must have {obs_dim} numbers, got {len(value)}")
        if not all(type(x) in (int, float) for x in value):
            raise InvalidInputError("obs must hold only numbers")
        arr = np.asarray(value, dtype=np.float32)
    else:
        raise InvalidInputError(f"obs must be an array of numbers or float32 binary, got {type(value).__name__}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(
            f"obs contains NaN or infinite values at {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}"
        )
    return arr


def parse_options(value: Any, n_actions: int) -> tuple[np.ndarray | None, bool]:
    """The optional map {mask: [bool] * n_actions, greedy: bool}."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"options must be a map, got {type(value).__name__}")
    unknown = sorted(set(value) - set(ACT_OPTIONS), key=str)
    if unknown:
        raise InvalidInputError(f"unknown options {unknown}; known: {list(ACT_OPTIONS)}")
    mask = value.get("mask")
    if mask is not None:
        if not isinstance(mask, list) or len(mask) != n_actions or not all(isinstance(m, bool) for m in mask):
            raise InvalidInputError(f"mask must be an array of {n_actions} bools")
        if not any(mask):
            raise InvalidInputError("mask allows no action")
        mask = np.asarray(mask, dtype=bool)
    greedy = value.get("greedy", False)
    if not isinstance(greedy, bool):
        raise InvalidInputError(f"greedy must be a bool, got {type(greedy).__name__}")
    return mask, greedy


def _feedback_args(params: list) -> tuple[str, str, float, bool]:
    """feedback(player, npc, reward[, done]) params -> checked (player, npc, reward, done)."""
    _arity("feedback", params, 3, 4)
    player = validate_player_id(params[0])
    npc = validate_npc_id(params[1])
    reward = params[2]
    if type(reward) not in (int, float) or not math.isfinite(reward):
        raise InvalidInputError(f"reward must be a finite number, got {reward!r}")
    done = params[3] if len(params) == 4 else False
    if not isinstance(done, bool):
        raise InvalidInputError(f"done must be a bool, got {type(done).__name__}")
    return player, npc, float(reward), done


class Methods:
    """The bridge's methods over one Service; `stats` gives the server's own figures
    (the Service's alone without it)."""

    def __init__(self, service: Service, stats: Callable[[], dict] | None = None):
        self.service = service
        self._stats = stats or service.stats
        self._specs = {name: arch.spec for name, arch in service.archetypes.items()}
        self._encoders = {name: DecisionEncoder(spec.actions) for name, spec in self._specs.items()}
        self._archetypes = [  # fixed for the server's life, like the specs: built once, not per call
            {k: v for k, v in arch.describe().items() if k in ("name", "version", "observation", "actions")}
            for arch in service.archetypes.values()
        ]
        self.table = self._table()

    def _table(self) -> dict[str, BridgeMethod]:
        """Every method the bridge serves, by name: the one place that says what each is."""
        D, K = BridgeMethod, Kind
        return {
            "act": D(K.DECISION, self.parse_act, one_row=True),
            "act_batch": D(K.DECISION, self.parse_act_batch),
            "feedback": D(K.FEEDBACK, self.feedback, many=self.feedback_many),
            "archetypes": D(K.DIRECT, self.archetypes),
            "adapter_info": D(K.DIRECT, self.adapter_info),
            "prior_info": D(K.DIRECT, self.prior_info),
            "action_probs": D(K.DIRECT, self.action_probs),
            "stats": D(K.DIRECT, self.stats),
            "flush": D(K.WORKER, self.flush, check=self.check_flush, shared=True),
            "reset_player": D(K.WORKER, self.reset_player),
            "auth": D(K.CONNECTION, self.auth),
        }

    def _spec(self, archetype: Any):
        spec = self._specs.get(archetype) if isinstance(archetype, str) else None
        if spec is None:
            raise InvalidInputError(f"unknown archetype {archetype!r}; known: {sorted(self._specs)}")
        return spec

    # -- decisions (batched by the server) ---------------------------------------------
    def parse_act(self, params: list) -> tuple[str, ActBlock]:
        """act(archetype, player, npc, obs[, options]) -> its one row."""
        _arity("act", params, 4, 5)
        spec = self._spec(params[0])
        player, npc, obs, mask, greedy = self._row(spec, params[1:])
        return params[0], ActBlock(
            [player], [npc], obs[None], None if mask is None else mask[None], np.ones(1, bool) if greedy else None
        )

    def parse_act_batch(self, params: list) -> tuple[str, ActBlock]:
        """act_batch(archetype, rows): rows checked column-wise, or one by one to name a bad row."""
        _arity("act_batch", params, 2)
        archetype, rows = params
        spec = self._spec(archetype)
        if not isinstance(rows, list) or not rows:
            raise InvalidInputError("act_batch rows must be a non-empty array")
        return archetype, self._columns(spec, rows) or self._row_by_row(spec, rows)

    def _row(self, spec, row: list) -> tuple[str, str, np.ndarray, np.ndarray | None, bool]:
        """Validate [player, npc, obs] or [player, npc, obs, options]."""
        if not isinstance(row, list) or len(row) not in (3, 4):
            raise InvalidInputError("row must be [player, npc, obs] or [player, npc, obs, options]")
        player = validate_player_id(row[0])
        npc = validate_npc_id(row[1])
        obs = parse_obs(row[2], spec.obs_dim)
        mask, greedy = parse_options(row[3], spec.n_actions) if len(row) == 4 else (None, False)
        return player, npc, obs, mask, greedy

    def _row_by_row(self, spec, rows: list) -> ActBlock:
        parsed = []
        for i, row in enumerate(rows):
            try:
                parsed.append(self._row(spec, row))
            except InvalidInputError as exc:
                raise InvalidInputError(f"row {i}: {exc}") from None
        players, npcs, obs, masks, greedy = zip(*parsed)
        any_mask = any(m is not None for m in masks)
        return ActBlock(
            list(players),
            list(npcs),
            np.stack(obs),
            np.stack([np.ones(spec.n_actions, bool) if m is None else m for m in masks]) if any_mask else None,
            np.asarray(greedy) if any(greedy) else None,
        )

    @staticmethod
    def _columns(spec, rows: list) -> ActBlock | None:
        """The common case in bulk: every row [player, npc, obs] with short ids and finite
        float32-binary obs. None when any row is otherwise; those are parsed one by one."""
        width = 4 * spec.obs_dim
        if set(map(type, rows)) != {list} or set(map(len, rows)) != {3}:
            return None
        players, npcs, raws = zip(*rows)
        if not (all_valid_ids(players + npcs) and set(map(type, raws)) == {bytes} and set(map(len, raws)) == {width}):
            return None
        obs = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(rows), spec.obs_dim).astype(np.float32)
        if not np.isfinite(obs).all():
            return None
        return ActBlock(list(players), list(npcs), obs, None, None)

    def run_blocks(self, archetype: str, blocks: Sequence[ActBlock]) -> EncodedRows:
        """One Service.act_batch over the rows of many requests -> every row's result, encoded."""
        n_actions = self._specs[archetype].n_actions
        if len(blocks) == 1:
            block = blocks[0]
            players, npcs, obs, masks, greedy = block.players, block.npcs, block.obs, block.masks, block.greedy
        else:
            players = list(itertools.chain.from_iterable(b.players for b in blocks))
            npcs = list(itertools.chain.from_iterable(b.npcs for b in blocks))
            obs = np.concatenate([b.obs for b in blocks])
            masks = greedy = None
            if any(b.masks is not None for b in blocks):
                masks = np.concatenate(
                    [np.ones((len(b), n_actions), bool) if b.masks is None else b.masks for b in blocks]
                )
            if any(b.greedy is not None for b in blocks):
                greedy = np.concatenate([np.zeros(len(b), bool) if b.greedy is None else b.greedy for b in blocks])
        out = self.service.act_batch(
            archetype, players, obs, npcs=npcs, masks=masks, greedy=False if greedy is None else greedy
        )
        return self._encoders[archetype].encode(out)

    # -- the other methods -------------------------------------------------------------
    def archetypes(self, params: list) -> list[dict]:
        _arity("archetypes", params, 0)
        return self._archetypes

    def feedback(self, params: list) -> bool:
        self.service.feedback(*_feedback_args(params))
        return True

    def feedback_many(self, params_list: Sequence[list]) -> list[InvalidInputError]:
        """Several feedback calls (a burst of notifications) as one Service.feedback_batch,
        one log record; returns the errors of those refused (malformed, or with no decision
        to attach to), which change nothing, exactly as one-by-one calls would refuse them."""
        items, errors = [], {}  # errors by position in the burst
        for k, params in enumerate(params_list):
            try:
                items.append((k, *_feedback_args(params)))
            except InvalidInputError as exc:
                errors[k] = exc
        if items:
            positions, players, npcs, rewards, dones = map(list, zip(*items))
            for i in self.service.feedback_batch(players, npcs, rewards, dones, skip_refused=True):
                errors[positions[i]] = InvalidInputError(
                    f"no decision to attach feedback to for player {players[i]!r}, npc {npcs[i]!r}"
                )
        return [errors[k] for k in sorted(errors)]

    def action_probs(self, params: list) -> list[list[float]]:
        """action_probs(archetype, rows[, {base: bool}]) with rows [[player, obs], ...]:
        each row's action probabilities under its player's current policy (or the base)."""
        _arity("action_probs", params, 2, 3)
        archetype, rows = params[0], params[1]
        spec = self._spec(archetype)
        options = params[2] if len(params) == 3 else {}
        if not isinstance(options, dict) or set(options) - {"base"} or not isinstance(options.get("base", False), bool):
            raise InvalidInputError("action_probs options must be a map with an optional bool 'base'")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and len(r) == 2 for r in rows):
            raise InvalidInputError("action_probs rows must be a non-empty array of [player, obs]")
        players = [validate_player_id(r[0]) for r in rows]
        obs = np.stack([parse_obs(r[1], spec.obs_dim) for r in rows])
        probs = self.service.action_probs(archetype, players, obs, base=options.get("base", False))
        return probs.astype(float).tolist()

    def adapter_info(self, params: list) -> dict | None:
        _arity("adapter_info", params, 2)
        self._spec(params[0])
        info = self.service.adapter_info(params[0], validate_player_id(params[1]))
        return None if info is None else info.to_dict()

    def prior_info(self, params: list) -> dict | None:
        _arity("prior_info", params, 2)
        self._spec(params[0])
        return self.service.prior_info(params[0], validate_player_id(params[1]))

    def reset_player(self, params: list) -> bool:
        _arity("reset_player", params, 2)
        self._spec(params[0])
        return self.service.reset_player(params[0], validate_player_id(params[1]))

    @staticmethod
    def check_flush(params: list) -> None:
        _arity("flush", params, 0)

    def flush(self) -> int:
        """flush() once :meth:`check_flush` passed: every changed adapter and the log to disk."""
        return self.service.flush()

    def stats(self, params: list) -> dict:
        """Counters and recent figures; any params are ignored."""
        return self._stats()

    @staticmethod
    def auth(params: list, token: str | None) -> bool:
        """auth(token): whether `params` are exactly the server's token (compared in
        constant time); with no token every connection is authenticated."""
        if token is None:
            return True
        given = params[0] if len(params) == 1 else None
        return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())
