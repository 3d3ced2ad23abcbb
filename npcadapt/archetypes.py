"""Archetype registry: definitions on disk, their frozen base policies and content hashes.

An archetype lives in a directory holding ``archetype.toml`` and the base weights
(safetensors). Its *version* is a content hash of the base weights: adapters record
the hash they were trained against and are refused on a mismatch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import ArchetypeSpec, LoraConfig, NetworkConfig, ObservationFeature
from .errors import ArchetypeError
from .fileio import write_atomic
from .policy import ActorCritic

log = logging.getLogger(__name__)

TOML_NAME = "archetype.toml"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "archetypes"


def weights_hash(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes, in name order (16 hex)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Archetype:
    """A loaded archetype: its spec, directory, frozen base policy and base hash."""

    spec: ArchetypeSpec
    directory: Path
    policy: ActorCritic
    base_hash: str

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict:
        """Plain-data summary (what the bridge's `archetypes()` returns)."""
        return {
            "name": self.name,
            "version": self.base_hash,
            "observation": [{"name": f.name, "size": f.size} for f in self.spec.observation],
            "actions": list(self.spec.actions),
            "trained": self.spec.trained,
            "description": self.spec.description,
        }


def load_archetype(directory: str | Path) -> Archetype:
    """Load `directory/archetype.toml` and its base weights into a frozen policy."""
    directory = Path(directory)
    spec = ArchetypeSpec.from_toml(directory / TOML_NAME)
    weights_path = directory / spec.weights
    policy = ActorCritic.from_spec(spec)
    try:
        state = load_file(weights_path)
    except FileNotFoundError:
        raise ArchetypeError(f"archetype '{spec.name}': weights file {weights_path} is missing") from None
    except (SafetensorError, OSError) as exc:
        raise ArchetypeError(f"archetype '{spec.name}': cannot read weights {weights_path}: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ArchetypeError(
            f"archetype '{spec.name}': weights {weights_path} do not fit archetype.toml "
            f"(missing {missing}, unexpected {extra}, wrong shape {[(k, got[k], expected[k]) for k in wrong]})"
        )
    bad = [k for k, v in state.items() if not (v.is_floating_point() and torch.isfinite(v).all())]
    if bad:
        raise ArchetypeError(
            f"archetype '{spec.name}': weights {weights_path} have non-finite or non-float tensors {bad}"
        )
    policy.load_state_dict({k: v.float() for k, v in state.items()})
    policy.eval().requires_grad_(False)
    return Archetype(spec=spec, directory=directory, policy=policy, base_hash=weights_hash(policy.state_dict()))


def find_archetypes(roots: Iterable[str | Path]) -> dict[str, Archetype]:
    """Load every `<root>/<name>/archetype.toml`; a later root overrides an earlier one by name.

    A root may also be an archetype directory itself.
    """
    found: dict[str, Archetype] = {}
    for root in roots:
        root = Path(root)
        if (root / TOML_NAME).is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = sorted(p for p in root.iterdir() if (p / TOML_NAME).is_file())
        else:
            raise ArchetypeError(f"archetype directory {root} does not exist")
        for directory in candidates:
            arch = load_archetype(directory)
            found[arch.name] = arch
    return found


def archetype_for_env(env_id: str, archetypes: Mapping[str, Archetype]) -> str:
    """Name of the archetype whose definition says it is trained in `env_id`."""
    names = [name for name, arch in archetypes.items() if arch.spec.env == env_id]
    if not names:
        raise ArchetypeError(
            f"no archetype declares env = {env_id!r}; known: {[(n, a.spec.env) for n, a in archetypes.items()]}"
        )
    return names[0]


def save_base(directory: str | Path, spec: ArchetypeSpec, policy: ActorCritic) -> Archetype:
    """Write `archetype.toml` and the base weights (atomically), return the loaded archetype."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    write_atomic(
        directory / spec.weights, save(state, metadata={"archetype": spec.name, "trained": str(spec.trained).lower()})
    )
    write_atomic(directory / TOML_NAME, spec.to_toml())
    return load_archetype(directory)


def init_archetype(
    directory: str | Path,
    name: str,
    observation: Iterable[tuple[str, int]],
    actions: Iterable[str],
    *,
    hidden: tuple[int, ...] = (64, 64),
    activation: str = "tanh",
    rank: int = 8,
    alpha: float = 16.0,
    rslora: bool = False,
    targets: tuple[str, ...] | None = None,
    description: str = "",
    env: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Archetype:
    """Create a new archetype definition with freshly initialised (untrained) weights."""
    directory = Path(directory)
    if (directory / TOML_NAME).exists() and not overwrite:
        raise ArchetypeError(f"{directory / TOML_NAME} already exists (pass overwrite to replace it)")
    depth = len(hidden) + 1
    spec = ArchetypeSpec(
        name=name,
        description=description,
        observation=tuple(ObservationFeature(n, int(s)) for n, s in observation),
        actions=tuple(actions),
        network=NetworkConfig(tuple(hidden), activation),
        lora=LoraConfig(rank, float(alpha), rslora, targets or tuple(f"actor.{i}" for i in range(depth))),
        trained=False,
        env=env,
    )
    return save_base(directory, spec, fresh_policy(spec, seed))


def fresh_policy(spec: ArchetypeSpec, seed: int = 0) -> ActorCritic:
    """A newly initialised policy for `spec`, deterministic under `seed`."""
    policy = ActorCritic.from_spec(spec)
    policy.reset_parameters(torch.Generator().manual_seed(seed))
    return policy


def regenerate_weights(directory: str | Path, seed: int = 0) -> Archetype:
    """(Re)write untrained base weights for an existing archetype.toml."""
    spec = ArchetypeSpec.from_toml(Path(directory) / TOML_NAME)
    return save_base(directory, replace(spec, trained=False), fresh_policy(spec, seed))
