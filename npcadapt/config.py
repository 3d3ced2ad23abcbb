"""Frozen, validated configuration records and their TOML round trip.

An archetype definition (`archetype.toml`) is parsed into :class:`ArchetypeSpec`;
every field is checked in ``__post_init__`` so a bad file fails with a message that
names the field.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import tomli_w

from .errors import ArchetypeError

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ACTIVATIONS = ("tanh", "relu")


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ArchetypeError(f"{where}: {message}")


@dataclass(frozen=True)
class ObservationFeature:
    """One named slice of the observation vector."""

    name: str
    size: int

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name), "observation", "feature needs a non-empty name")
        _require(
            isinstance(self.size, int) and self.size > 0,
            f"observation '{self.name}'",
            f"size must be a positive int, got {self.size!r}",
        )


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the actor-critic MLP (actor and critic share the hidden sizes)."""

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self) -> None:
        _require(len(self.hidden) >= 1, "network.hidden", "needs at least one hidden layer")
        _require(
            all(isinstance(h, int) and 0 < h <= 4096 for h in self.hidden),
            "network.hidden",
            f"sizes must be ints in 1..4096, got {list(self.hidden)}",
        )
        _require(
            self.activation in ACTIVATIONS,
            "network.activation",
            f"must be one of {ACTIVATIONS}, got {self.activation!r}",
        )


@dataclass(frozen=True)
class LoraConfig:
    """Per-player adapter settings: rank, alpha, scaling rule and adapted layers."""

    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            isinstance(self.rank, int) and 1 <= self.rank <= 256,
            "lora.rank",
            f"must be an int in 1..256, got {self.rank!r}",
        )
        _require(
            isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0,
            "lora.alpha",
            f"must be a positive number, got {self.alpha!r}",
        )
        _require(len(self.targets) >= 1, "lora.targets", "name at least one layer to adapt")

    @property
    def scale(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclass(frozen=True)
class ArchetypeSpec:
    """Everything `archetype.toml` declares about one NPC archetype."""

    name: str
    observation: tuple[ObservationFeature, ...]
    actions: tuple[str, ...]
    network: NetworkConfig = field(default_factory=NetworkConfig)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(targets=("actor.0", "actor.1", "actor.2")))
    description: str = ""
    weights: str = "base.safetensors"
    trained: bool = False
    env: str | None = None

    def __post_init__(self) -> None:
        _require(
            isinstance(self.name, str) and bool(NAME_RE.fullmatch(self.name)),
            "name",
            f"must match {NAME_RE.pattern}, got {self.name!r}",
        )
        _require(len(self.observation) >= 1, "observation", "declare at least one feature")
        names = [f.name for f in self.observation]
        _require(len(set(names)) == len(names), "observation", f"feature names must be unique, got {names}")
        _require(len(self.actions) >= 2, "actions", "declare at least two actions")
        _require(all(isinstance(a, str) and a for a in self.actions), "actions", "each action needs a non-empty name")
        _require(
            len(set(self.actions)) == len(self.actions),
            "actions",
            f"action names must be unique, got {list(self.actions)}",
        )
        _require(
            Path(self.weights).name == self.weights,
            "weights",
            f"must be a file name inside the archetype directory, got {self.weights!r}",
        )
        known = set(self.layer_names())
        unknown = [t for t in self.lora.targets if t not in known]
        _require(not unknown, "lora.targets", f"unknown layers {unknown}; the network has {sorted(known)}")

    @cached_property
    def obs_dim(self) -> int:
        return sum(f.size for f in self.observation)

    @cached_property
    def n_actions(self) -> int:
        return len(self.actions)

    def layer_names(self) -> list[str]:
        """Names of the policy's Linear layers: actor.0..actor.k, critic.0..critic.k."""
        depth = len(self.network.hidden) + 1
        return [f"{head}.{i}" for head in ("actor", "critic") for i in range(depth)]

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (d_in, d_out)."""
        sizes = (self.obs_dim, *self.network.hidden)
        shapes = {}
        for head, out in (("actor", self.n_actions), ("critic", 1)):
            dims = (*sizes, out)
            for i in range(len(dims) - 1):
                shapes[f"{head}.{i}"] = (dims[i], dims[i + 1])
        return shapes

    # -- TOML ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "archetype.toml") -> ArchetypeSpec:
        try:
            obs = tuple(ObservationFeature(str(o["name"]), int(o["size"])) for o in data["observation"])
            net = data.get("network", {})
            lora = data.get("lora", {})
            return cls(
                name=data["name"],
                description=str(data.get("description", "")),
                observation=obs,
                actions=tuple(data["actions"]),
                network=NetworkConfig(tuple(net.get("hidden", (64, 64))), str(net.get("activation", "tanh"))),
                lora=LoraConfig(
                    rank=lora.get("rank", 8),
                    alpha=float(lora.get("alpha", 16.0)),
                    rslora=bool(lora.get("rslora", False)),
                    targets=tuple(lora.get("targets", ())),
                ),
                weights=str(data.get("weights", "base.safetensors")),
                trained=bool(data.get("trained", False)),
                env=data.get("env"),
            )
        except ArchetypeError as exc:
            raise ArchetypeError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchetypeError(f"{where}: missing or malformed field: {exc!r}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> ArchetypeSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ArchetypeError(f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ArchetypeError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "trained": self.trained,
            "weights": self.weights,
        }
        if self.env:
            data["env"] = self.env
        data["actions"] = list(self.actions)
        data["observation"] = [{"name": f.name, "size": f.size} for f in self.observation]
        data["network"] = {"hidden": list(self.network.hidden), "activation": self.network.activation}
        data["lora"] = {
            "rank": self.lora.rank,
            "alpha": float(self.lora.alpha),
            "rslora": self.lora.rslora,
            "targets": list(self.lora.targets),
        }
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())
