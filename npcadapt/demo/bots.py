"""Scripted bot players for headless mode, driven by the sim personas' hidden habits.

A bot plays through the same :class:`~npcadapt.demo.world.PlayerInput` a person's
keyboard produces. It walks a tour (the sparring ring, each stall, each haggler's rug by
the vault gate, the vault) and answers NPCs the way a sim persona would in the situation
the NPC observed:

- duel: its move is drawn from the duel persona's habit table (the Duel env's ``model``);
- merchant: buys / says no / walks off as drawn from the merchant persona's response
  probabilities for that pitch (the Merchant env's ``model``);
- companion: draws the companion persona's satisfaction for that support and presses
  "thanks" when it is >= 0.3, "stop that" when it is <= -0.3, nothing otherwise;
- haggler: draws the haggle persona's response to that line in that (mood, item) from the
  env's own table (the Haggle env's ``tables["outcomes"]``) and answers with the key that makes
  the demo's rules give that response (``HAGGLE_ANSWERS``): likes / unmoved / dislikes a
  mood line, takes or refuses a closing offer. The world then moves the mood exactly as
  the env would, so the haggler meets a faithful Haggle-env customer; the bot stays at
  the rug until the visit ends (a sale, a walk-out or the 12th line).

A bot is named by a preset (``high_blocker``), by any sim persona name (every archetype
whose env has it plays it; the others use the preset defaults), or explicitly:
``duelist=turtle,merchant=knight,haggler=joker``. A preset is one latent player trait of the
envs (their ``TRAITS``; ``PRESET_TRAITS``), so it plays that trait's persona at every NPC: brawler
is a brute (sellsword customer, lone-wolf companion, no-nonsense haggler), turtle is
cautious (window shopper, tank, skeptic), high_blocker proud, jumper showy, low_sweeper a
collector.

The envs are made with :func:`npcadapt.envs.game` (``gymnasium.make``): the personas, their
tables, traits and oracles are the envs' public attributes and methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..envs import game, sim_env
from ..envs import make as make_env
from ..errors import InvalidInputError
from ..host import Host
from ..numerics import draw_categorical
from .rules import (
    CLOSING,
    COMPANION,
    DUELIST,
    HAGGLE_RESPONSES,
    HAGGLER,
    MERCHANT,
    MOODS,
    RESPONSES,
    SIM_ENVS,
)
from .village import ARENA, STALL_REACH, TILE, VAULT
from .world import Pending, PlayerInput, World

ROUND_ARCHETYPES = (DUELIST, MERCHANT, COMPANION)  # their envs play rounds of a RoundModel (env.model)
ARCHETYPE_ENVS = SIM_ENVS  # archetype -> gymnasium env id
ENVS = {a: game(env_id) for a, env_id in ARCHETYPE_ENVS.items()}  # archetype -> the env (its tables and personas)
MERCHANT_REPLIES = {
    "walks_away": "walk",
    "browses": "no",
    "buys": "buy",
}  # the customer's response -> what the bot does
# the haggle customer's response -> (answer to a mood line, answer to a closing line); a walk-out
# only happens to a furious customer, whom the demo's rules send off on the next drop
HAGGLE_ANSWERS = {
    "mood_up": ("likes", None),
    "unmoved": ("unmoved", None),
    "mood_down": ("dislikes", None),
    "refused": (None, "no"),
    "sale": (None, "buy"),
    "walked_away": ("dislikes", "no"),
}
# a preset is a latent player trait (the envs' TRAITS) named by its duellist: the same person at
# every NPC, as in the recordings the population priors were built from
PRESET_TRAITS = {
    "high_blocker": "proud",
    "brawler": "brute",
    "turtle": "cautious",
    "jumper": "showy",
    "low_sweeper": "collector",
}
PRESETS: dict[str, dict[str, str]] = {
    name: {arch: ENVS[arch].TRAITS[trait] for arch in (DUELIST, MERCHANT, COMPANION, HAGGLER)}
    for name, trait in PRESET_TRAITS.items()
}
THANKS_AT, STOP_AT = 0.3, -0.3
# seconds at each stop; the rug's come from the stalls and the vault, so a tour with the default
# village (ring 26 + 2 stalls x 8 + rug 5 + vault 2 = 49 s, plus any haggle that runs over) is as
# long as it was before the haggler came
ARENA_STOP, STALL_STOP, RUG_STOP, VAULT_STOP = 26.0, 8.0, 5.0, 2.0
HAGGLE_STAY = 15.0  # the longest a bot waits past its stop for a haggle to end (then it walks off)


def gain_against(host: Host, archetype: str, player: str, persona: str) -> float | None:
    """Exact gain of `player`'s policy now against `persona` in the archetype's sim env:
    (policy - base) / (best response - base) in expected return, over every situation.
    None where the persona leaves no gap to close."""
    env = sim_env(make_env(ARCHETYPE_ENVS[archetype], persona=persona))
    obs = np.stack([o for o, _ in env.situations()]).astype(np.float32)  # (S, D)
    players = [player] * len(obs)
    now, base = (
        host.action_probs(archetype, players, obs, base=False),
        host.action_probs(archetype, players, obs, base=True),
    )
    base_return = env.expected_return(persona, base)
    gap = env.oracle_return(persona) - base_return
    return round(float((env.expected_return(persona, now) - base_return) / gap), 4) if abs(gap) > 1e-9 else None


def model(archetype: str):
    """The round env's RoundModel: contexts and each persona's outcome tables."""
    return ENVS[archetype].model


def parse_bot(spec: str) -> dict[str, str]:
    """Bot spec -> persona per archetype; raises InvalidInputError naming what is unknown."""
    spec = spec.strip()
    if spec in PRESETS:
        return dict(PRESETS[spec])
    personas = dict(PRESETS["high_blocker"])
    parts = [p for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and "=" not in parts[0]:
        owners = [a for a, env in ENVS.items() if spec in env.PERSONAS]
        if not owners:
            raise InvalidInputError(
                f"unknown bot {spec!r}: use a preset {sorted(PRESETS)}, a sim persona "
                f"({', '.join(f'{a}: {list(e.PERSONAS)}' for a, e in ENVS.items())}) or archetype=persona pairs"
            )
        return {**personas, **dict.fromkeys(owners, spec)}
    for part in parts:
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in ENVS or value not in ENVS[key].PERSONAS:
            raise InvalidInputError(
                f"bad bot part {part!r}: expected archetype=persona with archetype in {sorted(ENVS)} "
                f"and persona one of that env's {list(ENVS.get(key, ENVS[DUELIST]).PERSONAS)}"
            )
        personas[key] = value
    return personas


@dataclass
class Stop:
    kind: str  # "arena", "stall", "rug" (a haggler's), "vault"
    seconds: float
    npc: str = ""


@dataclass
class Bot:
    """A scripted player: one persona per archetype, a tour, a private RNG."""

    personas: dict[str, str]
    seed: int = 0
    tour: list[Stop] = field(default_factory=list)
    rng: np.random.Generator = field(init=False)
    stop: int = 0
    stop_until: float = 0.0
    target: tuple[float, float] | None = None
    retarget_at: float = 0.0
    move_at: float = 0.0
    answers: dict[tuple[str, float], tuple[float, str | None]] = field(default_factory=dict)  # pending -> (due, reply)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.haggle_rng = np.random.default_rng([self.seed, 1])  # its own stream: the other answers stay as they were
        self._index = {
            a: {tuple(int(v) for v in row): i for i, row in enumerate(model(a).contexts)} for a in ROUND_ARCHETYPES
        }
        self._haggle = ENVS[HAGGLER].tables["outcomes"]  # persona -> (item * 5 + mood, line, response) probabilities

    def plan(self, world: World) -> None:
        """The default tour: long in the ring, a visit to each stall and each haggler, a look into the vault."""
        if self.tour:
            return
        kinds = {n.archetype for n in world.npcs}
        if DUELIST in kinds:
            self.tour.append(Stop("arena", ARENA_STOP))
        for n in world.npcs:
            if n.archetype == MERCHANT:
                self.tour.append(Stop("stall", STALL_STOP, n.id))
        for n in world.npcs:
            if n.archetype == HAGGLER:
                self.tour.append(Stop("rug", RUG_STOP, n.id))  # then stays until the haggle in progress ends
        self.tour.append(Stop("vault", VAULT_STOP))
        self.stop_until = world.time + self.tour[0].seconds

    # -- per frame ------------------------------------------------------------------------------
    def control(self, world: World) -> PlayerInput:
        self.plan(world)
        if world.time >= self.stop_until and not self._haggling(world) and not self._pitched(world):
            self._next(world)
        inp = PlayerInput(move=self._steer(world))
        p = world.player
        ready = [(n, n.pending) for n in world.npcs if n.engaged and n.pending is not None]
        duel = [(n, pend) for n, pend in ready if n.archetype == DUELIST]
        if duel and world.time >= self.move_at:
            _, nearest = min(duel, key=lambda d: math.hypot(d[0].x - p.x, d[0].y - p.y))
            inp.duel_move = self._duel_move(nearest.levels)
            self.move_at = world.time + self.rng.uniform(0.4, 0.7)
        for npc, pend in ready:
            if npc.archetype == DUELIST:
                continue
            key = (npc.id, pend.since)
            if npc.archetype == HAGGLER:
                if key not in self.answers:
                    self.answers[key] = self._haggle_answer(pend)
                due, reply = self.answers[key]
            else:
                due, reply = self.answers.setdefault(key, self._answer(npc.archetype, pend))
            if reply is None or world.time - pend.since < due:
                continue
            self.answers[key] = (math.inf, None)  # answered once
            if reply == "walk":
                self._next(world)
            elif npc.archetype == MERCHANT or reply in ("buy", "no"):
                inp.reply = reply
            elif npc.archetype == HAGGLER:
                inp.feeling = reply
            else:
                inp.reaction = reply
        if len(self.answers) > 256:
            self.answers.clear()
        return inp

    def _haggling(self, world: World) -> bool:
        """At a haggler's rug with a haggle in progress (and not stuck there past HAGGLE_STAY)."""
        stop = self.tour[self.stop]
        if stop.kind != "rug" or world.time >= self.stop_until + HAGGLE_STAY:
            return False
        return any(n.id == stop.npc and n.open for n in world.npcs)

    def _pitched(self, world: World) -> bool:
        """At a stall whose pitch is still unanswered: the bot answers it before it walks on, so
        that leaving on the tour's clock is not taken for the persona walking off at that pitch
        (the merchant reads a walk-off mid-pitch as the customer hating it)."""
        stop = self.tour[self.stop]
        return stop.kind == "stall" and any(n.id == stop.npc and n.pending is not None for n in world.npcs)

    def _next(self, world: World) -> None:
        self.stop = (self.stop + 1) % len(self.tour)
        self.stop_until = world.time + self.tour[self.stop].seconds
        self.target = None

    def _steer(self, world: World) -> tuple[float, float]:
        stop, p = self.tour[self.stop], world.player
        if stop.kind == "arena":
            if self.target is None or world.time >= self.retarget_at:
                self.retarget_at = world.time + self.rng.uniform(0.5, 1.2)
                if self.target is not None and self.rng.random() < 0.35:
                    self.target = (p.x, p.y)  # hold still: a neutral stance
                else:
                    a, r = self.rng.uniform(0, 2 * math.pi), self.rng.uniform(0, 0.55) * ARENA[2]
                    self.target = (ARENA[0] + math.cos(a) * r, ARENA[1] + math.sin(a) * r)
        elif stop.kind in ("stall", "rug"):
            npc = next(n for n in world.npcs if n.id == stop.npc)
            fx, fy = world.stall_front(npc)
            self.target = (fx, fy) if self.target is None else self.target
            if math.hypot(p.x - fx, p.y - fy) > STALL_REACH * 0.5:
                self.target = (fx, fy)
        else:
            self.target = (VAULT[0] + 3.5 * TILE, VAULT[1] + 3 * TILE)
        dx, dy = self.target[0] - p.x, self.target[1] - p.y
        return (dx, dy) if math.hypot(dx, dy) > 4 else (0.0, 0.0)

    # -- the personas ----------------------------------------------------------------------------
    def _context(self, archetype: str, levels: tuple[int, ...]) -> int:
        return self._index[archetype][tuple(levels)]

    def _duel_move(self, levels: tuple[int, ...]) -> int:
        m = model(DUELIST)
        probs = m.outcome_probs[self.personas[DUELIST]][self._context(DUELIST, levels), 0]  # (M,)
        return draw_categorical(self.rng, probs)

    def _answer(self, archetype: str, pend: Pending) -> tuple[float, str | None]:
        """(delay in seconds, reply) for a merchant pitch or a companion's support."""
        m = model(archetype)
        c = self._context(archetype, pend.levels)
        probs = m.outcome_probs[self.personas[archetype]][c, pend.action]  # (O,)
        o = draw_categorical(self.rng, probs)
        if archetype == MERCHANT:
            return self.rng.uniform(0.3, 0.8), MERCHANT_REPLIES[RESPONSES[o]]
        value = float(m.outcome_values[self.personas[archetype]][c, pend.action, o])
        reply = "thanks" if value >= THANKS_AT else "stop" if value <= STOP_AT else None
        return self.rng.uniform(0.4, 1.0), reply

    def _haggle_answer(self, pend: Pending) -> tuple[float, str | None]:
        """(delay in seconds, answer) to a haggler's line: the env persona's response in that state."""
        mood, item = pend.levels
        probs = self._haggle[self.personas[HAGGLER]][item * len(MOODS) + mood, pend.action]  # (6,) HAGGLE_RESPONSES
        o = draw_categorical(self.haggle_rng, probs)
        to_mood_line, to_offer = HAGGLE_ANSWERS[HAGGLE_RESPONSES[o]]
        return self.haggle_rng.uniform(0.3, 0.7), to_offer if pend.action in CLOSING else to_mood_line
