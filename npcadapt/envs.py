"""The one way from npcadapt to the simulation envs: gymnasium ids, made by ``gymnasium.make``.

``sim`` is a gymnasium env package of its own (it imports only gymnasium and numpy):
importing it registers the ``npcadapt/*`` ids, as any third-party env package registers
its ids. This module is the only place in npcadapt that imports it; everything else
makes envs with :func:`make` and reads what it needs (persona lists, traits, game tables,
exact oracles) from the env's public attributes and methods on ``env.unwrapped``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol, cast

import gymnasium as gym
import numpy as np

from .errors import InvalidInputError, NpcAdaptError

log = logging.getLogger(__name__)

NAMESPACE = "npcadapt/"  # ids of the sim envs: "npcadapt/Duel-v0", ...


class SimEnv(Protocol):
    """The public surface of a sim env (``env.unwrapped``) that npcadapt reads: its persona
    lists and its exact oracles. Every ``npcadapt/*`` env has these."""

    PERSONAS: tuple[str, ...]  # the population: base training and "average"
    HELDOUT_PERSONAS: tuple[str, ...]  # evaluation only
    SWITCHES: tuple[tuple[str, str], ...]  # (before, after) pairs for switching players
    AVERAGE: str
    NOISE: str
    TRAITS: dict[str, str]  # latent player trait -> the named persona it plays here

    def situations(self) -> list[tuple[np.ndarray, float]]: ...

    def expected_return(self, persona: str, probs: np.ndarray) -> float: ...

    def oracle_return(self, persona: str) -> float: ...


def sim_env(env: gym.Env) -> SimEnv:
    """``env.unwrapped`` of a sim env (made from an ``npcadapt/*`` id), typed as one."""
    return cast(SimEnv, env.unwrapped)


@functools.cache
def register_sim_envs() -> bool:
    """Import ``sim`` once, which registers its gymnasium ids; False where it cannot be imported."""
    try:
        import sim  # noqa: F401  (registers the npcadapt/* envs)
    except ImportError as exc:
        log.warning("cannot import sim to register the %s* envs: %s", NAMESPACE, exc)
        return False
    return True


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, registering the sim envs first for their ids.

    An env that rejects a keyword value (a sim env: an unknown persona, a bad
    ``episode_length``) raises :class:`~npcadapt.errors.InvalidInputError` with its message.
    """
    if env_id.startswith(NAMESPACE):
        register_sim_envs()
    try:
        return gym.make(env_id, **kwargs)
    except ValueError as exc:
        if isinstance(exc, NpcAdaptError):
            raise
        raise InvalidInputError(str(exc)) from exc


@functools.cache
def game(env_id: str) -> Any:
    """The bare env (``make(env_id).unwrapped``), made once and kept: for reading its game
    tables, persona lists and oracles, never for playing (it is shared; make your own)."""
    return make(env_id).unwrapped
