"""Skirmish-v0: an NPC skirmisher against a player whose habits are smooth in a continuous context."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
from gymnasium import spaces

from npcadapt.errors import InvalidInputError
from sim.personas import AVERAGE, NOISE, PersonaRoundEnv

# fmt: off
ACTIONS = (
    "shoot", "advance", "retreat", "strafe_left",
    "strafe_right", "block", "feint", "wait",
)
OBSERVATION_FEATURES = (
    ("distance", 1),             # to the player, 0 (touching) .. 1 (across the arena)
    ("angle", 2),                # sin, cos of the player's bearing from the NPC's facing
    ("player_health", 1),        # 0..1
    ("npc_health", 1),           # 0..1
    ("player_stamina", 1),       # 0..1
    ("player_attack_timer", 1),  # 0 (just attacked) .. 1 (long ago)
    ("round_progress", 1),       # t / T
)
PLAYER_MOVES = (
    "slash", "charge", "back_off", "shoot_left",
    "shoot_right", "heal", "parry", "roll",
)

# Payoff to the NPC of (NPC action row) against (player move column); each move has
# one distinct best counter (+1) and every action is punished by some move.
#                    SL    CH    BO    SHL   SHR   HE    PA    RO
PAYOFF = np.array([
    [-0.6, +0.2, +0.3, -0.3, -0.3, +1.0, +0.3, -0.8],  # shoot
    [-0.4, -0.8, +1.0, -0.5, -0.5, +0.4, -0.6, +0.0],  # advance
    [+0.4, +1.0, -0.5, -0.3, -0.3, -0.6, +0.0, -0.2],  # retreat
    [+0.0, -0.3, -0.2, -0.9, +1.0, -0.2, +0.0, -0.2],  # strafe_left
    [+0.0, -0.3, -0.2, +1.0, -0.9, -0.2, +0.0, -0.2],  # strafe_right
    [+1.0, -0.2, -0.3, +0.2, +0.2, -0.7, -0.2, -0.3],  # block
    [-0.6, -0.5, -0.3, -0.4, -0.4, +0.2, +1.0, -0.3],  # feint
    [-0.5, -0.5, -0.2, -0.5, -0.5, -0.4, +0.3, +1.0],  # wait
])
# fmt: on
OBS_DIM = sum(size for _, size in OBSERVATION_FEATURES)
OBS_LOW = np.array([0, -1, -1, 0, 0, 0, 0, 0], dtype=np.float32)  # (D,)
CONTEXT_UNIFORMS = 6  # uniforms per round for the context
PLAYER_UNIFORMS = 4  # uniforms per round for the player's move (noise uses all four)
EVAL_SEED = 20261206  # private generator of the fixed evaluation sample
EVAL_PER_ROUND = 32  # evaluation contexts per round (M)


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class Features(NamedTuple):
    """Context features as (N,) float64 arrays, plus two soft distance bands."""

    d: np.ndarray
    sin: np.ndarray
    cos: np.ndarray
    ph: np.ndarray
    nh: np.ndarray
    st: np.ndarray
    at: np.ndarray
    near: np.ndarray  # ~1 within 0.4 of the player
    far: np.ndarray  # 1 - near

    @classmethod
    def of(cls, obs: np.ndarray) -> "Features":
        x = np.asarray(obs, dtype=np.float64)  # (N, D)
        near = _sig(10.0 * (0.4 - x[:, 0]))
        return cls(*(x[:, i] for i in range(7)), near, 1.0 - near)


# Hidden habits: each persona maps the context to logits of the player's moves (moves
# not listed get logit 0); P(move | x) = softmax(logits). Smooth, interpretable, and
# independent of round_progress.
Habit = Callable[[Features], dict[str, np.ndarray]]


def _kiter(f: Features) -> dict[str, np.ndarray]:
    lead = 3.5 * _sig(10 * (f.d - 0.45))  # shoots from range toward the side it stands on
    return {"back_off": 4 * f.near, "shoot_left": lead * _sig(6 * f.sin),
            "shoot_right": lead * _sig(-6 * f.sin), "charge": 5 * _sig(12 * (0.3 - f.nh))}


def _berserker(f: Features) -> dict[str, np.ndarray]:
    return {"slash": 4 * _sig(10 * (0.45 - f.d)), "charge": 4 * _sig(10 * (f.d - 0.45)),
            "roll": 6 * _sig(12 * (0.3 - f.ph)), "parry": 4 * _sig(12 * (0.25 - f.st))}


def _parrier(f: Features) -> dict[str, np.ndarray]:
    return {"parry": 4.5 * f.st * _sig(8 * (0.6 - f.d)), "roll": 4 * _sig(12 * (0.3 - f.at)),
            "slash": 5 * (1 - f.nh) * f.near, "back_off": 2.5 * f.far}


def _marksman(f: Features) -> dict[str, np.ndarray]:
    rested = _sig(10 * (f.st - 0.5))  # shot side follows its stamina
    return {"shoot_right": 4 * f.far * rested, "shoot_left": 4 * f.far * (1 - rested),
            "roll": 4 * f.near, "heal": 5 * f.far * _sig(12 * (0.35 - f.ph))}


def _turtle(f: Features) -> dict[str, np.ndarray]:
    return {"parry": 4 * f.ph, "heal": 5 * (1 - f.ph) * _sig(8 * (f.d - 0.3)),
            "back_off": 4 * _sig(12 * (f.at - 0.7)), "roll": 3 * (1 - f.st) * f.near}


def _flanker(f: Features) -> dict[str, np.ndarray]:
    behind, front = _sig(-6 * f.cos), _sig(6 * f.cos)
    return {"slash": 4.5 * behind * _sig(8 * (0.6 - f.d)), "charge": 4.5 * behind * _sig(8 * (f.d - 0.6)),
            "shoot_right": 4 * front * _sig(6 * f.sin), "shoot_left": 4 * front * _sig(-6 * f.sin)}


def _brute(f: Features) -> dict[str, np.ndarray]:
    return {"charge": 5 * f.st * _sig(8 * (f.d - 0.3)), "roll": 4 * (1 - f.st),
            "slash": 3 * f.near * f.ph, "back_off": 3 * _sig(10 * (f.nh - 0.7)) * (1 - f.st)}


def _trickster(f: Features) -> dict[str, np.ndarray]:
    phase = f.at - 0.5 * f.d  # rolls just after attacking, parries mid-cycle, slashes late
    return {"roll": 4.5 * _sig(12 * (-0.1 - phase)), "parry": 4.5 * np.exp(-((phase - 0.15) / 0.15) ** 2),
            "slash": 4.5 * _sig(12 * (phase - 0.4)), "shoot_left": 2 * f.far}


def _opportunist(f: Features) -> dict[str, np.ndarray]:
    return {"heal": 4.5 * f.far * _sig(10 * (0.7 - f.ph)), "slash": 5 * _sig(12 * (0.35 - f.nh)),
            "back_off": 3.5 * f.nh * f.near, "shoot_right": 2.5 * f.ph * f.far}


def _gunslinger(f: Features) -> dict[str, np.ndarray]:
    quadrant = _sig(8 * f.sin * f.cos)  # shot side flips with the bearing's quadrant
    return {"shoot_left": 4 * quadrant, "shoot_right": 4 * (1 - quadrant),
            "charge": 5 * _sig(12 * (f.at - 0.75)), "heal": 4 * _sig(12 * (0.2 - f.ph))}


def _ambusher(f: Features) -> dict[str, np.ndarray]:
    return {"roll": 4 * f.far, "slash": 5 * f.near * f.ph, "parry": 5 * f.near * (1 - f.ph),
            "back_off": 3 * _sig(10 * (f.nh - 0.8))}


HABITS: dict[str, Habit] = {
    "kiter": _kiter, "berserker": _berserker, "parrier": _parrier, "marksman": _marksman,
    "turtle": _turtle, "flanker": _flanker, "brute": _brute, "trickster": _trickster,
    "opportunist": _opportunist, "gunslinger": _gunslinger, "ambusher": _ambusher,
}
PERSONAS: tuple[str, ...] = tuple(HABITS)[:9]
HELDOUT: tuple[str, ...] = tuple(HABITS)[9:]
_MOVE_INDEX = {m: i for i, m in enumerate(PLAYER_MOVES)}


def move_probs(persona: str, obs: np.ndarray) -> np.ndarray:
    """(N, M) probability of each player move for observations (N, D) (a named persona)."""
    f = Features.of(np.atleast_2d(obs))
    logits = np.zeros((len(f.d), len(PLAYER_MOVES)))  # (N, M)
    for move, value in HABITS[persona](f).items():
        logits[:, _MOVE_INDEX[move]] += value
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def rewards_at(persona: str, obs: np.ndarray) -> np.ndarray:
    """(N, A) exact expected reward of each action at observations (N, D) (a named persona)."""
    return move_probs(persona, obs) @ PAYOFF.T


def contexts_from_uniforms(u: np.ndarray) -> np.ndarray:
    """(..., 6) uniforms in [0, 1) -> (..., D - 1) float32 context features (no progress)."""
    theta = np.pi * (2.0 * u[..., 1] - 1.0)
    x = np.stack([u[..., 0], np.sin(theta), np.cos(theta), *np.moveaxis(u[..., 2:6], -1, 0)], -1)
    return x.astype(np.float32)


def with_progress(contexts: np.ndarray, progress: np.ndarray | float) -> np.ndarray:
    """(..., D - 1) contexts and their round progress -> (..., D) float32 observations."""
    p = np.broadcast_to(np.asarray(progress, np.float32), contexts.shape[:-1])[..., None]
    return np.concatenate([contexts, p], -1).astype(np.float32)
