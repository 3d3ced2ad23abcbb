"""The demo's game state and its rules over time: the village map, the player, the NPCs.

No pygame and no npcadapt calls: :meth:`World.update` advances the game by ``dt``
seconds of game time given the player's input and returns the :class:`Outcome` of every
NPC decision the player answered (reward and episode end); :meth:`World.requests` lists
the NPCs that need a decision now, with their observation; :meth:`World.decided` applies
one. :mod:`npcadapt.demo.session` carries these to and from the npcadapt backend.

Duelists in the sparring ring fight the player together (each answers the same move
with its own); a merchant pitches while the player stands at its stall; companions follow
the player and offer support every few seconds; a haggler (a travelling trader by the vault
gate) haggles over one item per visit while the player stands across its rug, and the
player's mood, moved by how they take each line, is what it sees. The map itself is
:mod:`village`.

Over 450 lines: one state machine (player, NPC encounters of four kinds, their timers); split, each part would reach into the others' state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from . import rules
from .rules import COMPANION, DUELIST, EPISODE_LENGTH, HAGGLER, MERCHANT
from .village import (
    ARENA,
    HAGGLE_FRONT,
    HAGGLE_SPOTS,
    HEIGHT,
    MARKET,
    SPAWN,
    STALL_REACH,
    STALL_TOP,
    STALL_X,
    TILE,
    VAULT,
    WIDTH,
    inside,
    terrain,
)

DAY_SECONDS = 150.0  # morning for the first half, evening for the second
PLAYER_SPEED = 170.0
NPC_SPEED = 140.0
MOVE_COOLDOWN = 0.35  # seconds between the player's duel moves
DUEL_REST, PITCH_GAP, VISIT_REST = 2.0, 0.8, 3.0
PITCH_TIMEOUT = 4.0  # an unanswered pitch counts as browsing, an unanswered haggler's line as unmoved / refused
MOMENT = 3.0  # a companion's support offer is open this long
LINE_GAP, NEXT_CUSTOMER = 0.6, 1.5  # seconds between a haggler's lines, and between its visits
LIMITS = {DUELIST: 12, MERCHANT: 3, COMPANION: 2, HAGGLER: len(HAGGLE_SPOTS)}
SPRITES = {DUELIST: 8, MERCHANT: 3, COMPANION: 2}  # character sprite variants drawn by assets/demo/make_art.py
SHEETS = {HAGGLER: MERCHANT}  # hagglers wear merchant sprites (their variant indexes the merchants')
HAGGLER_VARIANTS = (2, 0)  # the merchant sprites the hagglers wear (Yusra's is free with 2 merchants)
NAMES = {
    DUELIST: ("Brakka", "Oona", "Tamsin", "Ivo", "Sefa", "Ruda", "Kenji", "Mira", "Dov", "Lark", "Pell", "Zia"),
    MERCHANT: ("Hedda", "Old Pim", "Yusra"),
    COMPANION: ("Wren", "Ash"),
    HAGGLER: ("Zarek", "Mags"),
}
HAGGLE_FLASH = {
    "mood_up": "warmer",
    "unmoved": "unmoved",
    "mood_down": "cooler",
    "refused": "refused",
    "sale": "sold!",
    "walked_away": "walked away",
}
FAREWELL = {"sale": "A pleasure!", "walked_away": "Suit yourself!"}  # else, after the 12th line: "Another time."


@dataclass
class PlayerInput:
    """One frame of the player's intent (keyboard or bot)."""

    move: tuple[float, float] = (0.0, 0.0)  # direction; normalised by the world
    duel_move: int | None = None  # index into rules.PLAYER_MOVES
    reply: str | None = None  # merchant, haggler's closing offer: "buy" or "no"
    reaction: str | None = None  # companion: "thanks" or "stop"
    feeling: str | None = None  # haggler's other lines: "likes", "dislikes" or "unmoved" (rules.FEELINGS)


@dataclass
class Player:
    x: float = SPAWN[0]
    y: float = SPAWN[1]
    vx: float = 0.0  # smoothed velocity (px/s), used for the duel stance
    vy: float = 0.0
    hp: float = 100.0
    stamina: float = 100.0
    gold: int = 40
    gear: float = 80.0
    cooldown: float = 0.0
    walk: float = 0.0  # distance walked (animation phase)
    last_move: int | None = None
    last_move_time: float = -10.0
    score: float = 0.0  # the player's side of every exchange and sale


