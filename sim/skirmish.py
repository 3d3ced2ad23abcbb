"""Skirmish-v0: an NPC skirmisher against a player with smooth habits in a continuous context.

Over 450 lines: one env with its persona habits, its exact oracle over a fixed context sample and its renderer, which belong together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np
from gymnasium import spaces

from sim.errors import SimError
from sim.personas import AVERAGE, NOISE, PersonaRoundEnv, draw_index
from sim.traits import traits_in

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
BARS_X = 360  # x of the player's bars in the rendering


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
    def of(cls, obs: np.ndarray) -> Features:
        x = np.asarray(obs, dtype=np.float64)  # (N, D)
        near = _sig(10.0 * (0.4 - x[:, 0]))
        d, sin, cos, ph, nh, st, at = (x[:, i] for i in range(7))
        return cls(d, sin, cos, ph, nh, st, at, near, 1.0 - near)


# Hidden habits: each persona maps the context to logits of the player's moves (moves
# not listed get logit 0); P(move | x) = softmax(logits). Smooth, interpretable, and
# independent of round_progress.
Habit = Callable[[Features], dict[str, np.ndarray]]


def _kiter(f: Features) -> dict[str, np.ndarray]:
    lead = 3.5 * _sig(10 * (f.d - 0.45))  # shoots from range toward the side it stands on
    return {
        "back_off": 4 * f.near,
        "shoot_left": lead * _sig(6 * f.sin),
        "shoot_right": lead * _sig(-6 * f.sin),
        "charge": 5 * _sig(12 * (0.3 - f.nh)),
    }


def _berserker(f: Features) -> dict[str, np.ndarray]:
    return {
        "slash": 4 * _sig(10 * (0.45 - f.d)),
        "charge": 4 * _sig(10 * (f.d - 0.45)),
        "roll": 6 * _sig(12 * (0.3 - f.ph)),
        "parry": 4 * _sig(12 * (0.25 - f.st)),
    }


def _parrier(f: Features) -> dict[str, np.ndarray]:
    return {
        "parry": 4.5 * f.st * _sig(8 * (0.6 - f.d)),
        "roll": 4 * _sig(12 * (0.3 - f.at)),
        "slash": 5 * (1 - f.nh) * f.near,
        "back_off": 2.5 * f.far,
    }


def _marksman(f: Features) -> dict[str, np.ndarray]:
    rested = _sig(10 * (f.st - 0.5))  # shot side follows its stamina
    return {
        "shoot_right": 4 * f.far * rested,
        "shoot_left": 4 * f.far * (1 - rested),
        "roll": 4 * f.near,
        "heal": 5 * f.far * _sig(12 * (0.35 - f.ph)),
    }


def _turtle(f: Features) -> dict[str, np.ndarray]:
    return {
        "parry": 4 * f.ph,
        "heal": 5 * (1 - f.ph) * _sig(8 * (f.d - 0.3)),
        "back_off": 4 * _sig(12 * (f.at - 0.7)),
        "roll": 3 * (1 - f.st) * f.near,
    }


def _flanker(f: Features) -> dict[str, np.ndarray]:
    behind, front = _sig(-6 * f.cos), _sig(6 * f.cos)
    return {
        "slash": 4.5 * behind * _sig(8 * (0.6 - f.d)),
        "charge": 4.5 * behind * _sig(8 * (f.d - 0.6)),
        "shoot_right": 4 * front * _sig(6 * f.sin),
        "shoot_left": 4 * front * _sig(-6 * f.sin),
    }


def _brute(f: Features) -> dict[str, np.ndarray]:
    return {
        "charge": 5 * f.st * _sig(8 * (f.d - 0.3)),
        "roll": 4 * (1 - f.st),
        "slash": 3 * f.near * f.ph,
        "back_off": 3 * _sig(10 * (f.nh - 0.7)) * (1 - f.st),
    }


def _trickster(f: Features) -> dict[str, np.ndarray]:
    phase = f.at - 0.5 * f.d  # rolls just after attacking, parries mid-cycle, slashes late
    return {
        "roll": 4.5 * _sig(12 * (-0.1 - phase)),
        "parry": 4.5 * np.exp(-(((phase - 0.15) / 0.15) ** 2)),
        "slash": 4.5 * _sig(12 * (phase - 0.4)),
        "shoot_left": 2 * f.far,
    }


def _opportunist(f: Features) -> dict[str, np.ndarray]:
    return {
        "heal": 4.5 * f.far * _sig(10 * (0.7 - f.ph)),
        "slash": 5 * _sig(12 * (0.35 - f.nh)),
        "back_off": 3.5 * f.nh * f.near,
        "shoot_right": 2.5 * f.ph * f.far,
    }


def _gunslinger(f: Features) -> dict[str, np.ndarray]:
    quadrant = _sig(8 * f.sin * f.cos)  # shot side flips with the bearing's quadrant
    return {
        "shoot_left": 4 * quadrant,
        "shoot_right": 4 * (1 - quadrant),
        "charge": 5 * _sig(12 * (f.at - 0.75)),
        "heal": 4 * _sig(12 * (0.2 - f.ph)),
    }


def _ambusher(f: Features) -> dict[str, np.ndarray]:
    return {
        "roll": 4 * f.far,
        "slash": 5 * f.near * f.ph,
        "parry": 5 * f.near * (1 - f.ph),
        "back_off": 3 * _sig(10 * (f.nh - 0.8)),
    }


HABITS: dict[str, Habit] = {
    "kiter": _kiter,
    "berserker": _berserker,
    "parrier": _parrier,
    "marksman": _marksman,
    "turtle": _turtle,
    "flanker": _flanker,
    "brute": _brute,
    "trickster": _trickster,
    "opportunist": _opportunist,
    "gunslinger": _gunslinger,
    "ambusher": _ambusher,
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


def evaluation_contexts(episode_length: int, per_round: int = EVAL_PER_ROUND) -> np.ndarray:
    """(T, M, D) the fixed evaluation sample: M contexts per round from a private generator."""
    u = np.random.default_rng(EVAL_SEED).random((episode_length, per_round, CONTEXT_UNIFORMS))
    progress = (np.arange(episode_length) / episode_length)[:, None]  # (T, 1)
    return with_progress(contexts_from_uniforms(u), progress)


class SkirmishEnv(PersonaRoundEnv):
    """NPC skirmisher that must learn how *this* player fights across a continuous arena.

    ## Description
    A skirmish is ``episode_length`` rounds (default 12) in an open arena. Before each
    round the NPC sees a continuous context: where the player stands, both fighters'
    health, the player's stamina and how long ago the player last attacked. Contexts are
    drawn i.i.d. each round from a fixed distribution (never influenced by the NPC's
    moves or by the persona). The NPC picks an action; the player, a persona with hidden
    smooth habits, simultaneously picks a move from ``P(move | context)``; the NPC scores
    ``PAYOFF[action, move]``. Each player move has one distinct best counter, so the best
    action is a nonlinear function of the context that differs per persona: a network's
    generalisation between contexts matters, and no coarse table of the features is exact.

    ## Action Space
    ``Discrete(8)``:

    | Num | Action       | Best counter to           |
    |-----|--------------|---------------------------|
    | 0   | shoot        | heal (a standing target)  |
    | 1   | advance      | back_off                  |
    | 2   | retreat      | charge                    |
    | 3   | strafe_left  | shoot_right               |
    | 4   | strafe_right | shoot_left                |
    | 5   | block        | slash                     |
    | 6   | feint        | parry                     |
    | 7   | wait         | roll (punish the recovery)|

    ## Observation Space
    ``Box(low, 1, (8,), float32)`` with low -1 for the angle, 0 elsewhere; every feature
    is drawn independently each round.

    | Index | Feature             | Range   | Distribution                               |
    |-------|---------------------|---------|--------------------------------------------|
    | 0     | distance            | [0, 1]  | uniform (0 touching, 1 across the arena)   |
    | 1-2   | angle (sin, cos)    | [-1, 1] | player's bearing from the NPC's facing,    |
    |       |                     |         | uniform; sin > 0: left, cos < 0: behind    |
    | 3     | player_health       | [0, 1]  | uniform                                    |
    | 4     | npc_health          | [0, 1]  | uniform                                    |
    | 5     | player_stamina      | [0, 1]  | uniform                                    |
    | 6     | player_attack_timer | [0, 1]  | uniform (0: the player just attacked)      |
    | 7     | round_progress      | [0, 1)  | t / T                                      |

    After the last round the observation is all zeros with progress 1.

    ## Rewards
    ``PAYOFF[action, player_move]`` in [-1, 1]; the move is sampled, so the reward is noisy
    around ``r(x, a) = sum_m P(m | x) PAYOFF[a, m]``, which is analytic.

    ## Starting State
    Round 0 with a freshly drawn context. ``reset(options={"persona": name})`` switches
    the persona (it stays switched). Each reset draws a fixed number of uniforms from
    ``self.np_random`` (``10 T + 1``), so observations are identical across personas.

    ## Episode End
    Terminates after ``episode_length`` rounds; never truncates.

    ## Personas
    ``P(move | x) = softmax(logits(x))`` with hand-made smooth logits (linear terms,
    products and sigmoids of the features; round_progress is ignored). ``info["persona"]``
    and ``info["player"]`` name the configured and the acting persona, ``info["response"]``
    the player's last move; a policy never sees ``info``. There is no ``info["situation"]``:
    contexts are continuous, so an observation is never a row of :meth:`situations`.

    | Persona      | Hidden habit                                           | Best NPC action    |
    |--------------|--------------------------------------------------------|--------------------|
    | kiter        | backs off close; far, shoots toward the side it stands | advance; strafe    |
    |              | on; charges a weak NPC                                 | away; retreat      |
    | berserker    | slashes close, charges far; rolls in when hurt,        | block; retreat;    |
    |              | parries when tired                                     | wait; feint        |
    | parrier      | parries rested and near; rolls right after attacking;  | feint; wait;       |
    |              | slashes a hurt NPC; backs off far                      | block; advance     |
    | marksman     | far, shot side follows stamina; rolls close; heals     | strafe; wait;      |
    |              | far when hurt                                          | shoot              |
    | turtle       | parries when healthy, heals far when hurt, backs off   | feint; shoot;      |
    |              | late in its attack cycle                               | advance            |
    | flanker      | behind: slashes near, charges far; in front: shoots to | block; retreat;    |
    |              | the side it stands on                                  | strafe toward it   |
    | brute        | charges when fresh, rolls when tired, slashes close    | retreat; wait;     |
    |              | when healthy                                           | block              |
    | trickster    | phase = attack_timer - distance / 2: rolls, then       | wait, feint, block |
    |              | parries, then slashes; shoots a little from range      | along the phase    |
    | opportunist  | far: heals when hurt, else shoots right; slashes a     | shoot; strafe_left;|
    |              | weak NPC; backs off from a healthy one                 | block; advance     |
    | gunslinger*  | shot side flips with the bearing's quadrant; charges   | strafe; retreat;   |
    |              | late in its attack cycle; heals when low               | shoot              |
    | ambusher*    | rolls far; close, slashes when healthy, parries when   | wait; block;       |
    |              | hurt; backs off from a healthy NPC                     | feint              |
    | average      | a random population persona per skirmish               | population optimum |
    | noise        | reward ignores the NPC's action                        | none (all equal)   |

    (*) held-out: playable, with oracles, but never part of "average" (the population).
    ``noise`` draws a random evaluation context, population persona and action and pays
    that action's payoff against the persona's sampled move there: its expected reward
    is the constant ``noise_mean`` whatever the NPC does.

    ## Oracle (exact on a fixed evaluation sample)
    The expectation over the continuous contexts has no closed form, so :meth:`situations`
    is a FIXED evaluation sample: ``M = 32`` contexts per round from a private generator
    (seed ``EVAL_SEED``, independent of any env seed), each with weight ``1 / M``, progress
    ``t / T``. :meth:`expected_return`, :meth:`oracle_return` and the rest are exact on
    that sample and unbiased estimates of the true expectation over contexts.

    ## Version History
    * v0: initial version.
    """

    ACTIONS: ClassVar[tuple[str, ...]] = ACTIONS
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = OBSERVATION_FEATURES
    PERSONAS: ClassVar[tuple[str, ...]] = PERSONAS
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = HELDOUT
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = (("kiter", "parrier"), ("turtle", "flanker"))
    TRAITS: ClassVar[dict[str, str]] = traits_in("npcadapt/Skirmish-v0")
    DISCRETE_CONTEXT: ClassVar[bool] = False

    def __init__(self, persona: str | None = None, render_mode: str | None = None, episode_length: int = 12) -> None:
        self._configure(persona, render_mode, episode_length)
        T = self.episode_length
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Box(OBS_LOW, np.ones(OBS_DIM, np.float32), dtype=np.float32)
        self.n_contexts = EVAL_PER_ROUND  # evaluation contexts per round: S = T * M situations
        self._eval_obs = evaluation_contexts(T).reshape(-1, OBS_DIM)  # (S, D)
        self._expected: dict[str, np.ndarray] = {}  # persona -> (S, A), filled lazily
        self._build_noise()
        self._terminal_obs = np.zeros(OBS_DIM, dtype=np.float32)
        self._terminal_obs[-1] = 1.0
        self._window: Any = None
        self._obs = np.zeros((T, OBS_DIM), dtype=np.float32)  # this episode's observations
        self._uniforms = np.zeros((T, PLAYER_UNIFORMS))  # this episode's player draws
        self._t = 0
        self._player = PERSONAS[0]
        self._last: dict[str, Any] = {}

    def _build_noise(self) -> None:
        """Noise pools (evaluation context, population persona, action): cdfs (S, K, M)."""
        self._noise_cdf = np.cumsum(
            np.stack([move_probs(p, self._eval_obs) for p in PERSONAS], axis=1), axis=-1
        )  # (S, K, M)
        self.noise_mean = float(self.expected_rewards(AVERAGE).mean())

    # ---- gymnasium API -------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a skirmish; ``options={"persona": name}`` switches (and keeps) the persona."""
        super(PersonaRoundEnv, self).reset(seed=seed)  # gym.Env.reset: seeds np_random
        self._switch_persona(options)
        T = self.episode_length
        u = self.np_random.random(T * (CONTEXT_UNIFORMS + PLAYER_UNIFORMS) + 1)  # fixed count
        u_ctx = u[: T * CONTEXT_UNIFORMS].reshape(T, CONTEXT_UNIFORMS)
        self._uniforms = u[T * CONTEXT_UNIFORMS : -1].reshape(T, PLAYER_UNIFORMS)
        self._obs = with_progress(contexts_from_uniforms(u_ctx), np.arange(T) / T)  # (T, D)
        if self.persona == AVERAGE:
            self._player = PERSONAS[min(int(u[-1] * len(PERSONAS)), len(PERSONAS) - 1)]
        else:
            self._player = self.persona
        self._t = 0
        self._last = {}
        if self.render_mode == "human":
            self.render()
        return self._obs[0].copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one round: the player picks its move; the reward is the payoff."""
        if self._t >= self.episode_length:
            raise SimError("SkirmishEnv: step() called after the episode ended; call reset()")
        if not self.action_space.contains(action):
            raise SimError(f"SkirmishEnv: action {action!r} is not in Discrete({len(ACTIONS)})")
        a, obs, u = int(action), self._obs[self._t], self._uniforms[self._t]
        if self._player == NOISE:
            move, reward = self._noise_round(u)
        else:
            move = draw_index(np.cumsum(move_probs(self._player, obs)[0]), u[0])
            reward = float(PAYOFF[a, move])
        self._last = {"obs": obs, "action": a, "move": move, "reward": reward}
        self._t += 1
        terminated = self._t >= self.episode_length
        next_obs = self._terminal_obs.copy() if terminated else self._obs[self._t].copy()
        if self.render_mode == "human":
            self.render()
        return next_obs, reward, terminated, False, self._info()

    def _noise_round(self, u: np.ndarray) -> tuple[int, float]:
        """A pooled draw that ignores the NPC: random situation, persona, action, move."""
        S, K, A = len(self._eval_obs), len(PERSONAS), len(ACTIONS)
        s, k, a = (min(int(v * n), n - 1) for v, n in zip(u[1:], (S, K, A)))
        move = draw_index(self._noise_cdf[s, k], u[0])
        return move, float(PAYOFF[a, move])

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"persona": self.persona, "player": self._player}
        if self._last:
            info["response"] = PLAYER_MOVES[self._last["move"]]
        return info

    def _scene(self) -> dict[str, Any]:
        t = min(self._t, self.episode_length - 1)
        obs = self._last["obs"] if self._last else self._obs[t]
        return {"obs": obs, "progress": self._t / self.episode_length, "last": dict(self._last)}

    def draw(self, surface: Any, scene: dict[str, Any]) -> None:
        """Top-down arena: the NPC (teal) faces up; the player (red) at its distance and bearing."""
        import pygame

        from sim import render

        d, sin, cos, ph, nh, st, at = (float(v) for v in scene["obs"][:7])
        npc, reach = (240, 128), 100  # arena centre = NPC; distance 1 = reach pixels
        pygame.draw.circle(surface, (50, 60, 55), npc, reach + 16)
        pygame.draw.circle(surface, (90, 100, 90), npc, reach + 16, 2)
        r = 28 + d * (reach - 28)  # pixels; the fighters never overlap
        player = (int(npc[0] - sin * r), int(npc[1] - cos * r))  # the NPC's left is -x
        pygame.draw.circle(surface, (60, 200, 190), npc, 13)
        pygame.draw.line(surface, (235, 235, 235), npc, (npc[0], npc[1] - 22), 3)
        pygame.draw.circle(surface, (220, 80, 70), player, 13)
        render.bar(surface, (10, 10, 110, 10), nh, (60, 200, 190))
        render.label(surface, "NPC health", (10, 24), 16)
        render.bar(surface, (BARS_X, 10, 110, 10), ph, (220, 80, 70))
        render.label(surface, "player health", (BARS_X, 24), 16)
        render.bar(surface, (BARS_X, 44, 110, 8), st, (240, 200, 60))
        render.label(surface, "stamina", (BARS_X, 54), 16)
        render.bar(surface, (BARS_X, 74, 110, 8), at, (170, 140, 230))
        render.label(surface, "since attack", (BARS_X, 84), 16)
        if scene["last"]:
            render.label(surface, f"player: {PLAYER_MOVES[scene['last']['move']]}", (10, 44), 18)

    # ---- oracles, exact on the fixed evaluation sample -------------------------------------
    def situations(self) -> list[tuple[np.ndarray, float]]:
        """The fixed evaluation sample: row ``s = t * M + i``, weight ``1 / M`` (sum = T)."""
        return [(obs.copy(), 1.0 / self.n_contexts) for obs in self._eval_obs]

    def _weights(self) -> np.ndarray:
        return np.full(len(self._eval_obs), 1.0 / self.n_contexts)  # (S,)

    def expected_rewards(self, persona: str) -> np.ndarray:
        """(S, A) exact expected reward of each action in each of :meth:`situations`."""
        persona = self._check_persona(persona)
        if persona not in self._expected:
            if persona == AVERAGE:
                table = np.mean([self.expected_rewards(p) for p in PERSONAS], axis=0)
            elif persona == NOISE:
                table = np.full((len(self._eval_obs), len(ACTIONS)), self.noise_mean)
            else:
                table = rewards_at(persona, self._eval_obs)
            self._expected[persona] = table
        return self._expected[persona].copy()

    def persona_gaps(self, personas: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """As :meth:`PersonaRoundEnv.persona_gaps`, by default for the named and held-out personas."""
        return super().persona_gaps(self.playable() if personas is None else personas)
