"""The demo's game rules per archetype: what an NPC observes and what the player's reply earns it.

Observations use exactly the archetypes' (and the sim envs') feature layout: one-hot
features in declared order, then ``round_progress = t / 12``. Rewards come only from what
the player does:

- duelist: the player's move (keys 1-8) against the NPC's move, scored with the Duel env's
  payoff table (``PAYOFF``);
- merchant: the player's reply to a pitch: buys (the pitch's margin, the Merchant env's
  ``MARGIN``), "no thanks" (browses, 0) or walks off (walks away annoyed, ``WALK_AWAY``);
- companion: the player's reaction key: thanks (+1), stop that (-1) or none (0);
- haggler: the player plays the customer of the Haggle env over one visit. Their mood (the
  NPC's observation with the item) moves with how they take each line (likes it: up,
  dislikes it: down, no key: unmoved); a closing line sells (its margin, the env's ``MARGIN``)
  or is refused (the mood drops); a furious customer pressed again walks away
  (``WALK_AWAY``). A sale, a walk-out or the 12th line ends the visit, as in the env.

The tables (features, actions, payoffs, margins, moods) are the sim envs' own, read from
the envs made by :func:`npcadapt.envs.game`, so the demo plays by the sims' rules.
No pygame here; :mod:`npcadapt.demo.world` applies these rules to the game state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..envs import game
from ..errors import ArchetypeError
from ..numerics import draw_categorical

EPISODE_LENGTH = 12  # decisions per bout / visit / outing, as in the sim envs

DUELIST, MERCHANT, COMPANION, HAGGLER = "duelist", "merchant", "companion", "haggler"
SIM_ENVS = {
    DUELIST: "npcadapt/Duel-v0",
    MERCHANT: "npcadapt/Merchant-v0",
    COMPANION: "npcadapt/Companion-v0",
    HAGGLER: "npcadapt/Haggle-v0",
}  # the gymnasium env whose game each archetype plays
_duel, _merchant, _haggle = game(SIM_ENVS[DUELIST]), game(SIM_ENVS[MERCHANT]), game(SIM_ENVS[HAGGLER])
SIM_FEATURES = {a: game(env_id).OBSERVATION_FEATURES for a, env_id in SIM_ENVS.items()}
SIM_ACTIONS = {a: game(env_id).ACTIONS for a, env_id in SIM_ENVS.items()}
# one-hot sizes of each archetype's situation features (the last feature is round progress)
ONE_HOT_SIZES = {a: tuple(size for _, size in features[:-1]) for a, features in SIM_FEATURES.items()}

# -- duel ---------------------------------------------------------------------------------------
PLAYER_MOVES = _duel.PLAYER_MOVES  # keys 1..8 in this order
PAYOFF = _duel.PAYOFF  # (npc action, player move) -> reward to the NPC
CLOSE_PX = 80.0  # an NPC nearer than this is "close"
STANCE_SPEED = 30.0  # px/s of approach (aggressive) or retreat (defensive) to count
LOW_STAMINA = 40.0
MOVE_COST = np.array([14, 14, 18, 6, 6, 8, 10, 10], dtype=np.float64)  # stamina per move
DISTANCES = ("close", "far")
STANCES = ("aggressive", "defensive", "neutral")
STAMINA = ("low", "high")

# -- merchant --------------------------------------------------------------------------------------
RESPONSES = _merchant.RESPONSES  # walks_away, browses, buys
MARGIN = _merchant.MARGIN
WALK_AWAY = _merchant.WALK_AWAY
PRICES = np.array([30, 30, 12, 15, 10, 45, 8, 25], dtype=np.int64)  # gold per pitch if bought
PITCH_TEXT = (
    "Fine blade?",
    "Sturdy armour?",
    "Healing potion?",
    "Lucky charm?",
    "Special price!",
    "Masterwork piece?",
    "Lovely weather...",
    "Fixed price, friend.",
)
TIMES = ("morning", "evening")
GOLD = ("low", "mid", "high")
GEAR = ("worn", "fresh")
GOLD_MID, GOLD_HIGH = 30, 80
WORN_BELOW = 50.0

# -- companion -------------------------------------------------------------------------------------
REACTIONS = {"thanks": 1.0, "stop": -1.0}
SUPPORT_TEXT = (
    "Let me heal you.",
    "Power up!",
    "I'll scout ahead.",
    "To arms!",
    "Ooh, loot!",
    "Right behind you.",
    "Did you know...",
    "...",
)
HEALTH = ("low", "high")
ENEMIES = ("none", "few", "many")
LOCATIONS = ("corridor", "treasure_room")
LOW_HEALTH = 40.0

# -- haggler ---------------------------------------------------------------------------------------
MOODS, ITEMS = _haggle.MOODS, _haggle.ITEMS  # the levels (mood, item) of its observation
HAGGLE_RESPONSES = _haggle.RESPONSES  # mood_up, unmoved, mood_down, refused, sale, walked_away
CLOSING = (_haggle.DISCOUNT, _haggle.CLOSE)  # lines that try to sell; the others move the mood
HAGGLE_MARGIN = _haggle.MARGIN  # line -> reward of a sale
HAGGLE_WALK_AWAY = _haggle.WALK_AWAY
FEELINGS = {"likes": "mood_up", "unmoved": "unmoved", "dislikes": "mood_down"}  # the player's take on a mood line
LINE_TEXT = (
    "What a fine eye you have!",
    "Heard the one about the troll?",
    "This one has a story...",
    "Rarest piece in the land.",
    "The price is the price.",
    "Last one. Decide now!",
    "For you, a discount:",
    "Shall we shake on it?",
)
ITEM_PRICE = (40, 20)  # gold at full price (weapon, trinket); a discount sells at the discount's margin


def check_layout(archetype: str, described: dict) -> None:
    """Raise unless the served archetype has the sim env's observation features and actions."""
    want_obs = [{"name": n, "size": s} for n, s in SIM_FEATURES[archetype]]
    got_obs = [{"name": f["name"], "size": int(f["size"])} for f in described.get("observation", [])]
    if got_obs != want_obs or list(described.get("actions", [])) != list(SIM_ACTIONS[archetype]):
        raise ArchetypeError(
            f"archetype {archetype!r} does not match the demo's rules: expected observation {want_obs} "
            f"and actions {list(SIM_ACTIONS[archetype])}, got {got_obs} and {described.get('actions')}"
        )


