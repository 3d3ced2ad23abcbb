"""Adapter identity and metadata: player ids, archetype names, AdapterMeta and AdapterSpec.

What an adapter file must say about itself, validated at construction, with no file I/O
(that is :mod:`npcadapt.store`'s job). Player ids map to file names through
:func:`player_key`, a hash, so any id is safe on disk and distinct ids never collide.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

import torch

from npcadapt.config import NAME_RE
from npcadapt.errors import ArchetypeError, InvalidInputError, PlayerIdError

MAX_PLAYER_ID_BYTES = 256
ARCHETYPE_NAME_RE = NAME_RE  # the same rule archetype.toml names follow
FORMAT = "npcadapt-adapter/1"
DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
)
STREAM_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")  # a Redis stream entry id


def validate_id(value: object, what: str, error: type[Exception] = PlayerIdError) -> str:
    """Return ``value`` if it is a non-empty str of at most 256 UTF-8 bytes, else raise
    ``error`` naming ``what`` ("player id", "npc id")."""
    if not isinstance(value, str):
        raise error(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise error(f"{what} is empty")
    try:
        n_bytes = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{what} {show_id(value)} is not encodable as UTF-8: {exc.reason} at index {exc.start}") from None
    if n_bytes > MAX_PLAYER_ID_BYTES:
        raise error(f"{what} {show_id(value)} is {n_bytes} UTF-8 bytes; the limit is {MAX_PLAYER_ID_BYTES}")
    return value


FAST_ID_CHARS = MAX_PLAYER_ID_BYTES // 4  # ids this short are within the byte limit (<= 4 UTF-8 bytes a char)


def all_valid_ids(values: Sequence[object]) -> bool:
    """True when every value would pass :func:`validate_id`, checked column-wise (fast for
    a batch of short ids). False means: at least one may not; call validate_id on each
    for the error that names it."""
    if set(map(type, values)) != {str}:
        return False
    ids = cast("Sequence[str]", values)  # every value's type is str (checked above)
    if min(map(len, ids)) == 0 or max(map(len, ids)) > FAST_ID_CHARS:
        return False
    try:
        "".join(ids).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_player_id(player: object) -> str:
    """Return ``player`` if it is a non-empty str of at most 256 UTF-8 bytes, else PlayerIdError."""
    return validate_id(player, "player id")


def validate_npc_id(npc: object) -> str:
    """Return ``npc`` if it is a non-empty str of at most 256 UTF-8 bytes (the player-id
    rule), else InvalidInputError."""
    return validate_id(npc, "npc id", InvalidInputError)


def validate_archetype_name(name: object) -> str:
    """Return ``name`` if it matches :data:`ARCHETYPE_NAME_RE`, else raise ArchetypeError."""
    if not isinstance(name, str) or not ARCHETYPE_NAME_RE.fullmatch(name):
        raise ArchetypeError(
            f"archetype name {name!r} does not match {ARCHETYPE_NAME_RE.pattern} "
            "(lowercase letter, then up to 63 of [a-z0-9_-])"
        )
    return name


def player_key(player: str) -> str:
    """Validated player id -> sha256 hex digest of its UTF-8 bytes (the file name stem)."""
    return hashlib.sha256(validate_player_id(player).encode("utf-8")).hexdigest()


def show_id(player: str) -> str:
    """A bounded repr of a player id for messages."""
    return repr(player) if len(player) <= 80 else f"{player[:60]!r}...(+{len(player) - 60} chars)"


def _require(ok: bool, field: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidInputError(f"adapter meta field {field!r}: expected {expected}, got {got!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class AdapterMeta:
    """Everything stored next to an adapter's tensors, validated at construction."""

    archetype: str
    player: str
    base_hash: str
    rank: int
    alpha: float
    rslora: bool
    version: int  # bumped by the writer each time a changed adapter is saved
    updates: int  # training updates applied so far
    created: float  # unix time
    updated: float  # unix time
    dtype: str  # storage dtype of the tensors: "float32" | "bfloat16" | "float16"
    # with a shared store: id of the last episode forwarded by another server that this
    # version was trained on ("" none; see npcadapt/lease.py). Stored only when set.
    forwarded_upto: str = ""

    def __post_init__(self) -> None:
        validate_archetype_name(self.archetype)
        validate_player_id(self.player)
        _require(
            isinstance(self.base_hash, str) and bool(self.base_hash), "base_hash", "a non-empty str", self.base_hash
        )
        _require(_is_int(self.rank) and self.rank >= 1, "rank", "an int >= 1", self.rank)
        _require(_is_real(self.alpha) and self.alpha > 0, "alpha", "a finite number > 0", self.alpha)
        _require(isinstance(self.rslora, bool), "rslora", "a bool", self.rslora)
        for name in ("version", "updates"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 0, name, "an int >= 0", value)
        for name in ("alpha", "created", "updated"):
            value = getattr(self, name)
            _require(_is_real(value), name, "a finite number", value)
            object.__setattr__(self, name, float(value))
        _require(self.dtype in DTYPES, "dtype", f"one of {sorted(DTYPES)}", self.dtype)
        _require(
            isinstance(self.forwarded_upto, str)
            and (not self.forwarded_upto or bool(STREAM_ID_RE.match(self.forwarded_upto))),
            "forwarded_upto",
            "'' or a stream id like '1700000000000-0'",
            self.forwarded_upto,
        )

    def to_metadata(self) -> dict[str, str]:
        """The safetensors header metadata (str -> str); floats round-trip exactly."""
        optional = {"forwarded_upto": self.forwarded_upto} if self.forwarded_upto else {}
        return {
            "format": FORMAT,
            "archetype": self.archetype,
            "player": self.player,
            "base_hash": self.base_hash,
            "rank": str(self.rank),
            "alpha": repr(self.alpha),
            "rslora": "true" if self.rslora else "false",
            "version": str(self.version),
            "updates": str(self.updates),
            "created": repr(self.created),
            "updated": repr(self.updated),
            "dtype": self.dtype,
            **optional,
        }

    @classmethod
    def from_metadata(cls, md: Mapping[str, str]) -> AdapterMeta:
        """Parse :meth:`to_metadata` output; ValueError naming the field on anything bad."""
        if md.get("format") != FORMAT:
            raise ValueError(f"metadata field 'format' is {md.get('format')!r}, expected {FORMAT!r}")
        missing = [f for f in _FIELDS if f not in md]
        if missing:
            raise ValueError(f"metadata is missing field(s) {missing}")
        bad = [f for f in (*_FIELDS, *_OPTIONAL) if f in md and not isinstance(md[f], str)]
        if bad:
            raise ValueError(f"metadata field(s) {bad} are not strings")
        try:
            return cls(
                archetype=md["archetype"],
                player=md["player"],
                base_hash=md["base_hash"],
                rank=_parse_int(md, "rank"),
                alpha=_parse_float(md, "alpha"),
                rslora=_parse_bool(md, "rslora"),
                version=_parse_int(md, "version"),
                updates=_parse_int(md, "updates"),
                created=_parse_float(md, "created"),
                updated=_parse_float(md, "updated"),
                dtype=md["dtype"],
                forwarded_upto=md.get("forwarded_upto", ""),
            )
        except ArchetypeError as exc:  # not a ValueError in the hierarchy; callers expect one
            raise ValueError(f"metadata field 'archetype': {exc}") from None


