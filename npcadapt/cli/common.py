"""Helpers shared by the subcommands: argument parsers, archetype lookup, online settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError, NpcAdaptError
from ..training.online import OnlineConfig

KL_BOUND = OnlineConfig.kl_bound  # the trainer's default, shown by every --kl-bound


def parse_obs(text: str) -> list[tuple[str, int]]:
    """'health:1,position:2' -> [('health', 1), ('position', 2)]."""
    features = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition(":")
        try:
            features.append((name.strip(), int(size) if size else 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"observation feature {part!r} must be NAME or NAME:SIZE") from None
    if not features:
        raise argparse.ArgumentTypeError("give at least one observation feature")
    return features


def parse_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in parse_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_archetypes_argument(p: argparse.ArgumentParser) -> None:
    """--archetypes, read back by :func:`archetype_dirs`."""
    p.add_argument("--archetypes", action="append", help="extra archetype directory (repeatable)")


def archetype_dirs(args) -> list[Path]:
    from ..archetypes import BUILTIN_DIR

    return [BUILTIN_DIR, *map(Path, args.archetypes or [])]


def load_archetype(args, name: str):
    """The named archetype from the built-in and --archetypes directories."""
    from ..archetypes import find_archetypes

    found = find_archetypes(archetype_dirs(args))
    if name not in found:
        raise NpcAdaptError(f"unknown archetype {name!r}; known: {sorted(found)}")
    return found[name]


def add_online_arguments(p: argparse.ArgumentParser) -> None:
    """The online trainer's flags, read back by :func:`online_config`."""
    p.add_argument("--episodes-per-update", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2, help="adapter learning rate")
    p.add_argument("--kl-bound", type=float, default=KL_BOUND, help="max mean KL(adapted || base), nats")
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="serve each update at once, not only as far as held-out episodes show it beats the base",
    )
    p.add_argument(
        "--no-prior",
        action="store_true",
        help="ignore the population priors beside the archetypes (adapt every player from the base with PPO)",
    )


def online_config(args) -> OnlineConfig:
    """The online trainer's settings from the flags; InvalidInputError naming a bad one."""
    if args.episodes_per_update < 1:
        raise InvalidInputError(f"--episodes-per-update must be >= 1, got {args.episodes_per_update}")
    if not args.lr > 0:
        raise InvalidInputError(f"--lr must be > 0, got {args.lr}")
    try:
        return OnlineConfig(
            episodes_per_update=args.episodes_per_update,
            learning_rate=args.lr,
            kl_bound=args.kl_bound,
            validation_gate=not args.no_gate,
            prior=not args.no_prior,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid online training settings: {exc}") from None