def encode(levels: Sequence[int], archetype: str, t: int) -> np.ndarray:
    """One-hot features then progress, laid out as the archetype's sim env: (D,) float32."""
    sizes = ONE_HOT_SIZES[archetype]
    obs = np.zeros(sum(sizes) + 1, np.float32)
    offset = 0
    for level, size in zip(levels, sizes):
        obs[offset + level] = 1.0
        offset += size
    obs[-1] = t / EPISODE_LENGTH
    return obs


def duel_levels(distance_px: float, radial_speed: float, stamina: float) -> tuple[int, int, int]:
    """(distance, stance, stamina) levels; radial_speed > 0 means the player approaches."""
    distance = 0 if distance_px < CLOSE_PX else 1
    stance = 0 if radial_speed > STANCE_SPEED else 1 if radial_speed < -STANCE_SPEED else 2
    return distance, stance, 0 if stamina < LOW_STAMINA else 1


def merchant_levels(evening: bool, gold: int, gear: float) -> tuple[int, int, int]:
    return int(evening), 0 if gold < GOLD_MID else 1 if gold < GOLD_HIGH else 2, 0 if gear < WORN_BELOW else 1


def companion_levels(hp: float, engaged: int, rich_place: bool) -> tuple[int, int, int]:
    return 0 if hp < LOW_HEALTH else 1, 0 if engaged == 0 else 1 if engaged <= 2 else 2, int(rich_place)


def describe_levels(archetype: str, levels: Sequence[int]) -> str:
    """Words for the HUD: 'close, aggressive, stamina high'."""
    if archetype == HAGGLER:
        return f"customer {MOODS[levels[0]]}, {ITEMS[levels[1]]}"
    a, b, c = levels
    if archetype == DUELIST:
        return f"{DISTANCES[a]}, {STANCES[b]}, stamina {STAMINA[c]}"
    if archetype == MERCHANT:
        return f"{TIMES[a]}, gold {GOLD[b]}, gear {GEAR[c]}"
    return f"health {HEALTH[a]}, enemies {ENEMIES[b]}, {LOCATIONS[c].replace('_', ' ')}"


def duel_reward(npc_action: int, player_move: int) -> float:
    return float(PAYOFF[npc_action, player_move])


def merchant_reward(pitch: int, response: str) -> float:
    """Reward for the pitch given the customer's response (walks_away / browses / buys)."""
    if response == "buys":
        return float(MARGIN[pitch])
    return WALK_AWAY if response == "walks_away" else 0.0


def companion_reward(reaction: str | None) -> float:
    return REACTIONS.get(reaction or "", 0.0)


def haggle_start(rng: np.random.Generator) -> tuple[int, int]:
    """(mood, item) at a visit's first line, drawn as ``HaggleEnv.reset`` draws them."""
    item = draw_categorical(rng, _haggle.ITEM_PROBS)
    return draw_categorical(rng, _haggle.START_MOOD), item


def haggle_response(line: int, answer: str | None) -> str | None:
    """The customer's response (a ``HAGGLE_RESPONSES`` name) to `line` given the player's answer.

    A mood line takes a feeling ("likes", "dislikes", "unmoved"), a closing line "buy"
    (sale) or "no" (refused); None (no answer in time) is unmoved / refused. Anything
    else is not an answer: None.
    """
    if line in CLOSING:
        return "sale" if answer == "buy" else "refused" if answer in ("no", None) else None
    return FEELINGS.get(answer or "unmoved")


def haggle_outcome(mood: int, line: int, response: str) -> tuple[str, float, int | None]:
    """(response, reward, next mood; None once the visit ends) as ``HaggleEnv.step`` scores it.

    The mood moves one level per line (delighted is the top); a refusal lowers it; a
    furious customer whose mood would drop again walks away instead.
    """
    if response == "sale":
        return response, float(HAGGLE_MARGIN[line]), None
    if response == "mood_up":
        return ("mood_up", 0.0, mood + 1) if mood < len(MOODS) - 1 else ("unmoved", 0.0, mood)
    if response == "unmoved":
        return response, 0.0, mood
    if mood == 0:  # mood_down or refused
        return "walked_away", HAGGLE_WALK_AWAY, None
    return response, 0.0, mood - 1


def haggle_price(line: int, item: int) -> int:
    """Gold the player pays when they take a closing `line` on `item`."""
    return round(ITEM_PRICE[item] * HAGGLE_MARGIN[line] / HAGGLE_MARGIN[_haggle.CLOSE])


def line_text(line: int, item: int) -> str:
    """What the haggler says: a closing line names its price."""
    return f"{LINE_TEXT[line]} {haggle_price(line, item)}g" if line in CLOSING else LINE_TEXT[line]
