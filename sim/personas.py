"""Shared machinery of the persona envs: rounds, hidden player personas, exact oracles.

Every sim env is a short sequence of rounds. Each round shows the NPC a *context*
drawn from a fixed finite distribution (never influenced by the NPC's past actions);
the NPC picks an action; the hidden persona then samples the player's *response*
(an outcome) from a distribution that depends on context and action, and the reward
is that outcome's value. Because of this structure, the expected reward of every
action in every observation is a table, and any policy's expected return is an exact
sum over that table. This module owns that structure (:class:`RoundModel`) and the
env base class (:class:`PersonaRoundEnv`) that runs it and answers oracle queries.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.errors import SimError

logger = logging.getLogger(__name__)

AVERAGE = "average"
NOISE = "noise"


@dataclass(frozen=True)
class RoundModel:
    """The arrays that define one env's rounds and personas (C contexts, A actions, O outcomes).

    Attributes:
        contexts: (C, F) int, the value of each context feature in each context.
        context_probs: (C,) probability of each context in a round; sums to 1.
        outcome_names: (O,) names of the player's possible responses.
        outcome_probs: persona -> (C, A, O) probability of each response.
        outcome_values: persona -> (C, A, O) reward the NPC gets for each response.
    """

    contexts: np.ndarray
    context_probs: np.ndarray
    outcome_names: tuple[str, ...]
    outcome_probs: dict[str, np.ndarray]
    outcome_values: dict[str, np.ndarray]

    def expected(self, persona: str) -> np.ndarray:
        """(C, A) expected reward of each action in each context for a named persona."""
        return (self.outcome_probs[persona] * self.outcome_values[persona]).sum(-1)


def product_contexts(*feature_probs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """All combinations of independent one-hot features: (C, F) codes and (C,) probabilities."""
    codes = np.array(list(itertools.product(*(range(len(p)) for p in feature_probs))))
    probs = np.ones(len(codes))
    for f, p in enumerate(feature_probs):
        probs *= np.asarray(p, dtype=np.float64)[codes[:, f]]
    return codes, probs / probs.sum()


def mood_outcomes(
    utility: np.ndarray, jitter: float, jitter_probs: tuple[float, float, float] = (0.25, 0.5, 0.25)
) -> tuple[np.ndarray, np.ndarray]:
    """Three mood outcomes per cell: value clip(u + m, -1, 1) for m in (-jitter, 0, +jitter).

    Args:
        utility: (C, A) the player's mean satisfaction with each action.
    Returns:
        probs (C, A, 3) and values (C, A, 3).
    """
    shifts = np.array([-jitter, 0.0, jitter])
    values = np.clip(utility[..., None] + shifts, -1.0, 1.0)  # (C, A, 3)
    probs = np.broadcast_to(np.asarray(jitter_probs), values.shape).copy()
    return probs, values


def draw_index(cdf: np.ndarray, u: float) -> int:
    """Index drawn from an (M,) cumulative distribution (unnormalised) with a uniform ``u``
    in [0, 1): every env's one way of turning its uniforms into outcomes."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)


