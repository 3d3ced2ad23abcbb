"""Haggle-v0: a trader who must learn how to warm up *this* customer before closing a sale.

Sequential, unlike the round envs of :mod:`sim.personas`: each persona is a small
finite-horizon MDP over (line, item, mood), so the oracles are exact DP over it.

Over 450 lines: one env with its persona MDPs, the backward-induction oracles and its renderer, which belong together."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.errors import SimError
from sim.personas import AVERAGE, NOISE, PersonaCatalogue, draw_index, persona_gap_table
from sim.traits import traits_in

# fmt: off
ACTIONS = (
    "flatter", "joke", "tell_story", "show_rare_item",
    "firm_price", "pressure", "discount_offer", "close_deal",
)
OBSERVATION_FEATURES = (
    ("mood", 5),            # furious, annoyed, neutral, warm, delighted
    ("item", 2),            # weapon, trinket (fixed for the episode)
    ("round_progress", 1),  # t / T
)
MOODS = ("furious", "annoyed", "neutral", "warm", "delighted")
ITEMS = ("weapon", "trinket")
RESPONSES = ("mood_up", "unmoved", "mood_down", "refused", "sale", "walked_away")
DISCOUNT, CLOSE = 6, 7                 # the closing lines; actions 0-5 move the mood
MARGIN = {DISCOUNT: 0.55, CLOSE: 1.0}  # reward of a sale
WALK_AWAY = -0.5                       # reward when a furious customer is pushed further
START_MOOD = np.array([0.05, 0.25, 0.4, 0.25, 0.05])  # (M,) mood at the first line
ITEM_PROBS = np.array([0.5, 0.5])                     # (I,)
# P(mood up, unmoved, mood down) after a line the customer loves / likes / shrugs at /
# dislikes / hates
EFFECT = {"L": (0.75, 0.2, 0.05), "l": (0.45, 0.45, 0.1), ".": (0.1, 0.7, 0.2),
          "d": (0.05, 0.45, 0.5), "H": (0.02, 0.18, 0.8)}
CLOSE_BASE = np.array([0.05, 0.15, 0.35, 0.6, 0.85])    # (M,) P(sale) of close_deal by mood
DISCOUNT_BASE = np.array([0.15, 0.35, 0.55, 0.75, 0.9])  # (M,) P(sale) of discount_offer
POPULATION_ROUNDS = 6  # rounds of posterior-weighted backward induction for "average"

# Hidden tastes: the effect code of each mood line (flatter joke tell_story show_rare_item
# firm_price pressure) on a weapon | on a trinket, then the persona's shifts of the
# close_deal and discount_offer success probabilities.
_TASTES = {
    "flattery_lover": ("L..ddH", "L..ddH", 0.0, 0.0),
    "joker":          ("dL.dd.", "dL..dd", 0.0, 0.0),
    "storyteller":    (".dL.dd", "..lldd", 0.0, 0.0),
    "collector":      (".dlL.H", "d..LdH", -0.05, -0.05),
    "penny_pincher":  ("lLddH.", "Ll.HH.", -0.55, 0.1),
    "no_nonsense":    ("HdH.L.", "HdHlL.", 0.0, 0.0),
    "pushover":       ("..d.lL", "ld..lL", 0.0, 0.0),
    "skeptic":        ("Hdd.LH", "Hd.LlH", -0.1, -0.05),
    # held out: never in "average", so neither the base nor population data has seen them
    "old_friend":     (".dLd.H", "lL.d.H", 0.05, 0.0),
    "show_off":       ("L.dlHd", "d.dLHd", 0.0, 0.0),
}
HELDOUT: tuple[str, ...] = ("old_friend", "show_off")
# fmt: on
PERSONAS: tuple[str, ...] = tuple(p for p in _TASTES if p not in HELDOUT)
M, I, A, O = len(MOODS), len(ITEMS), len(ACTIONS), len(RESPONSES)  # noqa: E741 (the math notation of the docstring)
N = I * M  # states: n = item * M + mood; index N is the absorbing end
D = M + I + 1  # observation length


def _outcomes(persona: str) -> np.ndarray:
    """(N, A, O) probability of each response to each line in each state."""
    weapon, trinket, close_shift, discount_shift = _TASTES[persona]
    probs = np.zeros((I, M, A, O))
    for i, codes in enumerate((weapon, trinket)):
        for a, code in enumerate(codes):
            probs[i, :, a, :3] = EFFECT[code]
        for a, base, shift in ((DISCOUNT, DISCOUNT_BASE, discount_shift), (CLOSE, CLOSE_BASE, close_shift)):
            sale = np.clip(base + shift, 0.02, 0.97)  # (M,)
            probs[i, :, a, 4], probs[i, :, a, 3] = sale, 1 - sale
    probs[:, -1, :, 1] += probs[:, -1, :, 0]  # delighted cannot go higher
    probs[:, -1, :, 0] = 0.0
    probs[:, 0, :, 5] = probs[:, 0, :, 2] + probs[:, 0, :, 3]  # furious and pushed: leaves
    probs[:, 0, :, 2:4] = 0.0
    return probs.reshape(N, A, O)


def _next_state() -> np.ndarray:
    """(N, O) state after each response (N: the episode ended)."""
    n = np.arange(N)
    up, down = np.where(n % M < M - 1, n + 1, n), np.where(n % M > 0, n - 1, N)
    return np.stack([up, n, down, down, np.full(N, N), np.full(N, N)], axis=1)


def _values() -> np.ndarray:
    """(A, O) reward of each response to each action."""
    values = np.zeros((A, O))
    for a, margin in MARGIN.items():
        values[a, 4] = margin
    values[:, 5] = WALK_AWAY
    return values


@functools.lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """Response, transition and reward tables of every playable persona and of "noise".

    "noise" answers as a random named persona answers a random line: responses (and
    their rewards) are pooled over (line, response) pairs and ignore what the NPC said.
    """
    nxt, values = _next_state(), _values()  # (N, O), (A, O)
    outcomes = {p: _outcomes(p) for p in _TASTES}  # persona -> (N, A, O)
    pooled = np.mean([outcomes[p] for p in PERSONAS], axis=0).reshape(N, 1, A * O) / A
    outcomes[NOISE] = np.broadcast_to(pooled, (N, A, A * O))  # P(line a', response o)
    trans, rewards = {}, {}
    for p, probs in outcomes.items():
        noise = p == NOISE
        vals = values.reshape(1, A * O) if noise else values  # (A, O) or (1, A * O)
        targets = np.tile(nxt, (1, A)) if noise else nxt  # (N, O') next state per response
        rewards[p] = (probs * vals).sum(-1)  # (N, A)
        P = np.zeros((N, A, N + 1))
        for o in range(probs.shape[-1]):
            P[np.arange(N), :, targets[:, o]] += probs[:, :, o]
        trans[p] = P[:, :, :N]  # (N, A, N); the missing mass ends the episode
    return {"outcomes": outcomes, "next": nxt, "values": values, "P": trans, "R": rewards}


def _start() -> np.ndarray:
    """(N,) distribution of the first state."""
    return np.outer(ITEM_PROBS, START_MOOD).ravel()


def _forward(P: np.ndarray, R: np.ndarray, probs: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact return and (T, N) reach probabilities of a (T, N, A) policy in one MDP.

    P: (N, A, N) transitions (sub-stochastic: the rest ends the episode); R: (N, A).
    """
    T = probs.shape[0]
    reach, d, total = np.zeros((T, N)), _start(), 0.0  # d: (N,) P(not ended, in state n)
    for t in range(T):
        reach[t] = d
        total += float(d @ (probs[t] * R).sum(1))
        d = np.einsum("n,na,nam->m", d, probs[t], P)
    return total, reach