@dataclass
class Pending:
    """An NPC decision waiting for the player's reply."""

    action: int
    levels: tuple[int, ...]
    since: float


@dataclass
class Npc:
    id: str
    archetype: str
    name: str
    variant: int  # sprite variant
    home: tuple[float, float]
    x: float
    y: float
    slot: float = 0.0  # duelists: angle around the player; companions: trailing offset
    reach: float = 90.0  # duelists: desired distance to the player
    t: int = 0  # decisions in the current episode
    open: bool = False  # an episode is open (decisions made, done not yet sent)
    pending: Pending | None = None
    cooldown: float = 0.0
    engaged: bool = False
    bubble: str = ""
    bubble_until: float = 0.0
    flash: tuple[str, float, float] | None = None  # text, value (its sign colours it), time shown
    walk: float = 0.0
    side: float = -1.0  # companions: which side of the player they trail on
    moving: bool = False
    mood: int = 2  # hagglers: the customer's mood (rules.MOODS) and the visit's item (rules.ITEMS)
    item: int = 0
    customer: bool = False  # hagglers: mood and item are drawn for the next (or current) visit


@dataclass(frozen=True)
class Outcome:
    """The player's answer to one NPC decision: feedback to send."""

    npc: Npc
    reward: float
    done: bool
    note: str


@dataclass(frozen=True)
class Request:
    """An NPC that needs a decision now, and what it observes."""

    npc: Npc
    levels: tuple[int, ...]
    obs: np.ndarray  # (8,) float32