_OPTIONAL = ("forwarded_upto",)
_FIELDS = tuple(f for f in AdapterMeta.__dataclass_fields__ if f not in _OPTIONAL)  # required in metadata


def _parse_int(md: Mapping[str, str], field: str) -> int:
    s = md[field]
    if not (s.isascii() and s.isdigit()):
        raise ValueError(f"metadata field {field!r} is {s!r}, expected a non-negative integer")
    return int(s)


def _parse_float(md: Mapping[str, str], field: str) -> float:
    try:
        return float(md[field])
    except ValueError:
        raise ValueError(f"metadata field {field!r} is {md[field]!r}, expected a number") from None


def _parse_bool(md: Mapping[str, str], field: str) -> bool:
    if md[field] not in ("true", "false"):
        raise ValueError(f"metadata field {field!r} is {md[field]!r}, expected 'true' or 'false'")
    return md[field] == "true"


@dataclass(frozen=True)
class AdapterSpec:
    """What a valid adapter for one archetype looks like."""

    archetype: str
    base_hash: str
    rank: int
    shapes: Mapping[str, tuple[int, ...]]  # e.g. {"actor.0.lora_A": (8, 64), ...}

    def __post_init__(self) -> None:
        validate_archetype_name(self.archetype)
        if not _is_int(self.rank) or self.rank < 1:
            raise InvalidInputError(f"AdapterSpec.rank must be an int >= 1, got {self.rank!r}")
        if not isinstance(self.base_hash, str) or not self.base_hash:
            raise InvalidInputError(f"AdapterSpec.base_hash must be a non-empty str, got {self.base_hash!r}")
        shapes = {str(k): tuple(int(d) for d in v) for k, v in dict(self.shapes).items()}
        if not shapes:
            raise InvalidInputError(f"AdapterSpec for {self.archetype!r} has no tensors")
        object.__setattr__(self, "shapes", MappingProxyType(shapes))