def _backward(P: np.ndarray, R: np.ndarray, w: np.ndarray, allowed: np.ndarray, sign: float) -> np.ndarray:
    """(T, N) deterministic policy maximising ``sign`` x weighted return (backward induction).

    P: (K, N, A, N) and R: (K, N, A) are the MDPs of K personas; w: (T, K, N) weighs
    each persona's value in each situation's decision (K = 1: exact optimum); allowed:
    (T, N, A) the actions the policy may choose.
    """
    T, K = w.shape[0], P.shape[0]
    V, policy = np.zeros((K, N)), np.zeros((T, N), dtype=np.int64)  # V: value from t + 1
    for t in reversed(range(T)):
        Qk = R + np.einsum("knam,km->kna", P, V)  # (K, N, A)
        Q = np.where(allowed[t], sign * np.einsum("kn,kna->na", w[t], Qk), -np.inf)
        policy[t] = Q.argmax(1)
        V = Qk[:, np.arange(N), policy[t]]  # (K, N)
    return policy


class HaggleEnv(PersonaCatalogue, gym.Env):
    """Travelling trader NPC that must learn what puts *this* customer in a buying mood.

    ## Description
    The trader haggles with one customer over one item in at most ``episode_length``
    lines (default 12) and reads the customer's mood from their face. Six lines
    (flatter, joke, tell a story, show a rare item, name a firm price, apply pressure)
    earn nothing at once but move the mood up or down, depending on the customer's
    hidden taste and the item. Two lines try to close: ``close_deal`` sells at full
    price, ``discount_offer`` cheaper but more surely; both succeed more often the
    better the mood, and a refusal sours it. Lines change the next state, so the best
    play is not greedy per line: warm the customer up with what *they* like, then close.

    ## Action Space
    ``Discrete(8)``: 0 flatter, 1 joke, 2 tell_story, 3 show_rare_item, 4 firm_price,
    5 pressure (mood lines), 6 discount_offer, 7 close_deal (closing lines).

    ## Observation Space
    ``Box(0, 1, (8,), float32)``: one-hot features then progress.

    | Index | Feature        | Values                                             |
    |-------|----------------|----------------------------------------------------|
    | 0-4   | mood           | furious, annoyed, neutral, warm, delighted         |
    | 5-6   | item           | weapon (p=.5), trinket (.5); fixed for the episode |
    | 7     | round_progress | t / T in [0, 1)                                    |

    Once the episode is over the observation is all zeros with progress 1.

    ## Rewards
    A sale earns its margin: 1.0 for ``close_deal``, 0.55 for ``discount_offer``. A
    furious customer whose mood would drop further (a disliked line or a refused close)
    walks away: -0.5. Every other line earns 0.

    ## Transitions
    A mood line moves the mood up / keeps it / down with the probabilities ``EFFECT``
    of how the customer takes it (loves .75/.2/.05 ... hates .02/.18/.8; delighted is
    the top). ``close_deal`` succeeds with ``CLOSE_BASE[mood]`` (.05 furious to .85
    delighted), ``discount_offer`` with ``DISCOUNT_BASE[mood]`` (.15 to .9), shifted
    per persona; a refusal lowers the mood by one.

    ## Starting State
    Line 0; the item is a weapon or a trinket (.5 each) and the mood is furious .05,
    annoyed .25, neutral .4, warm .25, delighted .05, whatever the persona.
    ``reset(options={"persona": name})`` switches the persona (it stays switched).

    ## Episode End
    Terminates on a sale, when the customer walks away, or after ``episode_length``
    lines without a sale (reward 0 for the haggle; the limit is part of the game, so
    it is ``terminated`` as in the other sim envs). Never truncates.

    ## Personas
    ``info`` (for logging; a policy never sees it) holds ``persona`` (configured),
    ``player`` (acting), ``response`` (the last one: mood_up, unmoved, mood_down,
    refused, sale, walked_away) and ``situation`` (the row of :meth:`situations`;
    absent once the episode is over).

    | Persona        | Hidden taste (W: weapon, T: trinket)        | Best NPC behaviour          |
    |----------------|---------------------------------------------|-----------------------------|
    | flattery_lover | flattery; hates pressure                    | flatter, then close_deal    |
    | joker          | jokes; dislikes flattery and firmness       | joke, then close_deal       |
    | storyteller    | stories; dislikes firmness and pressure     | tell_story, then close_deal |
    | collector      | rare items; hates pressure                  | show_rare_item, close_deal  |
    | penny_pincher  | banter (W), praise (T); balks at full price | joke (W) / flatter (T),     |
    |                | and hates firm prices                       | close_deal; discount late   |
    | no_nonsense    | firm prices; hates flattery and stories     | firm_price, then close_deal |
    | pushover       | gives in to pressure                        | pressure, then close_deal   |
    | skeptic        | firm prices (W), rare items (T); hard sell  | firm_price / show_rare_item |
    | old_friend     | held out: stories (W), jokes (T)            | tell_story / joke, close    |
    | show_off       | held out: praise (W), rare items (T)        | flatter / show_rare_item    |
    | average        | a random named persona per episode          | population optimum (approx.)|
    | noise          | nothing the trader says matters             | none (all equal)            |

    Every named persona's best play uses *its* line until the customer is delighted
    and only then closes (close_deal; at the last line a cheaper close from lower
    moods); closing at once, the greedy play, earns much less. ``HELDOUT_PERSONAS``
    never act for "average"; ``SWITCHES`` pair personas whose best play differs.

    ## Oracles
    :meth:`expected_return` is exact forward propagation over :meth:`situations`;
    :meth:`oracle_return` / :meth:`worst_return` exact backward induction, except for
    "average" (a hidden persona: see :meth:`population_best_probs`).

    ## Version History
    * v0: initial version.
    """

    # gymnasium declares Env.metadata a plain (instance) attribute with a class default: ClassVar conflicts
    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"], "render_fps": 4}  # noqa: RUF012
    ACTIONS: ClassVar[tuple[str, ...]] = ACTIONS
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = OBSERVATION_FEATURES
    PERSONAS: ClassVar[tuple[str, ...]] = PERSONAS
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = HELDOUT
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("flattery_lover", "no_nonsense"),
        ("pushover", "collector"),
    )
    TRAITS: ClassVar[dict[str, str]] = traits_in("npcadapt/Haggle-v0")
    # the game's tables, for anyone playing by these rules (the demo)
    MOODS: ClassVar[tuple[str, ...]] = MOODS
    ITEMS: ClassVar[tuple[str, ...]] = ITEMS
    RESPONSES: ClassVar[tuple[str, ...]] = RESPONSES
    DISCOUNT: ClassVar[int] = DISCOUNT
    CLOSE: ClassVar[int] = CLOSE
    MARGIN: ClassVar[dict[int, float]] = MARGIN
    WALK_AWAY: ClassVar[float] = WALK_AWAY
    START_MOOD: ClassVar[np.ndarray] = START_MOOD
    ITEM_PROBS: ClassVar[np.ndarray] = ITEM_PROBS
    DISCRETE_CONTEXT: ClassVar[bool] = True  # obs minus progress: 10 (item, mood) values
    SEQUENTIAL: ClassVar[bool] = True  # the NPC's lines change the next state: greedy per step is not optimal

    def __init__(self, persona: str | None = None, render_mode: str | None = None, episode_length: int = 12) -> None:
        self._configure(persona, render_mode, episode_length)
        self.tables = _tables()
        self.n_states = N
        self.action_space = spaces.Discrete(A)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(D,), dtype=np.float32)
        self._obs_table = self._build_obs_table()  # (T, N, D)
        self._terminal_obs = np.zeros(D, dtype=np.float32)
        self._terminal_obs[-1] = 1.0
        self._cdfs = {p: np.cumsum(o, axis=-1) for p, o in self.tables["outcomes"].items()}
        self._window: Any = None
        self._player, self._state, self._t, self._done = PERSONAS[0], 0, 0, True
        self._item, self._mood = 0, 2  # what the picture shows (kept once the episode ends)
        self._last: dict[str, Any] = {}
        self._population: np.ndarray | None = None  # (S, A), computed on first use

    def _build_obs_table(self) -> np.ndarray:
        T, n = self.episode_length, np.arange(N)
        table = np.zeros((T, N, D), np.float32)
        table[:, n, n % M] = 1.0
        table[:, n, M + n // M] = 1.0
        table[:, :, -1] = (np.arange(T, dtype=np.float32) / T)[:, None]
        return table

    # ---- gymnasium API -------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a haggle; ``options={"persona": name}`` switches (and keeps) the persona."""
        super().reset(seed=seed)
        self._switch_persona(options)
        u = self.np_random.random(2)  # fixed draw count: the first state ignores the persona
        self._state = draw_index(np.cumsum(_start()), u[0])
        if self.persona == AVERAGE:
            self._player = PERSONAS[min(int(u[1] * len(PERSONAS)), len(PERSONAS) - 1)]
        else:
            self._player = self.persona
        self._t, self._done, self._last = 0, False, {}
        self._item, self._mood = divmod(self._state, M)
        if self.render_mode == "human":
            self.render()
        return self._obs_table[0, self._state].copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Say one line: the customer responds; a sale or a walk-out ends the haggle."""
        if self._done:
            raise SimError("HaggleEnv: step() called after the episode ended; call reset()")
        if not self.action_space.contains(action):
            raise SimError(f"HaggleEnv: action {action!r} is not in Discrete({A})")
        a, n = int(action), self._state
        cdf = self._cdfs[self._player][n, a]  # (O,), or (A * O,) pooled for noise
        j = draw_index(cdf, self.np_random.random())  # one draw per line, whatever the action
        said, o = divmod(j, O) if self._player == NOISE else (a, j)
        reward = float(self.tables["values"][said, o])
        self._state = int(self.tables["next"][n, o])
        self._t += 1
        self._done = self._state == N or self._t >= self.episode_length
        self._last = {"action": a, "outcome": o, "reward": reward}
        if self._state < N:
            self._mood = self._state % M
        elif o == 5:
            self._mood = 0
        obs = self._terminal_obs if self._done else self._obs_table[self._t, self._state]
        if self.render_mode == "human":
            self.render()
        return obs.copy(), reward, self._done, False, self._info()

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"persona": self.persona, "player": self._player}
        if not self._done:
            info["situation"] = self._t * N + self._state
        if self._last:
            info["response"] = RESPONSES[self._last["outcome"]]
        return info

    def render(self) -> np.ndarray | None:
        """Draw the stall: ``rgb_array`` returns (H, W, 3) uint8; ``human`` shows it."""
        from sim import render as draw

        if self.render_mode is None:
            gym.logger.warn("HaggleEnv.render() called without a render_mode")
            return None
        surface = draw.new_surface()
        self._draw(surface)
        scene = {"progress": self._t / self.episode_length, "last": dict(self._last)}
        draw.reward_strip(surface, scene, ACTIONS)
        if self.render_mode == "rgb_array":
            return draw.to_array(surface)
        if self._window is None:
            self._window = draw.Window("HaggleEnv")
        self._window.show(surface, self.metadata["render_fps"])
        return None

    def _draw(self, surface: Any) -> None:
        """A stall with the trader and the item; the customer's face shows the mood."""
        import pygame

        from sim import render

        mood, item = self._mood, self._item
        pygame.draw.polygon(surface, (60, 120, 200), [(20, 70), (240, 70), (210, 40), (50, 40)])
        for x in (30, 226):  # the stall: awning, poles, the trader behind the counter
            pygame.draw.rect(surface, (110, 80, 50), (x, 70, 4, 90))
        pygame.draw.rect(surface, (60, 200, 190), (70, 105, 36, 50))
        pygame.draw.circle(surface, (240, 200, 150), (88, 92), 14)
        pygame.draw.rect(surface, (150, 100, 60), (30, 150, 200, 50))
        if item == 0:  # a sword on the counter
            pygame.draw.line(surface, (200, 200, 220), (130, 146), (200, 128), 4)
        else:  # a gem
            gem = [(170, 124), (183, 136), (170, 147), (157, 136)]
            pygame.draw.polygon(surface, (120, 230, 200), gem)
        skin = ((200, 50, 40), (220, 130, 60), (220, 200, 120), (170, 210, 110), (90, 220, 110))
        cx, cy = 360, 130
        pygame.draw.rect(surface, (90, 90, 140), (cx - 22, cy + 30, 44, 70))
        pygame.draw.circle(surface, skin[mood], (cx, cy), 32)
        for dx in (-11, 11):
            pygame.draw.circle(surface, (30, 30, 30), (cx + dx, cy - 8), 4)
        mouth = [(cx - 14, cy + 12), (cx, cy + 12 + (mood - 2) * 6), (cx + 14, cy + 12)]
        pygame.draw.lines(surface, (30, 30, 30), False, mouth, 3)  # frown .. smile
        render.label(surface, f"{MOODS[mood]} customer, {ITEMS[item]}", (250, 20), 18)
        if self._last:
            render.label(surface, f"customer: {RESPONSES[self._last['outcome']]}", (250, 40), 18)

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    # ---- exact oracles -------------------------------------------------------------------
    def _mdp(self, persona: str) -> tuple[np.ndarray, np.ndarray]:
        """(K, N, A, N) transitions and (K, N, A) rewards of the K personas behind one name."""
        names = PERSONAS if persona == AVERAGE else (persona,)
        P, R = self.tables["P"], self.tables["R"]
        return np.stack([P[p] for p in names]), np.stack([R[p] for p in names])

    def _reach(self, persona: str, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) returns and (K, T, N) reach probabilities of a (T, N, A) policy per persona."""
        P, R = self._mdp(persona)
        runs = [_forward(P[k], R[k], probs) for k in range(len(P))]
        return np.array([r for r, _ in runs]), np.stack([d for _, d in runs])

    def situations(self) -> list[tuple[np.ndarray, float]]:
        """Every observation the NPC may act on, with its weight.

        Row ``s = t * 10 + item * 5 + mood`` is line ``t`` in that state. The weight is
        the probability of reaching it when a uniform-random trader meets "average"
        (all positive; they sum to that trader's expected number of lines, not to
        ``episode_length``). The terminal observation is never acted on: not listed.
        """
        uniform = np.full((self.episode_length, N, A), 1.0 / A)
        weights = self._reach(AVERAGE, uniform)[1].mean(0).ravel()  # (S,)
        return [(o.copy(), float(w)) for o, w in zip(self._obs_table.reshape(-1, D), weights)]

    def _check_probs(self, probs: Any) -> np.ndarray:
        """(S, A) probabilities validated and reshaped to (T, N, A)."""
        probs = np.asarray(probs, dtype=np.float64)
        S = self.episode_length * N
        if probs.shape != (S, A):
            raise SimError(
                f"HaggleEnv.expected_return: probs must have shape ({S}, {A}) (situations x actions), got {probs.shape}"
            )
        if not np.isfinite(probs).all() or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > 1e-4:
            raise SimError(
                "HaggleEnv.expected_return: each row of probs must be a probability "
                "distribution (finite, >= 0, summing to 1)"
            )
        return probs.reshape(self.episode_length, N, A)

    def expected_rewards(self, persona: str) -> np.ndarray:
        """(S, A) expected immediate reward of each action in each of :meth:`situations`.

        For "average" the named personas' are averaged with equal weights (not the
        posterior given the situation); for "noise" all actions' are equal per row.
        """
        per_state = self._mdp(self._check_persona(persona))[1].mean(0)  # (N, A)
        return np.tile(per_state, (self.episode_length, 1))

    def expected_return(self, persona: str, probs: np.ndarray) -> float:
        """Exact expected episode return of a policy given as (S, A) action probabilities.

        For "average" it is the mean over named personas (one is drawn per episode).
        """
        persona, probs = self._check_persona(persona), self._check_probs(probs)
        return float(self._reach(persona, probs)[0].mean())

    def best_probs(self, persona: str, allowed: np.ndarray | None = None, worst: bool = False) -> np.ndarray:
        """(S, A) one-hot optimal (or ``worst``) policy by exact backward induction.

        ``allowed`` (S, A) bool restricts the choice in each situation (e.g. to the
        greedy actions). For "average" without restriction: :meth:`population_best_probs`.
        """
        persona = self._check_persona(persona)
        if persona == AVERAGE and allowed is None and not worst:
            return self.population_best_probs()
        T = self.episode_length
        mask = np.ones((T, N, A), bool) if allowed is None else np.reshape(allowed, (T, N, A))
        P, R = self._mdp(persona)
        w = np.full((T, len(P), N), 1.0 / len(P))  # (T, K, N)
        policy = _backward(P, R, w, mask.astype(bool), -1.0 if worst else 1.0)  # (T, N)
        return np.eye(A)[policy.ravel()]

    def oracle_return(self, persona: str) -> float:
        """Return of the best policy; for "average" of :meth:`population_best_probs`."""
        return self.expected_return(persona, self.best_probs(persona))

    def worst_return(self, persona: str) -> float:
        """Return of the worst policy (exact backward induction; for "average" of the
        policy that is worst against the personas' equally weighted values)."""
        return self.expected_return(persona, self.best_probs(persona, worst=True))

    def population_best_probs(self) -> np.ndarray:
        """(S, A) one-hot Markov policy that does well against the mix of named personas.

        With the persona hidden the mixture is a POMDP, and the best policy acting on
        the observation alone has no exact backward induction. This is the best of a
        few rounds of backward induction in which each situation's decision weighs the
        personas by their probability of being there under the previous round's policy
        (equal weights in the first round). Its return is a lower bound on the true
        population optimum; ``oracle_return("average")`` is that return.
        """
        if self._population is None:
            T, (P, R) = self.episode_length, self._mdp(AVERAGE)
            w, mask = np.full((T, len(P), N), 1.0 / len(P)), np.ones((T, N, A), bool)
            best, best_return = None, -np.inf
            for _ in range(POPULATION_ROUNDS):
                probs = np.eye(A)[_backward(P, R, w, mask, 1.0)]  # (T, N, A)
                returns, reach = self._reach(AVERAGE, probs)  # (K,), (K, T, N)
                if returns.mean() > best_return + 1e-12:
                    best, best_return = probs, returns.mean()
                w = reach.transpose(1, 0, 2) + 1e-12  # (T, K, N) unnormalised posterior
            assert best is not None  # the first round always beats -inf (POPULATION_ROUNDS >= 1)
            self._population = best.reshape(-1, A)
        return self._population.copy()

    def return_range(self) -> tuple[float, float]:
        """Lowest and highest achievable expected return over the named personas."""
        worst, best = (min(self.worst_return(p) for p in PERSONAS), max(self.oracle_return(p) for p in PERSONAS))
        return worst, best

    def persona_gaps(self, personas: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """Gap table (see :func:`sim.personas.persona_gap_table`), by default for the named personas."""
        return persona_gap_table(self, PERSONAS if personas is None else personas)
