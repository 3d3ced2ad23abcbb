"""The bridge's methods: parameter checking and results, with no I/O.

Each method takes the decoded MessagePack-RPC params list and either returns a result
(plain msgpack-able data) or raises an :class:`~npcadapt.errors.NpcAdaptError` whose
message names the problem. ``act`` rows are parsed here and executed in batches by the
server's micro-batcher; everything else runs directly against the Service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import InvalidInputError
from .service import Service, validate_npc_id
from .store import validate_player_id

ACT_OPTIONS = ("mask", "greedy")


@dataclass(frozen=True)
class ActRow:
    """One validated decision request."""

    player: str
    npc: str
    obs: np.ndarray  # (D,) float32
    mask: np.ndarray | None  # (A,) bool
    greedy: bool


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
        raise InvalidInputError(f"obs contains NaN or infinite values at {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
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


class Methods:
    """The bridge's method table over one Service."""

    def __init__(self, service: Service):
        self.service = service
        self._specs = {name: arch.spec for name, arch in service.archetypes.items()}
        self.direct: dict[str, Callable[[list], Any]] = {
            "archetypes": self.archetypes,
            "feedback": self.feedback,
            "adapter_info": self.adapter_info,
            "reset_player": self.reset_player,
            "flush": self.flush,
            "action_probs": self.action_probs,
        }

    def _spec(self, archetype: Any):
        spec = self._specs.get(archetype) if isinstance(archetype, str) else None
        if spec is None:
            raise InvalidInputError(f"unknown archetype {archetype!r}; known: {sorted(self._specs)}")
        return spec

    # -- decisions (batched by the server) ---------------------------------------------
    def act_row(self, archetype: Any, row: list, where: str = "act", obs: np.ndarray | None = None) -> ActRow:
        """Validate [player, npc, obs] or [player, npc, obs, options] for `archetype`.

        `obs` may be given already parsed (act_batch decodes binary observations in bulk).
        """
        if not isinstance(row, list) or len(row) not in (3, 4):
            raise InvalidInputError(f"{where} row must be [player, npc, obs] or [player, npc, obs, options]")
        spec = self._spec(archetype)
        player = validate_player_id(row[0])
        npc = validate_npc_id(row[1])
        if obs is None:
            obs = parse_obs(row[2], spec.obs_dim)
        mask, greedy = parse_options(row[3], spec.n_actions) if len(row) == 4 else (None, False)
        return ActRow(player, npc, obs, mask, greedy)

    def parse_act(self, params: list) -> tuple[str, list[ActRow]]:
        _arity("act", params, 4, 5)
        return params[0], [self.act_row(params[0], params[1:])]

    def parse_act_batch(self, params: list) -> tuple[str, list[ActRow]]:
        _arity("act_batch", params, 2)
        archetype, rows = params
        self._spec(archetype)
        if not isinstance(rows, list) or not rows:
            raise InvalidInputError("act_batch rows must be a non-empty array")
        bulk = self._bulk_binary_obs(archetype, rows)
        parsed = []
        for i, row in enumerate(rows):
            try:
                parsed.append(self.act_row(archetype, row, f"row {i}", None if bulk is None else bulk[i]))
            except InvalidInputError as exc:
                raise InvalidInputError(f"row {i}: {exc}") from None
        return archetype, parsed

    def _bulk_binary_obs(self, archetype: str, rows: list) -> np.ndarray | None:
        """(N, D) observations decoded at once when every row carries well-sized float32 binary
        that is all finite; else None and rows are parsed (and their errors named) one by one."""
        width = 4 * self._spec(archetype).obs_dim
        raws = [row[2] if isinstance(row, list) and len(row) in (3, 4) else None for row in rows]
        if not all(isinstance(r, bytes) and len(r) == width for r in raws):
            return None
        obs = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(rows), -1).astype(np.float32)
        return obs if np.isfinite(obs).all() else None

    def run_rows(self, archetype: str, rows: list[ActRow]) -> list[dict]:
        """One Service.act_batch over rows (possibly from many requests)."""
        masks = None
        if any(r.mask is not None for r in rows):
            n_actions = self._specs[archetype].n_actions
            masks = np.stack([r.mask if r.mask is not None else np.ones(n_actions, bool) for r in rows])
        out = self.service.act_batch(
            archetype, [r.player for r in rows], np.stack([r.obs for r in rows]),
            npcs=[r.npc for r in rows], masks=masks, greedy=np.array([r.greedy for r in rows]),
        )
        return out.to_dicts()

    # -- direct methods --------------------------------------------------------------
    def archetypes(self, params: list) -> list[dict]:
        _arity("archetypes", params, 0)
        return [
            {k: v for k, v in arch.describe().items() if k in ("name", "version", "observation", "actions")}
            for arch in self.service.archetypes.values()
        ]

    def feedback(self, params: list) -> bool:
        _arity("feedback", params, 3, 4)
        player = validate_player_id(params[0])
        npc = validate_npc_id(params[1])
        reward = params[2]
        if type(reward) not in (int, float) or not math.isfinite(reward):
            raise InvalidInputError(f"reward must be a finite number, got {reward!r}")
        done = params[3] if len(params) == 4 else False
        if not isinstance(done, bool):
            raise InvalidInputError(f"done must be a bool, got {type(done).__name__}")
        self.service.feedback(player, npc, float(reward), done)
        return True

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

    def reset_player(self, params: list) -> bool:
        _arity("reset_player", params, 2)
        self._spec(params[0])
        return self.service.reset_player(params[0], validate_player_id(params[1]))

    def flush(self, params: list) -> int:
        _arity("flush", params, 0)
        return self.service.flush()
