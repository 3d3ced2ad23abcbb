"""Scripted bot players for headless mode, driven by the sim personas' hidden habits.

A bot plays through the same :class:`~npcadapt.demo.world.PlayerInput` a person's
keyboard produces. It walks a tour (the sparring ring, each stall, the vault) and answers
NPCs the way a sim persona would in the situation the NPC observed:

- duel: its move is drawn from the duel persona's habit table (``sim.duel``);
- merchant: buys / says no / walks off as drawn from the merchant persona's response
  probabilities for that pitch (``sim.merchant``);
- companion: draws the companion persona's satisfaction for that support and presses
  "thanks" when it is >= 0.3, "stop that" when it is <= -0.3, nothing otherwise.

A bot is named by a preset (``high_blocker``), by any sim persona name (the other
archetypes then use the preset defaults), or explicitly: ``duelist=turtle,merchant=knight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.companion import CompanionEnv
from sim.duel import DuelEnv
from sim.merchant import MerchantEnv
from sim.personas import RoundModel

from ..errors import InvalidInputError
from .rules import COMPANION, DUELIST, MERCHANT, RESPONSES
from .village import ARENA, STALL_REACH, TILE, VAULT
from .world import PlayerInput, World

ENVS = {DUELIST: DuelEnv, MERCHANT: MerchantEnv, COMPANION: CompanionEnv}
MERCHANT_REPLIES = {"walks_away": "walk", "browses": "no", "buys": "buy"}  # the customer's response -> what the bot does
PRESETS: dict[str, dict[str, str]] = {
    "high_blocker": {DUELIST: "high_blocker", MERCHANT: "knight", COMPANION: "tank"},
    "brawler": {DUELIST: "brawler", MERCHANT: "sellsword", COMPANION: "tank"},
    "turtle": {DUELIST: "turtle", MERCHANT: "bargain_hunter", COMPANION: "potion_lover"},
    "jumper": {DUELIST: "jumper", MERCHANT: "collector", COMPANION: "explorer"},
    "low_sweeper": {DUELIST: "low_sweeper", MERCHANT: "big_spender", COMPANION: "chatty"},
}
THANKS_AT, STOP_AT = 0.3, -0.3
def model(archetype: str) -> RoundModel:
    return ENVS[archetype].shared_model()


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
                f"({', '.join(f'{a}: {list(e.PERSONAS)}' for a, e in ENVS.items())}) or archetype=persona pairs")
        return {**personas, **{a: spec for a in owners}}
    for part in parts:
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in ENVS or value not in ENVS[key].PERSONAS:
            raise InvalidInputError(
                f"bad bot part {part!r}: expected archetype=persona with archetype in {sorted(ENVS)} "
                f"and persona one of that env's {list(ENVS.get(key, DuelEnv).PERSONAS)}")
        personas[key] = value
    return personas


@dataclass
class Stop:
    kind: str  # "arena", "stall", "vault"
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
        self._index = {a: {tuple(int(v) for v in row): i for i, row in enumerate(model(a).contexts)}
                       for a in ENVS}

    def plan(self, world: World) -> None:
        """The default tour: long in the ring, a visit to each stall, a look into the vault."""
        if self.tour:
            return
        kinds = {n.archetype for n in world.npcs}
        if DUELIST in kinds:
            self.tour.append(Stop("arena", 26.0))
        for n in world.npcs:
            if n.archetype == MERCHANT:
                self.tour.append(Stop("stall", 9.0, n.id))
        self.tour.append(Stop("vault", 5.0))
        self.stop_until = world.time + self.tour[0].seconds

    # -- per frame ------------------------------------------------------------------------------
    def control(self, world: World) -> PlayerInput:
        self.plan(world)
        if world.time >= self.stop_until:
            self._next(world)
        inp = PlayerInput(move=self._steer(world))
        p = world.player
        ready = [n for n in world.npcs if n.engaged and n.pending is not None]
        duel = [n for n in ready if n.archetype == DUELIST]
        if duel and world.time >= self.move_at:
            nearest = min(duel, key=lambda n: math.hypot(n.x - p.x, n.y - p.y))
            inp.duel_move = self._duel_move(nearest.pending.levels)
            self.move_at = world.time + self.rng.uniform(0.4, 0.7)
        for npc in ready:
            if npc.archetype == DUELIST:
                continue
            key = (npc.id, npc.pending.since)
            due, reply = self.answers.setdefault(key, self._answer(npc.archetype, npc.pending))
            if reply is None or world.time - npc.pending.since < due:
                continue
            self.answers[key] = (math.inf, None)  # answered once
            if reply == "walk":
                self._next(world)
            elif npc.archetype == MERCHANT:
                inp.reply = reply
            else:
                inp.reaction = reply
        if len(self.answers) > 256:
            self.answers.clear()
        return inp

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
        elif stop.kind == "stall":
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
    def _context(self, archetype: str, levels: tuple[int, int, int]) -> int:
        return self._index[archetype][tuple(levels)]

    def _duel_move(self, levels: tuple[int, int, int]) -> int:
        m = model(DUELIST)
        probs = m.outcome_probs[self.personas[DUELIST]][self._context(DUELIST, levels), 0]  # (M,)
        return int(self.rng.choice(len(probs), p=probs / probs.sum()))

    def _answer(self, archetype: str, pend) -> tuple[float, str | None]:
        """(delay in seconds, reply) for a merchant pitch or a companion's support."""
        m = model(archetype)
        c = self._context(archetype, pend.levels)
        probs = m.outcome_probs[self.personas[archetype]][c, pend.action]  # (O,)
        o = int(self.rng.choice(len(probs), p=probs / probs.sum()))
        if archetype == MERCHANT:
            return self.rng.uniform(0.3, 0.8), MERCHANT_REPLIES[RESPONSES[o]]
        value = float(m.outcome_values[self.personas[archetype]][c, pend.action, o])
        reply = "thanks" if value >= THANKS_AT else "stop" if value <= STOP_AT else None
        return self.rng.uniform(0.4, 1.0), reply