class World:
    """The village, the player and the NPCs; advanced with :meth:`update`."""

    def __init__(self, duelists: int = 5, merchants: int = 2, companions: int = 1, hagglers: int = 1, seed: int = 0):
        for kind, n in ((DUELIST, duelists), (MERCHANT, merchants), (COMPANION, companions), (HAGGLER, hagglers)):
            if not 0 <= n <= LIMITS[kind]:
                raise InvalidInputError(f"the demo supports 0..{LIMITS[kind]} {kind}s, got {n}")
        self.rng = np.random.default_rng(seed)
        self.visits = np.random.default_rng([seed, 1])  # hagglers' customers: their own stream
        self.time = 0.0
        self.player = Player()
        self.terrain = terrain()
        self.npcs: list[Npc] = []
        cx, cy, _ = ARENA
        for i in range(duelists):
            a = 2 * math.pi * i / max(duelists, 1)
            home = (cx + math.cos(a) * 3.6 * TILE, cy + math.sin(a) * 3.6 * TILE)
            self.npcs.append(
                Npc(f"duelist-{i + 1}", DUELIST, NAMES[DUELIST][i], i % SPRITES[DUELIST], home, *home, slot=a)
            )
        for i in range(merchants):
            home = (STALL_X[i], STALL_TOP + 46)
            self.npcs.append(Npc(f"merchant-{i + 1}", MERCHANT, NAMES[MERCHANT][i], i, home, *home))
        for i in range(companions):
            home = (SPAWN[0] - 40 - 30 * i, SPAWN[1] + 10)
            self.npcs.append(
                Npc(f"companion-{i + 1}", COMPANION, NAMES[COMPANION][i], i, home, *home, slot=-1.0 if i == 0 else 1.0)
            )
        for i in range(hagglers):
            spot = HAGGLE_SPOTS[i]
            self.npcs.append(Npc(f"haggler-{i + 1}", HAGGLER, NAMES[HAGGLER][i], HAGGLER_VARIANTS[i], spot, *spot))

    # -- zones and situations -------------------------------------------------------------
    @property
    def evening(self) -> bool:
        return (self.time % DAY_SECONDS) >= DAY_SECONDS / 2

    def in_arena(self, x: float, y: float) -> bool:
        return math.hypot(x - ARENA[0], y - ARENA[1]) < ARENA[2]

    def rich_place(self, x: float, y: float) -> bool:
        """The market and the vault count as the companion's 'treasure_room'."""
        return inside(MARKET, x, y) or inside(VAULT, x, y)

    @staticmethod
    def stall_front(npc: Npc) -> tuple[float, float]:
        """Where the customer stands: below a merchant's counter, across a haggler's rug."""
        if npc.archetype == HAGGLER:
            return npc.home[0], npc.home[1] + HAGGLE_FRONT
        return npc.home[0], STALL_TOP + 100

    def at_stall(self, npc: Npc) -> bool:
        fx, fy = self.stall_front(npc)
        return math.hypot(self.player.x - fx, self.player.y - fy) < STALL_REACH

    def engaged_duelists(self) -> int:
        return sum(1 for n in self.npcs if n.archetype == DUELIST and n.engaged)

    def situation(self, npc: Npc) -> tuple[int, ...]:
        """The NPC's observation levels now (see :mod:`rules`)."""
        p = self.player
        if npc.archetype == HAGGLER:
            return npc.mood, npc.item
        if npc.archetype == DUELIST:
            dx, dy = npc.x - p.x, npc.y - p.y
            dist = math.hypot(dx, dy) or 1.0
            return rules.duel_levels(dist, (p.vx * dx + p.vy * dy) / dist, p.stamina)
        if npc.archetype == MERCHANT:
            return rules.merchant_levels(self.evening, p.gold, p.gear)
        return rules.companion_levels(p.hp, self.engaged_duelists(), self.rich_place(p.x, p.y))

    def observe(self, npc: Npc) -> tuple[tuple[int, ...], np.ndarray]:
        levels = self.situation(npc)
        return levels, rules.encode(levels, npc.archetype, npc.t)

    # -- decisions ------------------------------------------------------------------------------
    def requests(self) -> list[Request]:
        """NPCs that are engaged, idle and rested: each needs a decision now."""
        out = []
        for npc in self.npcs:
            if npc.engaged and npc.pending is None and npc.cooldown <= 0:
                levels, obs = self.observe(npc)
                out.append(Request(npc, levels, obs))
        return out

    def decided(self, npc: Npc, action: int, levels: tuple[int, ...]) -> None:
        """Apply the backend's decision for `npc`."""
        npc.pending = Pending(action, levels, self.time)
        npc.open = True
        if npc.archetype == DUELIST:
            npc.bubble, npc.bubble_until = "!", math.inf
            npc.reach = 50.0 if self.rng.random() < 0.6 else 112.0  # footwork, as in the sim
        elif npc.archetype == MERCHANT:
            npc.bubble = f"{rules.PITCH_TEXT[action]} {rules.PRICES[action]}g"
            npc.bubble_until = math.inf
        elif npc.archetype == HAGGLER:
            npc.bubble, npc.bubble_until = rules.line_text(action, npc.item), math.inf
        else:
            npc.bubble, npc.bubble_until = rules.SUPPORT_TEXT[action], self.time + MOMENT
            self._support(action)

    def _support(self, action: int) -> None:
        p = self.player
        name = rules.SIM_ACTIONS[COMPANION][action]
        if name == "heal":
            p.hp = min(100.0, p.hp + 15)
        elif name == "buff":
            p.stamina = min(100.0, p.stamina + 30)
        elif name == "gather_loot":
            p.gold += 2

    def end_episodes(self) -> list[Outcome]:
        """Close every open episode (reward 0, done); used when adaptation is toggled."""
        out = [Outcome(n, 0.0, True, "interrupted") for n in self.npcs if n.open]
        self.drop_episodes()
        return out

    def drop_episodes(self) -> None:
        """Forget open episodes without feedback (the adapters were erased)."""
        for n in self.npcs:
            n.open, n.pending, n.t, n.bubble, n.customer = False, None, 0, "", False

    # -- the clock ------------------------------------------------------------------------------
    def update(self, dt: float, inp: PlayerInput) -> list[Outcome]:
        """Advance `dt` seconds; returns the outcomes of decisions the player answered."""
        self.time += dt
        self._move_player(dt, inp)
        out: list[Outcome] = []
        for npc in self.npcs:
            npc.cooldown -= dt
            if npc.archetype == DUELIST:
                self._duelist(npc, dt, out)
            elif npc.archetype == MERCHANT:
                self._merchant(npc, inp, out)
            elif npc.archetype == HAGGLER:
                self._haggler(npc, inp, out)
            else:
                self._companion(npc, dt, inp, out)
        if inp.duel_move is not None:
            self._duel_move(inp.duel_move, out)
        if self.player.hp <= 0:
            self.player.x, self.player.y, self.player.hp = *SPAWN, 100.0
        return out

    def _move_player(self, dt: float, inp: PlayerInput) -> None:
        p = self.player
        mx, my = inp.move
        norm = math.hypot(mx, my)
        vx, vy = (mx / norm * PLAYER_SPEED, my / norm * PLAYER_SPEED) if norm > 0 else (0.0, 0.0)
        p.x = min(max(p.x + vx * dt, 12.0), WIDTH - 12.0)
        p.y = min(max(p.y + vy * dt, 24.0), HEIGHT - 4.0)
        k = min(1.0, dt / 0.2)
        p.vx += (vx - p.vx) * k
        p.vy += (vy - p.vy) * k
        p.walk += math.hypot(vx, vy) * dt
        p.cooldown -= dt
        p.stamina = min(100.0, p.stamina + 8 * dt)
        p.hp = min(100.0, p.hp + 1.5 * dt)

    def _step_towards(self, npc: Npc, tx: float, ty: float, dt: float) -> None:
        dx, dy = tx - npc.x, ty - npc.y
        dist = math.hypot(dx, dy)
        step = min(dist, NPC_SPEED * dt)
        npc.moving = step > 0.05
        if dist > 1e-6:
            npc.x += dx / dist * step
            npc.y += dy / dist * step
            npc.walk += step

    def _end(self, npc: Npc, reward: float, note: str, out: list[Outcome], rest: float, ended: bool = False) -> None:
        """Attach `reward` to the NPC's latest decision; the 12th (or an `ended` one) closes the episode, then `rest`."""
        npc.pending = None
        npc.t += 1
        done = ended or npc.t >= EPISODE_LENGTH
        out.append(Outcome(npc, reward, done, note))
        if done:
            npc.t, npc.open, npc.cooldown = 0, False, rest

    def _leave(self, npc: Npc, reward: float, note: str, out: list[Outcome]) -> None:
        """The player left mid-episode: close it (the pending decision, if any, gets `reward`)."""
        if not npc.open:
            return
        out.append(Outcome(npc, reward, True, note) if npc.pending else Outcome(npc, 0.0, True, "left"))
        npc.open, npc.pending, npc.t = False, None, 0
        if npc.bubble_until == math.inf:
            npc.bubble = ""

    def _duelist(self, npc: Npc, dt: float, out: list[Outcome]) -> None:
        p = self.player
        npc.engaged = self.in_arena(p.x, p.y) and math.hypot(p.x - npc.x, p.y - npc.y) < 6 * TILE
        if not npc.engaged:
            self._leave(npc, 0.0, "bout abandoned", out)
            self._step_towards(npc, *npc.home, dt)
            return
        cx, cy, r = ARENA
        tx, ty = p.x + math.cos(npc.slot) * npc.reach, p.y + math.sin(npc.slot) * npc.reach
        d = math.hypot(tx - cx, ty - cy)
        if d > r - 12:
            tx, ty = cx + (tx - cx) * (r - 12) / d, cy + (ty - cy) * (r - 12) / d
        self._step_towards(npc, tx, ty, dt)

    def _duel_move(self, move: int, out: list[Outcome]) -> None:
        p = self.player
        if p.cooldown > 0 or not self.in_arena(p.x, p.y):
            return
        ready = [(n, n.pending) for n in self.npcs if n.archetype == DUELIST and n.engaged and n.pending is not None]
        p.cooldown = MOVE_COOLDOWN
        p.last_move, p.last_move_time = move, self.time
        p.stamina = max(0.0, p.stamina - rules.MOVE_COST[move])
        for npc, pend in ready:
            action = pend.action
            reward = rules.duel_reward(action, move)
            p.hp -= 12 * max(reward, 0.0)
            p.gold += round(3 * max(-reward, 0.0))
            p.gear = max(0.0, p.gear - 0.4)
            p.score -= reward
            npc.bubble, npc.bubble_until = rules.SIM_ACTIONS[DUELIST][action].replace("_", " "), self.time + 0.9
            npc.flash = (f"you {-reward:+.1f}", -reward, self.time)
            npc.cooldown = MOVE_COOLDOWN * 0.8
            self._end(npc, reward, "exchange", out, DUEL_REST)

    def _merchant(self, npc: Npc, inp: PlayerInput, out: list[Outcome]) -> None:
        npc.engaged = self.at_stall(npc)
        if not npc.engaged:
            if npc.pending is not None:
                npc.flash = ("walked off", rules.WALK_AWAY, self.time)
            self._leave(npc, rules.WALK_AWAY, "walked away", out)
            return
        pend = npc.pending
        if pend is None:
            return
        response = {"buy": "buys", "no": "browses"}.get(inp.reply or "")
        if response is None and self.time - pend.since >= PITCH_TIMEOUT:
            response = "browses"
        if response is None:
            return
        reward = rules.merchant_reward(pend.action, response)
        if response == "buys":
            self._buy(pend.action)
        npc.flash = ("sold!" if response == "buys" else "maybe later", reward, self.time)
        npc.bubble, npc.bubble_until = ("Thank you!" if response == "buys" else "Hm."), self.time + 1.0
        npc.cooldown = PITCH_GAP
        last = npc.t + 1 >= EPISODE_LENGTH
        self._end(npc, reward, response, out, VISIT_REST)
        if last:
            npc.bubble, npc.bubble_until = "Come again!", self.time + VISIT_REST

    def _buy(self, pitch: int) -> None:
        p = self.player
        name = rules.SIM_ACTIONS[MERCHANT][pitch]
        p.gold = max(0, p.gold - int(rules.PRICES[pitch]))
        p.score += float(rules.MARGIN[pitch])
        if name in ("offer_weapon", "offer_armor", "upsell_premium", "haggle_firm"):
            p.gear = 100.0
        elif name == "offer_potion":
            p.hp = min(100.0, p.hp + 40)

    def _haggler(self, npc: Npc, inp: PlayerInput, out: list[Outcome]) -> None:
        npc.engaged = self.at_stall(npc)
        if not npc.engaged:
            if npc.open:  # walked off mid-visit: the customer walked away (on the latest line's reward)
                out.append(Outcome(npc, rules.HAGGLE_WALK_AWAY, True, "walked off"))
                npc.flash = ("walked off", rules.HAGGLE_WALK_AWAY, self.time)
                npc.bubble, npc.bubble_until = FAREWELL["walked_away"], self.time + 1.5
                npc.t, npc.open, npc.pending, npc.customer = 0, False, None, False
            return
        pend = npc.pending
        if pend is None:
            if not npc.customer and npc.cooldown <= 0:  # a visit starts: mood and item as the sim env draws them
                npc.mood, npc.item = rules.haggle_start(self.visits)
                npc.customer = True
            return
        answer = inp.reply if pend.action in rules.CLOSING else inp.feeling
        if answer is None and self.time - pend.since < PITCH_TIMEOUT:
            return
        response = rules.haggle_response(pend.action, answer)  # no answer in time: unmoved / refused
        if response is None:
            return
        response, reward, mood = rules.haggle_outcome(npc.mood, pend.action, response)
        if response == "sale":
            self._haggle_buy(pend.action, npc.item)
        # colour: the reward, else the mood's move (a visit that ends, mood None, always has a reward)
        npc.flash = (HAGGLE_FLASH[response], reward if reward or mood is None else mood - npc.mood, self.time)
        npc.mood = npc.mood if mood is None else mood
        last = mood is None or npc.t + 1 >= EPISODE_LENGTH
        self._end(npc, reward, response, out, NEXT_CUSTOMER, ended=mood is None)
        if last:  # the customer leaves; the next one comes after NEXT_CUSTOMER
            npc.bubble, npc.bubble_until = FAREWELL.get(response, "Another time."), self.time + NEXT_CUSTOMER
            npc.customer = False
        else:
            npc.cooldown, npc.bubble_until = LINE_GAP, self.time + LINE_GAP

    def _haggle_buy(self, line: int, item: int) -> None:
        p = self.player
        p.gold = max(0, p.gold - rules.haggle_price(line, item))
        p.score += float(rules.HAGGLE_MARGIN[line])
        if rules.ITEMS[item] == "weapon":
            p.gear = 100.0

    def _companion(self, npc: Npc, dt: float, inp: PlayerInput, out: list[Outcome]) -> None:
        p = self.player
        npc.engaged = True
        if abs(p.vx) > 20:
            npc.side = -1.0 if p.vx > 0 else 1.0
        self._step_towards(npc, p.x + npc.side * 38 + npc.slot * 8, p.y + 14 * npc.slot, dt * 1.4)
        pend = npc.pending
        if pend is None:
            return
        reaction = inp.reaction if inp.reaction in rules.REACTIONS else None
        if reaction is None and self.time - pend.since < MOMENT:
            return
        reward = rules.companion_reward(reaction)
        npc.flash = ({"thanks": "thanks!", "stop": "stop that"}.get(reaction or "", "(no reaction)"), reward, self.time)
        npc.cooldown = 0.6
        self._end(npc, reward, reaction or "none", out, 0.6)