def persona_gap_table(env: Any, personas: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per persona: oracle, population-best, uniform-random and worst returns, and
    ``gap_share = (oracle - population_best) / (oracle - worst)``: the fraction of the
    persona's achievable range that only per-player adaptation can recover.

    `env` is any sim env with ``population_best_probs``, ``expected_return``,
    ``oracle_return`` and ``worst_return``.
    """
    pop = env.population_best_probs()
    uniform = np.full(pop.shape, 1.0 / pop.shape[1])
    gaps = {}
    for p in personas:
        oracle, worst = env.oracle_return(p), env.worst_return(p)
        pop_ret = env.expected_return(p, pop)
        gaps[p] = {
            "oracle": oracle,
            "population_best": pop_ret,
            "random": env.expected_return(p, uniform),
            "worst": worst,
            "gap_share": (oracle - pop_ret) / (oracle - worst),
        }
    return gaps


class PersonaCatalogue:
    """The persona lists every sim env declares, and checking a persona name against them."""

    PERSONAS: ClassVar[tuple[str, ...]] = ()  # the population: base training and "average"
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = ()  # evaluation only: never in "average"
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = ()  # (before, after) pairs for switching players
    AVERAGE: ClassVar[str] = AVERAGE  # control: a random named persona per episode
    NOISE: ClassVar[str] = NOISE  # control: rewards that ignore the NPC
    TRAITS: ClassVar[dict[str, str]] = {}  # latent player trait -> the named persona it plays here (sim.traits)

    @classmethod
    def playable(cls) -> tuple[str, ...]:
        """Every persona with its own tables: the population, then the held-out ones."""
        return (*cls.PERSONAS, *cls.HELDOUT_PERSONAS)

    def _configure(self, persona: str | None, render_mode: str | None, episode_length: int) -> None:
        """Check and set the constructor's common arguments (every env takes these three)."""
        name, modes = type(self).__name__, self.metadata["render_modes"]  # type: ignore[attr-defined]
        if render_mode is not None and render_mode not in modes:
            raise SimError(f"{name}: render_mode {render_mode!r} is not one of {modes}")
        if not isinstance(episode_length, (int, np.integer)) or episode_length < 1:
            raise SimError(f"{name}: episode_length must be a positive int, got {episode_length!r}")
        self.render_mode = render_mode
        self.episode_length = int(episode_length)
        self.persona = self._check_persona(AVERAGE if persona is None else persona)

    def _switch_persona(self, options: dict[str, Any] | None) -> None:
        """``reset(options={"persona": name})`` switches the persona, and it stays switched."""
        if options and "persona" in options:
            self.persona = self._check_persona(options["persona"])

    def _check_persona(self, persona: Any) -> str:
        allowed = (*self.playable(), AVERAGE, NOISE)
        if persona not in allowed:
            raise SimError(f"{type(self).__name__}: unknown persona {persona!r}; expected one of {allowed}")
        return str(persona)


class PersonaRoundEnv(PersonaCatalogue, gym.Env):
    """Base class of the persona envs; subclasses document their own game.

    Subclasses set ``ACTIONS``, ``OBSERVATION_FEATURES`` (context features followed by
    ``("round_progress", 1)``), ``PERSONAS`` and implement :meth:`build_model` and
    :meth:`draw`. Observations are the one-hot context features plus ``t / T``.
    ``info`` is for logging and evaluation only; policies must never read it. Keys:
    ``persona`` (configured), ``player`` (the named persona acting this episode, or
    "noise"), ``situation`` (row of :meth:`situations` for the observation returned;
    absent once the episode is over) and ``response`` (the player's last response).

    ``HELDOUT_PERSONAS`` are playable and have oracles but never act for "average" (the
    population that the base and any population data come from); ``SWITCHES`` lists
    pairs of named personas whose best responses differ, for players who change style
    once mid-run (the loop switches them with ``reset(options={"persona": ...})``).
    """

    # gymnasium declares Env.metadata a plain (instance) attribute with a class default: ClassVar conflicts
    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"], "render_fps": 4}  # noqa: RUF012
    action_space: spaces.Discrete
    observation_space: spaces.Box
    ACTIONS: ClassVar[tuple[str, ...]] = ()
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = ()
    DISCRETE_CONTEXT: ClassVar[bool] = True  # obs minus progress takes few values (a table can key on it)
    SEQUENTIAL: ClassVar[bool] = False  # True where the NPC's action changes the next observation
    _MODEL_CACHE: ClassVar[dict[type, RoundModel]] = {}

    def __init__(self, persona: str | None = None, render_mode: str | None = None, episode_length: int = 12) -> None:
        self._configure(persona, render_mode, episode_length)
        self.model = self.shared_model()
        m = self.model
        self.n_contexts = len(m.context_probs)
        self.action_space = spaces.Discrete(len(self.ACTIONS))
        obs_dim = sum(size for _, size in self.OBSERVATION_FEATURES)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(obs_dim,), dtype=np.float32)
        self._obs_table = self._build_obs_table()  # (T, C, D)
        self._terminal_obs = np.zeros(obs_dim, dtype=np.float32)
        self._terminal_obs[-1] = 1.0
        self._context_cdf = np.cumsum(m.context_probs)
        self._cdfs = {p: np.cumsum(m.outcome_probs[p], axis=-1) for p in self.playable()}
        self._values = m.outcome_values
        self._build_noise()
        self._window: Any = None
        self._contexts = np.zeros(self.episode_length, dtype=np.int64)
        self._uniforms: np.ndarray = np.zeros(self.episode_length)  # (T,) here; (T, U) in a subclass
        self._t = 0
        self._player = self.PERSONAS[0]
        self._last: dict[str, Any] = {}

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def build_model(cls) -> RoundModel:
        """Return this env's contexts and persona tables (deterministic; cached per class)."""
        raise NotImplementedError

    @classmethod
    def shared_model(cls) -> RoundModel:
        """The env class's RoundModel, built once per class."""
        if cls not in PersonaRoundEnv._MODEL_CACHE:
            PersonaRoundEnv._MODEL_CACHE[cls] = cls.build_model()
        return PersonaRoundEnv._MODEL_CACHE[cls]

    def _build_obs_table(self) -> np.ndarray:
        m, T = self.model, self.episode_length
        table = np.zeros((T, self.n_contexts, self.observation_space.shape[0]), np.float32)
        offset = 0
        for f, (_, size) in enumerate(self.OBSERVATION_FEATURES[:-1]):  # one-hot features, then t / T
            table[:, np.arange(self.n_contexts), offset + m.contexts[:, f]] = 1.0
            offset += size
        table[:, :, -1] = (np.arange(T, dtype=np.float32) / T)[:, None]
        return table

    def _build_noise(self) -> None:
        """Pool every (persona, context, action, outcome) draw: noise rewards ignore the NPC."""
        m, K, A = self.model, len(self.PERSONAS), len(self.ACTIONS)
        weights = np.stack([m.outcome_probs[p] for p in self.PERSONAS])  # (K, C, A, O)
        weights = weights * m.context_probs[None, :, None, None] / (K * A)
        values = np.stack([m.outcome_values[p] for p in self.PERSONAS])  # (K, C, A, O)
        outcome_idx = np.broadcast_to(np.arange(weights.shape[-1]), weights.shape)
        self._noise_cdf = np.cumsum(weights.ravel())
        self._noise_values = values.ravel().copy()
        self._noise_outcomes = outcome_idx.ravel().copy()
        self.noise_mean = float((weights * values).sum())

    # ---- gymnasium API -------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options={"persona": name}`` switches (and keeps) the persona."""
        super().reset(seed=seed)
        self._switch_persona(options)
        T = self.episode_length
        u = self.np_random.random(2 * T + 1)  # fixed draw count: obs never depend on persona
        idx = np.searchsorted(self._context_cdf, u[:T], side="right")
        self._contexts = np.minimum(idx, self.n_contexts - 1)
        self._uniforms = u[T : 2 * T]
        if self.persona == AVERAGE:
            self._player = self.PERSONAS[min(int(u[-1] * len(self.PERSONAS)), len(self.PERSONAS) - 1)]
        else:
            self._player = self.persona
        self._t = 0
        self._last = {}
        if self.render_mode == "human":
            self.render()
        return self._obs_table[0, self._contexts[0]].copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one round: the player responds to ``action``; the reward is its value."""
        if self._t >= self.episode_length:
            raise SimError(f"{type(self).__name__}: step() called after the episode ended; call reset()")
        if not self.action_space.contains(action):
            raise SimError(f"{type(self).__name__}: action {action!r} is not in Discrete({self.action_space.n})")
        a, c, u = int(action), int(self._contexts[self._t]), self._uniforms[self._t]
        if self._player == NOISE:
            i = draw_index(self._noise_cdf, u)
            o, reward = int(self._noise_outcomes[i]), float(self._noise_values[i])
        else:
            cdf = self._cdfs[self._player][c, a]
            o = draw_index(cdf, u)
            reward = float(self._values[self._player][c, a, o])
        self._last = {"context": c, "action": a, "outcome": o, "reward": reward}
        self._t += 1
        terminated = self._t >= self.episode_length
        if terminated:
            obs = self._terminal_obs.copy()
        else:
            obs = self._obs_table[self._t, self._contexts[self._t]].copy()
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, False, self._info()

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"persona": self.persona, "player": self._player}
        if self._t < self.episode_length:
            info["situation"] = self._t * self.n_contexts + int(self._contexts[self._t])
        if self._last:
            info["response"] = self.model.outcome_names[self._last["outcome"]]
        return info

    def render(self) -> np.ndarray | None:
        """Draw the current round: ``rgb_array`` returns (H, W, 3) uint8; ``human`` shows it."""
        from sim import render as draw

        if self.render_mode is None:
            gym.logger.warn(f"{type(self).__name__}.render() called without a render_mode")
            return None
        surface = draw.new_surface()
        scene = self._scene()
        self.draw(surface, scene)
        draw.reward_strip(surface, scene, self.ACTIONS)  # every env: the last round's action and reward
        if self.render_mode == "rgb_array":
            return draw.to_array(surface)
        if self._window is None:
            self._window = draw.Window(type(self).__name__)
        self._window.show(surface, self.metadata["render_fps"])
        return None

    def _scene(self) -> dict[str, Any]:
        """What the renderer needs: the current context's feature values and the last round."""
        t = min(self._t, self.episode_length - 1)
        return {
            "features": self.model.contexts[int(self._contexts[t])],
            "progress": self._t / self.episode_length,
            "last": dict(self._last),
        }

    def draw(self, surface: Any, scene: dict[str, Any]) -> None:
        """Draw ``scene`` onto a pygame surface (subclass hook)."""
        raise NotImplementedError

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    # ---- exact oracles -------------------------------------------------------------------
    def situations(self) -> list[tuple[np.ndarray, float]]:
        """Every observation the NPC acts on, with its expected count per episode.

        Row ``s = t * C + c`` is round ``t`` showing context ``c``; weights sum to
        ``episode_length``. The terminal observation is never acted on and is not listed.
        """
        p = self.model.context_probs
        return [
            (self._obs_table[t, c].copy(), float(p[c]))
            for t in range(self.episode_length)
            for c in range(self.n_contexts)
        ]

    def _weights(self) -> np.ndarray:
        return np.tile(self.model.context_probs, self.episode_length)  # (S,)

    def expected_rewards(self, persona: str) -> np.ndarray:
        """(S, A) exact expected reward of each action in each of :meth:`situations`."""
        persona = self._check_persona(persona)
        m = self.model
        if persona == AVERAGE:
            per_context = np.mean([m.expected(p) for p in self.PERSONAS], axis=0)
        elif persona == NOISE:
            per_context = np.full((self.n_contexts, len(self.ACTIONS)), self.noise_mean)
        else:
            per_context = m.expected(persona)
        return np.tile(per_context, (self.episode_length, 1))

    def expected_return(self, persona: str, probs: np.ndarray) -> float:
        """Exact expected episode return of a policy given as (S, A) action probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        S, A = self.n_contexts * self.episode_length, len(self.ACTIONS)
        if probs.shape != (S, A):
            raise SimError(
                f"{type(self).__name__}.expected_return: probs must have shape ({S}, {A}) "
                f"(situations x actions), got {probs.shape}"
            )
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > 1e-4:
            raise SimError(
                f"{type(self).__name__}.expected_return: each row of probs must be a "
                "probability distribution (finite, >= 0, summing to 1)"
            )
        R = self.expected_rewards(persona)
        return float(self._weights() @ (probs * R).sum(1))

    def oracle_return(self, persona: str) -> float:
        """Return of the best policy for ``persona`` (for "average": the population optimum)."""
        return float(self._weights() @ self.expected_rewards(persona).max(1))

    def worst_return(self, persona: str) -> float:
        """Return of the worst deterministic policy for ``persona``."""
        return float(self._weights() @ self.expected_rewards(persona).min(1))

    def population_best_probs(self) -> np.ndarray:
        """(S, A) one-hot policy that is best against the uniform mixture of named personas."""
        best = self.expected_rewards(AVERAGE).argmax(1)
        return np.eye(len(self.ACTIONS))[best]

    def return_range(self) -> tuple[float, float]:
        """Lowest and highest achievable expected return over the named personas."""
        return (
            min(self.worst_return(p) for p in self.PERSONAS),
            max(self.oracle_return(p) for p in self.PERSONAS),
        )

    def persona_gaps(self, personas: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """Per persona (default: the named ones): oracle, population-best, uniform-random and
        worst returns, and the gap share (see :func:`persona_gap_table`)."""
        return persona_gap_table(self, self.PERSONAS if personas is None else personas)
